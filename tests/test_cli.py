"""The command line as a user meets it: start-up, config composition, bad input, the default run."""
import re
import subprocess
import sys
import zipfile

import pytest
import yaml

from conftest import QUIET, ROOT, cli, refusal

HEAVY = ("torch", "lightning", "mlflow")


def imported_modules(*args: str) -> set[str]:
    result = cli("-X", "importtime", "-m", "experiments", *args)
    assert result.returncode == 0, result.stderr
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines() if "import time:" in line}


def test_help_and_cfg_job_do_not_import_torch_lightning_or_mlflow():
    for args in (["--help"], ["--cfg", "job"], ["--cfg", "job", "data=xor", "model=linear"]):
        modules = imported_modules(*args)
        assert "hydra" in modules
        assert not modules & set(HEAVY), f"{args} imported {modules & set(HEAVY)}"


def test_the_libraries_are_imported_without_the_garbage_collector_then_kept_out_of_its_scans():
    """cli.heavy_import: the collector is on again afterwards, but its collections no longer scan the libraries'
    objects; and at the interpreter's exit they are freed without a word (frozen, triton's bindings would report
    each of its objects as leaked)."""
    result = cli("-c", "import gc; from experiments.cli import heavy_import; heavy_import('experiments.run'); "
                       "print(gc.isenabled(), gc.get_freeze_count(), len(gc.get_objects()))")
    assert result.returncode == 0, result.stderr
    enabled, frozen, scanned = result.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 500_000 > int(scanned), (frozen, scanned)
    assert result.stderr == ""


def test_a_runs_own_libraries_are_kept_out_of_the_collectors_scans_and_a_jobs_garbage_is_not_kept():
    """run.import_libraries: a tabular run's data module (scikit-learn, skops) and MLflow's SQL store are imported
    as the libraries are, before the run builds anything; and such a later import collects first, so that a cycle
    left by an earlier job (a trainer and its model) is freed, not frozen with the libraries."""
    result = cli("-c", "import gc, sys, weakref\n"
                       "from experiments.api import compose_config\n"
                       "from experiments.run import import_libraries\n"
                       "config = compose_config(['data=house_prices'])\n"
                       "class Job: pass\n"
                       "job = Job(); job.cycle = job; left = weakref.ref(job); del job\n"
                       "import_libraries(config)\n"
                       "gc.collect()\n"
                       "scanned = {id(o) for o in gc.get_objects()}\n"
                       "modules = [sys.modules[m] for m in ('experiments.data.tabular', 'skops.io._trusted_types', "
                       "'mlflow.store.tracking.sqlalchemy_store')]\n"
                       "print(left() is None, [id(vars(m)) in scanned for m in modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "True [False, False, False]", result.stdout


def test_cfg_job_shows_composed_config_with_the_dataset_choosing_its_loss():
    result = cli("-m", "experiments", "--cfg", "job", "data=xor", "optimizer=sgd", "optimizer.lr=0.3")
    config = yaml.safe_load(result.stdout)
    assert config["data"]["_target_"] == "experiments.data.points.xor"
    assert config["loss"]["_target_"] == "torch.nn.CrossEntropyLoss"
    assert config["optimizer"] == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.3,
                                   "momentum": 0.0, "weight_decay": 0.0}
    override = yaml.safe_load(cli("-m", "experiments", "--cfg", "job", "data=xor", "loss=mse").stdout)
    assert override["loss"]["_target_"] == "torch.nn.MSELoss"


def test_a_preset_sets_values_of_the_primary_config_and_the_command_line_still_wins():
    preset = yaml.safe_load(cli("-m", "experiments", "--cfg", "job", "experiment=mnist_one_epoch_99").stdout)
    assert preset["objective"]["metric"] == "train/loss"  # not the primary's val/loss: it holds no images out
    chosen = yaml.safe_load(cli("-m", "experiments", "--cfg", "job", "experiment=mnist_one_epoch_99",
                                "objective.metric=test/loss").stdout)
    assert chosen["objective"]["metric"] == "test/loss"


def test_unknown_option_is_one_line_naming_the_available_options():
    result = cli("-m", "experiments", "data=nope")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "data/nope" in lines[0]
    options = lines[0].split("available data options:")[1]
    assert {"circle", "diagonal", "xor", "mnist"} <= {option.strip() for option in options.split(",")}


