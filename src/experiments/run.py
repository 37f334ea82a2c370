"""One experiment run: build data, model and task from the config, train, test, track, report."""
import difflib
import functools
import inspect
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

# SciPy's special functions first of the heavy imports (torchmetrics, under Lightning, imports them anyway): a tabular
# run's skops (data/tabular.py) finds the module of each of their 300 ufuncs by scanning sys.modules in import order,
# 0.4 s of REFERENCE.md A2's command when they came after torch's 1,400 modules, 0.05 s before them
import scipy.special  # noqa: F401, I001 (its place is the point)
import lightning as L
import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.pytorch.accelerators import AcceleratorRegistry, CPUAccelerator
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torchmetrics import Metric

from experiments import checkpoint, drawing, models, plots, resume, store, sweep, tracking
from experiments.callbacks import LastCheckpoint
from experiments.cli import check_writable, heavy_import, make_paths_absolute
from experiments.compiled import CompiledFit
from experiments.errors import ConfigError
from experiments.metrics import class_threshold, configured_metric
from experiments.report import epochs_text, log_choices, model_summary, print_model_summary, print_results
from experiments.task import STAGES, Task, apply, optimizer_steps, predict


@dataclass
class Result:
    run_id: str | None  # None in a DDP run's other processes, which track nothing
    metrics: dict[str, float]
    model: torch.nn.Module
    preprocessing: object | None  # a tabular run's RowPreprocessing (data/tabular.py): raw rows to inputs


# The target encodings a loss can learn from, where not every one, and why: any other loss, and every metric of
# targets in another encoding, compares each output with its target, so outputs need the targets' shape there
LOSS_ENCODINGS = {
    torch.nn.CrossEntropyLoss: (("index", "onehot"), "class numbers or class probabilities (the softmax of the one "
                                "output other targets have is 1 whatever it is: the loss would be 0, nothing learn)"),
    torch.nn.NLLLoss: (("index",), "class numbers"),
    torch.nn.BCEWithLogitsLoss: (("binary", "onehot"), "0/1 targets"),
    torch.nn.BCELoss: (("binary", "onehot"), "0/1 targets"),
}


def check_one_batch(task: Task, datamodule) -> None:
    """Run the model, loss and metrics on one training batch, so a model, loss, metric or target encoding that does
    not fit the data fails here, in one line, before a run is opened or any training starts."""
    first_step = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    inputs, targets = next(first_step)
    encoding = datamodule.target_encoding
    loss = task.loss.func.__name__ if isinstance(task.loss, functools.partial) else type(task.loss).__name__
    encodings, takes = LOSS_ENCODINGS.get(type(task.loss), (None, None))
    if encodings and encoding not in encodings:
        fix = "loss=mse" if encoding == "regression" else f"data.targets={' or '.join(encodings)}, or another loss"
        raise ConfigError(f"the model and loss do not fit the data: the loss {loss} takes {takes}, not {encoding} "
                          f"targets; use {fix}")
    shapes = f"targets {tuple(targets.shape)} {targets.dtype} ({encoding} encoding)"
    try:
        with torch.no_grad():
            outputs = apply(task.model, inputs)
            shapes = f"outputs {tuple(outputs.shape)}, {shapes}"
            # before the loss, which may broadcast them with no more than a warning; a class loss on index targets
            # (the only losses of LOSS_ENCODINGS left for them) takes outputs of a column per class
            if outputs.shape != targets.shape and not (encoding == "index" and encodings):
                fix = ("use loss=cross_entropy, or data.targets=onehot" if encoding == "index" else
                       f"make the model's last layer give the data's {datamodule.num_outputs} output(s) per sample")
                raise ConfigError(f"the model and loss do not fit the data: the loss {loss} compares each output with "
                                  f"its target, but their shapes differ ({shapes}); {fix}")
            with options_checked("loss", task.loss):  # a function's (loss=mnist_loss), called here first
                task.loss(outputs, targets)
    except (RuntimeError, ValueError, IndexError) as error:
        detail = str(error).splitlines()[0]
        raise ConfigError(
            f"the model and loss do not fit the data: inputs {datamodule.input_shape}, {shapes}: {detail}"
        ) from error
    # An epoch's metrics are over all its samples, and some need two (torchmetrics' R2Score raises on one): with
    # data.batch_size=1 they are checked on the first two batches' (a split of one sample: check_one_sample_splits)
    if len(targets) < 2 and (second := next(first_step, None)):
        with torch.no_grad():
            outputs, targets = torch.cat([outputs, apply(task.model, second[0])]), torch.cat([targets, second[1]])
    for name, metric in all_metrics(task).items():
        try:
            metric_value(name, metric, outputs, targets)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            detail = str(error).splitlines()[0].rstrip(".")
            raise ConfigError(f"metrics.{name} does not fit the data ({shapes}): {detail}; change it, or drop it "
                              f"with metrics.{name}=null") from error


