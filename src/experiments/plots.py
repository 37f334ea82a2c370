"""The pictures a run logs to MLflow (under plots/) and saves in its output folder.

Every run: the loss curves. 2-D classification: the decision boundary beside the loss curves, as
REFERENCE.md E shows them. Multi-class classification: the confusion matrix on the test (else
validation) split. Regression: predicted against actual on the validation split.

Figures are built with matplotlib's object API on an Agg canvas, not with pyplot: nothing is kept
in pyplot's global list of open figures, and no display or GUI backend is needed, whatever the
user's matplotlib backend is. Their margins are fixed, not laid out by matplotlib (constrained or
tight layout): measuring every label to lay out a figure took 0.07 s of the 0.2 s a figure costs,
in every job of a sweep; the sizes below leave room for the labels these figures have. Likewise
their titles sit at the top of their axes (`axes.titley`), where matplotlib would place them after
measuring the axes' decorations at every draw (0.02 s a figure; the same pixels here, as these axes
have nothing above them).
"""
import tempfile
from pathlib import Path

import matplotlib
import mlflow
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments.metrics import predicted_labels, true_labels
from experiments.task import predict

CLASSIFICATION = ("index", "onehot", "sign", "binary")


def new_figure(width: float, height: float, columns: int = 1):
    """A figure of `columns` axes side by side, with fixed margins (see the module's docstring): 0.9 inch on
    the left and 0.6 inch below for tick labels and axis labels, 0.4 inch on top for the title."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.9 / width, right=1 - 0.25 / width, bottom=0.6 / height, top=1 - 0.4 / height,
                           wspace=0.3 if columns > 1 else None)
    return figure, figure.subplots(1, columns)


def loss_history(run_id: str) -> dict[str, dict[int, float]]:
    """The run's `train/loss` and `val/loss` as recorded in MLflow, by epoch (from 1). Every epoch trains, so the
    n-th step of `train/loss` is epoch n's; the validation's values are at the steps of the epochs that validated
    (every `trainer.check_val_every_n_epoch`)."""
    client = mlflow.MlflowClient()
    histories = {stage: client.get_metric_history(run_id, f"{stage}/loss") for stage in ("train", "val")}
    epochs = {step: epoch for epoch, step in enumerate(sorted(m.step for m in histories["train"]), start=1)}
    return {stage: dict(sorted((epochs[m.step], m.value) for m in history if m.step in epochs))
            for stage, history in histories.items()}


def draw_loss_curves(ax, losses: dict[str, dict[int, float]]) -> None:
    for stage, values in losses.items():
        # markers where the points are few: a validation every n epochs, or a single one, shows as dots
        ax.plot(list(values), list(values.values()), label=stage, marker="o" if len(values) < 50 else None,
                markersize=3)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()


def draw_decision_boundary(ax, model, datamodule, threshold: float) -> None:
    """Filled contour of the predicted class over the unit square, the training points on top."""
    grid = torch.linspace(0, 1, 200)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    # 40,000 rows of 2 inputs: one batch
    outputs = predict(model, datamodule.normalize(torch.stack([xx.flatten(), yy.flatten()], dim=1)), xx.numel())
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


def log_plots(model, datamodule, threshold: float, losses: dict[str, dict[int, float]],
              output_dir: Path | None) -> list[str]:
    """Draw the plots that fit this run, log each to the active MLflow run and save it to `output_dir`; return
    their names. `losses`: each stage's loss by epoch, as `loss_history` reads them."""
    with matplotlib.rc_context({"axes.titley": 1.0}):  # titles at the top, not measured (see the module's docstring)
        figures = draw_plots(model, datamodule, threshold, losses)
    folder = output_dir or Path(tempfile.mkdtemp())  # runs from Python have no output folder
    for name, figure in figures.items():
        # drawn once, for the folder and the run; PNG's fastest compression: 0.02 s less a figure, files 20% larger
        figure.savefig(folder / name, pil_kwargs={"compress_level": 1})
        mlflow.log_artifact(str(folder / name), "plots")
    return list(figures)


def draw_plots(model, datamodule, threshold: float, losses: dict[str, dict[int, float]]) -> dict[str, Figure]:
    """The figures that fit this run, by file name (see log_plots)."""
    model.eval()
    encoding = datamodule.target_encoding
    figures = {}
    if losses["train"]:
        figure, ax = new_figure(6, 4)
        draw_loss_curves(ax, losses)
        figures["loss_curves.png"] = figure
    if datamodule.input_shape == (2,) and encoding in CLASSIFICATION:
        figure, (left, right) = new_figure(11, 4.5, columns=2)
        draw_decision_boundary(left, model, datamodule, threshold)
        draw_loss_curves(right, losses)
        figures["decision_boundary.png"] = figure
    if encoding in ("index", "onehot") and datamodule.num_outputs > 2:
        figure, ax = new_figure(7, 6)
        draw_confusion_matrix(ax, model, datamodule)
        figures["confusion_matrix.png"] = figure
    if encoding == "regression":
        figure, ax = new_figure(5, 5)
        draw_predicted_vs_actual(ax, model, datamodule)
        figures["predicted_vs_actual.png"] = figure
    return figures
