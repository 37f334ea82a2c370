"""Training progress per epoch: a bar on a terminal, a line now and then in a pipe or a file.

Lightning's own bars count batches, and a run of this project may train a whole epoch in one
Lightning step; this one counts epochs, so it says the same whatever a step holds.
"""
import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm

log = logging.getLogger(__name__)

SHOWN = {"train/loss": "loss", "val/loss": "val_loss"}  # the metrics shown, and their names on the bar


class EpochReport:
    """Epochs as they end, with their losses, time elapsed and left: a tqdm bar when stderr is a terminal; else a log
    line (the console and the job's log file) after the first epoch, then at most every `interval` seconds, and after
    the last. `first`: the epochs done before (a resumed run's); `total`: None where the run has no epoch limit."""

    def __init__(self, interval: float, first: int, total: int | None, label: str = ""):
        self.interval, self.first, self.reported, self.total = interval, first, first, total
        self.label = label  # before each line, and the bar's description: a vectorised group's jobs
        self.start = self.last_line = time.monotonic()
        self.bar = (tqdm(total=total, initial=first, unit="epoch", dynamic_ncols=True, leave=False, file=sys.stderr,
                         desc=label or None) if sys.stderr.isatty() else None)

    def update(self, epoch: int, losses: dict[str, str], last: bool) -> None:
        """Epochs up to `epoch` (counted from 1) done, with `losses` by metric name, as text."""
        epochs, self.reported = epoch - self.reported, epoch
        if self.bar is not None:
            self.bar.set_postfix({SHOWN[name]: value for name, value in losses.items()}, refresh=False)
            self.bar.update(epochs)
            if last:  # drawn whatever tqdm's redraw interval says: a fast run's last update may come within it
                self.bar.refresh()
            return
        now = time.monotonic()
        if not (last or self.reported == self.first + 1 or now - self.last_line >= self.interval):
            return
        self.last_line = now
        elapsed = now - self.start
        done = f"{self.label}{' · ' if self.label else ''}epoch {self.reported}" + (
            f"/{self.total}" if self.total else "")
        seconds_left = elapsed / (self.reported - self.first) * (self.total - self.reported) if self.total else 0
        left = f" · {tqdm.format_interval(seconds_left)} left" if self.total and not last else ""
        shown = "".join(f" · {name} {value}" for name, value in losses.items())
        log.info(f"{done}{shown} · {tqdm.format_interval(elapsed)} elapsed{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochProgress(ProgressBar):
    """A run's EpochReport, as Lightning's progress bar callback."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.enabled = True
        self.report: EpochReport | None = None  # while a run trains, in its first process, enabled

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if self.enabled and trainer.is_global_zero:  # a resumed run starts where it stopped
            self.report = EpochReport(self.interval, trainer.current_epoch, total)

    # A finished epoch's metrics are complete only after every `on_train_epoch_end` hook (Lightning reduces
    # them then), so an epoch is reported when the next starts, and the last one when training ends.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.update(trainer, last=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.update(trainer, last=True)
        if self.report is not None:
            self.report.close()
            self.report = None

    def update(self, trainer, last: bool) -> None:
        """Report the epochs finished since the last report, if any."""
        if self.report is not None and trainer.current_epoch > self.report.reported:
            self.report.update(trainer.current_epoch, {name: f"{float(trainer.callback_metrics[name]):.4g}"
                                                       for name in SHOWN if name in trainer.callback_metrics}, last)
