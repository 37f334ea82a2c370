"""MLflow tracking: one MLflow run per experiment run, read by Lightning's MLFlowLogger for the
per-epoch metrics, and by MLflow's own API for params, config, timings and the model."""
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import mlflow
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from experiments import store
from experiments.cli import error_line, keep_run_folder, start_folder
from experiments.errors import Requeued, ServerLost, Stopped, stops_held_back, stops_kept
from experiments.resume import CHECKPOINT, Interrupted
from experiments.task import apply


def flatten(config: DictConfig) -> dict[str, object]:
    """The resolved config as `group.key` params, named as on the command line (`optimizer.lr`)."""
    return pd.json_normalize(OmegaConf.to_container(config, resolve=True), sep=".").iloc[0].to_dict()


def log_config(config: DictConfig) -> None:
    """Record `config` in the active run: each value a param, the whole as config.yaml (which resume reads)."""
    mlflow.log_params(flatten(config))
    mlflow.log_text(OmegaConf.to_yaml(config, resolve=True), "config.yaml")


FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RETRY_SECONDS = 30  # the longest wait between two tries to send to a lost server


@contextmanager
def failing_fast() -> Iterator[None]:
    """MLflow's HTTP requests tried once, with a short timeout: by default MLflow retries a server that does not
    answer for minutes, during which training would stand still (the metrics not sent are kept instead)."""
    with store.environment_restored(*FAIL_FAST):
        os.environ.update(FAIL_FAST)
        yield


