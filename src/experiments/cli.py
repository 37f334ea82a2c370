"""Command-line plumbing shared by the apps (`experiments`, `experiments.reproduce`, ...): bad input
reported as one line, override values checked against their types, the heavy libraries imported once.
Imports only Hydra and OmegaConf."""
import argparse
import atexit
import gc
import importlib
import itertools
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType

import hydra
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigTypeError, MissingMandatoryValue, OmegaConfBaseException

from experiments import store
from experiments.errors import ConfigError, Stopped, stop_on_signals, typed


def check_override_types(config: DictConfig) -> None:
    """Reject `key=value` overrides whose value has the wrong type for the key, e.g. `optimizer.lr=abc`.

    OmegaConf keeps the YAML's values untyped, so compare each override with the value the
    same config groups give that key before the command line changes it.
    """
    hydra_config = HydraConfig.get()
    choices = hydra_config.runtime.choices
    texts = [override for override in OverridesParser.create().parse_overrides(list(hydra_config.overrides.task))
             if not override.is_delete() and isinstance(override.value(), str) and override.key_or_group not in choices]
    if not texts:  # nothing to check (numbers and group choices only): spares a sweep's job composing again
        return
    groups = [f"{group}={option}" for group, option in choices.items()
              if option is not None and not group.startswith("hydra")]
    # the user's config folders too, where an option of a group may come from
    groups += [override for override in hydra_config.overrides.hydra if override.startswith("hydra.searchpath=")]
    defaults = hydra.compose(hydra_config.job.config_name, overrides=groups)
    for override in texts:
        key, value = override.key_or_group, override.value()
        default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
        if isinstance(default, (bool, int, float)):
            raise ConfigError(f"{key}={value}: expected {type(default).__name__} like the default {default!r}, got the "
                              f"text {value!r}")
        # a text for a config (trainer.callbacks=abc): an AttributeError's traceback where the run reads its keys
        if isinstance(default, DictConfig) and "${" not in value:
            raise ConfigError(f"{key}={value}: expected a config like the default, got the text {value!r}; "
                              f"{keys_one_by_one(key, default)}")


def keys_one_by_one(key: str, default: DictConfig) -> str:
    """How to set the config at `key`, whose default is `default`, where a value was given for the whole of it."""
    keys = ", ".join(name for name in default if not name.startswith("_"))
    how = f"set its keys one by one ({key}.<key>=...: {keys})"
    if key == "trainer.callbacks":  # a dict by name, where null drops one (run.build_trainer)
        how += "; trainer.callbacks.<key>=null turns one off, trainer.callbacks=null all of them"
    return how


STAGES = ("train", "val", "test")  # task.STAGES, which this module cannot import: task.py imports torch


def check_objective(config: DictConfig) -> None:
    """Refuse an objective whose metric no run records, or a direction other than minimize and maximize, before
    anything trains: found at the end, the metric failed every job of a sweep after its training, and any other
    direction picked the worst job as the best. An objective that is no config (objective=null, objective=val/accuracy)
    or a metric that is no text was an AttributeError's traceback."""
    objective = config.objective
    if not isinstance(objective, DictConfig):
        raise ConfigError(f"objective={typed(objective)}: the objective is a config of the metric a sweep ranks its "
                          "jobs by and its direction; set them with objective.metric=<stage>/<name> and "
                          "objective.direction=minimize or maximize")
    metric, direction = objective.metric, objective.direction
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"objective.direction={typed(direction)}: expected minimize or maximize")
    stage, _, name = metric.partition("/") if isinstance(metric, str) else (None, None, None)
    names = ["loss", *(key for key, value in config.metrics.items() if value is not None)]
    if stage not in (*STAGES, "time", "model", "closed_form") or (stage in STAGES and name not in names):
        raise ConfigError(f"objective.metric={typed(metric)} is not recorded by these runs: expected <stage>/<name> "
                          f"with the stage {', '.join(STAGES)} and the name {', '.join(names)} (the loss or a key of "
                          f"metrics), or one of the run's time/ or model/ values")


def check_progress(config: DictConfig) -> None:
    """Refuse progress=true, which Hydra took for a config to build ('Cannot instantiate config of type bool'): the
    progress reports are on by default, and false or null turns them off (run.shows_progress)."""
    if config.get("progress") is True:
        raise ConfigError("progress=true: the progress reports are on by default, a config of their own; leave the "
                          "override out for them (progress.interval=<seconds> between lines where no terminal shows "
                          "the bar), or turn them off with progress=false")


# How to rank a sweep's jobs whose validation does not run
UNVALIDATED_FIX = "rank the jobs by a metric they record (objective.metric=train/loss) or let validation run"


