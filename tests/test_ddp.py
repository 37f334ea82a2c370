"""Lightning's DDP (trainer=ddp), run here as two CPU processes: one MLflow run, each process training
on its own shard of the data, and metrics over the whole of each split."""
import math
import socket

import torch
from hydra.utils import instantiate

from conftest import QUIET, cli, start
from experiments import checkpoint
from experiments.data.tensors import Split, TensorBatches
from experiments.predict import evaluate

DDP_ON_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *QUIET]


def samples_seen(batches: TensorBatches) -> list[int]:
    return [int(i) for inputs, _ in batches.batches() for i in inputs]


def recomputed(store, run_id: str, split: str) -> dict[str, float]:
    """The run's loss and metrics over the whole `split`, from its saved model in this one process, as
    `python -m experiments.predict run_id=... split=...` computes them (tests/test_predict.py runs that command)."""
    saved = checkpoint.read(run_id, None, store.tracking_uri)
    datamodule = instantiate(saved["config"]["data"])
    return evaluate(saved["config"], checkpoint.rebuild(saved), datamodule, split, batch_size=256)[1]


def test_each_process_takes_its_own_shard_and_training_shards_are_equal():
    split = Split(torch.arange(7), torch.zeros(7))
    for shuffle in (True, False):
        train = [TensorBatches(split, 2, shuffle, torch.Generator().manual_seed(0), rank=rank, world_size=2, equal_shards=True)
                 for rank in (0, 1)]
        first, second = samples_seen(train[0]), samples_seen(train[1])
        assert len(first) == len(second) == 4 and train[0].batches_per_epoch == train[1].batches_per_epoch == 2
        assert set(first) | set(second) == set(range(7)) and len(set(first) & set(second)) == 1  # one repeat pads

    val = [samples_seen(TensorBatches(split, 2, False, torch.Generator().manual_seed(0), rank=rank, world_size=2)) for rank in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(7)), "evaluation counts each sample once"


def test_ddp_run_is_one_mlflow_run_with_metrics_over_the_whole_split(isolated, store):
    result = cli("-m", "experiments", *DDP_ON_CPU, "trainer.max_epochs=6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MLflow run ") == 1, "only the first process prints the results"
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["val/accuracy"] > 0.8  # chance: 0.5

    params = run.data.params
    train_points = int(params["data.n_points"]) * (1 - float(params["data.val_fraction"]))
    steps_per_epoch = math.ceil(train_points / 2 / int(params["data.batch_size"]))
    steps = [m.step for m in store.get_metric_history(run.info.run_id, "val/loss")]
    assert len(steps) == 6 and all(b - a == steps_per_epoch for a, b in zip(steps, steps[1:])), \
        "each of the 2 processes takes half of the training points each epoch"

    whole_split = recomputed(store, run.info.run_id, "val")
    for key in ("val/loss", "val/accuracy"):  # the logged values cover both processes' halves of val
        assert abs(whole_split[key] - run.data.metrics[key]) < 1e-4, key


def test_ddp_regression_metrics_are_over_the_whole_split_where_its_shards_differ_in_size(isolated, store):
    """house_prices holds out 101 rows for validation and 101 for the test: 51 go to one process, 50 to the other.
    RMSE and R² are not means of the two halves' values."""
    result = cli("-m", "experiments", *DDP_ON_CPU, "data=house_prices", "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    for split in ("val", "test"):
        whole_split = recomputed(store, run.info.run_id, split)
        assert set(whole_split) == {f"{split}/{name}" for name in ("loss", "mse", "rmse", "mae", "r2")}
        for key, value in whole_split.items():
            assert abs(value - run.data.metrics[key]) <= 1e-4, key


def test_ddp_inside_a_local_multirun_is_refused_in_one_line(isolated, store):
    result = cli("-m", "experiments", "-m", *DDP_ON_CPU, "optimizer.lr=0.1,0.01")
    assert result.returncode == 1
    assert "error: job 0 (optimizer.lr=0.1) failed: trainer=ddp cannot start its processes" in result.stderr
    runs = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert {run.info.status for run in runs} == {"FAILED"}, "the parent and each job's child closed FAILED"
    assert len(runs) == 3 and all(run.data.tags["error"].startswith("trainer=ddp cannot") for run in runs
                                  if "mlflow.parentRunId" in run.data.tags)


def test_ddp_processes_started_by_slurm_make_one_mlflow_run(isolated, store):
    """As under `hydra/launcher=slurm hydra.launcher.tasks_per_node=2`: SLURM starts both processes,
    each told its rank by SLURM's variables, and Lightning starts none."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    slurm = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "experiments", "SLURM_NODELIST": "127.0.0.1",
             "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0", "MASTER_PORT": str(port)}
    processes = [start("-m", "experiments", *DDP_ON_CPU, "trainer.max_epochs=2", "hydra.run.dir=out",
                       env={**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert [stdout.count("MLflow run ") for stdout, _ in outputs] == [1, 0], "the task of rank 0 reports"
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert run.info.status == "FINISHED"
