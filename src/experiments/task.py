"""The Lightning task: a model, a loss, metrics and an optimizer, all built from config."""
import inspect
from collections.abc import Callable

import lightning as L
import torch
from torchmetrics import Metric

from experiments.data.tensors import take
from experiments.errors import ConfigError
from experiments.models.target_scale import TargetScaled

STAGES = ("train", "val", "test")


def apply(model: torch.nn.Module, inputs) -> torch.Tensor:
    """`model(inputs)`; several inputs (a tuple) go to the model as separate arguments."""
    return model(inputs) if isinstance(inputs, torch.Tensor) else model(*inputs)


def predict(
    model: torch.nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int = 1000
) -> torch.Tensor:
    """The outputs of a trained model for `inputs` (normalised like its training data; a tuple of tensors
    for a model with several inputs), computed in eval mode, without gradients, `batch_size` rows at a time."""
    training = model.training
    model.eval()
    n = len(inputs if isinstance(inputs, torch.Tensor) else inputs[0])
    with torch.no_grad():
        outputs = torch.cat([apply(model, take(inputs, slice(i, i + batch_size))) for i in range(0, n, batch_size)])
    model.train(training)
    return outputs


class Task(L.LightningModule):
    """Trains `model` on `loss` and logs `<stage>/loss` and `<stage>/<metric>` once per epoch.

    A metric is a function, whose per-batch values Lightning averages over the epoch, or a torchmetrics
    Metric, which accumulates the whole epoch (as RMSE and R² need); each stage gets its own copy of it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Callable,
        metrics: dict[str, Callable | Metric],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        super().__init__()
        self.model, self.loss, self.optimizer, self.scheduler = model, loss, optimizer, scheduler
        self.metrics = {name: metric for name, metric in metrics.items() if not isinstance(metric, Metric)}
        # Submodules, so they move to the model's device; "<stage>_metrics" as "train" is a Module method.
        self.epoch_metrics = torch.nn.ModuleDict({
            f"{stage}_metrics": torch.nn.ModuleDict(
                {name: metric.clone() for name, metric in metrics.items() if isinstance(metric, Metric)})
            for stage in STAGES
        })

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)

    def _step(self, batch, stage: str) -> torch.Tensor:
        inputs, targets = batch
        outputs = apply(self.model, inputs)
        loss = self.loss(outputs, targets)
        values = {f"{stage}/loss": loss}
        with torch.no_grad():
            values |= {f"{stage}/{name}": metric(outputs, targets) for name, metric in self.metrics.items()}
            for metric in self.epoch_metrics[f"{stage}_metrics"].values():
                metric.update(outputs, targets)
        # sync_dist: in a run of several processes (DDP), the epoch's value is over every process's batches
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=len(targets), sync_dist=True)
        if stage == "train" and isinstance(self.model, TargetScaled):
            # logged in the target's units, optimised on the standardised scale (models/target_scale.py)
            return self.loss(self.model.standardise(outputs), self.model.standardise(targets))
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log the epoch's value of each Metric, then reset it for the next epoch.

        Computed here rather than by passing the Metric to `self.log` in every step, which Lightning
        supports but which cost about 1 ms a metric a step when measured on CPU: some 40 s more for
        the 8,000 steps of REFERENCE.md A2.
        """
        metrics = self.epoch_metrics[f"{stage}_metrics"]
        # compute() already combines every DDP process's state: sync_dist averages equal values, and
        # spares Lightning's warning that epoch values are not synchronised
        self.log_dict({f"{stage}/{name}": metric.compute() for name, metric in metrics.items()}, sync_dist=True)
        for metric in metrics.values():
            metric.reset()

    def on_train_epoch_end(self):
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

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
        try:
            scheduler = self.scheduler(optimizer, **options)
        except ZeroDivisionError:  # OneCycleLR's phases round to zero steps on very short runs
            raise ConfigError(f"the {self.scheduler.func.__name__} schedule cannot split a run of "
                              f"{self.trainer.estimated_stepping_batches} optimizer steps into its phases; "
                              "train for more steps or use scheduler=constant") from None
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