def all_metrics(task: Task) -> dict[str, Callable | Metric]:
    """The task's metrics by name: functions, and torchmetrics Metric objects (those of the training stage)."""
    return {**task.metrics, **task.epoch_metrics["train_metrics"]}


def metric_value(name: str, metric: Callable | Metric, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`metric` (metrics.`name`) over `outputs` and `targets` as an epoch's end computes it (Task.epoch_values), a
    Metric object on a copy, whose state is the run's."""
    if isinstance(metric, Metric):
        metric = metric.clone()
        metric.update(outputs, targets)
        return metric.compute()
    with options_checked(f"metrics.{name}", metric):
        return metric(outputs, targets)


SPLIT_SIZES = ("val_fraction", "test_fraction", "val_size", "limit", "n_points")  # data options that size splits


def check_one_sample_splits(task: Task, datamodule, data: DictConfig) -> None:
    """Refuse a metric that one sample leaves undefined (R², a correlation) where a split the run evaluates holds one
    sample (data.val_fraction=0.002 of 506 rows): its value would be NaN at every epoch (scikit-learn's r2_score
    gives NaN and a warning), or the run fail at the split's first epoch's end (torchmetrics' R2Score raises). An
    error before the run rather than NaNs: the split and the metrics are known, and a NaN objective ranks no job."""
    for stage in STAGES:
        split = getattr(datamodule, stage)
        if split is None or len(split) != 1:
            continue
        outputs = predict(task.model, datamodule.normalize(split.inputs))
        for name, metric in all_metrics(task).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchmetrics' that a correlation is NaN: the error says so
                try:
                    undefined = bool(torch.as_tensor(metric_value(name, metric, outputs, split.targets)).isnan().any())
                except (RuntimeError, ValueError):
                    undefined = True
            if undefined:
                options = ", ".join(f"data.{key}" for key in SPLIT_SIZES if key in data)
                raise ConfigError(f"the {stage} split holds a single sample, on which metrics.{name} is undefined "
                                  f"(R² and correlations need two): give that split more samples (more data"
                                  f"{', or other ' + options if options else ''}), or drop the metric with "
                                  f"metrics.{name}=null")


def check_optimizer(task: Task) -> None:
    """Build the optimizer on the model's parameters once, so that options torch refuses (optimizer.betas=[2,0.9], a
    misspelt +optimizer.<name>) fail here, in one line, before a run is opened rather than in fit. Fit builds its own
    (Task.configure_optimizers): this one takes no step, so the training is the same."""
    if hasattr(task.model, "fit"):  # a closed-form model (the mean-image baseline) has no optimizer
        return
    try:
        task.optimizer(task.model.parameters())
    except (ValueError, TypeError) as error:
        raise ConfigError(refused_options_problem("optimizer", task.optimizer, error)) from error


RUN_LENGTH_OPTIONS = ("total_steps", "epochs", "steps_per_epoch")  # one-cycle's, which the run sets (check_scheduler)


def check_scheduler(task: Task, datamodule, trainer: L.Trainer) -> None:
    """Build the learning-rate schedule for the run's optimizer steps, at its start and at its last step, so that
    options torch refuses (+scheduler.anneal_strategy=foo, a misspelt +scheduler.<name>), a length of its own
    (+scheduler.total_steps) and a run whose length one-cycle cannot split into its phases fail here, in one line,
    before a run is opened rather than in fit or at its last step. On an optimizer of its own: fit builds the run's
    (Task.configure_optimizers)."""
    if task.scheduler is None or hasattr(task.model, "fit"):
        return
    steps = optimizer_steps(trainer, datamodule)
    # Refused rather than honoured: the run gives one-cycle its total_steps, which torch's OneCycleLR takes before
    # epochs and steps_per_epoch (they only make it up); fewer than the run's fail once it steps past them, more end
    # the run midway through the cycle. The run's length is trainer.max_epochs' and max_steps' to set.
    given = [name for name in RUN_LENGTH_OPTIONS if name in task.scheduler.keywords]
    if given and task.schedule_takes_run_length:
        raise ConfigError(f"scheduler.{given[0]} does not apply: the run gives {task.scheduler.func.__name__} its "
                          f"total_steps from its epochs and batches ({steps} optimizer steps here); remove it, and "
                          "set the run's length with trainer.max_epochs or trainer.max_steps")
    optimizer = task.optimizer(task.model.parameters())
    try:
        task.schedule(optimizer, steps)
        # resumed at its last step, which it takes at once: one-cycle's last phase, of no steps in some runs
        task.schedule(optimizer, steps, last_epoch=steps - 1)
    except ZeroDivisionError:  # one-cycle: a phase of no steps, from pct_start and the run's length
        raise ConfigError(f"the {task.scheduler.func.__name__} schedule cannot split a run of {steps} optimizer "
                          f"steps into its phases; change scheduler.pct_start, train for more steps or use "
                          "scheduler=constant") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(refused_options_problem("scheduler", task.scheduler, error)) from error


def refused_options_problem(key: str, built: functools.partial, error: Exception) -> str:
    """A line for the options of `key` (optimizer, scheduler) that torch's class refused in `error`, building
    `built`: an option it does not have named with the nearest it has, else torch's words."""
    if problem := unknown_option_problem(key, built.func, built.keywords, error):
        return problem
    detail = str(error).splitlines()[0].rstrip(".")
    options = ", ".join(f"{name}={value}" for name, value in built.keywords.items())
    return f"torch's {built.func.__name__} refuses the {key} options ({options}): {detail}; change the one it names"


def output_dir() -> Path | None:
    """This job's Hydra output folder; None when the config was composed without a job (the Python API)."""
    runtime = HydraConfig.get().runtime
    return None if OmegaConf.is_missing(runtime, "output_dir") else Path(runtime.output_dir)


def is_first_process(trainer: L.Trainer) -> bool:
    """Whether this process reports the run. A run of several processes (DDP) runs this program in
    each; the first one (global rank 0) opens the MLflow run, logs, plots and prints. Read from the
    node and local ranks, which the trainer knows before fit starts the processes (its global rank
    and is_global_zero are set only then)."""
    return trainer.node_rank == 0 and trainer.local_rank == 0


def check_launch(trainer: L.Trainer) -> None:
    """Refuse DDP's default launch inside a local multirun. On one machine, Lightning starts a DDP run's
    other processes by running the command line again, and in a multirun that is the whole sweep."""
    relaunches = (isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) and trainer.num_devices > 1
                  and not trainer.strategy.cluster_environment.creates_processes_externally)
    if relaunches and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError("trainer=ddp cannot start its processes inside a local multirun (Lightning starts them "
                          "by running the command line again, sweep included); run each configuration as its own "
                          "command, or sweep on a cluster with hydra/launcher=slurm")


