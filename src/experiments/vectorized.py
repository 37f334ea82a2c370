"""Vectorised training: the jobs of a sweep that differ only in seed, initialisation and optimizer
numbers train side by side as one program (the launcher: hydra/launcher=vectorized, in hydra_plugins/).

Each job is built exactly as a single run builds it (`run.build`: its own seed, so its own
initialisation and its own data, split and batch order). The group's parameters are stacked once
along a new first dimension (torch.func.stack_module_state) and every step is one forward over all
jobs (vmap over functional_call) and one backward of the sum of the jobs' losses: a job's parameters
get the gradient of its own loss only. The optimizer is the jobs' torch optimizer with one parameter
group per distinct setting of its numbers (lr, momentum, betas, ...): the jobs are ordered so that
each setting's jobs are one contiguous slice of the stacked tensors, and that group's parameters are
views of the slice, so the optimizer updates the stacked tensors in place and nothing is restacked
per step. The updates of torch's optimizers are elementwise, so each job sees its own optimizer's
arithmetic. Epoch values are a single run's (Task.epoch_values): the loss is the batch-size-weighted
mean of the per-batch losses, and each metric is computed over all the epoch's samples of each job.
"""
import copy
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Metric as LoggedMetric
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch.func import functional_call, stack_module_state, vmap

from experiments import errors, resume, run, store, sweep, tracking
from experiments.callbacks import StopOnDivergence
from experiments.cli import check_override_types, config_flags, make_paths_absolute
from experiments.errors import Diverged
from experiments.report import epochs_text, model_summary, print_model_summary, print_results
from experiments.models.target_scale import TargetScaled
from experiments.progress import SHOWN, EpochReport
from experiments.sweep import numbers
from experiments.task import Task

# Config keys in which the jobs of a group may differ: what seeds the data and the initial weights,
# the optimizer's numbers (each setting its own parameter group), the schedule's peak (torch's
# schedulers take it per parameter group) and what only concerns the records. A model key named
# init... sets only the initial weights. Everything else (data, model, loss, metrics, batch size,
# epochs, trainer) must be equal.
FREE_KEYS = ("seed", "data.seed", "scheduler.max_lr", "tracking", "objective", "published")
# Trainer options the vectorised loop follows; a job that sets any other one runs the ordinary way.
TRAINER_KEYS = {"_target_", "max_epochs", "max_steps", "check_val_every_n_epoch", "accelerator", "devices",
                "num_nodes", "deterministic", "enable_progress_bar", "enable_model_summary", "enable_checkpointing",
                "num_sanity_val_steps", "log_every_n_steps", "callbacks"}
# Losses whose value is a mean over the batch's elements (with reduction="mean" and no class weights):
# for these the sum of the jobs' losses, whose gradient gives each job its own, is the loss of all
# the jobs' batches at once times the number of jobs, one call where others need a vmapped one
# (E2's MLP: about 0.1 ms a step less, measured on this project's 2-core machine).
MEAN_LOSSES = (torch.nn.MSELoss, torch.nn.L1Loss, torch.nn.SmoothL1Loss, torch.nn.HuberLoss, torch.nn.BCELoss,
               torch.nn.BCEWithLogitsLoss, torch.nn.CrossEntropyLoss)
EVAL_ROWS = 1024  # rows per forward when validating and testing, rounded to whole batches


@dataclass
class Job:
    """One job of the sweep: its composed config (with `hydra`), and once prepared, its task and data."""
    index: int
    config: DictConfig
    task: Task | None = None
    datamodule: L.LightningDataModule | None = None
    trainer: L.Trainer | None = None
    key: str = ""
    reason: str | None = None  # why it runs the ordinary way


@dataclass
class Trained:
    """One job's part of a group's training."""
    results: dict[str, float]  # final metrics and timings, as a single run has them
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, metrics) per epoch
    epochs: int = 0
    group_size: int = 1
    error: Diverged | None = None  # the job diverged: its run fails with this, its history ends at that epoch
    summary: str = ""  # the model's summary, the same for every job of the group (same architecture)


def task_config(config: DictConfig) -> DictConfig:
    """The job's config without `hydra`, as the app receives it."""
    config = copy.deepcopy(config)
    with read_write(config), open_dict(config):
        del config["hydra"]
    return config


