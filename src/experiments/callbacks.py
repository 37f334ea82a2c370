"""Lightning callbacks the trainer config adds (`trainer.callbacks` in conf/trainer/default.yaml)."""
import sys

from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

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
            value = float(trainer.callback_metrics[self.monitor])
            limit = "not finite" if self.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC else (
                f"past trainer.callbacks' divergence_threshold {self.divergence_threshold:g}")
            raise Diverged(f"training diverged: {self.monitor} = {value:g} at epoch {trainer.current_epoch} is "
                           f"{limit}; try a lower optimizer.lr")