def validation_off(trainer: DictConfig) -> str | None:
    """Why the trainer's config alone shows that no epoch validates, in words naming its options; None where one may
    (how many batches an epoch has, and so trainer.val_check_interval's effect, depends on the data)."""
    if trainer.get("limit_val_batches") == 0:
        return "trainer.limit_val_batches=0 turns validation off"
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if every is not None and epochs not in (None, -1) and every > epochs:
        return f"no epoch validates with trainer.check_val_every_n_epoch={every} above trainer.max_epochs={epochs}"
    return None


def check_objective_validated(config: DictConfig, swept: list[str]) -> None:
    """Refuse a sweep ranked by a validation metric that the values its jobs share keep every job from recording,
    before anything trains: found at the end, each job failed after its training. Where a `swept` key may decide it
    (the trainer's or the objective's, or a config group, which may set them), each job finds it (objective_value).
    A single run is not refused: it ranks nothing."""
    groups = config.hydra.runtime.choices
    if any(key.lstrip("+~") in groups or key.lstrip("+~").startswith(("trainer.", "objective")) for key in swept):
        return
    metric = config.objective.metric
    if metric.startswith("val/") and (reason := validation_off(config.trainer)):
        raise ConfigError(f"objective.metric={metric} is never recorded: {reason}; {UNVALIDATED_FIX}")


def objective_value(config: DictConfig, metrics: dict[str, float]) -> float:
    """The final value of the objective's metric: what a sweep's job returns for Hydra's sweepers to optimise."""
    metric = config.objective.metric
    if metric not in metrics:
        fix = f"; validation did not run: {UNVALIDATED_FIX}" if metric.startswith("val/") else ""
        raise ConfigError(f"objective.metric={metric} was not recorded; recorded metrics: {', '.join(sorted(metrics))}"
                          f"{fix}")
    return metrics[metric]


def one_line(error: Exception) -> str:
    if isinstance(error, MissingConfigException) and error.options:
        group = error.missing_cfg_file.rsplit("/", 1)[0]
        return f"{str(error).splitlines()[0]}; available {group} options: {', '.join(sorted(error.options))}"
    if isinstance(error, MissingMandatoryValue) and error.full_key:  # a `???` in a config, e.g. data=csv's data.target
        return f"{error.full_key} has no value: set it on the command line ({error.full_key}=...)"
    cause = error.__cause__
    # a list for a config (trainer.callbacks=[], for none): OmegaConf's "Cannot merge DictConfig with ListConfig"
    if (isinstance(error, ConfigCompositionException) and isinstance(cause, ConfigTypeError)
            and isinstance(cause.parent_node, DictConfig)):
        override = str(error).removeprefix("Error merging override ")
        return (f"{override}: expected a config like the default, got a list; "
                f"{keys_one_by_one(cause.full_key, cause.parent_node)}")
    if isinstance(cause, ConfigError):  # raised while Hydra instantiated a config: ours is the message
        return str(cause)
    # OmegaConf's cause: its first line says what is wrong; the others are its internals (full_key, object_type)
    message = str(error) + (f" ({str(cause).splitlines()[0]})" if isinstance(cause, OmegaConfBaseException) else "")
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


# Bad input: what a user's config or command line got wrong, told in its message (exit status 2)
BAD_INPUT = (ConfigError, HydraException, OmegaConfBaseException)


def error_line(error: BaseException) -> str:
    """An error in one line: bad input as its message, anything else with its type (`ValueError: ...`)."""
    if isinstance(error, BAD_INPUT):
        return one_line(error)
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def start_folder() -> Path:
    """The folder the command was started in (Hydra's runtime.cwd): relative paths the user gives or expects
    (the store's mlflow.db and mlruns/, hydra.sweep.dir, the data) are there, while hydra.job.chdir=true makes the
    working directory the job's output folder."""
    return Path(get_original_cwd())


DATA_PATHS = ("paths.data_dir", "data.path")  # the data_dir first: data.path and data.root interpolate it


def make_paths_absolute(config: DictConfig, keys: Iterable[str] = DATA_PATHS) -> None:
    """Set the relative paths at `keys` (the data's, EXPERIMENTS_DATA_DIR=data and a dataset's file; predict's files)
    and a relative SQLite store's (tracking.tracking_uri=sqlite:///runs.db) to absolute paths, resolved against the
    folder the command was started in, not the working directory, which hydra.job.chdir=true makes the job's output
    folder (in a sweep's jobs too): the files are read from, or written to, the folder meant (a sweep's parent and
    jobs in one store), the run records them so (params, config.yaml, model.pt), and predict and resume find them
    from any folder."""
    for key in keys:
        path = OmegaConf.select(config, key)
        if path is not None and not Path(str(path)).is_absolute():  # str: a file named by a number (data.path=2024),
            OmegaConf.update(config, key, str(start_folder() / str(path)))  # which Hydra reads as one
    if (path := store.sqlite_path(config.tracking.tracking_uri)) is not None and not path.is_absolute():
        config.tracking.tracking_uri = f"sqlite:///{start_folder() / path}"


