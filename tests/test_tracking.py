"""What a run leaves in MLflow: where the store is, the model, FINISHED or FAILED."""
import mlflow
import numpy as np
import pytest
import torch

from conftest import QUIET, cli, linked_metrics, logged_model
from test_tabular import write_csv
from experiments.api import run_experiment
from experiments.task import Task


def test_logged_model_loads_back_and_predicts_like_the_trained_one(store):
    result = run_experiment(["data=circle", "trainer.max_epochs=2", *QUIET])
    inputs = torch.rand(5, 2)
    loaded = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    with torch.no_grad():
        expected = result.model(inputs)
    assert torch.allclose(loaded(inputs), expected, atol=1e-6)
    predicted = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model").predict(inputs.numpy())
    assert np.allclose(np.asarray(predicted), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("data", ["circle", "csv"])
def test_the_logged_model_carries_the_runs_final_metrics(store, tmp_path, data):
    """The MLflow model's metrics (its page in the MLflow UI, the experiment's Models tab) are the run's final
    values: its last epoch's, its test's, its timings and diagnostics; not its first epoch's. A CSV's run logs its
    model through its preprocessing (MLflow's pyfunc flavour), with a test split and the least-squares baseline."""
    rows = ["data=csv", f"data.path={write_csv(tmp_path / 'rows.csv')}", "data.target=price"]
    result = run_experiment([*(rows if data == "csv" else ["data=circle"]), "trainer.max_epochs=3", *QUIET])
    run = store.get_run(result.run_id)
    assert linked_metrics(logged_model(store, run)) == run.data.metrics
    assert {"train/loss", "val/loss", "epoch", "time/fit_seconds"} <= run.data.metrics.keys()
    if data == "csv":
        assert {"test/r2", "closed_form/test/r2"} <= run.data.metrics.keys()
    losses = [metric.value for metric in store.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 3 and len(set(losses)) == 3, "three epochs, each its own loss"


@pytest.mark.parametrize("every", [3, 6])
def test_the_loss_curves_draw_the_validation_at_the_epochs_it_ran(store, every):
    from experiments import figures, plots

    result = run_experiment(["data=circle", "trainer.max_epochs=6", f"+trainer.check_val_every_n_epoch={every}",
                             *QUIET])
    figure, (ax,) = figures.new_figure(6, 4)
    figures.draw_loss_curves(ax, plots.loss_history(result.run_id))
    train, val = ax.lines
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(val.get_xdata()) == list(range(every, 7, every))
    recorded = [m.value for m in sorted(store.get_metric_history(result.run_id, "val/loss"), key=lambda m: m.step)]
    assert list(val.get_ydata()) == recorded
    assert val.get_marker() == "o"  # a single point shows


def test_a_run_that_raises_is_marked_failed(store, monkeypatch):
    def broken_step(self, batch, batch_idx):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(Task, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        run_experiment(["data=xor", *QUIET])
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("given", ["config", "environment"])
def test_a_folder_for_a_store_is_one_line_before_anything_trains(isolated, given):
    # MLflow 3 refuses its file store with a paragraph, from inside the run's set-up, after the model summary
    folder = "file:///tmp/mlruns" if given == "config" else "./mlruns"
    overrides = [f"tracking.tracking_uri={folder}"] if given == "config" else []
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", *overrides, *QUIET,
                 env={"MLFLOW_TRACKING_URI": folder} if given == "environment" else None)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.tracking_uri={folder} is a folder, MLflow's file store, which MLflow 3 "
                           "no longer opens; use a SQLite file"), line
    assert "MLFLOW_ALLOW_FILE_STORE=true" in line
    assert result.stdout == ""  # nothing ran: no model summary, no run
    assert not (isolated / "mlruns").exists()


@pytest.mark.parametrize("uri, expected", [
    ("localhost:5000", "tracking.tracking_uri=localhost:5000 is a tracking server's address without its scheme; use "
                       "http://localhost:5000 (or https://)"),
    ("sqlite://mlflow.db", "tracking.tracking_uri=sqlite://mlflow.db: a SQLite store is sqlite:/// and its file's "
                           "path (sqlite:///mlflow.db, from the folder the command starts in, or "
                           "sqlite:////<absolute path>)"),
    # called a folder, MLflow's file store
    ("databricks", "tracking.tracking_uri=databricks is a Databricks workspace, which this project does not support "
                   "(MLflow would need your Databricks credentials, and a workspace path as tracking.experiment_name); "
                   "use a SQLite file (sqlite:///<folder>/mlflow.db, the default) or a tracking server "
                   "(http://<host>:5000)"),
], ids=["no-scheme", "two-slashes", "databricks"])
def test_a_store_address_mistyped_is_one_line_before_anything_runs(isolated, uri, expected):
    # MLflow's or SQLAlchemy's traceback once the run was built, leaving its output folder
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", f"tracking.tracking_uri={uri}", *QUIET)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {expected}, in tracking.tracking_uri or MLFLOW_TRACKING_URI"], result.stderr
    assert list(isolated.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


@pytest.mark.parametrize("name, expected", [
    ("", "the MLflow experiment needs a name; give one, or leave it out for the default (experiments)"),
    ("null", "the MLflow experiment needs a name; give one, or leave it out for the default (experiments)"),
    ("2024", "the MLflow experiment's name is text; quote it (tracking.experiment_name='2024')"),
], ids=["empty", "null", "number"])
def test_an_experiment_name_mlflow_refuses_is_one_line_before_anything_runs(isolated, name, expected):
    # MLflow's traceback once the run was built, after it had created the store
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=1", f"tracking.experiment_name={name}", *QUIET)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: tracking.experiment_name={name}: {expected}"], result.stderr
    assert list(isolated.iterdir()) == [], "nothing ran: no MLflow store, no output folder"


