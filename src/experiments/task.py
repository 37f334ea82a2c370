"""The Lightning task: a model, a loss, metrics and an optimizer, all built from config."""
import functools
import inspect
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torchmetrics import Metric

from experiments import errors
from experiments.data.tensors import take
from experiments.models.target_scale import TargetScaled

STAGES = ("train", "val", "test")
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


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


def plain_partial(function: Callable) -> Callable:
    """A Hydra `_partial_` function (a metric, a loss) as a plain functools.partial of the same function and
    arguments. Hydra's partials check its target policy again at every call, 0.2 ms each: ten times an
    accuracy over an epoch of REFERENCE.md E2. Their targets were checked when the config was instantiated."""
    if isinstance(function, functools.partial) and type(function) is not functools.partial:
        return functools.partial(function.func, *function.args, **function.keywords)
    return function


def one_device_full_precision(trainer: L.Trainer) -> bool:
    """Whether `trainer` trains in one process on one device at full precision."""
    return type(trainer.precision_plugin) is Precision and isinstance(trainer.strategy, SingleDeviceStrategy)


def count_step(optimizer: LightningOptimizer) -> None:
    """Count an optimizer step taken without Lightning's optimizer wrapper, as the wrapper's step does (its
    manual-optimization loop's progress, from which trainer.global_step is read, and the profiler's span)."""
    optimizer._on_before_step()
    optimizer._on_after_step()


