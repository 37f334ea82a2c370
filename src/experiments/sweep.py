"""A multirun as one MLflow parent run with a child run per job.

`ParentRun`, a Hydra callback (registered under `hydra.callbacks` in config.yaml), opens the parent
when the sweep starts and writes its id to a file in the sweep folder: every job reads it there,
whether it runs in the launching process (basic launcher), in a worker (joblib) or on another
machine (SLURM). When the sweep ends, the callback reads the children back from MLflow and logs
their summary, the best child and the objective against each swept parameter on the parent.

A job that fails is recorded as a FAILED child with its error (`record_failed_job`, called by the app)
and the sweep goes on; when all jobs ran, the parent ends FAILED and the command exits 1. Parallel jobs
can share the SQLite store: experiments.store creates it one process at a time.

Only Hydra and OmegaConf are imported here: Hydra instantiates callbacks for every command,
`--help` included, so MLflow and matplotlib load only once a sweep starts or ends.
"""
import atexit
import json
import shlex
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments import cli, errors, store
from experiments.cli import (check_objective, check_objective_validated, check_override_types, check_progress,
                             check_writable, error_line, heavy_import, make_paths_absolute, missing_folders,
                             remove_folders, start_folder)
from experiments.ranges import check_ranges

PARENT_FILE = "mlflow_parent_run.json"


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line overrides with several values (`optimizer.lr=0.1,0.01`)
    and the search space of a sweeper such as Optuna (`hydra.sweeper.params`)."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.key_or_group for override in overrides if override.is_sweep_override()]
    return keys + [key for key in config.hydra.sweeper.get("params") or {} if key not in keys]


@dataclass
class Job:
    """A multirun job, as its child run records it."""
    parent_run_id: str
    name: str                # its swept values, `model=mlp,optimizer.lr=0.1`
    number: int              # Hydra's job number in the sweep (tag `sweep.job` of its child run)
    swept: dict[str, str]    # swept key: this job's value


def current_job() -> Job | None:
    """The multirun job running in this process; None outside a multirun (a single run, the Python API)."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    path = start_folder() / hydra_config.sweep.dir / PARENT_FILE  # a relative sweep.dir: not the job's folder
    if not path.is_file():  # the callback is not registered (a user's own config): plain runs
        return None
    parent = json.loads(path.read_text())
    overrides = [override for override in OverridesParser.create().parse_overrides(list(hydra_config.overrides.task))
                 if override.key_or_group in parent["swept"]]
    swept = {o.key_or_group: str(o.value()) for o in overrides}  # as the run's params show them
    # named by its overrides as written (`model.hidden_sizes=[8,8]`), not as Python prints their values ([8, 8])
    name = ",".join(f"{o.key_or_group}={o.get_value_element_as_str()}" for o in overrides)
    return Job(parent["run_id"], name or hydra_config.job.override_dirname, hydra_config.job.num, swept)


def child_runs(client, parent_run_id: str, where: str = "", order_by: list[str] | None = None) -> list:
    """Every child run (an MLflow Run) of the sweep's parent run `parent_run_id` that `where` (more of an MLflow
    filter) names, over all the pages of MLflow's search (a page holds 1,000)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' {where}",
                                  order_by=order_by, page_token=token)
        runs += page
        if not (token := page.token):
            return runs


def child_run(client, job: Job):
    """The child run `job` opened (an MLflow Run), or None where it opened none yet."""
    children = child_runs(client, job.parent_run_id, f"and tags.`sweep.job` = '{job.number}'")
    return children[0] if children else None


def record_failed_job(config: DictConfig, job: Job, error: Exception) -> None:
    """Print a failed job's error in one line and record it on its child run: FAILED, tag `error` holding the
    line, `error.txt` the traceback. A job that failed before opening its run (bad input) gets a child run
    then, named and tagged like the others, so that the sweep lists every job."""
    import traceback

    import mlflow

    line = error_line(error)
    print(f"error: job {job.number} ({job.name}) failed: {line}", file=sys.stderr)
    if store.unreachable(config.tracking.tracking_uri):  # a lost tracking server: nothing can be recorded there
        return
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    child = child_run(client, job)
    if child:
        run_id = child.info.run_id
    else:
        experiment_id = client.get_run(job.parent_run_id).info.experiment_id
        choices = HydraConfig.get().runtime.choices
        tags = {f"choice.{group}": str(option) for group, option in choices.items() if not group.startswith("hydra")}
        run_id = client.create_run(experiment_id, run_name=job.name, tags={
            **tags, "mlflow.parentRunId": job.parent_run_id, "sweep.job": str(job.number)}).info.run_id
        for key, value in job.swept.items():
            if f"choice.{key}" not in tags:
                client.log_param(run_id, key.lstrip("+~"), value)
    client.set_tag(run_id, "error", line)
    client.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
    client.set_terminated(run_id, "FAILED")


