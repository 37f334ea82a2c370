"""`trainer=compiled`: the training epochs as compiled programs, run outside Lightning's epoch loop, for small
models on in-memory data.

A step of REFERENCE.md A2 (a linear layer, 32 rows, Adam) is a few microseconds of arithmetic under some
200 of Python and operator dispatch, so even a plain PyTorch loop spends its time on overhead. Here the
Task's whole epoch (each batch sliced out of the split, normalised, the forward pass, the gradient and the
optimizer's own update) is traced once by torch.compile into one graph that Inductor turns into a few fused
kernels: an epoch of A2's 16 steps takes about 0.2 ms, where a plain loop takes 3 ms (scripts/benchmark.py).

Around such an epoch, Lightning's epoch loop (its hooks, the callbacks', progress) and the epoch's records
(its metrics computed and sent to MLflow) took about 1.5 ms more: A2's compiled fit took 0.87 s inside
Lightning's loop, 0.52 s with the loss as its only record. So the epochs run in a plain loop of their own,
keeping each epoch's outputs and losses on the device; their metrics are computed after the last epoch (or
once the kept outputs pass RECORDS_BYTES) through the Task, the same values as in Lightning's loop, and
logged at the steps Lightning logs them at. Lightning still places the model and the data, and runs the
test. What its loop would do and this one does not: no checkpoint during the fit (an interrupted run trains
again from the start) and no progress bar. StopOnDivergence fails the run at the first epoch that diverged,
its metrics logged up to that epoch, as in Lightning's loop; any other callback is refused.

The first epoch compiles (tens of seconds; `time/compile_seconds`, apart from `time/fit_seconds`).
Inductor keeps what it compiled in its cache folder, so a later run of the same shapes compiles in a few
seconds. The compiled epoch unrolls its batches, so compilation grows with their number: this suits
epochs of tens of batches, not thousands.
"""
import inspect
import logging
import os
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from experiments import errors
from experiments.callbacks import LastCheckpoint, RandomStates, StopOnDivergence
from experiments.data.tensors import take
from experiments.errors import ConfigError
from experiments.task import EpochOutputs, Task, one_device_full_precision

log = logging.getLogger(__name__)

# Trainer options this loop follows, or whose effect it leaves out as its docstring says (no checkpoint, no
# progress); the others, e.g. limit_val_batches, it would ignore, and refuses
FOLLOWED = {"_target_", "max_epochs", "max_steps", "check_val_every_n_epoch", "accelerator", "devices", "deterministic",
            "enable_progress_bar", "enable_model_summary", "enable_checkpointing", "num_sanity_val_steps",
            "log_every_n_steps", "callbacks", "compiled"}
# Callbacks whose work this loop does or leaves out (see the module's docstring); any other one is refused
KNOWN_CALLBACKS = (StopOnDivergence, LastCheckpoint, RandomStates, ProgressBar)
RECORDS_BYTES = 256 * 2**20  # the epochs' outputs kept on the device before their metrics are computed


