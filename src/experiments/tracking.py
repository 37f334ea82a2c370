"""MLflow tracking: one MLflow run per experiment run, read by Lightning's MLFlowLogger for the
per-epoch metrics, and by MLflow's own API for params, config, timings and the model."""
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from experiments import store
from experiments.cli import error_line
from experiments.errors import Requeued, Stopped
from experiments.resume import Interrupted
from experiments.task import apply


def flatten(config: DictConfig) -> dict[str, object]:
    """The resolved config as `group.key` params, named as on the command line (`optimizer.lr`)."""
    return pd.json_normalize(OmegaConf.to_container(config, resolve=True), sep=".").iloc[0].to_dict()


class EpochLogger(MLFlowLogger):
    """Lightning's MLflow logger, sending the epochs' metrics to the run at most once a second.

    Each epoch sent on its own cost more than a whole epoch of REFERENCE.md A2 trains: some 10 ms waiting
    for its SQLite commit, and still 1 ms through MLflow's asynchronous queue. The metrics held back are
    sent when a checkpoint is saved and when the logger is saved or finalized, which Lightning does when
    training ends, however it ends.
    Finalizing leaves the run open: the run's context (start_run) ends it once its records are complete.
    In a resumed run, values at steps the run recorded before it stopped (`recorded_steps`, the last step
    per metric) are not sent again: the epochs after its last checkpoint train again.
    """

    def __init__(self, *args, recorded_steps: dict[str, int] | None = None, interval: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded_steps, self.interval = recorded_steps or {}, interval
        self.pending, self.sent = {}, time.monotonic()

    def log_metrics(self, metrics, step=None) -> None:
        new = {key: value for key, value in metrics.items() if step is None or step > self.recorded_steps.get(key, -1)}
        self.pending.setdefault(step, {}).update(new)
        if time.monotonic() - self.sent >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Send the metrics held back, in one batch (MLflow splits it at its limit)."""
        from mlflow.entities import Metric

        self.sent, timestamp = time.monotonic(), int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step or 0)
                   for step, values in self.pending.items() for key, value in values.items()]
        self.pending = {}
        if metrics:
            self.experiment.log_batch(self.run_id, metrics=metrics)

    def save(self) -> None:
        self.flush()

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # a resumed run continues from its checkpoint: the epochs before it must all be in the store
        self.flush()

    def finalize(self, status: str = "success") -> None:
        self.flush()


@contextmanager
def start_run(config: DictConfig, run_name: str, choices: dict[str, str | None],
              parent_run_id: str | None = None, tags: dict[str, str] | None = None,
              resumed: Interrupted | None = None) -> Iterator[MLFlowLogger]:
    """Open a run recording `config`, tagged with the config groups' choices (`choice.data`: mnist, ...) and
    `tags`, nested under `parent_run_id` when given (a sweep's job), or reopen the `resumed` one. It ends
    FINISHED; KILLED when a signal stops the block; FAILED if the block raises, with the error's line as
    its tag `error`; SCHEDULED when SLURM requeued the job, whose next start continues it (resume.requeued_run)."""
    tracking = config.tracking
    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.set_experiment(experiment_id=store.experiment_id(tracking.tracking_uri, tracking.experiment_name))
    tags = {f"choice.{group}": str(option) for group, option in choices.items() if not group.startswith("hydra")} | (
        tags or {})
    options = {"experiment_name": tracking.experiment_name, "tracking_uri": tracking.tracking_uri}
    if resumed:
        run = mlflow.start_run(run_id=resumed.run_id)
        mlflow.set_tags(tags)
        logger = EpochLogger(run_id=run.info.run_id, recorded_steps=resumed.recorded_steps, **options)
    else:
        run = mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent_run_id)
        logger = EpochLogger(run_id=run.info.run_id, **options)
    try:
        if not resumed:
            mlflow.log_params(flatten(config))
            mlflow.log_text(OmegaConf.to_yaml(config, resolve=True), "config.yaml")
        yield logger
    except Requeued:
        mlflow.end_run("SCHEDULED")
        print(f"run {run.info.run_id} SCHEDULED: SLURM requeued the job, which continues the run from its last "
              "checkpoint when it starts again", file=sys.stderr)
        raise
    except Stopped:
        mlflow.end_run("KILLED")
        print(f"run {run.info.run_id} KILLED; continue it from its last checkpoint with: "
              f"python -m experiments resume={run.info.run_id}", file=sys.stderr)
        raise
    except BaseException as error:
        mlflow.set_tag("error", error_line(error))
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def log_model(model: torch.nn.Module, input_example: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
    """Log the trained model to the active run (MLflow exports it with torch.export).

    The example needs 2 or more rows: torch.export fixes a batch dimension of size 1. A model with
    several inputs (a tuple) gets a signature of named tensors input_0, input_1, ...; MLflow then
    logs no pyfunc flavour for it (it has none for several inputs): load it with mlflow.pytorch.
    """
    with torch.no_grad():
        outputs = apply(model, input_example).numpy()
    if isinstance(input_example, torch.Tensor):
        example = signature_inputs = input_example.numpy()
    else:
        example = [x.numpy() for x in input_example]
        signature_inputs = {f"input_{i}": array for i, array in enumerate(example)}
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(signature_inputs, outputs),
        input_example=example,
        # Stating the requirements skips MLflow's slow import scan of the environment.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )


def ui_command(tracking_uri: str) -> str:
    """How to see the runs: a tracking server serves its own UI at its address."""
    served = tracking_uri.startswith(("http://", "https://"))
    return tracking_uri if served else f"mlflow ui --backend-store-uri {tracking_uri}"
