"""`python -m experiments resume=<run id>`: continue an interrupted run from its last checkpoint.

Every run saves its full training state at the end of an epoch every second or so (callbacks.LastCheckpoint,
conf/trainer/default.yaml)
in `checkpoints/last.ckpt` of its output folder, and tags its MLflow run with that folder and the process
training it (`checkpoint.dir`, `process.host`, `process.pid`). A run stopped by a signal ends KILLED; one whose
process died (SIGKILL, a crash, a lost machine) stays RUNNING with a process that no longer exists. Either
resumes into the same MLflow run, with the config it was started with. A SLURM job that SLURM stopped and
requeued (errors.requeued_on_signals) continues its run by itself when it starts again (`requeued_run`).
Metrics a lost tracking server did not get are kept beside the checkpoint (UNSENT_METRICS, by
tracking.EpochLogger); resuming sends them first.
"""
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from experiments import store, sweep
from experiments.errors import ConfigError

CHECKPOINT = "last.ckpt"
UNSENT_METRICS = "unsent_metrics.json"  # beside it: metrics a lost tracking server did not get (tracking.EpochLogger)
# The tag of a job trained in a vectorised group, which keeps no checkpoint: the command that runs the job again
RERUN_TAG = "vectorized.rerun_command"


@dataclass
class Interrupted:
    run_id: str
    run_name: str
    config: DictConfig                  # the run's own config, as it started
    checkpoint: Path
    choices: dict[str, str]             # its config groups' options (tags choice.*)
    recorded_steps: dict[str, int]      # each metric's last recorded step: resumed epochs are not logged twice
    metrics: dict[str, float]           # each metric's last recorded value: the final ones of a run stopped after
                                        # its training (its checkpoint at the last epoch), which trains no more


def process_tags(checkpoint_dir: Path) -> dict[str, str]:
    """Where a run keeps its checkpoints and which process trains it (to tell a dead run from a live one)."""
    return {"checkpoint.dir": str(checkpoint_dir), "process.host": socket.gethostname(), "process.pid": str(os.getpid())}


def is_alive(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name still runs (on another machine: assumed so, as it cannot be told)."""
    if tags.get("process.host") != socket.gethostname():
        return "process.host" in tags
    try:
        os.kill(int(tags["process.pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupted_run(config: DictConfig, requeued: bool = False) -> Interrupted:
    """The run `config.resume` names, checked to be resumable, with everything its resumption needs.
    `requeued`: the run of this SLURM job's earlier start, whose process is over whatever its tags say, and which
    trains from the start (into the same run) where it stopped before its first checkpoint."""
    run_id, tracking_uri = config.resume, config.tracking.tracking_uri
    if store.not_created(tracking_uri):  # looking the run up would create it: a refused resume leaves nothing
        raise ConfigError(f"resume={run_id}: there is no MLflow store at {tracking_uri} to find the run in; start the "
                          "command in the folder of the run's mlflow.db, or set tracking.tracking_uri (or "
                          "MLFLOW_TRACKING_URI) to its store")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"resume={run_id}: no such run in the MLflow store {tracking_uri}") from error
    tags = run.data.tags
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume={run_id}: the run finished; there is nothing to resume")
    if run.info.status == "RUNNING" and not requeued and is_alive(tags):
        raise ConfigError(f"resume={run_id}: the run is still training (process {tags.get('process.pid')} on "
                          f"{tags.get('process.host')}); stop it first")
    if RERUN_TAG in tags:
        raise ConfigError(f"resume={run_id}: trained in a vectorised group, which keeps no checkpoint, it cannot be "
                          f"resumed; run it again with: {tags[RERUN_TAG]}")
    checkpoint = Path(tags.get("checkpoint.dir", "")) / CHECKPOINT
    if "checkpoint.dir" not in tags or not (checkpoint.is_file() or requeued):
        raise ConfigError(f"resume={run_id}: no checkpoint at {checkpoint} (one is saved at an epoch's end once a second has passed: "
                          "the run stopped before its first, or the folder was removed); start it again instead")
    unsent = checkpoint.parent / UNSENT_METRICS
    if unsent.is_file():
        from mlflow.entities import Metric

        client.log_batch(run_id, metrics=[Metric(*metric) for metric in json.loads(unsent.read_text())])
        unsent.unlink()
        run = client.get_run(run_id)
    saved = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tempfile.mkdtemp()))
    saved.resume = run_id
    recorded = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
    choices = {key.removeprefix("choice."): value for key, value in tags.items() if key.startswith("choice.")}
    return Interrupted(run_id, run.info.run_name, saved, checkpoint, choices, recorded, run.data.metrics)


def requeued_run(config: DictConfig) -> Interrupted | None:
    """In a sweep's SLURM job that SLURM started again (requeued: SLURM_RESTART_COUNT), the child run its earlier
    start opened and did not finish, to continue; None otherwise."""
    if not int(os.environ.get("SLURM_RESTART_COUNT", "0")) or (job := sweep.current_job()) is None:
        return None
    run = sweep.child_run(mlflow.MlflowClient(config.tracking.tracking_uri), job)
    if run is None or run.info.status == "FINISHED":
        return None
    return interrupted_run(OmegaConf.merge(config, {"resume": run.info.run_id}), requeued=True)