def fit_and_test(trainer: L.Trainer, task: Task, datamodule, resume_from: Path | None = None,
                 compiled: CompiledFit | None = None) -> dict[str, float]:
    """Train (or fit a closed-form model), validate and test; the final metrics and the fit's timings.
    `resume_from`: a checkpoint of an interrupted run, whose training this continues. `compiled`: the epochs
    as compiled programs outside Lightning's loop (trainer=compiled), which times the training itself."""
    model = task.model
    start = time.perf_counter()
    if hasattr(model, "fit"):  # a closed-form model (the mean-image baseline): no optimizer, no epochs
        model.fit(datamodule.normalize(datamodule.train.inputs), datamodule.train.targets)
        fit_seconds, passes = time.perf_counter() - start, 1
        trainer.validate(task, datamodule=datamodule, verbose=False)
    elif compiled is not None:
        fit_seconds, passes = compiled.fit(trainer, task, datamodule), task.compiled_epochs
    else:
        first_epoch = torch.load(resume_from, map_location="cpu", weights_only=False)["epoch"] if resume_from else 0
        with warnings.catch_warnings():
            if resume_from:  # it continues in the folder of its own checkpoints, which Lightning warns of as of any
                warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from)
        fit_seconds, passes = time.perf_counter() - start, trainer.current_epoch - first_epoch
    results = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if datamodule.test is not None:  # test replaces the trainer's metrics with its own
        trainer.test(task, datamodule=datamodule, verbose=False)
        results |= {name: float(value) for name, value in trainer.callback_metrics.items()}
    if torch.distributed.is_initialized():
        # A DDP run's processes communicate no more. Left to the interpreter's exit, gloo's threads can abort a
        # process ("terminate called without an active exception"); PyTorch asks for this call instead.
        torch.distributed.destroy_process_group()
    results["time/fit_seconds"] = fit_seconds
    results["time/samples_per_second"] = len(datamodule.train) * passes / results["time/fit_seconds"]
    return results


