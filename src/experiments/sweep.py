"""A multirun as one MLflow parent run with a child run per job.

`ParentRun`, a Hydra callback (registered under `hydra.callbacks` in config.yaml), opens the parent
when the sweep starts and writes its id to a file in the sweep folder: every job reads it there,
whether it runs in the launching process (basic launcher), in a worker (joblib) or on another
machine (SLURM). When the sweep ends, the callback reads the children back from MLflow and logs
their summary, the best child and the objective against each swept parameter on the parent.

Parallel jobs can share the SQLite store: the parent is created before any job starts, so the
store's tables exist before concurrent writers arrive, and MLflow waits for a locked SQLite file
(its busy timeout is 20 s) instead of failing.

Only Hydra and OmegaConf are imported here: Hydra instantiates callbacks for every command,
`--help` included, so MLflow and matplotlib load only once a sweep starts or ends.
"""
import atexit
import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

PARENT_FILE = "mlflow_parent_run.json"


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line overrides with several values (`optimizer.lr=0.1,0.01`)
    and the search space of a sweeper such as Optuna (`hydra.sweeper.params`)."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.key_or_group for override in overrides if override.is_sweep_override()]
    return keys + [key for key in config.hydra.sweeper.get("params") or {} if key not in keys]


def job_parent() -> tuple[str, str] | None:
    """In a multirun job: the parent run's id, and this child's name made of its swept values
    (`model=mlp,optimizer.lr=0.1`). None outside a multirun (a single run, the Python API)."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_config.sweep.dir) / PARENT_FILE
    if not path.is_file():  # the callback is not registered (a user's own config): plain runs
        return None
    parent = json.loads(path.read_text())
    overrides = OverridesParser.create().parse_overrides(list(hydra_config.overrides.task))
    name = ",".join(f"{o.key_or_group}={o.value()}" for o in overrides if o.key_or_group in parent["swept"])
    return parent["run_id"], name or hydra_config.job.override_dirname


def swept_value(run, key: str) -> str:
    """A child's value of a swept key: its config group choice (`model`) or its param (`optimizer.lr`)."""
    key = key.lstrip("+~")
    return run.data.tags.get(f"choice.{key}", run.data.params.get(key, ""))


def children_table(runs, keys: list[str]):
    """One row per child: name, status, swept values, final metrics."""
    import pandas as pd

    rows = [{"run_name": run.info.run_name, "status": run.info.status,
             **{key: swept_value(run, key) for key in keys}, **run.data.metrics} for run in runs]
    return pd.DataFrame(rows, columns=None if rows else ["run_name", "status", *keys])


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


class ParentRun(Callback):
    """The MLflow parent run of a multirun (see the module's docstring)."""

    def __init__(self) -> None:
        # Plain strings only: launchers pickle the callbacks with each job (joblib, submitit).
        self.run_id = self.tracking_uri = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import mlflow

        HydraConfig.instance().set_config(config)  # the `hydra:` resolver in tracking_uri needs it
        self.tracking_uri = config.tracking.tracking_uri
        client = mlflow.MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(config.tracking.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            config.tracking.experiment_name)
        overrides = " ".join(config.hydra.overrides.task)
        keys = swept_keys(config)
        run = client.create_run(experiment_id, run_name=f"sweep {overrides}".strip(),
                                tags={"sweep.overrides": overrides})
        self.run_id = run.info.run_id
        sweep_dir = Path(config.hydra.sweep.dir)  # resolved once here: the jobs see the same ${now:} folder
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": self.run_id, "swept": keys}))
        client.log_dict(self.run_id, {"overrides": list(config.hydra.overrides.task), "swept": keys},
                        "sweep/overrides.json")
        atexit.register(self.end, "FAILED")  # a failed job stops the sweep before on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        keys = json.loads((sweep_dir / PARENT_FILE).read_text())["swept"]
        if (sweep_dir / "optimization_results.yaml").is_file():  # the Optuna sweeper's best trial
            client.log_artifact(self.run_id, str(sweep_dir / "optimization_results.yaml"), "sweep")
        runs = client.search_runs([client.get_run(self.run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{self.run_id}'", order_by=["attributes.start_time"])
        table = children_table(runs, keys)
        client.log_table(self.run_id, table, "sweep/children.json")
        client.log_text(self.run_id, markdown(table), "sweep/children.md")
        client.log_text(self.run_id, table.to_csv(index=False), "sweep/children.csv")
        metric, direction = config.objective.metric, config.objective.direction
        finished = table[(table["status"] == "FINISHED")]
        if metric in finished and finished[metric].notna().any():
            best = finished.loc[finished[metric].idxmin() if direction == "minimize" else finished[metric].idxmax()]
            best_run = runs[best.name]
            client.set_tag(self.run_id, "best.run_id", best_run.info.run_id)
            client.set_tag(self.run_id, "best.run_name", best_run.info.run_name)
            for key in keys:
                client.log_param(self.run_id, f"best.{key.lstrip('+~')}", best[key])
            client.log_metric(self.run_id, f"best/{metric}", float(best[metric]))
            if keys:
                client.log_figure(self.run_id, objective_figure(finished, keys, metric), "sweep/objective.png")
        self.end("FINISHED")

    def end(self, status: str) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.MlflowClient(self.tracking_uri).set_terminated(self.run_id, status)
            self.run_id = None