def group_key(config: DictConfig) -> str:
    """What the jobs of one group have in common: the resolved config less FREE_KEYS, init* model keys
    and the optimizer's numbers (its class stays)."""
    values = OmegaConf.to_container(config, resolve=True)
    for key in FREE_KEYS:
        *parents, last = key.split(".")
        node = values
        for parent in parents:
            node = node.get(parent) or {}
        node.pop(last, None)
    values["model"] = {key: value for key, value in values["model"].items() if not key.startswith("init")}
    values["optimizer"] = {"_target_": values["optimizer"]["_target_"]}
    return repr(values)


def obstacle(config: DictConfig, task: Task, datamodule, trainer: L.Trainer) -> str | None:
    """Why this job cannot train in a group, or None."""
    model = task.model
    if hasattr(model, "fit"):
        return "its model is fitted in closed form"
    if next(network(model).buffers(), None) is not None:
        return "its model has buffers (batch norm), which every job would update"
    if any(isinstance(module, torch.nn.modules.dropout._DropoutNd) for module in model.modules()):
        return "its model has dropout, whose random masks differ from a single run's"
    if not isinstance(datamodule.train.inputs, torch.Tensor):
        return "its model takes several inputs"
    if trainer.world_size > 1:
        return "it trains on several devices (DDP)"
    other = sorted(set(config.trainer) - TRAINER_KEYS)
    if other:
        return f"trainer.{other[0]} is not followed by the vectorised loop"
    if config.trainer.get("max_steps", -1) != -1:
        return "trainer.max_steps stops within an epoch; the vectorised loop trains whole epochs"
    if task.optimizer.func is torch.optim.LBFGS:
        return "LBFGS steps on all parameters at once, not elementwise"
    return None


def network(model: torch.nn.Module) -> torch.nn.Module:
    """What of a model trains: a TargetScaled model's network (its scaling, fixed buffers of each job's own,
    the group applies itself), or the model."""
    return model.network if isinstance(model, TargetScaled) else model


