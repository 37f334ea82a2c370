"""Sweeps: a multirun is one MLflow parent run with a child run per job, summarised on the parent."""
import json
import re
import shlex

import pytest
import yaml
from conftest import QUIET, cli
from mlflow import MlflowClient
from mlflow.entities import ViewType

from test_console import SWEEP_CHATTER

TINY = ["data=xor", "trainer.max_epochs=2", *QUIET]


def runs_of(store):
    experiment = store.get_experiment_by_name("experiments")
    return store.search_runs([experiment.experiment_id])


def parent_and_children(store):
    runs = runs_of(store)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in runs]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every other run is a child of the parent"
    return parents[0], children


def test_a_4_job_multirun_is_one_parent_with_4_children_named_by_swept_values(store):
    result = cli("-m", "experiments", "-m", "optimizer.lr=0.1,0.01", "model=mlp,linear", *TINY)
    assert result.returncode == 0, result.stderr

    parent, children = parent_and_children(store)
    assert len(children) == 4
    assert {child.info.status for child in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    assert sorted(child.info.run_name for child in children) == [
        "optimizer.lr=0.01,model=linear", "optimizer.lr=0.01,model=mlp",
        "optimizer.lr=0.1,model=linear", "optimizer.lr=0.1,model=mlp"]

    assert parent.data.tags["sweep.overrides"].startswith("optimizer.lr=0.1,0.01 model=mlp,linear")
    artifacts = {artifact.path for artifact in store.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/overrides.json", "sweep/children.json", "sweep/children.md", "sweep/children.csv",
                         "sweep/objective.png"}
    summary = json.loads(open(store.download_artifacts(parent.info.run_id, "sweep/children.json")).read())
    assert {"run_name", "status", "optimizer.lr", "model", "val/loss", "val/accuracy"} <= set(summary["columns"])
    assert len(summary["data"]) == 4

    best = min(children, key=lambda child: child.data.metrics["val/loss"])  # objective: val/loss, minimize
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss"] == best.data.metrics["val/loss"]
    assert parent.data.params["best.model"] == best.data.tags["choice.model"]
    assert parent.data.params["best.optimizer.lr"] == best.data.params["optimizer.lr"]


def test_the_objective_direction_picks_the_best_child(store):
    result = cli("-m", "experiments", "-m", "optimizer.lr=0.3,0.001", "objective.metric=val/accuracy",
                 "objective.direction=maximize", *TINY)
    assert result.returncode == 0, result.stderr

    parent, children = parent_and_children(store)
    best = max(children, key=lambda child: child.data.metrics["val/accuracy"])
    assert parent.data.metrics["best/val/accuracy"] == best.data.metrics["val/accuracy"]


NOT_RECORDED = ("objective.metric={} is not recorded by these runs: expected <stage>/<name> with the stage train, val, "
                "test and the name loss, accuracy (the loss or a key of metrics), or one of the run's time/ or model/ "
                "values")


@pytest.mark.parametrize("override, expected", [
    ("objective.metric=val/nope", NOT_RECORDED.format("val/nope")),
    # an AttributeError's traceback, leaving the run's output folder
    ("objective.metric=null", NOT_RECORDED.format("null")),
    ("objective=null", "objective=null: the objective is a config of the metric a sweep ranks its jobs by and its "
                       "direction; set them with objective.metric=<stage>/<name> and objective.direction=minimize or "
                       "maximize"),
])
def test_an_objective_metric_no_run_records_is_one_line_naming_those_it_can_before_anything_trains(isolated, override,
                                                                                                    expected):
    result = cli("-m", "experiments", override, *TINY)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {expected}"], result.stderr
    assert list(isolated.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


UNVALIDATED_FIX = "rank the jobs by a metric they record (objective.metric=train/loss) or let validation run"
# XOR's runs of TINY (2 epochs) with validation off, and why, in the sweep's refusal
VALIDATION_OFF = {
    "+trainer.limit_val_batches=0": "trainer.limit_val_batches=0 turns validation off",
    "+trainer.check_val_every_n_epoch=5": "no epoch validates with trainer.check_val_every_n_epoch=5 above "
                                          "trainer.max_epochs=2",
}


@pytest.mark.parametrize("validation_off", VALIDATION_OFF)
def test_a_single_run_that_does_not_validate_ends_as_usual(store, validation_off):
    # it trained and its run FINISHED, then the command exited 2 for want of val/loss, which a single run ranks by
    # nothing
    result = cli("-m", "experiments", *TINY, validation_off)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    (run,) = runs_of(store)
    assert run.info.status == "FINISHED"
    assert "train/loss" in run.data.metrics and "val/loss" not in run.data.metrics


@pytest.mark.parametrize("validation_off, reason", VALIDATION_OFF.items())
def test_a_sweep_ranked_by_a_validation_metric_no_job_records_is_one_line_before_it_starts(isolated, validation_off,
                                                                                          reason):
    # each job trained, then failed for want of val/loss
    result = cli("-m", "experiments", "-m", "seed=0,1", *TINY, validation_off)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: the sweep cannot start: objective.metric=val/loss is never recorded: {reason}; {UNVALIDATED_FIX}"]
    assert not (isolated / "mlflow.db").exists()

    # as the line says
    result = cli("-m", "experiments", "-m", "seed=0,1", *TINY, validation_off, "objective.metric=train/loss")
    assert result.returncode == 0, result.stderr
    parent, children = parent_and_children(MlflowClient(f"sqlite:///{isolated}/mlflow.db"))
    assert parent.info.status == "FINISHED" and "best/train/loss" in parent.data.metrics


def test_a_job_whose_own_values_keep_it_from_validating_fails_saying_how_to_rank_the_jobs(store):
    # the job of 1 epoch does not validate, the one of 55 does: not refused for the shared config's 50 epochs
    result = cli("-m", "experiments", "-m", "trainer.max_epochs=1,55", "+trainer.check_val_every_n_epoch=55",
                 *TINY[:1], *QUIET)
    assert result.returncode == 1, result.stderr
    parent, children = parent_and_children(store)
    children.sort(key=lambda child: int(child.data.tags["sweep.job"]))
    assert [child.info.status for child in children] == ["FAILED", "FINISHED"]
    error = children[0].data.tags["error"]
    assert error.startswith("objective.metric=val/loss was not recorded; recorded metrics: ")
    assert error.endswith(f"; validation did not run: {UNVALIDATED_FIX}")
    assert f"error: job 0 (trainer.max_epochs=1) failed: {error}" in result.stderr.splitlines()


# checks that failed with an error other than ConfigError were Hydra's warning: the sweep went on without its parent
# run, each job a plain run refusing the same value, the first one ending the command and leaving the sweep's folder
@pytest.mark.parametrize("override, expected", [
    ("objective.metric=${oc.env:NO_SUCH_VARIABLE}", "Environment variable 'NO_SUCH_VARIABLE' not found"),
    ("~objective.direction", "Key 'direction' is not in struct"),
])
def test_a_shared_value_that_fails_its_check_otherwise_is_one_line_before_the_sweep_starts(isolated, override,
                                                                                         expected):
    result = cli("-m", "experiments", "-m", "seed=0,1", *TINY, override)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the sweep cannot start: ") and expected in line, line
    assert list(isolated.iterdir()) == [], "nothing ran: no MLflow store, no sweep folder"


@pytest.mark.parametrize("shared", [
    ["trainer.max_epochs=0"], ["optimizer.lr=abc"], ["objective.direction=minimise"], ["objective.metric=val/acc"],
    ["objective=null"],  # an AttributeError traceback: a failed job each
    ["tracking.experiment_name="],  # MLflow's refusal as the parent run opened, exit status 1, the store created
    ["hydra/launcher=parallel", "hydra.launcher.n_jobs=0"],
    ["hydra/launcher=vectorized", "hydra.launcher.max_group_size=0"],
    # an Optuna search of no trials ended in Optuna's traceback, none at a time in the sweeper's ZeroDivisionError
    ["hparams_search=mlp_circle", "hydra.sweeper.n_trials=0"], ["hparams_search=mlp_circle", "hydra.sweeper.n_jobs=0"],
    ["hydra.sweeper.max_batch_size=0"],  # a bare AssertionError in Hydra's BasicSweeper
    # no such device on this machine (Apple's, on Linux): a failed job each, on the jobs' machine as on this one
    ["hydra/launcher=parallel", "trainer.accelerator=mps"],
], ids=lambda shared: shared[-1])
def test_a_value_every_job_shares_is_checked_once_before_the_sweep_starts(isolated, shared):
    # as each job's: every job would fail alike, after the parent opened (and any other direction than minimize
    # counted as maximize: the worst job would have been the best)
    result = cli("-m", "experiments", "-m", "seed=0,1", *TINY, *shared)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: the sweep cannot start: {shared[-1]}"), line
    assert not (isolated / "mlflow.db").exists()


# `python -m experiments ARGS` counting Hydra's compositions of a sweep's job configs (in composed.txt)
COUNTING_COMPOSITIONS = """
import runpy, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl

compose = ConfigLoaderImpl.load_sweep_config
def counted(self, master_config, sweep_overrides):
    with open("composed.txt", "a") as composed:
        composed.write(" ".join(sweep_overrides) + "\\n")
    return compose(self, master_config, sweep_overrides)
ConfigLoaderImpl.load_sweep_config = counted
sys.argv = ["experiments", *sys.argv[1:]]
runpy.run_module("experiments", run_name="__main__")
"""


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_each_job_config_of_a_sweep_is_composed_once_and_each_job_runs_with_its_own(store, isolated, launcher):
    # Hydra's basic sweeper composes every job's config to check the sweep, then its launcher composes each again;
    # the default sweeper hands the launcher the configs it checked, a repeated job's too, each to one job
    (isolated / "counting.py").write_text(COUNTING_COMPOSITIONS)
    result = cli("counting.py", "-m", f"hydra/launcher={launcher}", "seed=3,5,3", *TINY)
    assert result.returncode == 0, result.stderr
    composed = sorted(line.split()[0] for line in (isolated / "composed.txt").read_text().splitlines())
    assert composed == ["seed=3", "seed=3", "seed=5"]  # each job's overrides: its swept value first

    parent, children = parent_and_children(store)
    children.sort(key=lambda child: int(child.data.tags["sweep.job"]))
    assert [(child.data.params["seed"], child.info.status) for child in children] == [
        ("3", "FINISHED"), ("5", "FINISHED"), ("3", "FINISHED")]
    assert children[0].data.metrics["val/loss"] == children[2].data.metrics["val/loss"] != children[1].data.metrics[
        "val/loss"]
    (sweep_folder,) = isolated.glob("multirun/*/*")
    assert all((sweep_folder / job / "model.pt").is_file() for job in ("0", "1", "2"))


def test_a_sweep_whose_jobs_do_not_compose_leaves_no_run_nor_folder(store, isolated):
    result = cli("-m", "experiments", "-m", "model=nosuch,mlp", *TINY)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: In 'config': Could not find 'model/nosuch'")
    assert runs_of(store) == []
    assert not (isolated / "multirun").exists()
    experiment_id = store.get_experiment_by_name("experiments").experiment_id
    (parent,) = store.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert parent.info.status == "FAILED"


def test_a_failed_job_fails_the_sweep_and_its_parent_run(store, isolated):
    # one-cycle cannot split XOR's 4 steps of 4 epochs into its phases: that job fails before it trains
    result = cli("-m", "experiments", "-m", "trainer.max_epochs=2,4", "data=xor", *QUIET)
    assert result.returncode != 0

    parent, children = parent_and_children(store)
    assert sorted((child.info.run_name, child.info.status) for child in children) == [
        ("trainer.max_epochs=2", "FINISHED"), ("trainer.max_epochs=4", "FAILED")]
    assert parent.info.status == "FAILED"
    (summary,) = isolated.glob("multirun/*/*/children.csv")  # a sweep that ran keeps its folder, its jobs' too
    assert sorted(path.name for path in summary.parent.iterdir() if path.is_dir()) == ["0", "1"]


def test_an_8_job_sweep_in_parallel_processes_records_every_run_in_the_sqlite_store(store):
    result = cli("-m", "experiments", "-m", "hydra/launcher=parallel", "optimizer.lr=0.1,0.01", "model=mlp,linear",
                 "seed=0,1", *TINY)
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    # launched in a new folder, its jobs in worker processes of their own: no library chatter, as the other launchers
    # (tests/test_console.py); each job's results
    for chatter in SWEEP_CHATTER:
        assert chatter not in result.stdout + result.stderr, chatter
    assert "8 jobs" in result.stdout + result.stderr
    assert [len(re.findall(rf"xor · {model} · 2 epochs\b", result.stdout)) for model in ("mlp", "linear")] == [4, 4], (
        result.stdout)

    parent, children = parent_and_children(store)
    assert len(children) == 8
    assert [child.info.status for child in children] == ["FINISHED"] * 8
    assert len({child.info.run_name for child in children}) == 8
    summary = json.loads(open(store.download_artifacts(parent.info.run_id, "sweep/children.json")).read())
    assert len(summary["data"]) == 8


def test_the_server_preset_records_runs_and_artifacts_on_a_tracking_server(tracking_server, isolated):
    result = cli("-m", "experiments", "tracking=server", f"tracking.tracking_uri={tracking_server}",
                 "tracking.run_name=served", *TINY)
    assert result.returncode == 0, result.stderr
    assert not (isolated / "mlflow.db").exists(), "nothing went to the local store"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_server)
    (run,) = client.search_runs([client.get_experiment_by_name("experiments").experiment_id])
    assert (run.info.run_name, run.info.status) == ("served", "FINISHED")
    assert "mlflow.parentRunId" not in run.data.tags, "a single run has no parent"
    assert "val/loss" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(isolated))
    assert "tracking_uri: " + tracking_server in open(config).read()