class EpochOutputs:
    """What a stage's steps produced this epoch (detached outputs, targets, losses, batch sizes), from which
    the epoch's loss and metrics are computed at its end."""

    def __init__(self):
        self.outputs, self.targets, self.losses, self.sizes = [], [], [], []

    def add(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        self.outputs.append(outputs.detach())
        self.targets.append(targets)
        self.losses.append(loss.detach())
        self.sizes.append(len(targets))

    @classmethod
    def of_epoch(cls, outputs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, batch_size: int):
        """An epoch's record from its outputs and targets in batch order and its batches' losses (trainer=compiled)."""
        record = cls()
        record.outputs, record.targets, record.losses = [outputs], [targets], list(losses.unbind())
        record.sizes = [min(batch_size, len(targets) - start) for start in range(0, len(targets), batch_size)]
        return record


class Task(L.LightningModule):
    """Trains `model` on `loss` and logs `<stage>/loss` and `<stage>/<metric>` once per epoch.

    A step gets a list of batches (in a single process the whole epoch's, see data/tensors.py) and trains on
    them in turn with manual optimization: the arithmetic of Lightning's automatic optimization (zero_grad,
    forward, backward, optimizer step, then the scheduler's step), through Lightning's optimizer wrapper and
    manual_backward (or loss.backward() where that does the same, see on_fit_start), so that precision
    plugins, DDP and the hooks of callbacks still apply.
    Lightning's per-step work then runs once an epoch: on REFERENCE.md E2's 50,000 tiny steps it cost 20
    times the training itself (scripts/benchmark.py compares with a plain PyTorch loop).

    The epoch's values are computed at its end from the outputs of its steps (epoch_values): `<stage>/loss` is the
    mean of the batches' losses weighted by their sizes (Lightning's epoch mean), and each metric is computed over
    all the epoch's samples at once (RMSE and R² are not means over batches).
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
        self.automatic_optimization = False
        self.model, self.loss, self.optimizer, self.scheduler = model, plain_partial(loss), optimizer, scheduler
        self.metrics = {name: plain_partial(metric) for name, metric in metrics.items() if not isinstance(metric, Metric)}
        # Submodules, so they move to the model's device; "<stage>_metrics" as "train" is a Module method.
        self.epoch_metrics = torch.nn.ModuleDict({
            f"{stage}_metrics": torch.nn.ModuleDict(
                {name: metric.clone() for name, metric in metrics.items() if isinstance(metric, Metric)})
            for stage in STAGES
        })
        self.epoch_outputs = {stage: EpochOutputs() for stage in STAGES}
        # the epochs and optimizer steps trainer=compiled trained outside Lightning's loop (compiled.py), which the
        # epoch and step a test's metrics are logged at count as Lightning's own (last_step)
        self.compiled_epochs = self.compiled_steps = 0

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)

    def on_fit_start(self):
        """Choose how to run the backward pass and the optimizer's step. Lightning's manual_backward and its
        optimizer wrapper's step call the precision plugin, the strategy and five hooks around loss.backward()
        and optimizer.step(); on REFERENCE.md E2's 50,000 steps the wrapper's step alone cost about 3 s of a
        16 s fit. They do nothing in one process at full precision when no callback (and not this module)
        implements one of those hooks, so then the step calls loss.backward() and the optimizer's step itself."""
        self.plain_steps = self.steps_can_be_plain()

    def steps_can_be_plain(self) -> bool:
        """Whether Lightning's backward and optimizer step come to loss.backward() and the optimizer's step (see
        on_fit_start): one process at full precision, and no step hooks."""
        trainer = self.trainer
        return (
            one_device_full_precision(trainer)
            and not any(is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks
                        for hook in STEP_HOOKS)
            and not any(is_overridden(hook, self, L.LightningModule) for hook in STEP_HOOKS)
        )

    def losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss recorded, in the target's units, and the loss optimised: the same, except for a model that
        scales its outputs to the target's units, which is optimised on the standardised scale
        (models/target_scale.py)."""
        loss = self.loss(outputs, targets)
        if isinstance(self.model, TargetScaled):
            return loss, self.loss(self.model.standardise(outputs), self.model.standardise(targets))
        return loss, loss

    def training_step(self, batches, batch_idx):
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        max_steps, record = self.trainer.max_steps, self.epoch_outputs["train"]
        for inputs, targets in batches:
            if errors.signal_stop is not None:  # a stop dropped on its way out (errors.signal_handler)
                errors.raise_stop_again()
            outputs = apply(self.model, inputs)
            loss, optimised = self.losses(outputs, targets)
            optimizer.zero_grad()
            if self.plain_steps:  # what manual_backward and the wrapper's step come to here (on_fit_start)
                optimised.backward()
                optimizer.optimizer.step()
                count_step(optimizer)
            else:
                self.manual_backward(optimised)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            record.add(outputs, targets, loss)
            if max_steps != -1 and self.trainer.global_step == max_steps:  # Lightning checks it between its steps only
                break

    def evaluate(self, batches, record: EpochOutputs) -> None:
        """Add the model's outputs and losses for `batches` to `record` (an evaluation: the caller turns off gradients)."""
        for inputs, targets in batches:
            if errors.signal_stop is not None:  # a stop dropped on its way out (errors.signal_handler)
                errors.raise_stop_again()
            outputs = apply(self.model, inputs)
            record.add(outputs, targets, self.loss(outputs, targets))

    def validation_step(self, batches, batch_idx):
        self.evaluate(batches, self.epoch_outputs["val"])

    def test_step(self, batches, batch_idx):
        self.evaluate(batches, self.epoch_outputs["test"])

    def epoch_values(self, stage: str, record: EpochOutputs) -> dict[str, torch.Tensor]:
        """The loss and metrics of `stage` (`<stage>/loss`, `<stage>/<metric>`) over an epoch's `record`, over every
        process's samples: the loss is the mean of the batches' losses weighted by their sizes (Lightning's epoch
        mean), a metric function is applied to all the epoch's outputs at once, and a torchmetrics Metric is updated
        with this process's outputs and computed over every process's (its own synchronisation)."""
        local = [torch.cat(record.outputs), torch.cat(record.targets)] if record.sizes else []
        loss = (torch.stack(record.losses) * torch.tensor(record.sizes, device=self.device)).sum() if record.sizes else 0
        outputs, targets, loss, count = self.every_process(local, loss, sum(record.sizes))
        values = {f"{stage}/loss": loss / count}
        for name, metric in self.metrics.items():
            values[f"{stage}/{name}"] = metric(outputs, targets)
        for name, metric in self.epoch_metrics[f"{stage}_metrics"].items():
            if local:
                metric.update(*local)
            values[f"{stage}/{name}"] = metric.compute()
            metric.reset()
        return values

    def every_process(self, local: list[torch.Tensor], loss: torch.Tensor | float, count: int) -> tuple:
        """The epoch's outputs and targets (`local`: none where a process had no samples), loss sum and sample count
        of every process of a DDP run together; this process's in a single one. Through all_gather_object, as the
        processes' evaluation shards may differ in size, where Lightning's all_gather needs equal shapes."""
        if self.trainer.world_size == 1:
            return *local, loss, count
        gathered = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, ([tensor.cpu() for tensor in local], float(loss), count))
        shards = [shard for shard, _, _ in gathered if shard]
        return (torch.cat([outputs for outputs, _ in shards]), torch.cat([targets for _, targets in shards]),
                torch.tensor(sum(loss for _, loss, _ in gathered)), sum(count for _, _, count in gathered))

    def record_values(self, values: dict[str, torch.Tensor], epoch: int, step: int) -> None:
        """Hand an epoch's final values to the callbacks and the logger, at `epoch` and `step`.

        The values are final, the same in every process: they go to the callbacks (callback_metrics, which
        EarlyStopping and ModelCheckpoint read) and to the logger (the first process's) directly. Through
        self.log, whose collection updates a torchmetrics Metric per value, they cost 0.9 ms a stage an
        epoch: a fifth of REFERENCE.md A2's fit."""
        self.trainer.callback_metrics.update(values)
        if self.logger is not None:
            self.logger.log_metrics({name: float(value) for name, value in values.items()} | {"epoch": epoch},
                                    step=step)

    @property
    def last_step(self) -> int:
        """The last optimizer step taken, counted from 0 as Lightning counts them (0 before any): the step an epoch's
        values are logged at, and a test's (or a validation's outside fitting), which evaluates the model of that
        step. Lightning logs a test one step later; here it shares the last epoch's step, so that a run's final
        values are all at one step, where its MLflow model links them (run.record)."""
        return max(self.trainer.global_step + self.compiled_steps - 1, 0)

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's loss and metrics of `stage` over every process's batches, then start afresh."""
        record, self.epoch_outputs[stage] = self.epoch_outputs[stage], EpochOutputs()
        self.record_values(self.epoch_values(stage, record), self.current_epoch + self.compiled_epochs, self.last_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Called before the checkpoint is written. A run resumes after its checkpoint's epoch, so the metrics held
        # back until now (tracking.EpochLogger) go to the store first: sent after the checkpoint was written, a kill
        # in between lost that epoch's metrics for good.
        if self.logger is not None:
            self.logger.save()

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = self.optimizer(self.model.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = self.schedule(optimizer, optimizer_steps(self.trainer, self.trainer.datamodule))
        # stepped after each optimizer step by training_step (manual optimization steps no scheduler itself)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    @property
    def schedule_takes_run_length(self) -> bool:
        """Whether the schedule is given the run's length in optimizer steps, as its total_steps (one-cycle's)."""
        return "total_steps" in inspect.signature(self.scheduler.func).parameters

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int,
                 **options) -> torch.optim.lr_scheduler.LRScheduler:
        """The configured learning-rate schedule of `optimizer` for a run of `total_steps` optimizer steps, given
        `options` besides the config's. Checked before a run opens (run.check_scheduler), built again in fit."""
        if self.schedule_takes_run_length:
            options["total_steps"] = total_steps
        return self.scheduler(optimizer, **options)


def optimizer_steps(trainer: L.Trainer, datamodule) -> int:
    """The optimizer steps of a run of `trainer` on `datamodule`: a step per training batch, up to trainer.max_steps
    (Lightning's estimated_stepping_batches counts its own steps, each of which takes a list of batches here). Known
    before fit, so that the schedule is checked before a run opens."""
    per_epoch = datamodule.steps_per_epoch(trainer.world_size)
    steps = per_epoch * trainer.max_epochs if trainer.max_epochs not in (None, -1) else trainer.max_steps
    return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)