@pytest.mark.parametrize("args", [["scheduler=null"], ["-m", "seed=1,2", "scheduler=null,constant"]],
                         ids=["run", "sweep"])
def test_a_config_group_set_to_null_is_one_line_naming_its_options(tmp_path, args):
    # Hydra's ValueError, with its traceback; the sweep's after its parent run opened
    result = cli("-m", "experiments", *args, "data=xor", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {args[-1]}: a config group takes one of its options, not null; leave the override out for the "
        "group's default, or choose one of the available scheduler options: constant, one_cycle"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


# Hydra's "Key 'model' is not in struct" where a run reads the group (~optimizer: an interpolation's error)
@pytest.mark.parametrize("args, options", [
    (["~model"], "cnn, halves_layers, layers, lenet, lenet_layers, linear, mean_baseline, mlp, resnet18"),
    (["~data"], "ames, circle, csv, diagonal, fashion_mnist, house_prices, mnist, mnist_3v7, mnist_csv, mnist_halves, "
                "xor"),
    (["~metrics"], "accuracy, binary_accuracy, mse, regression"),
    (["-m", "seed=1,2", "~tracking"], "local, server"),
], ids=["model", "data", "metrics", "tracking-sweep"])
def test_removing_a_config_group_a_run_needs_is_one_line_naming_its_options(tmp_path, args, options):
    result = cli("-m", "experiments", *args, cwd=tmp_path)
    assert result.returncode == 2
    group = args[-1].removeprefix("~")
    assert result.stderr.strip().splitlines() == [
        f"error: ~{group}: a run needs this config group, which cannot be removed; leave the override out for the "
        f"group's default, or choose one of the available {group} options: {options}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_wrong_value_type_is_one_line():
    result = cli("-m", "experiments", "optimizer.lr=abc")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and "optimizer.lr=abc" in lines[0] and "float" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


CALLBACKS = ("set its keys one by one (trainer.callbacks.<key>=...: stop_on_divergence, last_checkpoint, "
             "random_states); trainer.callbacks.<key>=null turns one off, trainer.callbacks=null all of them")


@pytest.mark.parametrize("override, expected", [
    # an AttributeError traceback
    ("trainer.callbacks=abc", f"expected a config like the default, got the text 'abc'; {CALLBACKS}"),
    # the same, for objective.metric=val/accuracy
    ("objective=val/accuracy", "expected a config like the default, got the text 'val/accuracy'; set its keys one by "
                               "one (objective.<key>=...: metric, direction)"),
    # Hydra's "Cannot merge DictConfig with ListConfig", for no callbacks
    ("trainer.callbacks=[]", f"expected a config like the default, got a list; {CALLBACKS}"),
    # Hydra's "Cannot instantiate config of type bool"
    ("progress=true", "the progress reports are on by default, a config of their own; leave the override out for them "
                      "(progress.interval=<seconds> between lines where no terminal shows the bar), or turn them off "
                      "with progress=false"),
], ids=["text", "objective", "list", "true"])
def test_a_value_for_a_config_is_one_line_saying_how_to_set_it(tmp_path, override, expected):
    result = cli("-m", "experiments", "data=xor", override, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {override}: {expected}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_unknown_key_is_one_line():
    result = cli("-m", "experiments", "optimizer.lrr=0.1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Could not override 'optimizer.lrr'. To append to your config use +optimizer.lrr=0.1 "
        "(Key 'lrr' is not in struct)"], result.stderr


def test_a_value_the_config_leaves_to_the_user_is_one_line_naming_it(tmp_path):
    result = cli("-m", "experiments", "data=csv", "data.path=houses.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.target has no value: set it on the command line (data.target=...)"], result.stderr


def test_model_that_does_not_fit_the_targets_fails_before_training(tmp_path):
    result = cli("-m", "experiments", "data=xor", "loss=bce_with_logits", *QUIET, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not fit the data" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("overrides, expected", [
    (["model=layers", "model.forward=x.flatten.hidden.relu"],  # no output layer: 32 outputs, which MSE broadcasts
     "the model and loss do not fit the data: the loss MSELoss compares each output with its target, but their shapes "
     "differ (outputs (10, 32), targets (10, 1) torch.float32 (sign encoding)); make the model's last layer give the "
     "data's 1 output(s) per sample"),
    (["data=mnist", "data.limit=300", "data.batch_size=10", "loss=mse"],  # 10 outputs against one class number
     "the model and loss do not fit the data: the loss MSELoss compares each output with its target, but their shapes "
     "differ (outputs (10, 10), targets (10,) torch.int64 (index encoding)); use loss=cross_entropy, or "
     "data.targets=onehot"),
    (["data=xor", "+metrics.acc2={_target_:torchmetrics.Accuracy,task:binary}"],  # fails at an epoch's end
     "metrics.acc2 does not fit the data (outputs (4, 2), targets (4,) torch.int64 (index encoding)): Predictions and "
     "targets are expected to have the same shape, but got torch.Size([4, 2]) and torch.Size([4]); change it, or drop "
     "it with metrics.acc2=null"),
], ids=["outputs-broadcast", "index-targets-broadcast", "metric"])
def test_a_loss_or_metric_whose_shapes_do_not_fit_the_data_is_refused_before_a_run_opens(tmp_path, overrides,
                                                                                        expected):
    # each case in this process (refusal); the command's one line on stderr: the next test
    assert refusal([*overrides, "trainer.max_epochs=2", *QUIET]) == expected
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store"


def test_a_loss_or_metric_whose_shapes_do_not_fit_the_data_is_one_line_before_a_run_opens(tmp_path):
    # a metric's, which would fail at an epoch's end
    result = cli("-m", "experiments", "data=xor", "+metrics.acc2={_target_:torchmetrics.Accuracy,task:binary}",
                 "trainer.max_epochs=2", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: metrics.acc2 does not fit the data (outputs (4, 2), targets (4,)"), line
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("overrides, expected", [
    (["loss=cross_entropy"],  # circle's one output of ±1: a loss of 0 that never learns
     "the loss CrossEntropyLoss takes class numbers or class probabilities (the softmax of the one output other "
     "targets have is 1 whatever it is: the loss would be 0, nothing learn), not sign targets; use data.targets=index "
     "or onehot, or another loss"),
    (["loss=bce_with_logits"],  # circle's -1 targets are no probabilities
     "the loss BCEWithLogitsLoss takes 0/1 targets, not sign targets; use data.targets=binary or onehot, or another "
     "loss"),
], ids=["cross_entropy-sign", "bce_with_logits-sign"])
def test_a_loss_that_cannot_learn_the_target_encoding_is_one_line_before_a_run_opens(tmp_path, overrides, expected):
    result = cli("-m", "experiments", *overrides, "trainer.max_epochs=2", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: the model and loss do not fit the data: {expected}"], \
        result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_accuracy_of_binary_targets_follows_the_loss_on_logits(tmp_path):
    from experiments.api import run_experiment

    # metrics=binary_accuracy's rule (a logit above 0), beside metrics=accuracy's
    result = run_experiment(["loss=bce_with_logits", "data.targets=binary", "data.batch_size=50",
                             "trainer.max_epochs=15", "+metrics.logit_accuracy={_target_:experiments.metrics.accuracy,"
                             "_partial_:true,encoding:binary,threshold:0.0}", *QUIET])
    for stage in ("train", "val"):
        assert result.metrics[f"{stage}/accuracy"] == result.metrics[f"{stage}/logit_accuracy"]
    assert result.metrics["val/accuracy"] > 0.8


def test_user_config_folder_on_the_search_path(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "wide.yaml").write_text(
        "defaults:\n  - mlp\n  - _self_\nhidden_sizes: [128]\n"
    )
    result = cli("-m", "experiments", "--cfg", "job", "model=wide", f"hydra.searchpath=[file://{tmp_path}/my_conf]",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["hidden_sizes"] == [128]


def test_wheel_carries_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("experiments-*.whl"))).namelist()
    for config in ("config.yaml", "data/circle.yaml", "model/mlp.yaml", "optimizer/adam.yaml", "tracking/local.yaml"):
        assert f"experiments/conf/{config}" in names


def test_default_run_trains_circle_tracks_it_in_mlflow_and_prints_results(tmp_path, store):
    result = cli("-m", "experiments", *QUIET, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "circle · mlp · 50 epochs" in result.stdout and "mlflow ui --backend-store-uri" in result.stdout

    (experiment,) = [e for e in store.search_experiments() if e.name == "experiments"]
    (run,) = store.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id in result.stdout
    assert run.data.metrics["val/accuracy"] >= 0.95
    printed_val_accuracy = float(re.search(r"accuracy\s*│\s*[\d.]+\s*│\s*([\d.]+)", result.stdout).group(1))
    assert abs(printed_val_accuracy - run.data.metrics["val/accuracy"]) < 1e-3

    params = run.data.params
    assert params["optimizer.lr"] == "0.002" and params["data.n_points"] == "1000"
    assert params["model.hidden_sizes"] == "[32, 32]" and params["trainer.max_epochs"] == "50"
    for key in ("train/loss", "val/loss", "train/accuracy", "val/accuracy"):
        history = store.get_metric_history(run.info.run_id, key)
        assert len(history) == 50, key
    val_loss = [m.value for m in store.get_metric_history(run.info.run_id, "val/loss")]
    assert val_loss[-1] < val_loss[0]
    assert run.data.metrics["time/fit_seconds"] > 0
    assert run.data.metrics["time/samples_per_second"] > 0

    artifacts = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    config = yaml.safe_load(open(store.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
    assert config["model"]["hidden_sizes"] == [32, 32]
    assert config["tracking"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"


PHASES = ("the OneCycleLR schedule cannot split a run of {} optimizer steps into its phases; change "
          "scheduler.pct_start, train for more steps or use scheduler=constant")
RUN_LENGTH = ("scheduler.{} does not apply: the run gives OneCycleLR its total_steps from its epochs and batches ({} "
              "optimizer steps here); remove it, and set the run's length with trainer.max_epochs or trainer.max_steps")


# XOR's 4 points are one step an epoch
@pytest.mark.parametrize("overrides, expected", [
    (["trainer.max_epochs=4"], PHASES.format(4)),  # its warm-up of 0.25 * 4 steps ends where it starts
    (["trainer.max_epochs=5", "+scheduler.three_phase=true", "scheduler.pct_start=0.6"],
     PHASES.format(5)),  # its last phase ends where it starts: found at the last step, in fit
    (["trainer.max_epochs=1", "+scheduler.anneal_strategy=foo"],
     "torch's OneCycleLR refuses the scheduler options (max_lr=0.002, pct_start=0.25, anneal_strategy=foo): "
     "anneal_strategy must be one of 'cos' or 'linear', instead got foo; change the one it names"),
    (["trainer.max_epochs=1", "+scheduler.pct_strat=0.3"],
     "scheduler.pct_strat is not an option of torch.optim.lr_scheduler.OneCycleLR; did you mean scheduler.pct_start?"),
    # the run's own length replaced them without a word
    (["trainer.max_epochs=8", "+scheduler.total_steps=100"], RUN_LENGTH.format("total_steps", 8)),
    (["trainer.max_epochs=8", "+scheduler.epochs=8"], RUN_LENGTH.format("epochs", 8)),
], ids=["too-short", "three-phase-last-step", "bad-value", "misspelt", "total-steps", "epochs"])
def test_scheduler_options_torch_refuses_are_refused_in_its_words_before_a_run_opens(tmp_path, overrides, expected):
    # each case in this process (refusal); the command's one line on stderr: the next test
    assert refusal(["data=xor", *overrides, *QUIET]) == expected
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store"


def test_scheduler_options_torch_refuses_are_one_line_before_a_run_opens(tmp_path):
    # found at the last step, in fit
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=5", "+scheduler.three_phase=true",
                 "scheduler.pct_start=0.6", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {PHASES.format(5)}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


# ~scheduler, Hydra's way to leave a group out, was refused as "Key 'scheduler' is not in struct"
@pytest.mark.parametrize("no_schedule", ["scheduler=constant", "~scheduler"])
def test_a_run_too_short_for_one_cycle_trains_with_a_constant_rate(tmp_path, no_schedule):
    assert cli("-m", "experiments", "data=xor", "trainer.max_epochs=4", no_schedule, *QUIET,
               cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 is out of range: expected an integer ≥ 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is out of range: expected an integer ≥ 1"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is out of range: expected a number > 0"),
    ("data.batch_size=0", "data.batch_size=0 is out of range: expected an integer ≥ 1"),
    ("model.hidden_sizes=[0]", "model.hidden_sizes=[0] is out of range: expected each item to be an integer ≥ 1"),
    ("model.hidden_sizes=3",  # Hydra's line for the model's TypeError: object of type 'int' has no len()
     "model.hidden_sizes=3 is out of range: expected a list, each item an integer ≥ 1"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5 is out of range: expected a number in [0, 1)"),
    ("+scheduler.div_factor=0", "scheduler.div_factor=0 is out of range: expected a number > 0"),
    # a TypeError traceback at the first epoch's end, the run FAILED
    ("trainer.callbacks.stop_on_divergence.divergence_threshold=abc",
     "trainer.callbacks.stop_on_divergence.divergence_threshold=abc is out of range: expected a number, or null (no "
     "threshold)"),
    ("trainer.callbacks.last_checkpoint.interval=-1",  # -1, no checkpoint? one at every epoch's end
     "trainer.callbacks.last_checkpoint.interval=-1 is out of range: expected a number ≥ 0"),
    ("trainer.deterministic=maybe",  # taken for true, without torch's deterministic algorithms
     "trainer.deterministic=maybe is out of range: expected one of true (deterministic algorithms only: an error "
     "where an operation has none), warn (deterministic algorithms where there are, a warning where not), false "
     "(torch's fastest algorithms), null (torch's setting as it is)"),
    ("tracking.server_wait=-1", "tracking.server_wait=-1 is out of range: expected a number ≥ 0"),
])
def test_a_value_out_of_range_is_one_line_before_anything_runs(tmp_path, override, expected):
    result = cli("-m", "experiments", override, *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {expected}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_rejected_input_leaves_a_folder_that_was_there_before(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for folder in ("mine", "."):
        result = cli("-m", "experiments", f"hydra.run.dir={folder}", "trainer.max_epochs=0", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


NOT_WRITABLE = "{}={}: the folder cannot be written (Not a directory); set {} to a folder you can write to"


@pytest.mark.parametrize("args, expected", [
    # Hydra's NotADirectoryError traceback
    (["hydra.run.dir=taken/run"], NOT_WRITABLE.format("hydra.run.dir", "taken/run", "hydra.run.dir")),
    # the same error's line, exit status 1, once the store was created
    (["-m", "seed=0,1", "hydra.sweep.dir=taken/sweep"],
     "the sweep cannot start: " + NOT_WRITABLE.format("hydra.sweep.dir", "taken/sweep", "hydra.sweep.dir")),
    # its traceback at the first checkpoint, the run FAILED
    (["trainer.callbacks.last_checkpoint.dirpath=taken/checkpoints", "trainer.callbacks.last_checkpoint.interval=0"],
     NOT_WRITABLE.format("trainer.callbacks.last_checkpoint.dirpath", "{tmp_path}/taken/checkpoints",
                         "trainer.callbacks.last_checkpoint.dirpath")),
], ids=["run", "sweep", "checkpoints"])
def test_a_folder_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path, args, expected):
    (tmp_path / "taken").write_text("a file where the folder would be")
    result = cli("-m", "experiments", *args, "data=xor", "trainer.max_epochs=1", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {expected.format(tmp_path=tmp_path)}"], result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["taken"], "nothing ran: no MLflow store, no output folder"


def test_an_unknown_flag_or_flags_hydra_refuses_together_are_one_line_naming_the_command():
    hint = "python -m experiments --help lists the options (key=value), --hydra-help the flags"
    for args, error in [(["--foo"], "unrecognized arguments: --foo"),
                        (["--cfg", "jobs"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', "
                                            "'all')"),
                        # Hydra's ValueError, with its traceback
                        (["-m", "--cfg", "hydra"], "--multirun and --cfg cannot be used together: give one of --run, "
                                                   "--multirun, --cfg, --info, --shell-completion at a time"),
                        (["--resolve"], "--resolve goes with --cfg or --help only"),
                        # argparse takes one run of overrides: the second was "unrecognized arguments: seed=1,2"
                        (["data=xor", "-m", "seed=1,2"], "seed=1,2 after a flag that follows other overrides: give "
                                                         "the flags first, then all the overrides (python -m "
                                                         "experiments -m key=value ...)")]:
        result = cli("-m", "experiments", *args)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"error: {error}; {hint}"], result.stderr


@pytest.mark.parametrize("accelerator, expected", [
    ("gpu", "trainer.accelerator=gpu: Lightning finds no gpu device on this machine; "
            "use trainer.accelerator=auto or cpu"),
    ("gpux", "trainer.accelerator=gpux is not an accelerator Lightning knows (auto, cpu, cuda, gpu, mps, tpu); "
             "use trainer.accelerator=auto or cpu"),
], ids=["no-gpu", "misspelt"])
def test_an_accelerator_lightning_cannot_use_is_one_line_naming_the_ones_it_can(tmp_path, accelerator, expected):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a machine with a GPU: Lightning can use more than the CPU")
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", f"trainer.accelerator={accelerator}", *QUIET,
                 cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {expected}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("devices, words", [
    ("0", "`Trainer(devices=0)` value is not a valid input using cpu accelerator"),
    # a TypeError of Lightning's: Hydra's "Error in call to target 'lightning.pytorch.trainer.trainer.Trainer'" line
    ("null", "`devices` selected with `CPUAccelerator` should be an int > 0"),
])
def test_another_trainer_option_lightning_refuses_is_one_line_in_its_words(tmp_path, devices, words):
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                 f"trainer.devices={devices}", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: Lightning's Trainer refuses the trainer options: {words}; change the one it names"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("override, expected", [
    ("+trainer.gradient_clip_val=1.0",
     "trainer.gradient_clip_val=1.0 does not apply: the task optimizes manually (each Lightning step takes a whole "
     "epoch's batches), and Lightning clips gradients only in automatic optimization; remove it (a callback's "
     "on_before_optimizer_step hook can clip them instead)"),
    ("+trainer.accumulate_grad_batches=2",
     "trainer.accumulate_grad_batches=2 does not apply: the task optimizes manually (each Lightning step takes a whole "
     "epoch's batches), and Lightning accumulates gradients only in automatic optimization; remove it, and for steps "
     "of as many samples multiply data.batch_size by 2"),
    # Lightning converts the batches it is handed, the task takes an epoch's: a dtype RuntimeError at the first step
    ("+trainer.precision=64",
     "trainer.precision=64-true does not apply: it converts the model's weights but not the task's batches, which stay "
     "float32; use 32-true (the default), or bf16-mixed for lower precision"),
], ids=["gradient_clip_val", "accumulate_grad_batches", "precision"])
def test_a_trainer_option_the_task_does_not_follow_is_one_line_before_a_run_opens(tmp_path, override, expected):
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", override, *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {expected}"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("override, expected", [
    ("+optimizer.betas=[2,0.9]", "betas=[2, 0.9]): Invalid beta parameter at index 0: 2; change the one it names"),
], ids=["bad-value"])
def test_optimizer_options_torch_refuses_are_one_line_before_a_run_opens(tmp_path, override, expected):
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", override, *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: torch's Adam refuses the optimizer options (lr=0.002, weight_decay=0.0, fused=True, {expected}"
    ], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("overrides, expected", [
    (["model=mlp", "data=mnist_halves", "data.limit=200"],
     "model MLP takes one input, but the data gives 2 ((1, 14, 28), (1, 14, 28)); use a model declared with as many "
     "inputs, such as model=halves_layers"),
    (["model.init=foo"], "model.init=foo is not an initialisation; choose one of default, zeros, normal"),
    (["model.activation=foo"], "model.activation=foo is not an activation; choose one of relu, tanh, sigmoid, softmax"),
    (["model=linear", "model.hidden_sizes=[3]"],  # said what, not how to fix it
     "model.activation lists 0 activations for 1 hidden layers; give one for them all (model.activation=relu) or a "
     "list of one per layer"),
    (["data.targets=foo"], "data.targets=foo is not a target encoding; choose one of index, onehot, sign, binary"),
    (["data=xor", "data.targets=null"],  # said data.targets=None
     "data.targets=null is not a target encoding; choose one of index, onehot, sign, binary"),
    # the data's TypeError or ValueError in Hydra's words, naming no option
    (["data=mnist", "paths.data_dir=null"],
     "data.root=null: the images are read from (and downloaded to) a folder; leave paths.data_dir and data.root out "
     "for EXPERIMENTS_DATA_DIR (else ./data), or set paths.data_dir to a folder"),
    (["data=mnist_csv", "data.path=null"],
     "data.path=null: the images are read from a CSV file; point data.path at an MNIST-style CSV"),
    (["data=csv", "data.path=null", "data.target=price"],
     "data.path=null: the data is read from a CSV file; point data.path at one"),
    (["data=mnist", "data.index_range=[5,3]"],  # said "data.val_size=0.08333 leaves no training images out of 0"
     "data.index_range=[5, 3]: expected [start, stop] with start below stop, the training images start to stop - 1"),
    (["data=xor", "data.val_fraction=0.9"],  # no training points: a RuntimeError traceback
     "data.val_fraction=0.9 of 4 points leaves none to train on; lower it (0 validates on the training points)"),
    (["+trainer.max_epoch=1"], "trainer.max_epoch is not an option of lightning.Trainer; did you mean "
                               "trainer.max_epochs?"),
    (["data=xor", "+model.foo=1"], "model.foo is not an option of experiments.models.mlp.MLP; remove it, or use one "
                                   "of its options: hidden_sizes, activation, output_activation, init, init_std"),
    (["data=xor", "+model.hidden_size=[3]"], "model.hidden_size is not an option of experiments.models.mlp.MLP; did "
                                             "you mean model.hidden_sizes?"),
    (["data=xor", "+loss.reductio=sum"],
     "loss.reductio is not an option of torch.nn.CrossEntropyLoss; did you mean loss.reduction?"),
    (["data=xor", "data.targets=binary", "loss=mnist_loss", "+loss.foo=1"],  # a function: checked at its first call
     "loss.foo is not an option of experiments.losses.mnist_loss; it takes none: remove it"),
    (["data=xor", "+optimizer.beta=0.9"],
     "optimizer.beta is not an option of torch.optim.adam.Adam; did you mean optimizer.betas?"),
    # passed on to the data module (**loader): its options are the config's
    (["data=xor", "+data.foo=1"], "data.foo is not an option of experiments.data.points.xor; remove it, or use one "
                                  "of its options: targets, val_fraction, batch_size, shuffle, seed"),
    (["data=xor", "+metrics.accuracy.treshold=0.5"],
     "metrics.accuracy.treshold is not an option of experiments.metrics.accuracy; did you mean "
     "metrics.accuracy.threshold?"),
    # a torchmetrics Metric refuses them with a ValueError of its own: a traceback where the preset's r2 made it a
    # partial, Hydra's words otherwise
    (["data=xor", "metrics=regression", "+metrics.r2={_target_:torchmetrics.R2Score,adjustd:1}"],
     "metrics.r2.adjustd is not an option of torchmetrics.R2Score; did you mean metrics.r2.adjusted?"),
    (["data=xor", "+metrics.mse={_target_:torchmetrics.MeanSquaredError,foo:1}"],
     "metrics.mse.foo is not an option of torchmetrics.MeanSquaredError; remove it, or use one of its options: "
     "squared, num_outputs, compute_on_cpu, dist_sync_on_step, process_group, dist_sync_fn, distributed_available_fn, "
     "sync_on_compute, compute_with_cache"),
], ids=["two-inputs", "init", "activation", "activations", "targets", "targets-null", "data-dir-null",
        "mnist-csv-path-null", "csv-path-null", "index-range", "no-training-points", "trainer-typo", "model-option", "model-typo", "loss-typo",
        "loss-function", "optimizer-typo", "data-option", "metric-typo", "torchmetrics-typo", "torchmetrics-option"])
def test_a_value_a_model_data_or_trainer_refuses_is_refused_naming_the_option_before_a_run_opens(tmp_path, overrides,
                                                                                                   expected):
    # each case in this process (refusal); the command's one line on stderr: the next test
    assert refusal([*overrides, "trainer.max_epochs=1", *QUIET]) == expected
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store"


def test_a_value_a_model_data_or_trainer_refuses_is_one_line_naming_the_option(tmp_path):
    result = cli("-m", "experiments", "data=xor", "+model.hidden_size=[3]", "trainer.max_epochs=1", *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.hidden_size is not an option of experiments.models.mlp.MLP; did you mean model.hidden_sizes?"
    ], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_values_are_checked_in_the_python_api_and_in_predict(tmp_path):
    from experiments.api import run_experiment
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.limit=0 is out of range: expected an integer ≥ 1, or null"):
        run_experiment(["data=mnist", "data.limit=0"])
    result = cli("-m", "experiments.predict", "checkpoint=model.pt", "batch_size=0", cwd=tmp_path)
    assert result.returncode == 2 and "batch_size=0 is out of range" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "no output folder"