def import_libraries(config: DictConfig) -> None:
    """Import the libraries a run of `config` loads besides this module's, as this module is (cli.heavy_import:
    without the garbage collector, then frozen out of its scans): its data module's (a table's pandas, scikit-learn
    and skops) and MLflow's SQL store. Imported where first used, midway through the run, their 100,000 and more
    objects brought full collections of everything not frozen: 0.3 s of REFERENCE.md A2's command, 0.15 s of a tiny
    run's. Imported before `build` makes anything, so that none of the run's objects is frozen (but, in a vectorised
    sweep, the jobs built before one that needs a module they did not)."""
    data_module = str(config.data.get("_target_", "")).rpartition(".")[0]
    if data_module:
        with suppress(ImportError):  # a _target_ that names no module: instantiate says so, in build
            heavy_import(data_module)
    if store.sqlite_path(config.tracking.tracking_uri):
        heavy_import("mlflow.store.tracking.sqlalchemy_store")


def build(config: DictConfig) -> tuple[Task, L.LightningDataModule]:
    """The seeded data module and task (model, loss, metrics, optimizer) of `config`, checked on one batch."""
    import_libraries(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    with options_checked("data", config.data._target_, config.data):
        datamodule = instantiate(config.data)
    with options_checked("model", config.model._target_, config.model):
        model = models.build(config.model, datamodule.input_shape, datamodule.num_outputs, datamodule.target_scale)
    with options_checked("loss", config.loss._target_, config.loss):
        loss = instantiate(config.loss)
    metrics = build_metrics(config.metrics, loss)
    # none for scheduler=constant, whose config is empty, and for ~scheduler, which leaves the group out
    scheduler = instantiate(config.scheduler) if config.get("scheduler") else None
    task = Task(model, loss, metrics, instantiate(config.optimizer), scheduler)
    check_optimizer(task)
    check_one_batch(task, datamodule)
    check_one_sample_splits(task, datamodule, config.data)
    task.example_input_array = datamodule.normalize(datamodule.train.head(2).inputs)
    return task, datamodule


def build_metrics(metrics: DictConfig, loss) -> dict:
    """The config's metrics for a run with `loss` (configured_metric), each built on its own, so that an option one
    refuses, a torchmetrics Metric's among them, is one line naming its key (options_checked)."""
    built = {}
    for name, options in metrics.items():
        if options is None:  # metrics.r2=null drops it
            continue
        with options_checked(f"metrics.{name}", OmegaConf.select(metrics, f"{name}._target_"), options):
            # a value that is no config (+metrics.foo=3) as it is, for check_one_batch to refuse in its words
            metric = instantiate(options, _convert_="all") if OmegaConf.is_config(options) else options
            built[name] = configured_metric(metric, loss)
    return built


def shows_progress(config: DictConfig) -> bool:
    """Whether a run reports its progress: not with trainer.enable_progress_bar=false, nor with `progress=null` (or
    false), as a Hydra user drops a config node."""
    return bool(config.trainer.enable_progress_bar and config.get("progress"))


def build_trainer(options: DictConfig, progress: ProgressBar | None) -> L.Trainer:
    """Lightning's trainer as the trainer config says, without a logger, with its callbacks and `progress` as its
    progress bar: without one, none (where trainer.enable_progress_bar is true Lightning would add its own).
    The config's callbacks are a dict by name (conf/trainer/default.yaml; null drops one), Lightning's a list;
    `compiled` (conf/trainer/compiled.yaml) is no option of Lightning's."""
    options = OmegaConf.to_container(options, resolve=True)
    options.pop("compiled", None)
    callbacks = [instantiate(callback) for callback in (options.pop("callbacks", None) or {}).values()
                 if callback is not None]
    if progress is not None:
        callbacks.append(progress)
    try:
        trainer = instantiate(options, logger=False, callbacks=callbacks, enable_progress_bar=progress is not None)
    except InstantiationException as error:
        problem = (accelerator_problem(options.get("accelerator"))
                   or unknown_option_problem("trainer", options["_target_"], options, error))
        # any other option it refuses: in its exception, or a TypeError or ValueError (trainer.devices=null)
        if problem is None and isinstance(error.__cause__, (MisconfigurationException, TypeError, ValueError)):
            problem = (f"Lightning's Trainer refuses the trainer options: {str(error.__cause__).rstrip('.')}; "
                       "change the one it names")
        if problem is None:
            raise
        raise ConfigError(problem) from error
    check_manual_optimization(trainer)
    check_precision(trainer)
    return trainer


def check_precision(trainer: L.Trainer) -> None:
    """Refuse a precision that converts the model's weights (trainer.precision=64, 16-true, bf16-true): the task's
    batches stay float32, as Lightning converts the batches it is handed and the task takes an epoch's at a time, so
    the run failed at its first step in a RuntimeError's traceback (mat1 and mat2 must have the same dtype)."""
    if isinstance(trainer.precision_plugin, (DoublePrecision, HalfPrecision)):
        raise ConfigError(f"trainer.precision={trainer.precision} does not apply: it converts the model's weights but "
                          "not the task's batches, which stay float32; use 32-true (the default), or bf16-mixed for "
                          "lower precision")


def check_manual_optimization(trainer: L.Trainer) -> None:
    """Refuse the trainer options that only Lightning's automatic optimization has: the task optimizes manually (a
    step takes a whole epoch's batches, see Task), which Lightning refuses them for only once fit starts, in the run."""
    manual = ("does not apply: the task optimizes manually (each Lightning step takes a whole epoch's batches), and "
              "Lightning {} only in automatic optimization")
    if trainer.gradient_clip_val:  # None or 0: no clipping
        raise ConfigError(f"trainer.gradient_clip_val={trainer.gradient_clip_val} {manual.format('clips gradients')}; "
                          "remove it (a callback's on_before_optimizer_step hook can clip them instead)")
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} "
                          f"{manual.format('accumulates gradients')}; remove it, and for steps of as many samples "
                          f"multiply data.batch_size by {trainer.accumulate_grad_batches}")