def swept_value(run, key: str) -> str:
    """A child's value of a swept key: its config group choice (`model`) or its param (`optimizer.lr`)."""
    key = key.lstrip("+~")
    return run.data.tags.get(f"choice.{key}", run.data.params.get(key, ""))


def children_table(runs, keys: list[str]):
    """One row per child: name, status, swept values, final metrics, the error of a failed one."""
    import pandas as pd

    rows = [{"job": run.data.tags.get("sweep.job", ""), "run_name": run.info.run_name, "status": run.info.status,
             **{key: swept_value(run, key) for key in keys}, **run.data.metrics,
             "error": run.data.tags.get("error", "")} for run in runs]
    return pd.DataFrame(rows, columns=None if rows else ["job", "run_name", "status", *keys, "error"])


def markdown(table) -> str:
    cells = table.map(lambda value: f"{value:.4g}" if isinstance(value, float) else str(value))
    rows = [list(table.columns), ["---"] * len(table.columns), *cells.values.tolist()]
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)


def objective_figure(table, keys: list[str], metric: str):
    """The objective against each swept parameter, one panel each; numbers on a numeric axis
    (logarithmic when they span a decade or more, as learning rates do), choices as categories."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5 * len(keys), 4), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        values = pd.to_numeric(table[key], errors="coerce")
        numeric = values.notna().all()
        ax.scatter(values if numeric else table[key].astype(str), table[metric])
        if numeric and (values > 0).all() and values.max() >= 10 * values.min():
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric, title=f"{metric} against {key}")
    return figure


def print_summary(table, keys: list[str], metric: str, parent_run_id: str, best_name: str | None,
                  where: str) -> None:
    """The sweep's end on the console: the parent run, a row per job (swept values, objective, status),
    the best job and where the summary is kept."""
    from rich.console import Console
    from rich.table import Table

    failed = (table["status"] != "FINISHED").sum()
    console = Console()
    rich_table = Table(title=f"sweep · {len(table)} jobs" + (f" · {failed} failed" if failed else ""))
    columns = ["job", *keys, metric, "status"]
    for column in columns:
        rich_table.add_column(column, justify="right" if column == metric else "left")
    for _, row in table.iterrows():
        value = row.get(metric)
        rich_table.add_row(*(str(row[c]) for c in columns[:-2]),
                           "" if value is None or value != value else f"{value:.4g}", row["status"])
    console.print(rich_table)
    console.print(f"best job: {best_name}" if best_name else f"best job: none ({metric} recorded by no finished job)",
                  soft_wrap=True)
    console.print(f"MLflow parent run {parent_run_id}; summary: {where}", soft_wrap=True)


def stop_with_one_line(action: str, error: Exception) -> None:
    """A callback's failure ends the command: Hydra would turn it into a warning and carry on, and the
    sweep would lose its parent run (jobs recorded as unrelated runs) or its summary."""
    print(f"error: {action}: {error_line(error)}", file=sys.stderr)
    sys.exit(2 if isinstance(error, cli.BAD_INPUT) else 1)


OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# Every combination of the swept values, in order: Hydra's basic sweeper and ours (hparams_search=none), the same but
# for composing each job's config once
BASIC_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  "hydra_plugins.experiments_sweeper.sweeper.ComposeOnceSweeper")
# The launchers that run every job of a sweep from this command, so that a job with no child run after a stop never
# ran (SLURM's jobs, once sent, go on without it)
LAUNCHERS_HERE = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                  "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                  "hydra_plugins.experiments_vectorized_launcher.vectorized_launcher.VectorizedLauncher")
MAX_COMMANDS = 10  # the commands a stopped sweep prints for its jobs that did not run; past it, only their count


def check_sweeper(sweeper: DictConfig) -> None:
    """Refuse a sweeper option these libraries cannot carry out, before the sweep starts. hydra-optuna-sweeper
    needs Optuna below 3, whose database storage writes its schema's version on a connection it never commits,
    which SQLAlchemy 2 (MLflow's) then rolls back: Optuna then fails with a bare AssertionError."""
    if sweeper.get("_target_") == OPTUNA_SWEEPER and sweeper.get("storage"):
        raise errors.ConfigError(
            f"hydra.sweeper.storage={sweeper.storage}: hydra-optuna-sweeper's Optuna (below 3) cannot keep a study "
            "in a database beside SQLAlchemy 2, which MLflow needs; leave it null (the study in memory, its trials "
            "and best one recorded in the sweep's MLflow runs)")


def check_accelerator(config: DictConfig) -> None:
    """Refuse the accelerator the jobs share where this machine has none of its devices (run.accelerator_problem),
    as each job would. Not for SLURM's jobs: they train on its nodes, whose devices the launching machine need not
    have. Lightning is imported (seconds) only for an accelerator asked for by name."""
    accelerator = config.trainer.get("accelerator")
    if accelerator in (None, "auto", "cpu") or "slurm" in str(config.hydra.launcher.get("_target_")).lower():
        return
    problem = heavy_import("experiments.run").accelerator_problem(accelerator)
    if problem is not None:
        raise errors.ConfigError(problem)


def numbers(indices: list[int]) -> str:
    """1,2,3,5 as 1-3,5."""
    runs, start = [], indices[0]
    for previous, current in zip(indices, indices[1:] + [None]):
        if current != previous + 1:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ",".join(runs)


def fixed_jobs(config: DictConfig) -> list[list[str]] | None:
    """The sweep's jobs in their order, each its overrides (`key=value`: the same keys in the same order), as Hydra's
    BasicSweeper expands its params and the command line's overrides; None where they are not such a list, all run by
    this command: another sweeper (Optuna draws each trial once others ended), a shuffled sweep (its order drawn anew
    each time), another launcher (SLURM's jobs, once sent, go on without it), or a sweep the BasicSweeper refuses."""
    if config.hydra.sweeper._target_ not in BASIC_SWEEPERS or config.hydra.launcher._target_ not in LAUNCHERS_HERE:
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    with suppress(HydraException):  # the sweeper says what is wrong as it starts
        # the config loader: glob(...) reads a config group's options
        overrides = OverridesParser.create(GlobalHydra.instance().config_loader()).parse_overrides(arguments)
        if not any(getattr(override.value(), "shuffle", False) for override in overrides
                   if override.is_sweep_override()):
            return BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]
    return None


