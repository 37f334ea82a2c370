"""What a run prints: its choices, the model summary, the results table and where the run and its files are."""
import logging
from pathlib import Path

from lightning.pytorch.utilities.model_summary import ModelSummary
from rich.console import Console
from rich.table import Table

from experiments.cli import start_folder
from experiments.task import STAGES

log = logging.getLogger(__name__)


def log_choices(choices: dict[str, str | None], overrides: list[str]) -> None:
    """One line with the option chosen in each config group, and the command line's other overrides."""
    chosen = [f"{group}={option}" for group, option in reversed(choices.items())  # in the defaults list's order
              if option not in (None, "none") and not group.startswith("hydra")]  # none: hparams_search's no search
    others = [override for override in overrides if override.split("=", 1)[0].lstrip("+~") not in choices]
    log.info(" ".join(chosen) + (f" · overrides: {' '.join(others)}" if others else ""))


class ModelLayers(ModelSummary):
    """Lightning's summary of a task, showing the layers of its model only: not the loss and metric modules
    (three stages of metrics: 14 rows of a regression run's 20, none with weights)."""

    @property
    def named_modules(self):
        return [(name, module) for name, module in super().named_modules if name.split(".")[0] == "model"]


# Summaries by architecture, and those printed, in this process: a sweep's jobs mostly share one model, whose
# summary costs 0.1 s a job (a forward pass counting FLOPs) and would print the same table for each job.
_summaries: dict[str, str] = {}
_printed: set[str] = set()


def model_summary(task) -> str:
    """Lightning's summary of the model: each layer with its input and output sizes (from the task's
    example_input_array, a batch of 2) and parameter count, then the totals. It depends on the architecture
    only (the layers, the parameters' shapes and the inputs' shapes), not on the weights."""
    inputs = task.example_input_array
    architecture = repr((task.model, [(name, p.shape) for name, p in task.model.named_parameters()],
                         [x.shape for x in (inputs if isinstance(inputs, tuple) else (inputs,))]))
    if architecture not in _summaries:
        _summaries[architecture] = str(ModelLayers(task, max_depth=-1))
    return _summaries[architecture]


def print_model_summary(summary: str) -> None:
    """Print a model's summary, unless this process printed it already (an earlier job of the sweep)."""
    if summary not in _printed:
        _printed.add(summary)
        print(summary)


def epochs_text(epochs: int) -> str:
    return f"{epochs} epoch" if epochs == 1 else f"{epochs} epochs"


def print_results(title: str, results: dict[str, float], run_id: str, ui_command: str,
                  output_dir: Path | None) -> None:
    """Loss and metrics per stage (a row each, a column per stage), then fit time, the MLflow run and the
    output folder with its files (these lines also go to the job's log file)."""
    names = dict.fromkeys(key.split("/", 1)[1] for key in results if key.split("/", 1)[0] in STAGES)
    stages = [stage for stage in STAGES if any(key.startswith(f"{stage}/") for key in results)]
    table = Table(title=title)
    table.add_column("")
    for stage in stages:
        table.add_column(stage, justify="right")
    for name in names:
        table.add_row(name, *(f"{results[f'{s}/{name}']:.4g}" if f"{s}/{name}" in results else "" for s in stages))
    Console().print(table)
    log.info(f"fit time {results['time/fit_seconds']:.2f} s ({results['time/samples_per_second']:,.0f} samples/s)")
    log.info(f"MLflow run {run_id} · open the MLflow UI on this store: {ui_command}")
    if output_dir is not None:
        files = sorted(path.name for path in output_dir.iterdir() if path.is_file())
        log.info(f"Output folder: {shown(output_dir)}/ ({', '.join(files)})")


def shown(path: Path) -> Path:
    """`path` relative to the folder the command was started in when inside it (outputs/<date>/<time>), else as it
    is: not to the working directory, which hydra.job.chdir=true makes the output folder itself (`./`)."""
    return path.relative_to(start_folder()) if path.is_relative_to(start_folder()) else path
