"""The results table printed at the end of a run."""
from lightning.pytorch.utilities.model_summary import ModelSummary
from rich.console import Console
from rich.table import Table

from experiments.task import STAGES


def print_model_summary(task) -> str:
    """Print and return Lightning's summary of the model: each layer with its input and output sizes
    (from the task's example_input_array, a batch of 2) and parameter count, then the totals."""
    summary = str(ModelSummary(task, max_depth=-1))
    print(summary)
    return summary


def print_results(title: str, results: dict[str, float], run_id: str, ui_command: str) -> None:
    """Loss and metrics per stage (a row each, a column per stage), then fit time and the MLflow run."""
    names = dict.fromkeys(key.split("/", 1)[1] for key in results if key.split("/", 1)[0] in STAGES)
    stages = [stage for stage in STAGES if any(key.startswith(f"{stage}/") for key in results)]
    table = Table(title=title)
    table.add_column("")
    for stage in stages:
        table.add_column(stage, justify="right")
    for name in names:
        table.add_row(name, *(f"{results[f'{s}/{name}']:.4g}" if f"{s}/{name}" in results else "" for s in stages))
    console = Console()
    console.print(table)
    console.print(
        f"fit time {results['time/fit_seconds']:.2f} s ({results['time/samples_per_second']:,.0f} samples/s)"
        f" · MLflow run {run_id}\nOpen the MLflow UI on this store: {ui_command}",
        soft_wrap=True,
    )