def test_tracking_uri_from_environment_and_from_config(tmp_path, monkeypatch):
    env_store = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_store}")
    run_experiment(["data=xor", "trainer.max_epochs=1", *QUIET])
    assert env_store.exists() and not (tmp_path / "mlflow.db").exists()
    config_store = tmp_path / "configured.db"
    run_experiment(["data=xor", "trainer.max_epochs=1", f"tracking.tracking_uri=sqlite:///{config_store}",
                    "tracking.experiment_name=mine", *QUIET])
    client = mlflow.MlflowClient(f"sqlite:///{config_store}")
    assert len(client.search_runs([client.get_experiment_by_name("mine").experiment_id])) == 1


def test_a_store_given_to_one_run_is_not_the_default_of_the_next_in_the_same_process(store, isolated):
    """MLflow sets MLFLOW_TRACKING_URI to the store it is pointed at, which the config reads as the user's choice:
    a later run from Python must still go to its own default, the folder's mlflow.db."""
    run_experiment(["data=xor", "trainer.max_epochs=1", f"tracking.tracking_uri=sqlite:///{isolated}/given.db", *QUIET])
    run_experiment(["data=xor", "trainer.max_epochs=1", *QUIET])
    assert len(store.search_runs([store.get_experiment_by_name("experiments").experiment_id])) == 1


def test_every_job_of_a_sweep_lands_in_the_one_store(tmp_path, store):
    result = cli("-m", "experiments", "-m", "data=xor", "model=mlp,linear", "trainer.max_epochs=2", *QUIET,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = store.search_runs([store.get_experiment_by_name("experiments").experiment_id],
                             "tags.mlflow.parentRunId != ''")  # the jobs; the sweep's parent run is beside them
    assert sorted(r.data.params["model.hidden_sizes"] for r in runs) == ["[32, 32]", "[]"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert list(tmp_path.glob("multirun/*/*/0/.hydra/config.yaml"))


def test_each_metric_is_recorded_once_an_epoch_whenever_it_is_sent(store, monkeypatch):
    # sent at every log call, so that an epoch's training values and its validation values (both with `epoch`,
    # at the same step) go in separate batches, as they do now and then at the 1-second interval
    from functools import partialmethod

    from experiments.tracking import EpochLogger

    monkeypatch.setattr(EpochLogger, "__init__", partialmethod(EpochLogger.__init__, interval=0.0))
    result = run_experiment(["data=circle", "trainer.max_epochs=3", *QUIET])
    for key in ("epoch", "train/loss", "val/loss", "val/accuracy"):
        history = store.get_metric_history(result.run_id, key)
        assert len(history) == 3, key
        assert len({metric.step for metric in history}) == 3, key
    assert [metric.value for metric in sorted(store.get_metric_history(result.run_id, "epoch"),
                                              key=lambda metric: metric.step)] == [0, 1, 2]
