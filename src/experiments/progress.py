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


class EpochProgress(ProgressBar):
    """Epoch, losses, time elapsed and left: a tqdm bar when stderr is a terminal; else a log line (the
    console and the job's log file) after the first epoch, then at most every `interval` seconds, and
    after the last."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.enabled = True
        self.bar: tqdm | None = None
        self.reported = 0  # epochs reported so far

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.last_line = time.monotonic()
        self.first = self.reported = trainer.current_epoch  # a resumed run starts where it stopped
        self.total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if self.enabled and trainer.is_global_zero and sys.stderr.isatty():
            self.bar = tqdm(total=self.total, initial=self.reported, unit="epoch",
                            dynamic_ncols=True, leave=False, file=sys.stderr)

    # A finished epoch's metrics are complete only after every `on_train_epoch_end` hook (Lightning reduces
    # them then), so an epoch is reported when the next starts, and the last one when training ends.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > self.reported:
            self.report(trainer, last=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch > self.reported:
            self.report(trainer, last=True)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def report(self, trainer, last: bool) -> None:
        epochs, self.reported = trainer.current_epoch - self.reported, trainer.current_epoch
        if not self.enabled or not trainer.is_global_zero:
            return
        metrics = {name: float(trainer.callback_metrics[name]) for name in SHOWN if name in trainer.callback_metrics}
        if self.bar is not None:
            self.bar.set_postfix({SHOWN[name]: f"{value:.4g}" for name, value in metrics.items()}, refresh=False)
            self.bar.update(epochs)
            if last:  # drawn whatever tqdm's redraw interval says: a fast run's last update may come within it
                self.bar.refresh()
            return
        now = time.monotonic()
        if not (last or self.reported == self.first + 1 or now - self.last_line >= self.interval):
            return
        self.last_line = now
        elapsed = now - self.start
        done = f"epoch {self.reported}" + (f"/{self.total}" if self.total else "")
        seconds_left = elapsed / (self.reported - self.first) * (self.total - self.reported) if self.total else 0
        left = f" · {tqdm.format_interval(seconds_left)} left" if self.total and not last else ""
        losses = "".join(f" · {name} {value:.4g}" for name, value in metrics.items())
        log.info(f"{done}{losses} · {tqdm.format_interval(elapsed)} elapsed{left}")