def missing_folders(folder: Path) -> list[Path]:
    """The folders that creating `folder` creates: itself and each parent that does not exist yet, innermost first;
    none where it exists."""
    folder = folder.absolute()
    return list(itertools.takewhile(lambda path: not path.exists(), (folder, *folder.parents)))


def remove_folders(folders: list[Path]) -> None:
    """Remove the folders `missing_folders` named, once this command created them: the first with all it holds, the
    parents only while empty (another command's output folder may have come into one since)."""
    if folders:
        shutil.rmtree(folders[0], ignore_errors=True)
    with suppress(OSError):
        for parent in folders[1:]:
            parent.rmdir()


def check_writable(folder: Path, key: str) -> None:
    """Refuse a folder (`key`: hydra.run.dir, hydra.sweep.dir, a checkpoint folder) this command cannot create or write
    in, before anything is written: Hydra's own attempt was an OSError's traceback, a sweep's once its parent run had
    opened, a checkpoint's at the run's first save. Tried by creating it and a folder in it (Hydra writes .hydra/
    there), then removing what this created."""
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=folder))
    except OSError as error:
        raise ConfigError(f"{key}={folder}: the folder cannot be written ({error.strerror}); set {key} to a folder "
                          "you can write to") from None
    finally:
        remove_folders(created)


# The folders Hydra creates for this command's run (RunFolder), while they hold nothing worth keeping: until the run's
# MLflow run opens (keep_run_folder)
new_run_folders: list[Path] = []


class RunFolder(Callback):
    """Notes the folders Hydra is about to create for a run (registered under `hydra.callbacks` in the configs), so
    that a run rejected as bad input before anything ran removes them (reported_as_one_line): no folder of a run that
    never ran among the real ones. A folder that existed before (`hydra.run.dir=.`, a user's own) is never removed;
    a sweep's folder is ParentRun's (sweep.py)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # for a `hydra:` value in the folder's name, as when Hydra makes it
        folder = Path(config.hydra.run.dir)
        new_run_folders[:] = missing_folders(folder)
        with reported_as_one_line():  # raised, an error would be Hydra's warning, and its mkdir's traceback follow
            check_writable(folder, "hydra.run.dir")


def keep_run_folder() -> None:
    """The run's MLflow run opened: its output folder holds its log and files, whatever ends it."""
    new_run_folders.clear()


@contextmanager
def reported_as_one_line():
    """Turn bad input into one line on stderr and exit status 2; other errors keep their traceback. A run rejected so
    before its MLflow run opened leaves no output folder (RunFolder): nothing ran, and the line says what was wrong.

    Used inside the job too: an exception leaving a job makes Hydra print a line of its own first.
    """
    try:
        yield
    except BAD_INPUT as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        remove_folders(new_run_folders)
        sys.exit(2)