def test_an_optuna_search_records_its_best_trial_on_the_parent(store):
    result = cli("-m", "experiments", "hparams_search=mlp_circle", "hydra.sweeper.n_trials=3", "data.n_points=100",
                 "trainer.max_epochs=2", *QUIET)
    assert result.returncode == 0, result.stderr

    parent, children = parent_and_children(store)
    assert len(children) == 3 and {child.info.status for child in children} == {"FINISHED"}
    best = min(children, key=lambda child: child.data.metrics["val/loss"])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss"] == best.data.metrics["val/loss"]
    assert float(parent.data.params["best.optimizer.lr"]) == float(best.data.params["optimizer.lr"])
    assert parent.data.params["best.model.activation"] == best.data.params["model.activation"]
    optuna_result = open(store.download_artifacts(parent.info.run_id, "sweep/optimization_results.yaml")).read()
    assert f"best_value: {best.data.metrics['val/loss']}" in optuna_result


def test_an_optuna_study_in_a_database_is_refused_in_one_line_before_the_sweep_starts(isolated):
    # hydra-optuna-sweeper's Optuna (below 3) fails on a database beside SQLAlchemy 2 with a bare AssertionError
    result = cli("-m", "experiments", "hparams_search=mlp_circle", "hydra.sweeper.storage=sqlite:///optuna.db",
                 "hydra.sweeper.n_trials=1", *QUIET)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the sweep cannot start: hydra.sweeper.storage=sqlite:///optuna.db:"), line
    assert "leave it null" in line
    assert not (isolated / "mlflow.db").exists() and not (isolated / "optuna.db").exists()  # nothing half-written