def as_sweeps(jobs: list[list[str]]) -> list[list[list[str]]]:
    """`jobs` (each its overrides `key=value`, the same keys in the same order) as sweeps of every combination of their
    values, each a list of its overrides per key: jobs alike but for their first key's value share a sweep, and so on
    for the keys after it. Jobs #1-5 of a=1,2,3 b=10,20 are the sweeps a=1 b=20 and a=2,3 b=10,20."""
    if not jobs[0]:
        return [[]]
    rests: dict[str, list] = {}  # a first override: the other overrides of each job with it
    for first, *rest in jobs:
        rests.setdefault(first, []).append(tuple(rest))
    firsts: dict[tuple, list[str]] = {}  # the other overrides of some jobs: the first overrides each of them comes with
    for first, rest in rests.items():
        firsts.setdefault(tuple(rest), []).append(first)
    return [[values, *sweep] for rest, values in firsts.items() for sweep in as_sweeps(list(rest))]


def sweep_command(sweep: list[list[str]], hydra_arguments: list[str]) -> str:
    """The command that runs the jobs of `sweep` (one of as_sweeps'), with the config flags, -m and Hydra overrides of
    the sweep they are part of (a config folder, a launcher, a config search path)."""
    overrides = [f"{values[0].partition('=')[0]}={','.join(value.partition('=')[2] for value in values)}"
                 for values in sweep]
    return f"{cli.command_name()} {shlex.join([*hydra_arguments, *overrides])}"


