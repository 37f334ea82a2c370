"""How the run's plots are drawn (plots.py says which, from the model's predictions): matplotlib only, from
arrays, so that a separate process can draw them without torch or the model.

Figures are built with matplotlib's object API on an Agg canvas, not with pyplot: nothing is kept
in pyplot's global list of open figures, and no display or GUI backend is needed, whatever the
user's matplotlib backend is. Their margins are fixed, not laid out by matplotlib (constrained or
tight layout): measuring every label to lay out a figure took 0.07 s of the 0.2 s a figure costs,
in every job of a sweep; the sizes below leave room for the labels these figures have. Likewise
their titles sit at the top of their axes (`axes.titley`), where matplotlib would place them after
measuring the axes' decorations at every draw (0.02 s a figure; the same pixels here, as these axes
have nothing above them).
"""
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# A plot: its size in inches and a function per panel, side by side, that draws it on its axes
Plot = tuple[tuple[float, float], list[Callable]]


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list]:
    """A figure of `columns` axes side by side, with fixed margins (see the module's docstring): 0.9 inch on
    the left and 0.6 inch below for tick labels and axis labels, 0.4 inch on top for the title."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.9 / width, right=1 - 0.25 / width, bottom=0.6 / height, top=1 - 0.4 / height,
                           wspace=0.3 if columns > 1 else None)
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


def draw_loss_curves(ax, losses: dict[str, dict[int, float]]) -> None:
    for stage, values in losses.items():
        # markers where the points are few: a validation every n epochs, or a single one, shows as dots
        ax.plot(list(values), list(values.values()), label=stage, marker="o" if len(values) < 50 else None,
                markersize=3)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()


def draw_decision_boundary(ax, xx: np.ndarray, yy: np.ndarray, classes: np.ndarray, points: np.ndarray,
                           labels: np.ndarray) -> None:
    """Filled contour of the predicted `classes` over the grid `xx`, `yy` of the unit square, the training
    `points` on top, coloured by their `labels`."""
    ax.contourf(xx, yy, classes, alpha=0.3, cmap="coolwarm")
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="coolwarm", s=12, edgecolors="k", linewidths=0.3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x0", ylabel="x1", title="Decision boundary")


def draw_confusion_matrix(ax, actual: np.ndarray, predicted: np.ndarray, split: str) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay  # here: scikit-learn's import costs every other run 0.1 s

    ConfusionMatrixDisplay.from_predictions(actual, predicted, ax=ax, colorbar=False)
    ax.set(title=f"Confusion matrix ({split})")


def draw_predicted_vs_actual(ax, actual: np.ndarray, predicted: np.ndarray, target: str) -> None:
    """Predictions against the validation targets, with the line of perfect predictions (y = x):
    points above it are overestimates, below it underestimates."""
    ax.scatter(actual, predicted, s=10, alpha=0.6)
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = actual")
    ax.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", aspect="equal",
           title=f"Predicted vs actual (validation, {len(actual)} rows)")
    ax.legend(loc="upper left")


def save(plots: dict[str, Plot], folder: Path) -> None:
    """Draw `plots` (by file name) and save each in `folder` as a PNG file."""
    with matplotlib.rc_context({"axes.titley": 1.0}):  # titles at the top, not measured (see the module's docstring)
        for name, ((width, height), panels) in plots.items():
            figure, axes = new_figure(width, height, columns=len(panels))
            for ax, draw in zip(axes, panels):
                draw(ax)
            # PNG's fastest compression: 0.02 s less a figure, files 20% larger
            figure.savefig(folder / name, pil_kwargs={"compress_level": 1})


def save_apart(plots: dict[str, Plot], folder: Path) -> None:
    """save, in the drawing worker (drawing.py). A warning fails it, as an error does: the run's process
    then draws the plots itself, its warnings and error going where the run's go (its log, its end)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logging.basicConfig(handlers=[Refusing()], level=logging.WARNING, force=True)
        save(plots, folder)


class Refusing(logging.Handler):
    """A log handler that raises on any record (save_apart)."""

    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError(record.getMessage())