def prepare(job: Job, trainers: dict[str, L.Trainer]) -> None:
    """Build the job as a single run builds it, under its own Hydra config; set its group key, or the
    reason it runs the ordinary way (which then reports any error in the job's own run). `trainers`:
    one Lightning trainer per trainer config, shared by the jobs that have it."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job.config)  # the `hydra:` resolver in paths.data_dir needs it
    try:
        check_override_types(job.config)
        make_paths_absolute(job.config)  # as recorded from here on (`record`, `record_stopped`)
        config = task_config(job.config)
        job.task, job.datamodule = run.build(config)
        trainer_key = repr(OmegaConf.to_container(config.trainer, resolve=True))
        if trainer_key not in trainers:  # Lightning decides the device, as for a single run
            # built in the launcher, outside the jobs' logging config (conf/config.yaml's job_logging), where
            # Lightning's hardware lines and tips would reach the console
            lightning_log = logging.getLogger("lightning.pytorch")
            level = lightning_log.level
            lightning_log.setLevel(logging.WARNING)
            try:
                trainers[trainer_key] = run.build_trainer(config.trainer, None)
            finally:
                lightning_log.setLevel(level)
        job.trainer = trainers[trainer_key]
        run.check_scheduler(job.task, job.datamodule, job.trainer)
        job.reason = obstacle(config, job.task, job.datamodule, job.trainer)
        job.key = group_key(config)
    except Exception as error:  # noqa: BLE001 - the ordinary run reports it in full
        job.reason = f"it fails to build: {' '.join(str(error).split())[:200]}"
    finally:
        HydraConfig.instance().cfg = saved
    if job.reason is not None:
        release(job)


def release(job: Job) -> None:
    job.task = job.datamodule = job.trainer = None


def share_data(jobs: list[Job]) -> None:
    """Jobs whose data does not depend on the seed hold one copy of it (compared with the first job's)."""
    first = jobs[0].datamodule
    for job in jobs[1:]:
        for name in ("train", "val", "test"):
            split, shared = getattr(job.datamodule, name), getattr(first, name)
            if split is None or shared is None:
                continue
            if torch.equal(split.inputs, shared.inputs) and torch.equal(split.targets, shared.targets):
                setattr(job.datamodule, name, shared)


def bytes_per_job(job: Job, shared: bool) -> int:
    """Memory one more job adds to a group: parameters with gradient and up to two optimizer states, a
    batch's activations (forward and backward), an epoch's outputs, and its own data where not shared."""
    task, datamodule = job.task, job.datamodule
    parameters = sum(p.numel() * p.element_size() for p in task.model.parameters()) * 4
    activations = []
    hooks = [module.register_forward_hook(
        lambda module, inputs, output: activations.append(output.numel() if isinstance(output, torch.Tensor) else 0))
        for module in task.model.modules()]
    rows = max(datamodule.batch_size, EVAL_ROWS)
    with torch.no_grad():
        outputs = task.model(datamodule.normalize(datamodule.train.inputs[:rows]))
    for hook in hooks:
        hook.remove()
    splits = {id(split): split for split in (datamodule.train, datamodule.val, datamodule.test) if split is not None}
    epoch_outputs = sum(len(split) for split in splits.values()) * outputs[0].numel() * 4
    # own data twice: the job's data module's and its slice of the stacked copy
    data = 0 if shared else 2 * sum(split.inputs.nbytes + split.targets.nbytes for split in splits.values())
    return parameters + 3 * 4 * sum(activations) + 2 * epoch_outputs + data


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def out_of_memory(error: Exception) -> bool:
    """Whether training failed for want of memory (the GPU's, or the machine's)."""
    if isinstance(error, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def split(jobs: list[Job], max_size: int) -> list[list[Job]]:
    """Jobs in as few groups of at most `max_size` as possible, of nearly equal sizes."""
    count = math.ceil(len(jobs) / max_size)
    size = math.ceil(len(jobs) / count)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def plan(jobs: list[Job], max_group_size: int | None, memory_budget_mb: float | None,
         memory_fraction: float) -> tuple[list[list[Job]], list[Job], str]:
    """The groups, the jobs that run the ordinary way, and the line that says so."""
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        if job.reason is None:
            by_key.setdefault(job.key, []).append(job)
    groups, notes = [], []
    for members in by_key.values():
        if len(members) == 1:
            members[0].reason = "no other job has its data, model, loss, batch size and epochs"
            release(members[0])
            continue
        share_data(members)
        device = members[0].trainer.strategy.root_device
        budget = memory_budget_mb * 2**20 if memory_budget_mb is not None else memory_fraction * free_memory(device)
        shared = members[1].datamodule.train is members[0].datamodule.train
        fits = int(budget // bytes_per_job(members[0], shared))
        size = min(fits, max_group_size or len(members))
        if size < 2:
            for job in members:
                job.reason = ("two jobs together exceed the memory budget" if fits < 2 else
                              f"hydra.launcher.max_group_size={max_group_size}")
                release(job)
            continue
        parts = split(members, size)
        if len(parts) > 1:
            limit = "the memory budget" if fits < len(members) else f"max_group_size={max_group_size}"
            notes.append(f"{len(members)} jobs split into {len(parts)} groups to fit {limit}")
        groups += parts
    alone = [job for job in jobs if job.reason is not None]
    described = [f"#{numbers([job.index for job in group])} (differing in {differences(group)})" for group in groups]
    line = f"vectorized: {sum(map(len, groups))} of {len(jobs)} jobs in {len(groups)} group(s)"
    line += (": " + ", ".join(described)) if groups else ""
    line += "".join(f"; {note}" for note in notes)
    if alone:
        line += "; one by one: " + ", ".join(f"#{job.index} ({job.reason})" for job in alone)
    return groups, alone, line


def differences(jobs: list[Job]) -> str:
    """The command-line overrides whose values differ between the jobs."""
    overrides = [dict(override.partition("=")[::2] for override in job.config.hydra.overrides.task) for job in jobs]
    keys = dict.fromkeys(key for job_overrides in overrides for key in job_overrides)
    differing = [key for key in keys if len({job_overrides.get(key) for job_overrides in overrides}) > 1]
    return ", ".join(differing) or "nothing"


def stacked(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The jobs' tensors as one [jobs, ...] tensor: a shared one expanded (no copy) where all are the same."""
    first = tensors[0]
    if all(tensor is first for tensor in tensors):
        return first.to(device).expand(len(tensors), *first.shape)
    return torch.stack(tensors).to(device)


# Modules that act on each element alone, and so on a stack of jobs' tensors as on one job's.
ELEMENTWISE = (torch.nn.Tanh, torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.GELU,
               torch.nn.SiLU, torch.nn.Identity)


def stacked_forward(model: torch.nn.Module):
    """For a Sequential of Flatten, Linear and elementwise layers (an MLP), the forward of all the jobs' models
    at once: each Linear one batched matrix product over the jobs (baddbmm). vmap over functional_call computes
    the same, but its Python costs more than the arithmetic of small networks: 64 jobs of E2's network, a batch
    of 10, took 0.36 ms a forward against 0.07 ms, 1.06 ms a whole training step against 0.45 ms (this
    project's 2-core machine). None for any other model, which then goes through vmap.

    With the forward, the names of the weights it takes transposed, [jobs, in, out]: the gradient of a Linear
    weight's transposed view came back through a transposing copy of the whole weight and a slower batched
    product, which made a group of Fashion-MNIST's MLP (784 to 256) up to twice as slow as its jobs one after
    another."""
    if not isinstance(model, torch.nn.Sequential):
        return None
    layers = []
    for name, module in model.named_children():
        if isinstance(module, torch.nn.Linear):
            layers.append((name, None))
        elif type(module) is torch.nn.Flatten and module.start_dim >= 1 and module.end_dim == -1:
            layers.append((None, lambda x, start=module.start_dim + 1: x.flatten(start)))  # after the jobs' dimension
        elif type(module) in ELEMENTWISE:
            layers.append((None, module))
        else:
            return None

    def forward(params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        for name, function in layers:
            if name is None:
                x = function(x)
            elif f"{name}.bias" in params:
                x = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"])
            else:
                x = torch.bmm(x, params[f"{name}.weight"])
        return x

    return forward, {f"{name}.weight" for name, _ in layers if name is not None}


def batch_mean(function, outputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Every job's epoch value of a per-batch value as Lightning logs it (the batch-size-weighted mean
    over the epoch's batches), from the epoch's outputs and targets ([jobs, rows, ...], batch order)."""
    rows = outputs.shape[1]
    whole = rows // batch_size * batch_size
    total = torch.zeros(outputs.shape[0], device=outputs.device)
    if whole:
        def batches(tensor):
            return tensor[:, :whole].reshape(tensor.shape[0], whole // batch_size, batch_size, *tensor.shape[2:])
        total = vmap(vmap(function))(batches(outputs), batches(targets)).float().sum(1) * batch_size
    if whole < rows:
        total = total + vmap(function)(outputs[:, whole:], targets[:, whole:]).float() * (rows - whole)
    return total / rows


class Group:
    """Jobs trained as one program (see the module's docstring)."""

    def __init__(self, jobs: list[Job]):
        first = jobs[0]
        self.task, self.datamodule, self.device = first.task, first.datamodule, first.trainer.strategy.root_device
        self.trainer_config = first.config.trainer
        # the trainer's StopOnDivergence callbacks, applied to each job's epoch values as to a single run's
        self.stoppers = [callback for callback in first.trainer.callbacks if isinstance(callback, StopOnDivergence)]
        # one parameter group per setting of the optimizer's numbers (and the schedule's peak), each a slice
        settings: dict[str, list[Job]] = {}
        for job in jobs:
            peak = job.task.scheduler.keywords.get("max_lr") if job.task.scheduler else None
            settings.setdefault(repr((sorted(job.task.optimizer.keywords.items()), peak)), []).append(job)
        self.jobs = [job for members in settings.values() for job in members]
        # the epochs trained so far, kept on the group so that a stop by a signal can still record them
        self.history: list[tuple[int, dict[str, torch.Tensor]]] = []  # (step, each metric's [jobs] values)
        self.diverged: dict[int, tuple[Diverged, int]] = {}  # position: its error, the epochs of history it logs
        stacked = stacked_forward(network(first.task.model))
        self.transposed = stacked[1] if stacked else set()  # weights held [jobs, in, out] (see stacked_forward)
        params, _ = stack_module_state([network(job.task.model) for job in self.jobs])
        self.params = {name: (tensor.transpose(1, 2) if name in self.transposed else tensor).detach().contiguous()
                       .to(self.device).requires_grad_() for name, tensor in params.items()}
        self.slices, start = [], 0
        for members in settings.values():
            # one setting: the stacked tensors themselves, whose gradients backward sets
            views = (list(self.params.values()) if len(settings) == 1 else
                     [tensor.detach()[start : start + len(members)] for tensor in self.params.values()])
            self.slices.append((views, start, start + len(members), members[0].task))
            start += len(members)
        if stacked:
            forward = stacked[0]
        else:  # the architecture; functional_call supplies the weights
            model = copy.deepcopy(network(first.task.model)).to("meta")
            forward = vmap(lambda params, inputs: functional_call(model, params, (inputs,)))
        self.forward = forward
        # A regression model that scales its outputs to the target's units (models/target_scale.py): each job's own
        # mean and std (the training rows', which differ with the seed's split), applied as its model applies them,
        # and the loss optimised on the standardised scale, as Task.losses does.
        self.scale = None
        if isinstance(first.task.model, TargetScaled):
            self.scale = [torch.stack([getattr(job.task.model, name) for job in self.jobs]).to(self.device)
                          for name in ("mean", "std")]
            self.forward = lambda params, inputs: self.scaled(forward(params, inputs))
        loss = self.task.loss
        if isinstance(loss, MEAN_LOSSES) and loss.reduction == "mean" and getattr(loss, "weight", None) is None:
            self.summed_loss = lambda outputs, targets: loss(outputs.flatten(0, 1), targets.flatten(0, 1)) * len(jobs)
        else:
            self.summed_loss = lambda outputs, targets: vmap(loss)(outputs, targets).sum()

    def job_scale(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Each job's target mean and std, shaped to broadcast over `like` ([jobs, rows, ...])."""
        return [value.view(-1, *[1] * (like.dim() - 1)) for value in self.scale]

    def scaled(self, outputs: torch.Tensor) -> torch.Tensor:
        """The network's outputs ([jobs, rows, ...]) in each job's target units, as TargetScaled.forward."""
        mean, std = self.job_scale(outputs)
        return outputs * std + mean

    def standardised(self, values: torch.Tensor) -> torch.Tensor:
        """Each job's outputs or targets in its target units, standardised as TargetScaled.standardise."""
        mean, std = self.job_scale(values)
        return (values - mean) / std

    def _optimizer_and_scheduler(self, total_steps: int):
        groups = [{"params": views, **task.optimizer.keywords} for views, _, _, task in self.slices]
        optimizer = self.task.optimizer(groups)
        if self.task.scheduler is None:
            return optimizer, None
        options = {}
        if "max_lr" in self.task.scheduler.keywords:  # per parameter group
            options["max_lr"] = [task.scheduler.keywords["max_lr"] for _, _, _, task in self.slices]
        return optimizer, self.task.schedule(optimizer, total_steps, **options)

    def _data(self, name: str):
        splits = [getattr(job.datamodule, name) for job in self.jobs]
        return (stacked([split.inputs for split in splits], self.device),
                stacked([split.targets for split in splits], self.device))

    def _metrics(self, stage: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_size = self.datamodule.batch_size
        values = {f"{stage}/loss": batch_mean(self.task.loss, outputs, targets, batch_size)}
        for name, metric in self.task.metrics.items():
            values[f"{stage}/{name}"] = vmap(metric)(outputs, targets)
        for name, metric in self.task.epoch_metrics[f"{stage}_metrics"].items():  # torchmetrics: the whole epoch
            metric.to(self.device)
            per_job = []
            for job_outputs, job_targets in zip(outputs, targets):
                metric.update(job_outputs, job_targets)
                per_job.append(metric.compute())
                metric.reset()
            values[f"{stage}/{name}"] = torch.stack(per_job)
        return values

    @torch.no_grad()
    def _evaluate(self, stage: str, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = math.ceil(EVAL_ROWS / self.datamodule.batch_size) * self.datamodule.batch_size
        outputs = torch.cat([self.forward(self.params, self.datamodule.normalize(inputs[:, start : start + rows]))
                             for start in range(0, inputs.shape[1], rows)], dim=1)
        return self._metrics(stage, outputs, targets)

    def train(self) -> list[Trained]:
        """Train, validate and test every job; each job's results, in the order of the jobs given."""
        datamodule, batch_size = self.datamodule, self.datamodule.batch_size
        epochs = self.trainer_config.max_epochs
        validate_every = self.trainer_config.get("check_val_every_n_epoch") or 1
        train_inputs, train_targets = self._data("train")
        val_inputs, val_targets = self._data("val")
        rows = train_inputs.shape[1]
        steps = math.ceil(rows / batch_size)
        optimizer, scheduler = self._optimizer_and_scheduler(steps * epochs)
        # each job's batch order: the generator its data module's batches draw from, seeded alike
        generators = [torch.Generator().manual_seed(job.datamodule.seed) for job in self.jobs]
        job_rows = torch.arange(len(self.jobs), device=self.device)[:, None]
        history, diverged, latest = self.history, self.diverged, {}  # latest: what a single run's trainer holds
        running = torch.ones(len(self.jobs), dtype=torch.bool)
        progress = self.progress(epochs)
        start_time = time.perf_counter()
        for epoch in range(epochs):
            order = None
            if datamodule.shuffle:
                order = torch.stack([torch.randperm(rows, generator=g) for g in generators]).to(self.device)
            outputs, targets = [], []
            for start in range(0, rows, batch_size):
                if errors.signal_stop is not None:  # a stop dropped on its way out (errors.signal_handler)
                    errors.raise_stop_again()
                # stored order: a slice, which indexes without copying; else each job's own order
                index = ((slice(None), slice(start, start + batch_size)) if order is None
                         else (job_rows, order[:, start : start + batch_size]))
                inputs, batch_targets = train_inputs[index], train_targets[index]
                batch_outputs = self.forward(self.params, datamodule.normalize(inputs))
                for tensor in self.params.values():
                    tensor.grad = None
                optimised = ((batch_outputs, batch_targets) if self.scale is None else
                             (self.standardised(batch_outputs), self.standardised(batch_targets)))
                self.summed_loss(*optimised).backward()  # each job's gradient: of its own loss
                for views, first, last, _ in self.slices if len(self.slices) > 1 else ():
                    for view, tensor in zip(views, self.params.values()):
                        view.grad = tensor.grad[first:last]
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                outputs.append(batch_outputs.detach())
                targets.append(batch_targets)
            with torch.no_grad():
                values = self._metrics("train", torch.cat(outputs, dim=1), torch.cat(targets, dim=1))
            if (epoch + 1) % validate_every == 0:
                values |= self._evaluate("val", val_inputs, val_targets)
            values = {name: value.cpu() for name, value in values.items()}
            history.append(((epoch + 1) * steps - 1, values | {"epoch": torch.full((len(self.jobs),), epoch)}))
            latest |= values
            # A job that diverged fails at this epoch, as a single run does; it trains on with the others, but
            # apart: its parameters, gradients and optimizer state are its own slices (the optimizers' updates and
            # the losses' gradients are elementwise), so its non-finite values reach no other job.
            for stopper in self.stoppers:
                if stopper.monitor in values:
                    for position in (stopper.diverged(values[stopper.monitor]) & running).nonzero().flatten().tolist():
                        value = float(values[stopper.monitor][position])
                        diverged[position] = (stopper.error(value, epoch, epochs), len(history))
                        running[position] = False
            if progress is not None:
                progress.update(epoch + 1, spreads(values, running), last=epoch + 1 == epochs or not running.any())
            if not running.any():
                break
        seconds = time.perf_counter() - start_time
        if progress is not None:
            progress.close()
        # logged at the last step, as a single run logs it (Task.last_step); a diverged job is not tested
        if datamodule.test is not None and running.any():
            tested = {name: value.cpu() for name, value in self._evaluate("test", *self._data("test")).items()}
            history.append((epochs * steps - 1, tested))
            latest |= tested
        self._write_back()
        share = seconds / len(self.jobs)
        summary = model_summary(self.task)
        trained = {}
        for position, job in enumerate(self.jobs):
            results = {name: float(value[position]) for name, value in latest.items()}
            results |= {"time/fit_seconds": share, "time/group_fit_seconds": seconds,
                        "time/samples_per_second": rows * epochs / share, "time/group_size": len(self.jobs)}
            if position in diverged:
                error, logged = diverged[position]
                trained[job.index] = Trained({}, self.job_history(position), logged, len(self.jobs), error, summary)
            else:
                trained[job.index] = Trained(results, self.job_history(position), epochs, len(self.jobs),
                                             summary=summary)
        return [trained[job.index] for job in sorted(self.jobs, key=lambda job: job.index)]

    def progress(self, epochs: int) -> EpochReport | None:
        """The group's progress, as a single run's (trainer.enable_progress_bar, the `progress` config), its lines
        named by the group's jobs: the launcher trains it with no Lightning trainer, whose callback reports a run's."""
        if not run.shows_progress(self.jobs[0].config):
            return None
        label = f"group #{numbers(sorted(job.index for job in self.jobs))}"
        return EpochReport(self.jobs[0].config.progress.interval, 0, epochs, label)

    def job_history(self, position: int) -> list[tuple[int, dict[str, float]]]:
        """The per-epoch metrics of the job at `position` so far, up to the epoch it diverged at."""
        logged = self.diverged[position][1] if position in self.diverged else len(self.history)
        return [(step, {name: float(value[position]) for name, value in values.items()})
                for step, values in self.history[:logged]]

    @torch.no_grad()
    def _write_back(self) -> None:
        """Each job's trained weights into its own model (on the CPU, where its records are made)."""
        for position, job in enumerate(self.jobs):
            for name, parameter in network(job.task.model).named_parameters():
                trained = self.params[name][position]
                parameter.copy_((trained.T if name in self.transposed else trained).cpu())


def spreads(values: dict[str, torch.Tensor], running: torch.Tensor) -> dict[str, str]:
    """The shown losses (progress.SHOWN) of the jobs still training, as their lowest and highest value."""
    shown = {}
    for name in SHOWN:
        if name in values and running.any():
            low, high = float(values[name][running].min()), float(values[name][running].max())
            shown[name] = f"{low:.4g}" if f"{low:.4g}" == f"{high:.4g}" else f"{low:.4g}–{high:.4g}"
    return shown


def log_history(run_id: str, history: list[tuple[int, dict[str, float]]]) -> None:
    """The per-epoch metrics, at the steps Lightning logs them (the epoch's last optimizer step)."""
    now = int(time.time() * 1000)
    metrics = [LoggedMetric(name, value, now, step) for step, values in history for name, value in values.items()]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 metrics a call
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)


# The Hydra overrides of a sweep that a single run does not take (hydra.launcher.<option>: no such key without the
# launcher chosen) or has no use for
SWEEP_ONLY = ("hydra.mode=", "hydra/launcher=", "hydra.launcher.", "hydra/sweeper=", "hydra.sweeper.")


def rerun_command(job: Job) -> str:
    """The command that runs `job` alone: its overrides, and the sweep's config flags and Hydra overrides (a config
    folder, a config search path) but its launcher's, its sweeper's and the mode; a job of an Optuna search (whose
    config asks for a sweep) as one run, hydra.mode=RUN."""
    hydra = [override for override in job.config.hydra.overrides.hydra
             if not override.lstrip("+~").startswith(SWEEP_ONLY)]
    searched = job.config.hydra.runtime.choices.get("hparams_search") not in (None, "none")  # none: no search
    search = ["hydra.mode=RUN"] if searched else []
    return "python -m experiments " + shlex.join([*config_flags(job.config.hydra), *hydra,
                                                  *job.config.hydra.overrides.task, *search])


def not_logged(run_id: str, history: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    """The part of `history` the run does not hold yet (a signal may have cut its logging short)."""
    client = mlflow.MlflowClient()
    names = {name for _, values in history for name in values}
    logged = {(metric.key, metric.step) for name in names for metric in client.get_metric_history(run_id, name)}
    return [(step, {name: value for name, value in values.items() if (name, step) not in logged})
            for step, values in history]


def record_stopped(group: Group) -> None:
    """After a signal stopped `group`, while it trained or while its jobs were recorded: each job's child run of the
    sweep that is not complete (none yet, or the one whose recording the signal cut short) ends KILLED with its params
    and the epochs it completed, as a single run stopped by a signal ends (a job that had diverged: FAILED with its
    error, as `record` ends it); a job recorded before the signal keeps its run. The group keeps no checkpoint, so
    these jobs cannot be resumed: each one's line gives the command that runs it again."""
    summary = model_summary(group.task)
    for position, job in sorted(enumerate(group.jobs), key=lambda item: item[1].index):
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(job.config)  # the job's own: its run's name, number and parent
        config, error = task_config(job.config), group.diverged.get(position, (None,))[0]
        history, again, uri = group.job_history(position), rerun_command(job), config.tracking.tracking_uri
        try:
            if store.unreachable(uri):  # MLflow would retry it for minutes
                print(f"job {job.index} not recorded: its tracking server does not answer; run it again with: {again}",
                      file=sys.stderr)
                continue
            cut_short = sweep.child_run(mlflow.MlflowClient(uri), sweep.current_job())
            if cut_short and cut_short.info.status in ("FINISHED", "FAILED"):
                continue  # recorded before the signal came
            if cut_short:  # its run, which tracking.start_run ended KILLED, opened again to complete it
                store.use(uri)
                opened = mlflow.start_run(cut_short.info.run_id)
            else:
                opened = run.open_run(config, HydraConfig.get().runtime.choices, {resume.RERUN_TAG: again})
            with opened:
                run_id = mlflow.active_run().info.run_id
                if cut_short:  # what start_run logs first, which the signal may have interrupted
                    tracking.log_config(config)
                    history = not_logged(run_id, history)
                mlflow.log_text(summary, "model_summary.txt")
                log_history(run_id, history)
                if error:
                    raise error
                mlflow.end_run("KILLED")
            print(f"run {run_id} (job {job.index}) KILLED: trained in a vectorised group, which keeps no "
                  f"checkpoint, it cannot be resumed; run it again with: {again}", file=sys.stderr)
        except Diverged:  # as the launcher's recorder reports it
            sweep.record_failed_job(config, sweep.current_job(), error)
        finally:
            HydraConfig.instance().cfg = saved
            release(job)


def record(config: DictConfig, job: Job, trained: Trained) -> dict[str, float]:
    """Record a job trained in a group as a single run records itself: its own MLflow run (a child of the
    sweep's parent) with params, per-epoch and final metrics, timings, plots, model and model.pt."""
    task, datamodule = job.task, job.datamodule
    print_model_summary(trained.summary)
    choices = HydraConfig.get().runtime.choices
    try:
        with run.open_run(config, choices, {resume.RERUN_TAG: rerun_command(job)}) as logger:
            mlflow.log_text(trained.summary, "model_summary.txt")
            if trained.error:  # its run ends FAILED with the error's line, as a single run's does
                log_history(logger.run_id, trained.history)
                raise trained.error
            # The history after the MLflow model, but for its last step: logging a model reads the run's whole history
            # of every metric to link the model with their values at that step (0.3 s a job of REFERENCE.md E2's 500
            # epochs)
            last = trained.history[-1][0]
            log_history(logger.run_id, [(step, values) for step, values in trained.history if step == last])
            losses = {stage: {int(values["epoch"]) + 1: values[f"{stage}/loss"] for _, values in trained.history
                              if f"{stage}/loss" in values and "epoch" in values} for stage in ("train", "val")}
            results = run.record(config, task, datamodule, dict(trained.results), last, losses)
            log_history(logger.run_id, [(step, values) for step, values in trained.history if step != last])
    finally:
        release(job)
    print_results(f"{choices.data} · {choices.model} · {epochs_text(trained.epochs)} · vectorised, a group of "
                  f"{trained.group_size}", results, logger.run_id, tracking.ui_command(config.tracking.tracking_uri),
                  run.output_dir())
    return results
