"""Sweeps: a multirun is one MLflow parent run with a child run per job, summarised on the parent."""
import json

from conftest import QUIET, cli

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


def test_a_single_run_has_no_parent(store):
    result = cli("-m", "experiments", "tracking.run_name=single", *TINY)
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(store)
    assert run.info.run_name == "single" and "mlflow.parentRunId" not in run.data.tags
