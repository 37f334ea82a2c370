"""`trainer=compiled`: each training epoch as one compiled program, for small models on in-memory data.

A step of REFERENCE.md A2 (a linear layer, 32 rows, Adam) is a few microseconds of arithmetic under some
200 of Python and operator dispatch, so even a plain PyTorch loop spends its time on overhead. Here the
Task's whole epoch (forward, gradient and the optimizer's own update, for every batch) is traced once by
torch.compile into one graph that Inductor turns into a few fused kernels: an epoch of A2's 16 steps then
takes 0.15 ms, where a plain loop takes 3.4 ms (scripts/benchmark.py). Lightning still runs the epochs,
validation, callbacks, logging and checkpoints; the optimizer is the config's ordinary torch optimizer, its
state in its state_dict, so checkpoints and resume are unchanged.

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

from experiments.errors import ConfigError

log = logging.getLogger(__name__)


class CompiledEpoch:
    """The Task's training epoch as one compiled function of the epoch's batches, returning each batch's
    outputs and loss (before its step, as the Task's own loop records them). Calls after the first run the
    compiled program; the first one compiles it, and its time is `compile_seconds`."""

    def __init__(self, task, optimizer: torch.optim.Optimizer):
        model = task.model
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # The optimizer's step without the wrappers of Optimizer.step (profiling hooks, and graph breaks that
        # put the update in a graph of its own): its update, in the epoch's graph
        update = inspect.unwrap(type(optimizer).step)

        # inputs of the transformed function, not captured by it, for the forward pass to update in place
        # (batch norm's running statistics), which torch.func allows inputs only
        buffers = dict(model.named_buffers())

        def losses(params, buffers, inputs, targets):
            outputs = torch.func.functional_call(model, (params, buffers),
                                                 inputs if isinstance(inputs, tuple) else (inputs,))
            loss, optimised = task.losses(outputs, targets)
            return optimised, (outputs.detach(), loss.detach())

        gradients = torch.func.grad(losses, has_aux=True)

        def epoch(batches):
            outputs, batch_losses = [], []
            for inputs, targets in batches:
                grads, (batch_outputs, loss) = gradients({name: p.detach() for name, p in self.params.items()},
                                                         buffers, inputs, targets)
                for name, p in self.params.items():
                    p.grad.copy_(grads[name])
                with torch.no_grad():
                    update(optimizer)
                outputs.append(batch_outputs)
                batch_losses.append(loss)
            return outputs, batch_losses

        self.program = torch.compile(epoch, fullgraph=True)
        self.compile_seconds = None

    def __call__(self, batches):
        # Gradients the program writes in place: a tensor assigned to .grad inside a graph would be a pending
        # mutation of a parameter, which torch.compile cannot keep in the graph.
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.compile_seconds is not None:
            return self.program(batches)
        start = time.perf_counter()
        try:
            result = self.program(batches)
        except torch._dynamo.exc.TorchDynamoException as error:  # raised while tracing or compiling: nothing ran
            detail = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ConfigError(f"trainer=compiled cannot compile this training epoch ({detail.strip()}); "
                              "use trainer=default") from error
        self.compile_seconds = time.perf_counter() - start  # the first epoch's training included: microseconds
        return result


class CompiledEpochs(L.Callback):
    """Has the Task train each epoch through a CompiledEpoch (see the module's docstring).

    `cache_dir`: Inductor's cache of compiled programs (TORCHINDUCTOR_CACHE_DIR); null: torch's own.
    The run must be one process on one device at full precision with a constant learning rate (a schedule
    would change the compiled constants at every step), and no callback may hook into the steps."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir
        self.epoch: CompiledEpoch | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        problems = []
        if not pl_module.steps_can_be_plain():
            problems.append("one process on one device at full precision, with no callback hooking into the steps")
        if pl_module.lr_schedulers() is not None:
            problems.append("a constant learning rate (scheduler=constant)")
        if problems:
            raise ConfigError(f"trainer=compiled needs {' and '.join(problems)}; "
                              "change that or use trainer=default")
        # Inductor's C++ toolchain looks for CUDA, and says on the console when CUDA's torch finds no CUDA runtime
        # (a machine without a GPU): nothing to do about it for a program compiled for the CPU
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        if self.cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir)
        log.info("trainer=compiled: the first epoch compiles the training program (tens of seconds the first "
                 "time, a few seconds once cached)")
        self.epoch = pl_module.compiled_epoch = CompiledEpoch(pl_module, pl_module.optimizers().optimizer)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        pl_module.compiled_epoch = None
        if self.epoch is not None and self.epoch.compile_seconds is not None:
            trainer.callback_metrics["time/compile_seconds"] = torch.tensor(self.epoch.compile_seconds)
