"""The pictures a run logs to MLflow (under plots/) and saves in its output folder.

Every run: the loss curves. 2-D classification: the decision boundary beside the loss curves, as
REFERENCE.md E shows them. Multi-class classification: the confusion matrix on the test (else
validation) split. Regression: predicted against actual on the validation split.

Figures are built with matplotlib's object API on an Agg canvas, not with pyplot: nothing is kept
in pyplot's global list of open figures, and no display or GUI backend is needed, whatever the
user's matplotlib backend is.
"""
import tempfile
from pathlib import Path

import mlflow
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments.metrics import predicted_labels, true_labels
from experiments.task import predict

CLASSIFICATION = ("index", "onehot", "sign", "binary")


def new_figure(width: float, height: float, columns: int = 1):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def draw_loss_curves(ax, run_id: str) -> None:
    client = mlflow.MlflowClient()
    for stage in ("train", "val"):
        values = [m.value for m in sorted(client.get_metric_history(run_id, f"{stage}/loss"), key=lambda m: m.step)]
        ax.plot(range(1, len(values) + 1), values, label=stage)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()


def draw_decision_boundary(ax, model, datamodule, threshold: float) -> None:
    """Filled contour of the predicted class over the unit square, the training points on top."""
    grid = torch.linspace(0, 1, 200)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    outputs = predict(model, datamodule.normalize(torch.stack([xx.flatten(), yy.flatten()], dim=1)))
    classes = predicted_labels(outputs, datamodule.target_encoding, threshold).view(xx.shape)
    ax.contourf(xx, yy, classes, alpha=0.3, cmap="coolwarm")
    points, targets = datamodule.train.inputs, datamodule.train.targets
    ax.scatter(points[:, 0], points[:, 1], c=true_labels(targets, datamodule.target_encoding), cmap="coolwarm",
               s=12, edgecolors="k", linewidths=0.3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x0", ylabel="x1", title="Decision boundary")


def draw_confusion_matrix(ax, model, datamodule) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay  # here: scikit-learn's import costs every other run 0.1 s

    on_test = datamodule.test is not None
    split = datamodule.test if on_test else datamodule.val
    predicted = predicted_labels(predict(model, datamodule.normalize(split.inputs)), datamodule.target_encoding)
    actual = true_labels(split.targets, datamodule.target_encoding)
    ConfusionMatrixDisplay.from_predictions(actual, predicted, ax=ax, colorbar=False)
    ax.set(title=f"Confusion matrix ({'test' if on_test else 'validation'})")


def draw_predicted_vs_actual(ax, model, datamodule) -> None:
    """Predictions against the validation targets, with the line of perfect predictions (y = x):
    points above it are overestimates, below it underestimates."""
    predicted = predict(model, datamodule.normalize(datamodule.val.inputs)).numpy().ravel()
    actual = datamodule.val.targets.numpy().ravel()
    target = getattr(datamodule, "target_name", "target")
    ax.scatter(actual, predicted, s=10, alpha=0.6)
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = actual")
    ax.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", aspect="equal",
           title=f"Predicted vs actual (validation, {len(actual)} rows)")
    ax.legend(loc="upper left")


def log_plots(run_id: str, model, datamodule, threshold: float, output_dir: Path | None) -> list[str]:
    """Draw the plots that fit this run, log each to MLflow and save it to `output_dir`; return their names."""
    model.eval()
    encoding = datamodule.target_encoding
    figures = {}
    if mlflow.MlflowClient().get_metric_history(run_id, "train/loss"):
        figure, ax = new_figure(6, 4)
        draw_loss_curves(ax, run_id)
        figures["loss_curves.png"] = figure
    if datamodule.input_shape == (2,) and encoding in CLASSIFICATION:
        figure, (left, right) = new_figure(11, 4.5, columns=2)
        draw_decision_boundary(left, model, datamodule, threshold)
        draw_loss_curves(right, run_id)
        figures["decision_boundary.png"] = figure
    if encoding in ("index", "onehot") and datamodule.num_outputs > 2:
        figure, ax = new_figure(7, 6)
        draw_confusion_matrix(ax, model, datamodule)
        figures["confusion_matrix.png"] = figure
    if encoding == "regression":
        figure, ax = new_figure(5, 5)
        draw_predicted_vs_actual(ax, model, datamodule)
        figures["predicted_vs_actual.png"] = figure
    folder = output_dir or Path(tempfile.mkdtemp())  # runs from Python have no output folder
    for name, figure in figures.items():
        figure.savefig(folder / name)  # drawn once, for the folder and the run (a figure takes 0.1 to 0.3 s)
        mlflow.log_artifact(str(folder / name), "plots")
    return list(figures)