# An option refused: Python's TypeError, or the ValueError of a torchmetrics Metric, which takes any as **kwargs and
# refuses those it has no use for (its message names each; the first is taken)
UNEXPECTED_KEYWORD = {TypeError: re.compile(r"got an unexpected keyword argument '(\w+)'"),
                      ValueError: re.compile(r"^Unexpected keyword arguments: `(\w+)`")}
# What a torchmetrics Metric takes as **kwargs besides its own options (its docs' "Metric kwargs")
METRIC_KWARGS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
                 "sync_on_compute", "compute_with_cache")


def unknown_option_problem(key: str, target: Callable | str, given: Iterable[str], error: BaseException) -> str | None:
    """A line naming the option of `key` (a config: model, trainer, metrics.accuracy, ...) that `target` (or the
    dotted path of it, a config's _target_) refused in `error` as an unexpected keyword argument, with the nearest
    option it takes, else all of them; None for any other error. `given`: the options the config gives. Python's
    message, which Hydra wraps in its own ("Error in call to target ..."), names neither the option's key nor a fix."""
    cause = error.__cause__ if isinstance(error, InstantiationException) else error
    refused = UNEXPECTED_KEYWORD[type(cause)].search(str(cause)) if type(cause) in UNEXPECTED_KEYWORD else None
    if refused is None or refused[1] not in given:
        return None
    name = refused[1]
    owner = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    options = target_options(get_object(target) if isinstance(target, str) else target, given, name)
    nearest = difflib.get_close_matches(name, options, n=1)
    if nearest:
        fix = f"did you mean {key}.{nearest[0]}?"
    else:
        fix = f"remove it, or use one of its options: {', '.join(options)}" if options else "it takes none: remove it"
    return f"{key}.{name} is not an option of {owner}; {fix}"