def test_the_slurm_preset_composes_and_its_pickled_job_runs_as_on_a_node(store, monkeypatch):
    """No cluster here: compose the preset, pickle the launcher's job as submitit sends it to SLURM
    (cloudpickle), then unpickle and run it as a SLURM task would, inside the sweep's parent run."""
    import cloudpickle
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext, RunMode

    from experiments.__main__ import app

    overrides = ["hydra.mode=MULTIRUN",  # as the command line's -m adds it
                 "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                 "model=mlp,linear", *TINY]
    with initialize_config_module("experiments.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        config = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN)
        launcher_config = config.hydra.launcher
        assert launcher_config._target_.endswith("SlurmLauncher")
        assert (launcher_config.partition, launcher_config.timeout_min) == ("gpu", 30)
        assert launcher_config.gpus_per_node == 1

        callbacks = Callbacks(config)
        callbacks.on_multirun_start(config=config)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
            task_function=app.__wrapped__, config=config)
        job_args = (["model=linear", *TINY], "hydra.sweep.dir", 0, "job_id_for_0", Singleton.get_state())
        pickled = cloudpickle.dumps((launcher, job_args))

        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # what submitit reads inside a SLURM job
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        job, args = cloudpickle.loads(pickled)
        objective = job(*args).return_value
        callbacks.on_multirun_end(config=config)

    parent, (child,) = parent_and_children(store)
    assert (child.info.run_name, child.info.status) == ("model=linear", "FINISHED")
    assert objective == child.data.metrics["val/loss"]
    assert parent.info.status == "FINISHED" and parent.data.tags["best.run_id"] == child.info.run_id


def test_the_ddp_trainer_preset_composes():
    result = cli("-m", "experiments", "trainer=ddp", "trainer.num_nodes=2", "--cfg", "job", "-p", "trainer")
    assert result.returncode == 0, result.stderr
    trainer = yaml.safe_load(result.stdout)
    assert (trainer["strategy"], trainer["accelerator"], trainer["num_nodes"]) == ("ddp", "gpu", 2)
    assert trainer["max_epochs"] == 50, "the default trainer's settings are kept"


def test_hydra_job_chdir_keeps_the_sweep_its_children_and_the_artifacts_in_the_start_folder(store, isolated):
    # hydra.job.chdir=true (Hydra < 1.2's default) runs each job in its output folder; the single run first, so that a
    # job (not a sweep's parent, before its jobs) creates the store and the experiment there
    chdir = ["data=xor", "trainer.max_epochs=1", "hydra.job.chdir=true", *QUIET]
    single = cli("-m", "experiments", *chdir)
    assert single.returncode == 0, single.stderr
    result = cli("-m", "experiments", "-m", "seed=0,1", *chdir)
    assert result.returncode == 0, result.stderr

    runs = runs_of(store)
    (parent,) = [run for run in runs if "sweep.overrides" in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(child.info.run_name for child in children) == ["seed=0", "seed=1"]
    assert all(child.info.status == "FINISHED" and "val/loss" in child.data.metrics for child in children)
    assert "sweep · 2 jobs" in result.stdout and "best job: seed=" in result.stdout
    summary = json.loads(open(store.download_artifacts(parent.info.run_id, "sweep/children.json")).read())
    assert len(summary["data"]) == 2

    folders = re.findall(r"^Output folder: (\S+)/ \(", single.stdout + result.stdout, re.MULTILINE)
    assert len(folders) == 3 and all((isolated / folder / "model.pt").is_file() for folder in folders), folders
    experiment_id = store.get_experiment_by_name("experiments").experiment_id
    models = store.search_logged_models([experiment_id])
    assert len(models) == 3
    for location in [run.info.artifact_uri for run in runs] + [model.artifact_location for model in models]:
        assert location.removeprefix("file://").startswith(f"{isolated}/mlruns/"), location
    for run in [run for run in runs if run is not parent]:
        assert "plots" in {artifact.path for artifact in store.list_artifacts(run.info.run_id)}
    assert not list(isolated.glob("*/**/mlruns"))  # none in an output folder


def test_hydra_job_chdir_keeps_a_relative_sqlite_store_and_predicts_files_in_the_start_folder(isolated):
    # sqlite:///runs.db is the start folder's, as without hydra.job.chdir=true: the sweep's parent (which runs there)
    # and its jobs (each in its own output folder, in processes of their own) in the one store
    result = cli("-m", "experiments", "-m", "hydra/launcher=parallel", "seed=0,1", "data=xor", "trainer.max_epochs=1",
                 "hydra.job.chdir=true", "tracking.tracking_uri=sqlite:///runs.db", *QUIET)
    assert result.returncode == 0, result.stderr
    assert [str(path.relative_to(isolated)) for path in isolated.rglob("*.db")] == ["runs.db"]
    store = MlflowClient(f"sqlite:///{isolated}/runs.db")
    parent, children = parent_and_children(store)
    assert sorted(child.info.run_name for child in children) == ["seed=0", "seed=1"]
    for child in children:
        assert "val/loss" in child.data.metrics
        assert "model.pt" in {artifact.path for artifact in store.list_artifacts(child.info.run_id)}
        assert child.info.artifact_uri.removeprefix("file://").startswith(f"{isolated}/mlruns/")
    ui_commands = re.findall(r"open the MLflow UI on this store: (.+)$", result.stdout, re.MULTILINE)
    assert [shlex.split(command)[-1] for command in ui_commands] == [f"sqlite:///{isolated}/runs.db"] * 2

    # predict, in its own output folder too, reads the model and the inputs, and writes the predictions, named from
    # the start folder
    folder = re.search(r"^Output folder: (\S+)/ \(", result.stdout, re.MULTILINE)[1]
    (isolated / "points.csv").write_text("x0,x1\n0,1\n1,1\n")
    predicted = cli("-m", "experiments.predict", f"checkpoint={folder}/model.pt", "input=points.csv",
                    "output=points_predicted.csv", "hydra.job.chdir=true")
    assert predicted.returncode == 0, predicted.stderr
    assert len((isolated / "points_predicted.csv").read_text().splitlines()) == 3, "a header and the 2 points' rows"