class CompiledEpoch:
    """The Task's training epoch over a split as one compiled function of its inputs, targets and order
    (None: stored order), returning the outputs in batch order and each batch's loss (before its step, as
    the Task's own loop records them). Calls after the first run the compiled program; the first one
    compiles it, and its time is `compile_seconds`."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, normalize, batch_size: int, rows: int):
        model = task.model
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # The optimizer's step without the wrappers of Optimizer.step (profiling hooks, and graph breaks that
        # put the update in a graph of its own): its update, in the epoch's graph
        update = inspect.unwrap(type(optimizer).step)
        # torch's fused update (optimizer.fused, conf/optimizer) is a kernel torch.compile cannot trace into the
        # graph; the update it traces otherwise, Inductor fuses itself
        for group in optimizer.param_groups:
            if group.get("fused"):
                group["fused"] = False

        # inputs of the transformed function, not captured by it, for the forward pass to update in place
        # (batch norm's running statistics), which torch.func allows inputs only
        buffers = dict(model.named_buffers())

        def losses(params, buffers, inputs, targets):
            outputs = torch.func.functional_call(model, (params, buffers),
                                                 inputs if isinstance(inputs, tuple) else (inputs,))
            loss, optimised = task.losses(outputs, targets)
            return optimised, (outputs.detach(), loss.detach())

        gradients = torch.func.grad(losses, has_aux=True)

        def epoch(inputs, targets, order):
            outputs, batch_losses = [], []
            for start in range(0, rows, batch_size):  # batches as TensorBatches cuts them, in the graph
                index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                grads, (batch_outputs, loss) = gradients({name: p.detach() for name, p in self.params.items()},
                                                         buffers, normalize(take(inputs, index)), targets[index])
                for name, p in self.params.items():
                    p.grad.copy_(grads[name])
                with torch.no_grad():
                    update(optimizer)
                outputs.append(batch_outputs)
                batch_losses.append(loss)
            return torch.cat(outputs), torch.stack(batch_losses)

        # Each run's epoch is a new closure of the same code, which Dynamo compiles again (guards on its model and
        # optimizer) and counts as a recompilation: the 9th run in one process (a sweep's jobs in the basic launcher,
        # the Python API) passed its limit of 8 and failed. Earlier runs' programs are not called again.
        torch.compiler.reset()
        self.program = torch.compile(epoch, fullgraph=True)
        self.compile_seconds = None

    def __call__(self, inputs, targets, order):
        # Gradients the program writes in place: a tensor assigned to .grad inside a graph would be a pending
        # mutation of a parameter, which torch.compile cannot keep in the graph.
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.compile_seconds is not None:
            return self.program(inputs, targets, order)
        start = time.perf_counter()
        try:
            result = self.program(inputs, targets, order)
        except torch._dynamo.exc.TorchDynamoException as error:  # raised while tracing or compiling: nothing ran
            detail = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ConfigError(f"trainer=compiled cannot compile this training epoch ({detail.strip()}); "
                              "use trainer=default") from error
        self.compile_seconds = time.perf_counter() - start  # the first epoch's training included: microseconds
        return result


class CompiledFit:
    """Fits a Task with its epochs as CompiledEpoch programs (see the module's docstring).

    `cache_dir`: Inductor's cache of compiled programs (TORCHINDUCTOR_CACHE_DIR); null: torch's own."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir

    @staticmethod
    def check(options: DictConfig, trainer: L.Trainer, task: Task) -> None:
        """Refuse, in one line, what this loop cannot do as Lightning's would: `options` is the trainer config."""
        problems = []
        if not one_device_full_precision(trainer):
            problems.append("one process on one device at full precision")
        if task.scheduler is not None:
            problems.append("a constant learning rate (scheduler=constant)")
        if trainer.max_steps != -1 or (trainer.max_epochs or 0) < 1:
            problems.append("whole epochs (trainer.max_epochs, not trainer.max_steps)")
        other = sorted(set(options) - FOLLOWED)
        if other:
            problems.append(f"none of the trainer options it does not follow ({', '.join(f'trainer.{key}' for key in other)})")
        refused = [type(callback).__name__ for callback in trainer.callbacks if not isinstance(callback, KNOWN_CALLBACKS)]
        if refused:
            problems.append(f"no callback that hooks into Lightning's loop, which it does not run ({', '.join(refused)})")
        if problems:
            raise ConfigError(f"trainer=compiled needs {' and '.join(problems)}; change that or use trainer=default")

    def fit(self, trainer: L.Trainer, task: Task, datamodule) -> float:
        """Train `task` for trainer.max_epochs epochs, validating every check_val_every_n_epoch; log each epoch's
        metrics to the trainer's logger and leave the last ones, with `time/compile_seconds` and
        `time/records_seconds` (the epochs' metrics computed and logged), in trainer.callback_metrics.
        The seconds of the training alone."""
        # Inductor's C++ toolchain looks for CUDA, and says on the console when CUDA's torch finds no CUDA runtime
        # (a machine without a GPU): nothing to do about it for a program compiled for the CPU
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        if self.cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir)
        log.info("trainer=compiled: the first epoch compiles the training program (tens of seconds the first "
                 "time, a few seconds once cached)")
        task.trainer = datamodule.trainer = trainer  # the strategy, for the epochs' values; the device, for the splits
        task.to(trainer.strategy.root_device).train()
        train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
        program = CompiledEpoch(task, task.configure_optimizers(), datamodule.normalize, datamodule.batch_size,
                                len(train.split))
        steps, validate_every = train.batches_per_epoch, trainer.check_val_every_n_epoch
        stoppers = [callback for callback in trainer.callbacks if isinstance(callback, StopOnDivergence)]
        kept, kept_bytes, records_seconds = [], 0, 0.0  # (epoch, train outputs, targets and losses, val record)

        def record_kept() -> None:
            """Compute and log the kept epochs' metrics; fail at the first that diverged."""
            nonlocal kept_bytes, records_seconds
            start = time.perf_counter()
            epochs, kept_bytes = kept.copy(), 0
            kept.clear()
            try:
                for epoch, (outputs, targets, losses), val_record in epochs:
                    record = EpochOutputs.of_epoch(outputs, targets, losses, datamodule.batch_size)
                    values = task.epoch_values("train", record)
                    if val_record is not None:
                        values |= task.epoch_values("val", val_record)
                    task.record_values(values, epoch, step=(epoch + 1) * steps - 1)
                    for stopper in stoppers:
                        if stopper.monitor in values and stopper.diverged(values[stopper.monitor]):
                            raise stopper.error(float(values[stopper.monitor]), epoch, trainer.max_epochs)
            finally:
                if trainer.logger is not None:  # sent, a failed run's too, as Lightning's loop has its logger do at its end
                    trainer.logger.save()
                records_seconds += time.perf_counter() - start

        start = time.perf_counter()
        try:
            for epoch in range(trainer.max_epochs):
                if errors.signal_stop is not None:  # a stop dropped on its way out (errors.signal_handler)
                    errors.raise_stop_again()
                order = train.order()  # drawn on the CPU, as for Lightning's loop; indexes the split where it is
                order = None if order is None else order.to(train.split.targets.device)
                outputs, losses = program(train.split.inputs, train.split.targets, order)
                targets = train.split.targets if order is None else train.split.targets[order]
                val_record = None
                if (epoch + 1) % validate_every == 0 and len(datamodule.val):
                    val_record = EpochOutputs()
                    task.eval()
                    with torch.no_grad():
                        task.evaluate(datamodule.on_after_batch_transfer(next(iter(val)), 0), val_record)
                    task.train()
                kept.append((epoch, (outputs, targets, losses), val_record))
                kept_bytes += outputs.nbytes
                if kept_bytes > RECORDS_BYTES:
                    record_kept()
        finally:  # the epochs trained, recorded however the loop ends (a signal, a failure)
            record_kept()
        task.compiled_epochs, task.compiled_steps = trainer.max_epochs, trainer.max_epochs * steps
        trainer.callback_metrics["time/compile_seconds"] = torch.tensor(program.compile_seconds or 0.0)
        trainer.callback_metrics["time/records_seconds"] = torch.tensor(records_seconds)
        return time.perf_counter() - start - (program.compile_seconds or 0.0) - records_seconds