def target_options(target: Callable, given: Iterable[str], refused: str) -> list[str]:
    """The options `target` takes: its keyword parameters with a default or given (the others, such as a model's
    input_shape or an optimizer's params, the run passes itself); where it passes on any others, a torchmetrics
    Metric's METRIC_KWARGS, or else (a data module's **loader) the others `given` but the `refused` one."""
    parameters = inspect.signature(target).parameters.values()
    options = [parameter.name for parameter in parameters
               if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
               and (parameter.default is not parameter.empty or parameter.name in given)]
    if isinstance(target, type) and issubclass(target, Metric):
        options += METRIC_KWARGS
    elif any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        options += [name for name in given if name not in options and name != refused and not name.startswith("_")]
    return options


@contextmanager
def options_checked(key: str, target: Callable | str, given: Iterable[str] = ()) -> Iterator[None]:
    """The block builds or calls `target` with the options of `key` `given` (a partial: its function and keywords):
    one it refuses as an unexpected keyword argument stops in one line (unknown_option_problem)."""
    if isinstance(target, functools.partial):
        target, given = target.func, target.keywords
    try:
        yield
    except (InstantiationException, TypeError, ValueError) as error:
        problem = unknown_option_problem(key, target, given, error)
        if problem is None:
            raise
        raise ConfigError(problem) from error


def accelerator_problem(name) -> str | None:
    """Why Lightning cannot use trainer.accelerator=`name` on this machine, in a line saying what to set instead;
    None if it can. Lightning's own message (which `build_trainer` replaces) names neither the option nor a fix."""
    if not isinstance(name, str) or name == "auto":  # an Accelerator object's config: Lightning's own message
        return None
    names = AcceleratorRegistry.available_accelerators()  # all Lightning knows, not only those usable here
    known = ["auto", *sorted([*names, "gpu"])]
    usable = [other for other in names if AcceleratorRegistry[other]["accelerator"].is_available()]
    fix = f"use trainer.accelerator={' or '.join(['auto', *usable])}"
    if name not in known:
        return f"trainer.accelerator={name} is not an accelerator Lightning knows ({', '.join(known)}); {fix}"
    if name in usable or (name == "gpu" and {"cuda", "mps"} & set(usable)):  # gpu: either of them
        return None
    return f"trainer.accelerator={name}: Lightning finds no {name} device on this machine; {fix}"


def open_run(config: DictConfig, choices, tags: dict[str, str] | None = None, resumed=None):
    """This job's MLflow run (a context manager giving Lightning's logger): named by the config, or in a
    sweep by its swept values, nested under the sweep's parent run and tagged with its job number."""
    job = sweep.current_job()
    run_name = config.tracking.run_name or (job and job.name) or f"{choices['data']}-{choices['model']}"
    tags = (tags or {}) | ({"sweep.job": str(job.number)} if job else {})
    return tracking.start_run(config, run_name, choices, job and job.parent_run_id, tags, resumed)


def record(config: DictConfig, task: Task, datamodule, results: dict[str, float], step: int,
           losses: dict[str, dict[int, float]] | None = None) -> dict[str, float]:
    """What a job records in its open MLflow run once trained: timings, model diagnostics, plots, the
    dataset's extras, model.pt and the MLflow model; `results` (the final metrics) plus what it adds.
    `step`: the run's last step (Task.last_step), where its final metrics are and these are logged: the MLflow
    model, logged at that step, links the metrics there (MLflow's LoggedModel), so it carries the run's final values.
    `losses`: each stage's loss by epoch for the plots (plots.loss_history), when not read from the run."""
    model = task.model
    model.cpu()  # plots and the logged model's example run on the CPU, whatever trained it
    if hasattr(model, "diagnostics"):
        results |= {f"model/{name}": value for name, value in model.diagnostics().items()}
    mlflow.log_metrics({key: value for key, value in results.items() if key.split("/")[0] in ("time", "model")},
                       step=step)
    log_plots = plots.start_plots(model, datamodule, class_threshold(task.metrics, task.loss),
                                  losses or plots.loss_history(mlflow.active_run().info.run_id), output_dir())
    results |= datamodule.log_extras(model, step)
    saved = checkpoint.save(config, model, datamodule, output_dir())
    if datamodule.preprocessing is None:
        tracking.log_model(model, task.example_input_array, step)
    else:  # raw rows in, through the run's preprocessing
        from experiments.data.tabular import log_model

        log_model(saved, step)
    log_plots()
    return results


