"""`python -m experiments.reproduce [presets=[a,b]]`: reproduce REFERENCE.md and report published against ours.

All the chosen `experiment=` presets run as one Hydra multirun of `python -m experiments`, each
job tagged with this reproduction's id; the report is then read back from MLflow: each preset's
`published` block (its metric, value and time) beside what the run logged.
"""
import subprocess
import sys
import uuid
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments import store
from experiments.cli import reported_as_one_line, run_app
from experiments.errors import ConfigError
from experiments.ranges import check_ranges

COLUMNS = ("experiment", "reference", "metric", "published", "ours", "fit seconds", "published seconds", "verdict")


def all_presets() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in files("experiments.conf").joinpath("experiment").iterdir()
                  if p.name.endswith(".yaml"))


def verdict(metric: str | None, published: float | None, ours: float | None, at_most: bool,
            tolerance: DictConfig) -> str:
    """'yes' when ours is within tolerance of the published number, 'no' when not, 'n/a' with none published."""
    if metric is None or published is None:
        return "n/a"
    if ours is None:
        return "no"
    if at_most:
        ok = ours <= published
    elif "accuracy" in metric:
        ok = ours >= published - tolerance.accuracy
    elif "mse" in metric or "loss" in metric:
        ok = abs(ours - published) <= tolerance.mse
    else:
        ok = ours == published
    return "yes" if ok else "no"


def _number(text: str | None) -> float | None:
    return None if text in (None, "None") else float(text)


def report_rows(runs, tolerance: DictConfig) -> list[dict[str, str]]:
    rows = []
    for run in sorted(runs, key=lambda r: r.data.tags["choice.experiment"]):
        params, metrics = run.data.params, run.data.metrics
        metric = None if params.get("published.metric") in (None, "None") else params["published.metric"]
        published, ours = _number(params.get("published.value")), metrics.get(metric) if metric else None
        if run.info.status != "FINISHED":
            ours = None
        published_seconds = _number(params.get("published.seconds"))
        rows.append({
            "experiment": run.data.tags["choice.experiment"],
            "reference": params.get("published.reference", ""),
            "metric": metric or "",
            "published": "" if published is None else f"{published:.4g}",
            "ours": "" if ours is None else f"{ours:.4g}",
            "fit seconds": f"{metrics['time/fit_seconds']:.2f}" if "time/fit_seconds" in metrics else "",
            "published seconds": "" if published_seconds is None else f"{published_seconds:.2f}",
            "verdict": verdict(metric, published, ours, params.get("published.at_most") == "True", tolerance),
        })
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[column] for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@hydra.main(config_path="pkg://experiments.conf", config_name="reproduce", version_base="1.3")
def app(config: DictConfig) -> None:
    with reported_as_one_line():
        check_ranges(config)
        presets = all_presets() if config.presets == "all" else list(config.presets)
        unknown = set(presets) - set(all_presets())
        if unknown:
            raise ConfigError(f"unknown presets {', '.join(sorted(unknown))}; available: {', '.join(all_presets())}")
        reproduction = uuid.uuid4().hex[:12]
        command = [sys.executable, "-m", "experiments", "-m", f"experiment={','.join(presets)}",
                   f"+reproduction={reproduction}",
                   f"tracking.tracking_uri={config.tracking.tracking_uri}",
                   f"tracking.experiment_name={config.tracking.experiment_name}", *config.overrides]
        subprocess.run(command, check=False)

        import mlflow  # after the jobs: keeps this command's start-up light

        store.use(config.tracking.tracking_uri)
        runs = mlflow.search_runs(experiment_names=[config.tracking.experiment_name], output_format="list",
                                  filter_string=f"params.reproduction = '{reproduction}'")
        rows = report_rows(runs, config.tolerance)
        missing = sorted(set(presets) - {row["experiment"] for row in rows})
        table = markdown(rows) + "".join(f"\n{name}: no run recorded (it failed to start)\n" for name in missing)
        path = Path(HydraConfig.get().runtime.output_dir) / config.report
        path.write_text(f"# Reproduction {reproduction}\n\n{table}")
        mlflow.set_experiment(config.tracking.experiment_name)
        with mlflow.start_run(run_name=f"reproduction-{reproduction}"):
            mlflow.log_text(table, "reproduction.md")
            mlflow.log_table({column: [row[column] for row in rows] for column in COLUMNS}, "reproduction.json")
            mlflow.log_metrics({"rows": len(rows), "within_tolerance": sum(r["verdict"] == "yes" for r in rows)})
        print(f"\n{table}\nReport: {path}")


if __name__ == "__main__":
    run_app(app)
