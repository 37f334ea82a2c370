"""hydra/launcher=vectorized: jobs that differ only in seed, initialisation and optimizer numbers train as
one program, and each job is still its own run with the same results as the job run alone."""
import re
import resource
import shlex
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUIET, cli, linked_metrics, logged_model, start
from mlflow import MlflowClient

from experiments import checkpoint

VECTORIZED = ["-m", "experiments", "-m", "hydra/launcher=vectorized"]
FINAL = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "model/distinct_hidden_units")


def children(client: MlflowClient) -> dict[str, object]:
    """The sweep's child runs by name, after checking they hang under the one parent."""
    runs = client.search_runs([client.get_experiment_by_name("experiments").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    kids = {run.info.run_name: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(kids) == len(runs) - 1
    return kids


def history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def assert_same_as_alone(args: list[str], isolated, grouped_line: str) -> dict:
    """Run the sweep vectorised and one job after another (the basic launcher, each job a single run);
    every job's final and per-epoch metrics agree within 1e-4 and it has every record and plot its run has."""
    result = cli(*VECTORIZED, *args, *QUIET)
    assert result.returncode == 0, result.stderr
    assert grouped_line in result.stdout + result.stderr
    alone_uri = f"sqlite:///{isolated}/alone.db"
    result = cli("-m", "experiments", "-m", *args, f"tracking.tracking_uri={alone_uri}", *QUIET)
    assert result.returncode == 0, result.stderr

    client, alone_client = MlflowClient(f"sqlite:///{isolated}/mlflow.db"), MlflowClient(alone_uri)
    vectorized, alone = children(client), children(alone_client)
    assert vectorized.keys() == alone.keys()
    for name, run in vectorized.items():
        single = alone[name]
        assert run.info.status == "FINISHED"
        final = [key for key in single.data.metrics if key.split("/")[0] in ("train", "val", "test", "model")]
        assert {"train/loss", "val/loss"} <= set(final)
        for key in final:
            assert run.data.metrics[key] == pytest.approx(single.data.metrics[key], abs=1e-4), (name, key)
        for key in [key for key in final if key.split("/")[0] in ("train", "val")]:  # per epoch, at the same steps
            steps, values = zip(*history(client, run, key))
            single_steps, single_values = zip(*history(alone_client, single, key))
            assert steps == single_steps
            assert values == pytest.approx(single_values, abs=1e-4)
        assert run.data.params == single.data.params | {"tracking.tracking_uri": run.data.params["tracking.tracking_uri"]}
        assert {tag: value for tag, value in run.data.tags.items() if tag.startswith("choice.")} == {
            tag: value for tag, value in single.data.tags.items() if tag.startswith("choice.")}
        assert {"time/fit_seconds", "time/group_fit_seconds", "time/samples_per_second"} <= run.data.metrics.keys()
        assert run.data.metrics["time/fit_seconds"] < run.data.metrics["time/group_fit_seconds"]
        artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "model.pt", "model_summary.txt", "plots"} <= artifacts
        plots = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {artifact.path for artifact in alone_client.list_artifacts(single.info.run_id, "plots")}
        assert "plots/loss_curves.png" in plots
        # the weights the group trained, written back into the job's model: its model.pt holds the single run's
        weights = checkpoint.read(run.info.run_id, None, client.tracking_uri)["state_dict"]
        single_weights = checkpoint.read(single.info.run_id, None, alone_uri)["state_dict"]
        assert weights.keys() == single_weights.keys()
        for key, tensor in weights.items():
            assert torch.allclose(tensor, single_weights[key], atol=1e-4), (name, key)
        model = logged_model(client, run)
        assert model.name == "model"
        assert linked_metrics(model) == run.data.metrics  # the run's final values
    return vectorized


def test_a_seed_sweep_of_e2_trains_as_one_group_each_job_as_if_alone(isolated):
    runs = assert_same_as_alone(["experiment=circle_tanh_mlp", "trainer.max_epochs=3", "seed=0,1,2"], isolated,
                                "vectorized: 3 of 3 jobs in 1 group(s): #0-2 (differing in seed)")
    assert len({run.data.metrics["train/loss"] for run in runs.values()}) == 3, "each seed its own data and init"
    folder = sorted((isolated / "multirun").glob("*/*"))[0]  # the vectorised sweep's, the first of the two
    for job in range(3):  # each job's own output folder, with its checkpoint, plots and Hydra's record
        assert {"model.pt", "decision_boundary.png", ".hydra"} <= {path.name for path in (folder / str(job)).iterdir()}


def test_a_seed_sweep_of_house_prices_trains_in_a_group_each_job_on_its_own_target_scale(isolated):
    # data.standardize_target (the default): each job's model learns the target standardised on its own training
    # rows, which its seed picks, and records its loss and metrics in the target's units (MEDV, $1000s). A
    # torchmetrics Metric added to the config is computed over each job's epoch too, as ours are.
    runs = assert_same_as_alone(["data=house_prices", "trainer.max_epochs=3", "seed=0,1,2",
                                 "+metrics.torchmetrics_r2={_target_:torchmetrics.R2Score}"], isolated,
                                "vectorized: 3 of 3 jobs in 1 group(s): #0-2 (differing in seed)")
    assert {"val/r2", "test/rmse"} <= runs["seed=0"].data.metrics.keys()
    for run in runs.values():
        for stage in ("train", "val", "test"):
            assert run.data.metrics[f"{stage}/torchmetrics_r2"] == pytest.approx(run.data.metrics[f"{stage}/r2"], abs=1e-5)
    assert len({run.data.metrics["train/loss"] for run in runs.values()}) == 3, "each seed its own rows and init"


def test_a_learning_rate_sweep_of_house_prices_with_sgd_and_adam_gives_each_job_its_own_rate(isolated):
    # shuffled batches and the one-cycle schedule peaking at each job's rate (circle's classification in a group: the
    # seed sweep of E2)
    assert_same_as_alone(["data=house_prices", "optimizer=sgd,adam", "optimizer.lr=0.05,0.01", "trainer.max_epochs=3"],
                         isolated, "vectorized: 4 of 4 jobs in 2 group(s): #0-1 (differing in optimizer.lr), "
                                   "#2-3 (differing in optimizer.lr)")


def test_the_symmetry_demo_keeps_zero_initialised_units_identical_in_every_seed(store):
    result = cli(*VECTORIZED, "experiment=circle_zero_init,circle_random_init", "seed=0,1,2", *QUIET)
    assert result.returncode == 0, result.stderr
    # the two presets differ only in model.init: one group
    assert "vectorized: 6 of 6 jobs in 1 group(s): #0-5 (differing in experiment, seed)" in result.stdout

    runs = children(store).values()
    units = {(run.data.tags["choice.experiment"], run.data.params["seed"]): run.data.metrics[
        "model/distinct_hidden_units"] for run in runs}
    assert units == {**{("circle_zero_init", seed): 1.0 for seed in "012"},
                     **{("circle_random_init", seed): 8.0 for seed in "012"}}


def test_a_job_that_fails_in_a_group_fails_alone_and_the_others_finish(store):
    # SGD rejects a negative rate: those jobs run the ordinary way and fail there, as they would alone
    result = cli(*VECTORIZED, "optimizer=sgd", "optimizer.lr=0.1,-1", "seed=0,1", "trainer.max_epochs=2",
                 "data.n_points=100", *QUIET)
    assert result.returncode != 0
    line = next(line for line in result.stdout.splitlines() if "vectorized:" in line)
    assert "2 of 4 jobs in 1 group(s): #0-1 (differing in seed); one by one: #2 (it fails to build: torch's SGD " \
           "refuses the optimizer options (lr=-1" in line

    runs = children(store)
    assert sorted((name, run.info.status) for name, run in runs.items()) == [
        ("optimizer.lr=-1,seed=0", "FAILED"), ("optimizer.lr=-1,seed=1", "FAILED"),
        ("optimizer.lr=0.1,seed=0", "FINISHED"), ("optimizer.lr=0.1,seed=1", "FINISHED")]
    (parent,) = [run for run in store.search_runs([runs["optimizer.lr=0.1,seed=0"].info.experiment_id])
                 if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status != "RUNNING", "the parent run is ended"


def test_a_job_that_diverges_in_a_group_fails_at_its_epoch_and_the_others_train_on_unaffected(isolated):
    # SGD at lr 10 on MEDV's own units: nan in epoch 1 (as in test_failures); the two others train on
    sweep = ["data=house_prices", "data.standardize_target=false", "optimizer=sgd", "scheduler=constant",
             "optimizer.lr=10,0.001,0.002", "trainer.max_epochs=4", *QUIET]
    result = cli(*VECTORIZED, *sweep, "trainer.enable_progress_bar=true")
    assert result.returncode == 1
    assert "vectorized: 3 of 3 jobs in 1 group(s): #0-2 (differing in optimizer.lr)" in result.stdout
    # the group's progress (no terminal: lines after its first epoch and its last): its jobs' losses as a range
    progress = re.findall(r"\[HYDRA\] group #0-2 · epoch (\d)/4 · train/loss ([\d.e+-]+)–([\d.e+-]+) · val/loss ",
                          result.stdout)
    assert [epoch for epoch, *_ in progress] == ["1", "4"], result.stdout
    error = "training diverged: train/loss = nan at epoch 2/4 is not finite; try a lower optimizer.lr"
    assert f"error: job 0 (optimizer.lr=10) failed: {error}" in result.stderr
    alone_uri = f"sqlite:///{isolated}/alone.db"  # the same jobs as single runs, one after another
    assert cli("-m", "experiments", "-m", *sweep, f"tracking.tracking_uri={alone_uri}").returncode == 1

    client, alone_client = MlflowClient(f"sqlite:///{isolated}/mlflow.db"), MlflowClient(alone_uri)
    vectorized, alone = children(client), children(alone_client)
    assert {name: run.info.status for name, run in vectorized.items()} == {
        name: run.info.status for name, run in alone.items()} == {
        "optimizer.lr=10": "FAILED", "optimizer.lr=0.001": "FINISHED", "optimizer.lr=0.002": "FINISHED"}
    failed, single = vectorized["optimizer.lr=10"], alone["optimizer.lr=10"]
    assert failed.data.tags["error"] == single.data.tags["error"] == error
    assert "error.txt" in {artifact.path for artifact in client.list_artifacts(failed.info.run_id)}
    for key in ("epoch", "train/loss", "val/loss"):  # the epochs up to the one that diverged, nan included
        steps, values = zip(*history(client, failed, key))
        single_steps, single_values = zip(*history(alone_client, single, key))
        assert steps == single_steps
        assert values == pytest.approx(single_values, abs=1e-4, nan_ok=True)
    assert [epoch for _, epoch in history(client, failed, "epoch")] == [0, 1]
    for name in ("optimizer.lr=0.001", "optimizer.lr=0.002"):  # as if the diverging job had not been there
        run, single = vectorized[name], alone[name]
        metrics = [key for key in single.data.metrics if key.split("/")[0] in ("train", "val", "test")]
        assert {"train/loss", "val/r2", "test/r2"} <= set(metrics)
        for key in metrics:
            assert run.data.metrics[key] == pytest.approx(single.data.metrics[key], abs=1e-4), (name, key)
        steps, values = zip(*history(client, run, "val/loss"))
        assert len(steps) == 4 and values == pytest.approx([v for _, v in history(alone_client, single, "val/loss")],
                                                           abs=1e-4)
    # the last epoch's range: the two jobs still training, not the diverged one's nan
    finals = sorted(vectorized[name].data.metrics["train/loss"] for name in ("optimizer.lr=0.001",
                                                                            "optimizer.lr=0.002"))
    assert [float(value) for value in progress[-1][1:]] == pytest.approx(finals, rel=1e-3)


def test_progress_null_trains_the_group_as_one_program_without_progress():
    # as a single run's (test_console): no progress line, and not the group's fallback to one job at a time
    result = cli(*VECTORIZED, "seed=0,1", "data=xor", "trainer.max_epochs=1", "progress=null")
    assert result.returncode == 0, result.stderr
    assert "vectorized: 2 of 2 jobs in 1 group(s): #0-1 (differing in seed)" in result.stdout
    assert "could not train as one program" not in result.stdout
    assert not re.search(r"\bepoch \d", result.stdout, re.IGNORECASE), result.stdout


def test_a_group_too_large_for_the_memory_budget_is_split_and_each_part_trains_as_the_whole_would(isolated):
    sweep = ["seed=0,1,2,3", "trainer.max_epochs=2", "data.n_points=100", *QUIET]
    result = cli(*VECTORIZED, *sweep, "hydra.launcher.memory_budget_mb=0.35")
    assert result.returncode == 0, result.stderr
    assert ("vectorized: 4 of 4 jobs in 2 group(s): #0-1 (differing in seed), #2-3 (differing in seed); "
            "4 jobs split into 2 groups to fit the memory budget") in result.stdout
    whole_uri = f"sqlite:///{isolated}/whole.db"  # the same sweep within the default budget: one group
    result = cli(*VECTORIZED, *sweep, f"tracking.tracking_uri={whole_uri}")
    assert "vectorized: 4 of 4 jobs in 1 group(s): #0-3 (differing in seed)" in result.stdout

    split, whole = children(MlflowClient(f"sqlite:///{isolated}/mlflow.db")), children(MlflowClient(whole_uri))
    assert {run.info.status for run in [*split.values(), *whole.values()]} == {"FINISHED"}
    assert {run.data.metrics["time/group_size"] for run in split.values()} == {2.0}
    assert {run.data.metrics["time/group_size"] for run in whole.values()} == {4.0}
    assert split.keys() == whole.keys()
    for name, run in split.items():
        for key in FINAL:
            assert run.data.metrics[key] == pytest.approx(whole[name].data.metrics[key], abs=1e-4), (name, key)


def run_with_peak_memory(*args: str) -> tuple[int, str, int]:
    """Run `python ARGS` to the end, as `cli` does; its exit status, stderr and the peak of its virtual memory
    (VmPeak, read every 20 ms while it runs), in bytes."""
    process, peaks = start(*args), [0]

    def watch() -> None:
        while process.poll() is None:
            with suppress(OSError, AttributeError):
                status = Path(f"/proc/{process.pid}/status").read_text()
                peaks.append(int(re.search(r"VmPeak:\s+(\d+) kB", status).group(1)) * 1024)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, stderr = process.communicate(timeout=900)
    watcher.join()
    return process.returncode, stderr, max(peaks)


def test_a_group_that_runs_out_of_memory_trains_in_halves_each_job_as_in_a_half(isolated):
    # A genuine out-of-memory: the command's address space limited (RLIMIT_AS) to what the same sweep needs trained
    # in halves (measured first, hydra.launcher.max_group_size=2) and 0.25 GiB more. Each job's two 4096-wide layers
    # hold 67 MB of weights: training the group of 4 needs 16 x 67 MB (weights, gradients and Adam's two states),
    # 0.5 GiB more than a half's 8 x 67 MB; the memory budget, set to 4 GiB, does not foresee the limit.
    (isolated / "small.csv").write_text("a,b,price\n" + "".join(f"{i % 7},{i % 5},{i % 7 + 2 * (i % 5)}\n"
                                                                 for i in range(20)))
    sweep = [*VECTORIZED, "data=csv", f"data.path={isolated / 'small.csv'}", "data.target=price",
             "model.hidden_sizes=[4096,4096]", "seed=0,1,2,3", "trainer.max_epochs=1", "trainer.accelerator=cpu",
             "hydra.launcher.memory_budget_mb=4096", *QUIET]
    halves_uri = f"sqlite:///{isolated}/halves.db"
    returncode, stderr, peak = run_with_peak_memory(*sweep, "hydra.launcher.max_group_size=2",
                                                    f"tracking.tracking_uri={halves_uri}")
    assert returncode == 0, stderr
    limit = peak + 2**28
    process = start(*sweep, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    stdout, stderr = process.communicate(timeout=900)

    assert process.returncode == 0, stderr
    assert "vectorized: 4 of 4 jobs in 1 group(s): #0-3 (differing in seed)" in stdout
    (line,) = [line for line in stdout.splitlines() if "vectorized: group #0-3" in line]
    assert "ran out of memory (" in line and "can't allocate memory" in line
    assert line.endswith("); training it as 2 groups")
    runs, halves = children(MlflowClient(f"sqlite:///{isolated}/mlflow.db")), children(MlflowClient(halves_uri))
    assert runs.keys() == halves.keys() and {run.info.status for run in runs.values()} == {"FINISHED"}
    assert {run.data.metrics["time/group_size"] for run in runs.values()} == {2.0}
    for name, run in runs.items():  # each job trained as in the sweep planned in halves
        for key in ("train/loss", "val/loss", "test/loss", "test/r2"):
            assert run.data.metrics[key] == pytest.approx(halves[name].data.metrics[key], rel=1e-5), (name, key)


def lr_search(isolated) -> list[str]:
    """The arguments of an Optuna search of the learning rate of mlp_circle's MLP, 4 trials a batch."""
    search = isolated / "my_conf" / "hparams_search"
    search.mkdir(parents=True)
    (search / "lr_circle.yaml").write_text(  # mlp_circle's search, one architecture
        "# @package _global_\n" + yaml.safe_dump({"defaults": ["mlp_circle", "_self_"], "hydra": {"sweeper": {
            "n_trials": 4, "n_jobs": 4, "params": {"model.hidden_sizes": "choice([8])",
                                                   "model.activation": "choice(tanh)"}}}}))
    return ["-m", "experiments", f"hydra.searchpath=[file://{isolated}/my_conf]", "hparams_search=lr_circle",
            "hydra/launcher=vectorized", "data.n_points=100"]


def test_an_optuna_search_through_the_launcher_is_one_group_per_batch_of_trials(store, isolated):
    result = cli(*lr_search(isolated), "trainer.max_epochs=2", *QUIET)
    assert result.returncode == 0, result.stderr
    assert "vectorized: 4 of 4 jobs in 1 group(s): #0-3 (differing in optimizer.lr)" in result.stdout

    runs = children(store).values()
    best = min(runs, key=lambda run: run.data.metrics["val/loss"])
    (results_file,) = (isolated / "multirun").glob("*/*/optimization_results.yaml")
    assert yaml.safe_load(results_file.read_text())["best_value"] == best.data.metrics["val/loss"]


def stopped_while_training(args: list[str], planned: str, isolated) -> tuple[MlflowClient, str]:
    """Start the sweep and stop it (`stopped`) once its group has trained 2 s."""
    process = start(*args, "trainer.max_epochs=100000", *QUIET)
    for line in process.stdout:  # the group is planned, then trains
        if planned in line:
            break
    time.sleep(2)
    return stopped(process, isolated)


def stopped(process, isolated) -> tuple[MlflowClient, str]:
    """Send the sweep SIGTERM; it exits 143 promptly with its parent run KILLED and no run left RUNNING. The store's
    client and the command's stderr."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 143, stderr
    assert "error: stopped by SIGTERM" in stderr.splitlines(), stderr
    client = MlflowClient(f"sqlite:///{isolated}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("experiments").experiment_id])
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    assert parent.info.status == "KILLED"
    assert not [run for run in runs if run.info.status == "RUNNING"]
    return client, stderr


def assert_killed_with_its_epochs(client: MlflowClient, run, stderr: str, isolated) -> list[str]:
    """A job of a stopped group: KILLED, with every epoch it completed at its step, and a line giving the command
    that runs it again, which composes the very config its run recorded; that command's arguments."""
    assert run.info.status == "KILLED"
    epochs = history(client, run, "epoch")
    assert [epoch for _, epoch in epochs] == list(range(len(epochs))) and len(epochs) > 2
    for key in ("train/loss", "val/loss"):
        assert [step for step, _ in history(client, run, key)] == [step for step, _ in epochs]
    (line,) = [line for line in stderr.splitlines() if line.startswith(f"run {run.info.run_id} ")]
    assert ("KILLED: trained in a vectorised group, which keeps no checkpoint, it cannot be resumed; run it again "
            "with: python -m experiments ") in line
    python, *command = shlex.split(line.partition("run it again with: ")[2])
    result = cli(*command, "--cfg", "job", "--resolve")
    assert result.returncode == 0, result.stderr
    recorded = client.download_artifacts(run.info.run_id, "config.yaml", str(isolated))
    assert yaml.safe_load(result.stdout) == yaml.safe_load(Path(recorded).read_text())
    return command


def assert_not_resumed(run, command: list[str]) -> None:
    """`resume=` a job of a stopped group: refused in a line saying why, with the command its stop line gave."""
    result = cli("-m", "experiments", f"resume={run.info.run_id}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: resume={run.info.run_id}: trained in a vectorised group, which keeps no checkpoint, it cannot be "
        f"resumed; run it again with: {shlex.join(['python', *command])}")


def test_a_signal_stops_a_training_group_with_each_job_recorded_killed_and_no_run_left_running(isolated):
    # SGD at lr 10 on MEDV's own units diverges in epoch 1 (as above): that job fails; the two others train until the
    # signal, then each is a KILLED child with the epochs it completed, which resume= refuses with the command to run
    # it again: with the user's own config (-cd, -cn) but not the launcher's options, which a single run does not take
    (isolated / "my_conf").mkdir()
    (isolated / "my_conf" / "mine.yaml").write_text("defaults: [config, _self_]\ndata: {standardize_target: false}\n")
    client, stderr = stopped_while_training(
        ["-m", "experiments", "-cd", "my_conf", "-cn", "mine", *VECTORIZED[2:], "hydra.launcher.max_group_size=3",
         "data=house_prices", "optimizer=sgd", "scheduler=constant", "optimizer.lr=10,0.001,0.002"],
        "vectorized: 3 of 3 jobs in 1 group(s)", isolated)
    jobs = children(client)
    assert {name: run.info.status for name, run in jobs.items()} == {
        "optimizer.lr=10": "FAILED", "optimizer.lr=0.001": "KILLED", "optimizer.lr=0.002": "KILLED"}
    failed = jobs["optimizer.lr=10"]
    assert failed.data.tags["error"].startswith("training diverged: train/loss = nan at epoch 2/100000 ")
    assert [epoch for _, epoch in history(client, failed, "epoch")] == [0, 1]
    for lr in ("0.001", "0.002"):
        run = jobs[f"optimizer.lr={lr}"]
        assert run.data.params["optimizer.lr"] == lr and run.data.params["data.standardize_target"] == "False"
        command = assert_killed_with_its_epochs(client, run, stderr, isolated)
    assert_not_resumed(run, command)
    assert command[2:6] == ["-cd", f"{isolated}/my_conf", "-cn", "mine"]
    # the last command as printed, one epoch of it into an experiment of its own
    assert cli(*command, "trainer.max_epochs=1", "tracking.experiment_name=again").returncode == 0
    (again,) = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    assert (again.data.params["optimizer.lr"], again.data.params["data.standardize_target"]) == ("0.002", "False")


def test_a_signal_stops_a_batch_of_optuna_trials_each_killed_and_runnable_again_alone(isolated):
    client, stderr = stopped_while_training(lr_search(isolated), "vectorized: 4 of 4 jobs in 1 group(s)", isolated)
    jobs = children(client)
    assert len(jobs) == 4 and len({run.data.params["optimizer.lr"] for run in jobs.values()}) == 4
    for run in jobs.values():  # the command: the trial's values and the search path
        command = assert_killed_with_its_epochs(client, run, stderr, isolated)
        result = cli(*command, "--cfg", "hydra")
        assert yaml.safe_load(result.stdout)["hydra"]["mode"] == "RUN", "one run, not a new search"


def test_a_signal_while_a_group_is_recorded_kills_each_job_not_recorded_with_its_epochs_and_no_resume_line(isolated):
    # SIGTERM once the second job has drawn its first plot, while it is recorded in its run (a signal that came before
    # would find no run of it): the first job stays FINISHED; the second, cut short, and those after it end KILLED
    # with the epochs the group trained them, each with the command that runs it again (a job trained in a group has
    # no checkpoint to resume from)
    process = start(*VECTORIZED, "seed=0,1,2,3", "trainer.max_epochs=3", "data.n_points=100", *QUIET)
    deadline = time.monotonic() + 300
    while not list(isolated.glob("multirun/*/*/1/loss_curves.png")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    client, stderr = stopped(process, isolated)

    assert "resume=" not in stderr
    finished, *killed = [children(client)[f"seed={seed}"] for seed in range(4)]
    assert [run.info.status for run in [finished, *killed]] == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    assert "model.pt" in {artifact.path for artifact in client.list_artifacts(finished.info.run_id)}
    assert not [line for line in stderr.splitlines() if line.startswith(f"run {finished.info.run_id} ")]
    for seed, run in enumerate(killed, 1):
        assert run.data.params.keys() == finished.data.params.keys() and run.data.params["seed"] == str(seed)
        for key in ("epoch", "train/loss", "val/loss"):  # every epoch the group trained, once
            steps = [step for step, _ in history(client, run, key)]
            assert steps == [step for step, _ in history(client, finished, key)], (seed, key)
        command = assert_killed_with_its_epochs(client, run, stderr, isolated)
        if seed == 1:  # the run cut short, which its recording had opened
            assert_not_resumed(run, command)