class EpochLogger(MLFlowLogger):
    """Lightning's MLflow logger, sending the epochs' metrics to the run at most once a second.

    Each epoch sent on its own cost more than a whole epoch of REFERENCE.md A2 trains: some 10 ms waiting
    for its SQLite commit, and still 1 ms through MLflow's asynchronous queue. The metrics held back are
    sent before a checkpoint is written (`save`, which the Task calls) and when the logger is finalized,
    which Lightning does when training ends, however it ends.
    Finalizing leaves the run open: the run's context (start_run) ends it once its records are complete.
    A metric is recorded once a step: the training and validation ends of an epoch both log `epoch` at
    the same step, and sent in two batches it made two rows. In a resumed run, values at steps the run
    recorded before it stopped (`recorded_steps`, the last step per metric) are not sent again: the
    epochs after its last checkpoint train again.

    A tracking server lost during training does not stop it: the metrics it does not take are kept and
    sent again later (after 1, 2, 4, ... up to RETRY_SECONDS s) and by `send_all` once training ends. At each
    checkpoint they are also written to `unsent_file`, beside it, which resuming the run sends.
    """

    def __init__(self, *args, recorded_steps: dict[str, int] | None = None, interval: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded_steps, self.interval = dict(recorded_steps or {}), interval  # updated as metrics are logged
        self.pending, self.sent = {}, time.monotonic()
        self.unsent: list = []  # mlflow Metric objects a lost server did not take, timestamped when first sent
        self.unsent_file: Path | None = None
        self.lost = False  # whether the server did not take the last send
        self.wait = self.retry_after = 0.0  # while lost: seconds between tries, and when the next may be

    def log_metrics(self, metrics, step=None) -> None:
        new = {key: value for key, value in metrics.items() if step is None or step > self.recorded_steps.get(key, -1)}
        if step is not None:
            self.recorded_steps |= dict.fromkeys(new, step)
        self.pending.setdefault(step, {}).update(new)
        if time.monotonic() - self.sent >= self.interval:
            self.flush()

    def flush(self, retry_now: bool = False) -> bool:
        """Send the metrics held back, in one batch (MLflow splits it at its limit); whether all are sent.
        While the server is lost, a send is tried again only once its wait has passed, or when `retry_now`."""
        from mlflow.entities import Metric

        self.sent, timestamp = time.monotonic(), int(time.time() * 1000)
        self.unsent += [Metric(key, float(value), timestamp, step or 0)
                        for step, values in self.pending.items() for key, value in values.items()]
        self.pending = {}
        if not self.unsent or (self.lost and not retry_now and self.sent < self.retry_after):
            return not self.unsent
        try:
            with failing_fast():
                self.experiment.log_batch(self.run_id, metrics=self.unsent)
        except MlflowException:
            if not store.is_server(self._tracking_uri):
                raise
            if not self.lost:
                print(f"warning: the MLflow tracking server {self._tracking_uri} does not answer; training goes on, "
                      "its metrics are kept and sent when the server is back", file=sys.stderr)
            self.wait = min(2 * self.wait, RETRY_SECONDS) if self.lost else self.interval
            self.lost, self.retry_after = True, self.sent + self.wait
            return False
        if self.lost:
            print(f"the MLflow tracking server {self._tracking_uri} is back: {len(self.unsent)} metric values "
                  "held back are sent", file=sys.stderr)
        self.unsent, self.lost = [], False
        self.keep_unsent()
        return True

    def keep_unsent(self) -> None:
        """Write the metrics not sent to `unsent_file` (removed once all are sent)."""
        if self.unsent_file is None:
            return
        if self.unsent:
            self.unsent_file.parent.mkdir(parents=True, exist_ok=True)
            self.unsent_file.write_text(json.dumps([[m.key, m.value, m.timestamp, m.step] for m in self.unsent]))
        else:
            self.unsent_file.unlink(missing_ok=True)

    def send_all(self, timeout: float) -> None:
        """Send every metric held back, with a lost server given up to `timeout` seconds to come back; if it
        does not, keep them in `unsent_file` and raise ServerLost, saying how to send them later."""
        deadline = time.monotonic() + timeout
        if self.flush(retry_now=True) and not store.unreachable(self._tracking_uri):
            return
        self.lost = True
        print(f"the MLflow tracking server {self._tracking_uri} does not answer; waiting up to {timeout:g} s "
              "(tracking.server_wait) for it to record the run", file=sys.stderr)
        while time.monotonic() < deadline:
            time.sleep(1)
            if self.flush(retry_now=True) and not store.unreachable(self._tracking_uri, timeout=1):
                self.lost = False
                return
        self.keep_unsent()
        where = f"its metrics not sent are in {self.unsent_file}, its" if self.unsent else "its"
        raise ServerLost(f"the MLflow tracking server {self._tracking_uri} did not come back within {timeout:g} s "
                         f"(tracking.server_wait); the run {self.run_id} is not complete there, {where} training "
                         f"state in {self.unsent_file.parent}: once the server is back, record the rest with "
                         f"{resume_command(self.run_id, self._tracking_uri)}")

    def save(self) -> None:
        """Send the metrics held back, keeping those a lost server does not take in `unsent_file`. The Task calls
        this before a checkpoint is written: a resumed run continues after its checkpoint's epoch, so the epochs
        before it must all be in the store, or in the file beside it that resuming sends."""
        self.flush()
        self.keep_unsent()

    def finalize(self, status: str = "success") -> None:
        self.flush()
        self.keep_unsent()


@contextmanager
def start_run(config: DictConfig, run_name: str, choices: dict[str, str | None],
              parent_run_id: str | None = None, tags: dict[str, str] | None = None,
              resumed: Interrupted | None = None) -> Iterator[MLFlowLogger]:
    """Open a run recording `config`, tagged with the config groups' choices (`choice.data`: mnist, ...) and
    `tags`, nested under `parent_run_id` when given (a sweep's job), or reopen the `resumed` one. It ends
    FINISHED; KILLED when a signal stops the block (with the line that resumes it, for a run tagged with its
    checkpoint folder); FAILED if the block raises, with the error's line as
    its tag `error`; SCHEDULED when SLURM requeued the job, whose next start continues it (resume.requeued_run).
    A signal while MLflow opens or ends the run comes once it has (errors.stops_held_back): stopped midway, MLflow
    left the run RUNNING."""
    tracking = config.tracking
    store.use(tracking.tracking_uri)
    experiment_id = store.experiment_id(tracking.tracking_uri, tracking.experiment_name, start_folder())
    mlflow.set_experiment(experiment_id=experiment_id)
    tags = {f"choice.{group}": str(option) for group, option in choices.items() if not group.startswith("hydra")} | (
        tags or {})
    options = {"experiment_name": tracking.experiment_name, "tracking_uri": tracking.tracking_uri}
    logger = None  # until the run is open
    ending = ExitStack()  # holds a stop back as the run ends FINISHED (below)
    try:
        with stops_held_back("the MLflow run is open, to end it KILLED"):
            if resumed:
                run = mlflow.start_run(run_id=resumed.run_id)
                mlflow.set_tags(tags)
                logger = EpochLogger(run_id=run.info.run_id, recorded_steps=resumed.recorded_steps, **options)
            else:
                run = mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent_run_id)
                logger = EpochLogger(run_id=run.info.run_id, **options)
        keep_run_folder()
        with stops_kept():
            if not resumed:
                log_config(config)
            yield logger
        # Its records complete, a stop from here comes once the run has ended FINISHED: held back from inside the try,
        # where a stop before ends it KILLED, until after mlflow.end_run, which takes the run off its active runs first
        ending.enter_context(stops_held_back(f"run {run.info.run_id} is FINISHED, its records complete"))
    except Requeued:
        end_run("SCHEDULED", logger)
        print(f"run {run.info.run_id} SCHEDULED: SLURM requeued the job, which continues the run from its last "
              "checkpoint when it starts again", file=sys.stderr)
        raise
    except Stopped:
        end_run("KILLED", logger)
        if "checkpoint.dir" in tags:  # else a vectorised group's job, which cannot be resumed: its caller's line says
            ended = "KILLED" if not logger.lost else (  # what to do instead
                "stopped (its tracking server does not answer: the metrics it did not get are kept beside the "
                "checkpoint)")
            if (Path(tags["checkpoint.dir"]) / CHECKPOINT).is_file():
                print(f"run {run.info.run_id} {ended}; continue it from its last checkpoint with: "
                      f"{resume_command(run.info.run_id, tracking.tracking_uri)}", file=sys.stderr)
            else:  # stopped in its first second of training, or trainer=compiled, which saves none while it trains
                print(f"run {run.info.run_id} {ended} before its first checkpoint, so it cannot be continued; run the "
                      "same command again to train it afresh", file=sys.stderr)
        raise
    except BaseException as error:
        if logger is not None:  # else MLflow did not open the run
            end_run("FAILED", logger, {"error": error_line(error)})
        raise
    with ending:
        mlflow.end_run()


