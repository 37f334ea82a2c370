"""Lightning callbacks the trainer config adds (`trainer.callbacks` in conf/trainer/default.yaml)."""
import random
import sys
import time

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from experiments import errors
from experiments.errors import Diverged


class StopOnDivergence(EarlyStopping):
    """Stop at the end of the first epoch whose training loss is not finite (or passes
    `divergence_threshold`), as an error: the run ends FAILED with one line.

    Lightning's EarlyStopping(check_finite=True) finds the epoch; on its own it would end the run as
    a normal, finished one, so its reason is raised here. Its patience is unlimited: no other stop.
    """

    def __init__(self, monitor: str = "train/loss", divergence_threshold: float | None = None):
        super().__init__(monitor=monitor, patience=sys.maxsize, check_finite=True,
                         divergence_threshold=divergence_threshold, check_on_train_epoch_end=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.stopping_reason in (EarlyStoppingReason.NON_FINITE_METRIC, EarlyStoppingReason.DIVERGENCE_THRESHOLD):
            raise self.error(float(trainer.callback_metrics[self.monitor]), trainer.current_epoch, trainer.max_epochs)

    def diverged(self, values: torch.Tensor) -> torch.Tensor:
        """Which of several runs' values of the monitored metric (one per job of a vectorised group,
        experiments/vectorized.py) end their run, by EarlyStopping's own criteria for these two reasons."""
        stop = ~torch.isfinite(values)
        if self.divergence_threshold is not None:
            stop |= self.monitor_op(-values, -self.divergence_threshold)
        return stop

    def error(self, value: float, epoch: int, max_epochs: int) -> Diverged:
        """The run's error: `value` of the monitored metric in `epoch` (counted from 0, as Lightning counts), named as
        the progress lines name it (`epoch 2/3`)."""
        limit = "not finite" if not torch.isfinite(torch.tensor(value)) else (
            f"past trainer.callbacks' divergence_threshold {self.divergence_threshold:g}")
        of = f"/{max_epochs}" if max_epochs > 0 else ""  # -1: epochs unlimited (trainer.max_steps stops the run)
        return Diverged(f"training diverged: {self.monitor} = {value:g} at epoch {epoch + 1}{of} is {limit}; "
                        "try a lower optimizer.lr")


class RandomStates(Callback):
    """Python's, NumPy's and torch's global random generators, saved in each checkpoint and restored on
    resume, so that a resumed run draws what the uninterrupted run would (dropout, random init of lazy
    layers). Lightning's checkpoint holds them only for its own fault-tolerant loops, not by default."""

    def state_dict(self) -> dict:
        # NumPy's key as a tensor: checkpoints load with weights_only, which refuses NumPy arrays
        name, key, position, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": (name, torch.from_numpy(key.astype(np.int64)), position, has_gauss, gauss),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        name, key, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint of the training state, saved at the end of an epoch once `interval`
    seconds have passed since the last one: a stop loses at most that much training. Saved every epoch,
    the checkpoint and the metrics sent with it (tracking.EpochLogger) cost more than an epoch of
    REFERENCE.md A2 trains."""

    def __init__(self, interval: float, **options):
        # at the end of a training epoch whatever the validation schedule: by default ModelCheckpoint saves after
        # validation instead where it runs less often than every epoch, so a run validating only at its end
        # (REFERENCE.md A1's and A2's presets) would keep nothing to resume from
        super().__init__(save_on_train_epoch_end=True, **options)
        self.interval = interval

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # counted from the start of training, as Lightning's own train_time_interval is: counted from the
        # trainer's creation, the set-up between (opening the MLflow run, seconds where its store is new) made
        # the first epoch save one at once: two checkpoints in REFERENCE.md A1's 1.1 s fit instead of one
        self.saved_at = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # every process decides as the first does: saving a checkpoint waits for all of them
        if trainer.strategy.broadcast(time.monotonic() - self.saved_at >= self.interval):
            super().on_train_epoch_end(trainer, pl_module)
            self.saved_at = time.monotonic()
            errors.checkpoint_saved = True  # a job requeued after its time limit continues from here