PACKAGE_DIR = str(Path(__file__).parent)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Other warnings of our dependencies that ask nothing of our users: Lightning's hint to start the command
# with srun wherever SLURM is installed (a job sent by hydra/launcher=slurm already runs under srun)
NOT_FOR_USERS = ("The `srun` command is available on your system but is not used",)


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's warnings as records of the `py.warnings` logger, as `logging.captureWarnings` makes them, but a
    dependency's deprecation notice (or one of NOT_FOR_USERS) at level INFO: it asks our dependencies' authors,
    not our users, to change code, so it goes to the job's log file and not to the console (conf/config.yaml,
    hydra.job_logging)."""
    notice = (issubclass(category, DEPRECATIONS) and not filename.startswith(PACKAGE_DIR)
              or str(message).startswith(NOT_FOR_USERS))
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").log(logging.INFO if notice else logging.WARNING, "%s", text)


# Whether heavy_import has frozen objects, kept here as gc.get_freeze_count() counts them one by one: 0.06 s a call
# once experiments.run's are frozen, 0.25 s of a tiny run's 6 s
frozen = False


def heavy_import(name: str) -> ModuleType:
    """Import module `name` and the libraries behind it (torch, Lightning, MLflow: objects that live as long as
    the process, about 600,000 of them for experiments.run) without the garbage collector, then freeze every object out
    of its later collections (gc.freeze, which Python provides for such long-lived objects).

    Each full collection scans every object, and one falls due whenever they grow by a quarter: while importing
    experiments.run, a second of its 4.5 s here; later, one in nearly every run scanned the libraries again (0.3 s
    of REFERENCE.md A2's 2.6 s fit). A freeze also keeps the garbage there is at that moment (15,000 objects after
    experiments.run), so it is done once per module and process, not once per job; and a later one collects first
    (over the objects not frozen, a few milliseconds in a run), as a sweep's later job may import a module that the
    jobs before it did not, whose garbage (a data module's tensors among it) is not to be kept."""
    global frozen
    if name in sys.modules:
        return sys.modules[name]
    if frozen:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        if not frozen:
            atexit.register(unfreeze_at_exit)
        gc.freeze()
        frozen = True
        if enabled:
            gc.enable()


def unfreeze_at_exit() -> None:
    """Give the frozen objects back to the collector for the interpreter's last collection, after its modules are
    cleared, where extensions check that their objects are freed (triton's bindings print a line for each one
    left), without the full collection before it that would scan them all (half a second)."""
    gc.disable()
    gc.unfreeze()


def command_name() -> str:
    """The command as the user typed it: `python -m experiments`, not the file Python ran (`__main__.py`)."""
    spec = sys.modules["__main__"].__spec__
    return f"python -m {spec.name.removesuffix('.__main__')}" if spec else Path(sys.argv[0]).name


# The config `python -m experiments` composes (its hydra.main's); a command given another (-cp, -cd, -cn) has it named
# in the commands it prints
CONFIG_PATH, CONFIG_NAME = "pkg://experiments.conf", "config"


def config_flags(hydra_config: DictConfig) -> list[str]:
    """The flags (`-cp`, `-cd`, `-cn`) that chose the config of the command whose `hydra` node is `hydra_config`,
    where it gave any, for a command it prints to run some of its jobs again with that config: Hydra keeps them not
    among its overrides but in the config sources it searched and the config name."""
    flags = []
    for source in hydra_config.runtime.config_sources:
        if source.provider == "main" and f"{source.schema}://{source.path}" != CONFIG_PATH:
            flags += ["-cp", f"pkg://{source.path}" if source.schema == "pkg" else source.path]  # a file's: absolute
        elif source.provider == "command-line":  # -cd, a folder's absolute path
            flags += ["-cd", source.path]
    return flags + (["-cn", hydra_config.job.config_name] if hydra_config.job.config_name != CONFIG_NAME else [])


# What Hydra's flags ask of a command (their `dest` in its parser), one at a time (_run_hydra refuses more)
COMMAND_FLAGS = ("run", "multirun", "cfg", "info", "shell_completion")


def check_flags() -> argparse.Namespace:
    """A flag Hydra does not take (`--foo`, `--cfg foo`), overrides on both sides of a flag (`data=xor -m seed=1,2`:
    argparse takes one run of them), or flags Hydra does not take together (`-m --cfg hydra`), as one line, as bad
    input, where argparse would print Hydra's usage block under the name of the file Python ran (`usage: __main__.py
    ...`) and Hydra raise a ValueError. Parsed by Hydra's own parser, which then parses the command line again: its
    flags (--help, --cfg, -m, ...) work as ever. The flags parsed."""
    def refuse(message: str) -> None:
        print(f"error: {message}; {command_name()} --help lists the options (key=value), --hydra-help the flags",
              file=sys.stderr)
        sys.exit(2)

    parser = get_args_parser()
    parser.error = refuse
    flags, unparsed = parser.parse_known_args()
    if unparsed and not any(arg.startswith("-") for arg in unparsed):  # argparse takes one run of overrides only
        refuse(f"{' '.join(unparsed)} after a flag that follows other overrides: give the flags first, then all "
               f"the overrides ({command_name()} -m key=value ...)")
    if unparsed:
        refuse(f"unrecognized arguments: {' '.join(unparsed)}")
    names = {dest: f"--{dest.replace('_', '-')}" for dest in COMMAND_FLAGS}
    given = [name for dest, name in names.items() if getattr(flags, dest) not in (None, False)]
    if len(given) > 1:
        refuse(f"{' and '.join(given)} cannot be used together: give one of {', '.join(names.values())} at a time")
    if flags.resolve and flags.cfg is None and not flags.help:
        refuse("--resolve goes with --cfg or --help only")
    return flags


# The config groups a run cannot do without: `~scheduler` trains at a constant rate, `~experiment` and `~hparams_search`
# leave their defaults out, but `~model` was "Key 'model' is not in struct" (~optimizer an interpolation's error)
REQUIRED_GROUPS = ("data", "model", "loss", "metrics", "optimizer", "trainer", "tracking")


def check_group_overrides(flags: argparse.Namespace) -> None:
    """Refuse a config group set to null on the command line (`scheduler=null`, or among a sweep's values), or one a run
    needs removed (`~model`), naming its options as Hydra names them for an option it does not have: Hydra refuses the
    null with a bare ValueError and its traceback, the removal where a run reads the group, in OmegaConf's words. The
    config groups are looked up (Hydra's config repository) only where there is such an override."""
    overrides = OverridesParser.create().parse_overrides(flags.overrides)
    refused = [(override, "a config group takes one of its options, not null") for override in overrides
               if not override.is_delete() and "." not in override.key_or_group
               and None in (override.value().list if isinstance(override.value(), ChoiceSweep) else [override.value()])]
    refused += [(override, "a run needs this config group, which cannot be removed") for override in overrides
                if override.is_delete() and override.key_or_group in REQUIRED_GROUPS]
    if not refused:
        return
    search_path = create_automatic_config_search_path(None, None, flags.config_path or CONFIG_PATH)
    if flags.config_dir:  # -cd, as Hydra adds it
        search_path.prepend("command-line", f"file://{os.path.abspath(flags.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    repository = ConfigRepository(search_path)
    for override, problem in refused:
        if options := repository.get_group_options(override.key_or_group):
            raise ConfigError(f"{override.input_line}: {problem}; leave the override out for the group's default, or "
                              f"choose one of the available {override.key_or_group} options: {', '.join(options)}")


exit_status: int | None = None  # the app's, once it has ended without an uncaught exception (run_app)
# What a stop by a signal ends before the command's last line (`error: stopped by ...`), which its own lines then
# precede: a sweep's parent run, whose line says which jobs did not run (sweep.ParentRun)
at_stop: list[Callable[[], None]] = []


def run_app(app) -> None:
    """Run a Hydra app, printing bad input as one line, with the libraries' chatter in the job's log file,
    and a stop by SIGINT or SIGTERM as one line with exit status 130 or 143 (the runs it stopped end KILLED).

    Hydra reports config errors over several lines; asked to raise them instead (HYDRA_FULL_ERROR),
    it lets us print one. A user who sets HYDRA_FULL_ERROR themselves gets Hydra's full report.
    `-v` (or `--verbose`) is `hydra.verbose=true`: every library's lines on the console too.
    The process ends once the app and the exit handlers are done, without the interpreter's teardown
    (`end_without_teardown`).
    """
    global exit_status
    sys.argv = ["hydra.verbose=true" if arg in ("-v", "--verbose") else arg for arg in sys.argv]
    flags = check_flags()
    # MLflow would give its loggers a console handler of their own when imported; this leaves them to the
    # job's logging config, which sends their lines to the log file
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # nor draw a progress bar on the console for each artifact it copies (a tabular run's model.pt, twice)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.showwarning = log_warning
    stop_on_signals()
    atexit.register(end_without_teardown)  # before the libraries' exit handlers, so that it runs after them
    try:
        if "HYDRA_FULL_ERROR" in os.environ:
            app()
        else:
            os.environ["HYDRA_FULL_ERROR"] = "1"
            with reported_as_one_line():
                check_group_overrides(flags)
                app()
    except Stopped as stop:
        for end in at_stop:
            try:
                end()
            except Exception as error:  # noqa: BLE001 - the stop's line and exit status still come last
                print(f"error: ending the sweep at the stop failed: {error_line(error)}", file=sys.stderr)
        print(f"error: {stop}", file=sys.stderr)
        exit_status = stop.exit_code
        sys.exit(stop.exit_code)
    except SystemExit as ending:
        # Python's own reading of its code: a number is the status, None is 0, anything else is printed and is 1
        exit_status = ending.code if isinstance(ending.code, int) else int(ending.code is not None)
        raise
    exit_status = 0


def end_without_teardown() -> None:
    """End the process once the other exit handlers have run (MLflow's, which ends an active run; joblib's,
    which stops its workers; ...) and the console and log files are flushed, without the interpreter's
    teardown, whose last garbage collections and freeing of the libraries' objects (a million) take 1.2 s
    after a run here: longer than the whole training of a tiny run. After an uncaught exception, the
    interpreter ends as usual."""
    if exit_status is None:
        return
    logging.shutdown()  # registered when logging was imported, before this, so due after it
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe or stream: nothing left to write to
            stream.flush()
    os._exit(exit_status)