def resume_command(run_id: str, tracking_uri: str) -> str:
    """The command that continues an interrupted run, typed in the folder it was started in: it names the run's store
    (a tracking server, another SQLite file) unless that folder's own, where resume= looks by default."""
    if tracking_uri == f"sqlite:///{start_folder()}/mlflow.db":
        return f"python -m experiments resume={run_id}"
    return f"python -m experiments resume={run_id} {shlex.quote(f'tracking.tracking_uri={tracking_uri}')}"


def end_run(status: str, logger: EpochLogger, tags: dict[str, str] | None = None) -> None:
    """End the active run `status`, tagged `tags`, its MLflow model FAILED where a stop cut its logging short (MLflow
    fails it on an error, but leaves it PENDING on a stop). With its tracking server lost, tried once, untagged: the
    run may then stay RUNNING there, as a run whose process died, which resuming continues."""
    logger.lost = logger.lost or bool(store.unreachable(logger._tracking_uri))  # lost since the last metrics
    if not logger.lost:
        if tags:
            mlflow.set_tags(tags)
        # the run's own, from its store (mlflow.last_logged_model looks this process's last up in the current store,
        # which need not hold it: a run of the Python API after one in another store)
        for model in mlflow.search_logged_models(experiment_ids=[mlflow.active_run().info.experiment_id],
                                                 filter_string=f"source_run_id = '{logger.run_id}'",
                                                 output_format="list"):
            if model.status == LoggedModelStatus.PENDING:
                mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        mlflow.end_run(status)
        return
    with failing_fast(), suppress(MlflowException):
        mlflow.end_run(status)  # takes the run off MLflow's active runs, then sends its status


def log_model(model: torch.nn.Module, input_example: torch.Tensor | tuple[torch.Tensor, ...], step: int) -> None:
    """Log the trained model to the active run (MLflow exports it with torch.export), linked to the run's metrics
    at `step`.

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
        step=step,
        signature=infer_signature(signature_inputs, outputs),
        input_example=example,
        # Stating the requirements skips MLflow's slow import scan of the environment.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        # MLflow would load the saved model back to run the example through it, as a check: 0.03 s of a sweep
        # job's 0.3 s of records, for a model that has just computed `outputs` from the same example
        validate_serving_input=False,
    )


def ui_command(tracking_uri: str) -> str:
    """How to see the runs, a command to type (its store's path quoted where it has a space); a tracking server
    serves its own UI at its address."""
    if store.is_server(tracking_uri):
        return tracking_uri
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
