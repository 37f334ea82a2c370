"""Figures logged beside a run, one function per plot, each returning a matplotlib Figure.

Figures are built with matplotlib's object API on an Agg canvas, not with pyplot: nothing is kept
in pyplot's global list of open figures, and no display or GUI backend is needed, whatever the
user's matplotlib backend is.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, target: str, split: str) -> Figure:
    """Scatter of the model's predictions of `target` against its values in `split`, with the line of perfect
    predictions (y = x): points above it are overestimates, below it underestimates."""
    predicted, actual = np.ravel(predicted), np.ravel(actual)
    figure = Figure(figsize=(5, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.scatter(actual, predicted, s=10, alpha=0.6)
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = actual")
    axes.set(xlabel=f"actual {target}", ylabel=f"predicted {target}",
             title=f"Predicted vs actual ({split}, {len(actual)} rows)",
             aspect="equal")
    axes.legend(loc="upper left")
    return figure