def run(config: DictConfig) -> Result:
    """Train and evaluate as `config` says, tracked in MLflow; print and return the final metrics.
    In a run of several processes, the others train and evaluate only, and return no run id.
    With `resume=<run id>`, continue that interrupted run instead, with its own config; likewise a requeued
    SLURM job's run."""
    resumed = resume.interrupted_run(config) if config.get("resume") else resume.requeued_run(config)
    if resumed:
        config = resumed.config
    make_paths_absolute(config)  # the Python API's config, or a resumed run's as it was recorded
    task, datamodule = build(config)
    model = task.model
    progress = instantiate(config.progress) if shows_progress(config) else None
    trainer = build_trainer(config.trainer, progress)  # the first process adds MLflow's logger below
    check_launch(trainer)
    compiled = instantiate(config.trainer.compiled) if config.trainer.get("compiled") else None
    if compiled is not None:
        compiled.check(config.trainer, trainer, task)
    check_scheduler(task, datamodule, trainer)
    if isinstance(trainer.accelerator, CPUAccelerator):
        # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that looking for a GPU does not initialise
        # CUDA (which a forked process could then not use). While CUDA is uninitialised, as it stays in a run on
        # the CPU, torch then asks NVML for GPUs at every step of Adam (its graph-capture check): 0.17 ms a step
        # with CUDA's torch on a machine without a GPU, more than a whole step of REFERENCE.md A2. A run on the
        # CPU forks nothing that uses CUDA, so it goes without.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    checkpoint_dir = resumed.checkpoint.parent if resumed else Path(output_dir() or tempfile.mkdtemp()) / "checkpoints"
    for callback in trainer.checkpoint_callbacks:
        # a user's folder: one that cannot be written failed the run at its first save, in a traceback
        if isinstance(callback, LastCheckpoint) and callback.dirpath:
            check_writable(Path(callback.dirpath), "trainer.callbacks.last_checkpoint.dirpath")
        callback.dirpath = callback.dirpath or str(checkpoint_dir)
        if isinstance(callback, LastCheckpoint):  # the training state's folder, a user's dirpath included: resume reads it
            checkpoint_dir = Path(callback.dirpath)
    resume_from = resumed.checkpoint if resumed and resumed.checkpoint.is_file() else None
    if not is_first_process(trainer):
        return Result(None, fit_and_test(trainer, task, datamodule, resume_from, compiled), model,
                      datamodule.preprocessing)
    drawing.start()  # for a run from Python; the command started it already, before the heavy imports (__main__)
    choices = resumed.choices if resumed else HydraConfig.get().runtime.choices
    log_choices(choices, HydraConfig.get().overrides.task)
    summary = model_summary(task)
    print_model_summary(summary)

    with open_run(config, choices, resume.process_tags(checkpoint_dir), resumed) as logger:
        if not resumed:
            mlflow.log_text(summary, "model_summary.txt")
        trainer.logger = logger
        logger.unsent_file = checkpoint_dir / resume.UNSENT_METRICS
        results = (resumed.metrics if resumed else {}) | fit_and_test(trainer, task, datamodule, resume_from, compiled)
        logger.send_all(config.tracking.server_wait)  # a tracking server lost in training: back for the final records
        results = record(config, task, datamodule, results, task.last_step)

    epochs = trainer.current_epoch + task.compiled_epochs
    print_results(f"{choices['data']} · {choices['model']} · {epochs_text(epochs)}", results, logger.run_id,
                  tracking.ui_command(config.tracking.tracking_uri), output_dir())
    return Result(logger.run_id, results, model, datamodule.preprocessing)