class ParentRun(Callback):
    """The MLflow parent run of a multirun (see the module's docstring)."""

    def __init__(self) -> None:
        # Plain strings only: launchers pickle the callbacks with each job (joblib, submitit).
        self.run_id = self.tracking_uri = None
        self.new_folders: list[str] = []  # the sweep folder and its parents, where this command creates them
        self.jobs: list[list[str]] | None = None  # fixed_jobs': a stop tells from them which did not run
        self.hydra_arguments: list[str] = []  # the command line's config flags, -m and Hydra overrides: what the
                                              # command for the jobs left keeps

    def __getstate__(self) -> dict:
        # Without the jobs, which the jobs have no use for: pickled with each, they would grow as the square of them
        return {**vars(self), "jobs": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The values every job shares (the config before the swept ones), checked once: each job would fail alike.
        # Any error ends the command here: Hydra would make it a warning, and the sweep go on without its parent run
        try:
            check_sweeper(config.hydra.sweeper)
            HydraConfig.instance().set_config(config)  # where check_override_types reads the overrides
            check_override_types(config)
            check_ranges(config)
            check_objective(config)
            check_progress(config)
            check_objective_validated(config, swept_keys(config))
            store.check_experiment_name(config.tracking.experiment_name)
            check_accelerator(config)
            check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")
        except Exception as error:
            stop_with_one_line("the sweep cannot start", error)
        try:
            self.start(config)
        except Exception as error:
            stop_with_one_line("the sweep's parent run could not be opened", error)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        try:
            failed = self.summarise(config)
        except Exception as error:
            stop_with_one_line("the sweep's summary could not be recorded", error)
        if failed:
            print(f"error: {failed} of the sweep's jobs failed (the table above; each one's error is the tag `error` "
                  "of its run)", file=sys.stderr)
            sys.exit(1)

    def start(self, config: DictConfig) -> None:
        mlflow = heavy_import("mlflow")

        HydraConfig.instance().set_config(config)  # the `hydra:` resolver in tracking_uri needs it
        # the jobs' store from any folder: a stop amid a job ends the parent in the job's folder (hydra.job.chdir=true)
        make_paths_absolute(config)
        self.tracking_uri = config.tracking.tracking_uri
        experiment_id = store.experiment_id(self.tracking_uri, config.tracking.experiment_name, start_folder())
        client = mlflow.MlflowClient(self.tracking_uri)
        overrides = " ".join(config.hydra.overrides.task)
        keys = swept_keys(config)
        # a stop while the parent run opens comes once it is open and will be ended at a stop (KILLED): stopped in
        # between, it was left RUNNING
        with errors.stops_held_back("the sweep's parent run is open, to end it KILLED"):
            self.run_id = client.create_run(experiment_id, run_name=f"sweep {overrides}".strip(),
                                            tags={"sweep.overrides": overrides}).info.run_id
            atexit.register(self.end_at_exit)  # the sweep failed before on_multirun_end
            cli.at_stop.append(self.end_at_exit)  # or a signal stopped it: ended before the command's last line
        sweep_dir = Path(config.hydra.sweep.dir)  # resolved once here: the jobs see the same ${now:} folder
        self.new_folders = [str(folder) for folder in missing_folders(sweep_dir)]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": self.run_id, "swept": keys}))
        client.log_dict(self.run_id, {"overrides": list(config.hydra.overrides.task), "swept": keys},
                        "sweep/overrides.json")
        self.jobs = fixed_jobs(config)
        self.hydra_arguments = [*cli.config_flags(config.hydra), "-m",
                                *(flag for flag in config.hydra.overrides.hydra if flag != "hydra.mode=MULTIRUN")]

    def summarise(self, config: DictConfig) -> int:
        """Log the children's table, the best child and the objective plot on the parent, print them, end
        the parent (FAILED when a job failed); the number of jobs that failed."""
        import mlflow

        store.check_reachable(self.tracking_uri)  # in seconds: MLflow would retry a lost server for minutes
        client, parent_run_id = mlflow.MlflowClient(self.tracking_uri), self.run_id
        sweep_dir = Path(config.hydra.sweep.dir)
        keys = json.loads((sweep_dir / PARENT_FILE).read_text())["swept"]
        if (sweep_dir / "optimization_results.yaml").is_file():  # the Optuna sweeper's best trial
            client.log_artifact(self.run_id, str(sweep_dir / "optimization_results.yaml"), "sweep")
        runs = child_runs(client, self.run_id, order_by=["attributes.start_time"])
        runs.sort(key=lambda run: int(run.data.tags.get("sweep.job", len(runs))))  # in job order, parallel or not
        table = children_table(runs, keys)
        client.log_table(self.run_id, table, "sweep/children.json")
        client.log_text(self.run_id, markdown(table), "sweep/children.md")
        client.log_text(self.run_id, table.to_csv(index=False), "sweep/children.csv")
        table.to_csv(sweep_dir / "children.csv", index=False)
        metric, direction = config.objective.metric, config.objective.direction
        finished = table[(table["status"] == "FINISHED")]
        best_name = None
        if metric in finished and finished[metric].notna().any():
            best = finished.loc[finished[metric].idxmin() if direction == "minimize" else finished[metric].idxmax()]
            best_run = runs[best.name]
            best_name = f"{best_run.info.run_name} ({metric} {best[metric]:.4g}, run {best_run.info.run_id})"
            client.set_tag(self.run_id, "best.run_id", best_run.info.run_id)
            client.set_tag(self.run_id, "best.run_name", best_run.info.run_name)
            for key in keys:
                client.log_param(self.run_id, f"best.{key.lstrip('+~')}", best[key])
            client.log_metric(self.run_id, f"best/{metric}", float(best[metric]))
            if keys:
                client.log_figure(self.run_id, objective_figure(finished, keys, metric), "sweep/objective.png")
        failed = len(table) - len(finished)
        self.end("FAILED" if failed else "FINISHED")
        print_summary(table, keys, metric, parent_run_id, best_name,
                      f"{sweep_dir / 'children.csv'}, and the parent run's artifacts sweep/")
        return failed

    def end_at_exit(self) -> None:
        """The sweep ended before its summary: stopped by a signal (KILLED, see end_stopped), or failed. Failed before
        any job ran (an override that does not parse or compose), its parent run is deleted too: a sweep that never
        started leaves no empty run among the experiment's runs; rejected so as bad input (exit status 2), nor its
        sweep folder (multirun.yaml, the parent's id), where this command created it."""
        parent_run_id = self.run_id
        if parent_run_id is None:  # ended: summarised, or stopped
            return
        if errors.received_signal:
            self.end_stopped()
            return
        self.end("FAILED")
        if self.run_id is not None:  # not ended: the store is away
            return
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        # whether it has any child: one is enough (child_runs would read every page of a failed sweep's children)
        if not client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1):
            client.delete_run(parent_run_id)
            if cli.exit_status == 2:
                remove_folders([Path(folder) for folder in self.new_folders])

    def end_stopped(self) -> None:
        """A signal stopped the sweep: its parent run ends KILLED, and where the sweep's jobs are a list the command ran
        (fixed_jobs), a line says which of them did not run and the commands that run them (the parent run's tag
        `sweep.not_run` too). A job with no child run did not run, as far as anything recorded: a job opens its run
        before it trains, and one that fails before is given one (record_failed_job)."""
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        if not store.unreachable(self.tracking_uri) and (not_run := self.not_run(client)):
            client.set_tag(self.run_id, "sweep.not_run", not_run)
            print(f"parent run {self.run_id} KILLED: {not_run}", file=sys.stderr)
        self.end("KILLED")

    def not_run(self, client) -> str | None:
        """Which jobs of the sweep have no child run, and the commands that run them; None where every job has one, or
        the sweep's jobs are not a list fixed in advance."""
        if not self.jobs:
            return None
        ran = {run.data.tags.get("sweep.job") for run in child_runs(client, self.run_id)}
        left = [number for number in range(len(self.jobs)) if str(number) not in ran]
        if not left:
            return None
        commands = [sweep_command(sweep, self.hydra_arguments) for sweep in as_sweeps([self.jobs[n] for n in left])]
        jobs, them = ("jobs", "them") if len(left) > 1 else ("job", "it")
        text = f"{jobs} #{numbers(left)} of the sweep's {len(self.jobs)} did not run; run {them} with"
        if len(commands) == 1:
            return f"{text}: {commands[0]}"
        more = [f"  and {len(commands) - MAX_COMMANDS} more commands"] if len(commands) > MAX_COMMANDS else []
        return "\n".join([f"{text} these {len(commands)} commands:", *(f"  {c}" for c in commands[:MAX_COMMANDS]),
                          *more])

    def end(self, status: str) -> None:
        if self.run_id is not None and not store.unreachable(self.tracking_uri):
            import mlflow

            mlflow.MlflowClient(self.tracking_uri).set_terminated(self.run_id, status)
            self.run_id = None
