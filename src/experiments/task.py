"""The Lightning task: a model, a loss, metrics and an optimizer, all built from config."""
import inspect
from collections.abc import Callable

import lightning as L
import torch


def apply(model: torch.nn.Module, inputs) -> torch.Tensor:
    """`model(inputs)`; several inputs (a tuple) go to the model as separate arguments."""
    return model(inputs) if isinstance(inputs, torch.Tensor) else model(*inputs)


class Task(L.LightningModule):
    """Trains `model` on `loss` and logs `<stage>/loss` and `<stage>/<metric>` once per epoch."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Callable,
        metrics: dict[str, Callable],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        super().__init__()
        self.model, self.loss, self.metrics, self.optimizer = model, loss, metrics, optimizer
        self.scheduler = scheduler

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)

    def _step(self, batch, stage: str) -> torch.Tensor:
        inputs, targets = batch
        outputs = apply(self.model, inputs)
        loss = self.loss(outputs, targets)
        values = {f"{stage}/loss": loss}
        with torch.no_grad():
            values |= {f"{stage}/{name}": metric(outputs, targets) for name, metric in self.metrics.items()}
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer(self.model.parameters())
        if self.scheduler is None:
            return optimizer
        options = {}
        if "total_steps" in inspect.signature(self.scheduler.func).parameters:  # one-cycle needs the run's length
            options["total_steps"] = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler(optimizer, **options)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
