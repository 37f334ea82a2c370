"""The pictures a run logs to MLflow (under plots/) and saves in its output folder.

Every run: the loss curves. 2-D classification: the decision boundary beside the loss curves, as
REFERENCE.md E shows them. Multi-class classification: the confusion matrix on the test (else
validation) split.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window: runs on servers and in CI

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import mlflow
import torch
from sklearn.metrics import ConfusionMatrixDisplay

from experiments.metrics import predicted_labels, true_labels
from experiments.task import apply

CLASSIFICATION = ("index", "onehot", "sign", "binary")


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
    with torch.no_grad():
        outputs = model(datamodule.normalize(torch.stack([xx.flatten(), yy.flatten()], dim=1)))
    classes = predicted_labels(outputs, datamodule.target_encoding, threshold).view(xx.shape)
    ax.contourf(xx, yy, classes, alpha=0.3, cmap="coolwarm")
    points, targets = datamodule.train.inputs, datamodule.train.targets
    ax.scatter(points[:, 0], points[:, 1], c=true_labels(targets, datamodule.target_encoding), cmap="coolwarm",
               s=12, edgecolors="k", linewidths=0.3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x0", ylabel="x1", title="Decision boundary")


def draw_confusion_matrix(ax, model, datamodule) -> None:
    on_test = datamodule.test is not None
    predicted, actual = [], []
    with torch.no_grad():
        for inputs, targets in datamodule.test_dataloader() if on_test else datamodule.val_dataloader():
            outputs = apply(model, datamodule.normalize(inputs))  # several inputs: a tuple
            predicted.append(predicted_labels(outputs, datamodule.target_encoding))
            actual.append(true_labels(targets, datamodule.target_encoding))
    ConfusionMatrixDisplay.from_predictions(torch.cat(actual), torch.cat(predicted), ax=ax, colorbar=False)
    ax.set(title=f"Confusion matrix ({'test' if on_test else 'validation'})")


def log_plots(run_id: str, model, datamodule, threshold: float, output_dir: Path | None) -> list[str]:
    """Draw the plots that fit this run, log each to MLflow and save it to `output_dir`; return their names."""
    model = model.eval()
    encoding = datamodule.target_encoding
    figures = {}
    if mlflow.MlflowClient().get_metric_history(run_id, "train/loss"):
        figure, ax = plt.subplots(figsize=(6, 4))
        draw_loss_curves(ax, run_id)
        figures["loss_curves.png"] = figure
    if datamodule.input_shape == (2,) and encoding in CLASSIFICATION:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        draw_decision_boundary(left, model, datamodule, threshold)
        draw_loss_curves(right, run_id)
        figures["decision_boundary.png"] = figure
    if encoding in ("index", "onehot") and datamodule.num_outputs > 2:
        figure, ax = plt.subplots(figsize=(7, 6))
        draw_confusion_matrix(ax, model, datamodule)
        figures["confusion_matrix.png"] = figure
    for name, figure in figures.items():
        figure.tight_layout()
        mlflow.log_figure(figure, f"plots/{name}")
        if output_dir is not None:
            figure.savefig(output_dir / name)
        plt.close(figure)
    return list(figures)
