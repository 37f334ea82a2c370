"""The pictures a run logs to MLflow (under plots/) and saves in its output folder; figures.py draws them.

Every run: the loss curves. 2-D classification: the decision boundary beside the loss curves, as
REFERENCE.md E shows them. Multi-class classification: the confusion matrix on the test (else
validation) split. Regression: predicted against actual on the validation split.

Where a second core is free, they are drawn in a worker process (drawing.py) while the run logs its
model. The model's predictions are computed here, so that the worker needs neither torch nor the model.
"""
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlflow
import torch

from experiments import drawing, figures
from experiments.metrics import predicted_labels, true_labels
from experiments.task import predict

CLASSIFICATION = ("index", "onehot", "sign", "binary")


def loss_history(run_id: str) -> dict[str, dict[int, float]]:
    """The run's `train/loss` and `val/loss` as recorded in MLflow, by epoch (from 1). Every epoch trains, so the
    n-th step of `train/loss` is epoch n's; the validation's values are at the steps of the epochs that validated
    (every `trainer.check_val_every_n_epoch`)."""
    client = mlflow.MlflowClient()
    histories = {stage: client.get_metric_history(run_id, f"{stage}/loss") for stage in ("train", "val")}
    epochs = {step: epoch for epoch, step in enumerate(sorted(m.step for m in histories["train"]), start=1)}
    return {stage: dict(sorted((epochs[m.step], m.value) for m in history if m.step in epochs))
            for stage, history in histories.items()}


def decision_boundary(model, datamodule, threshold: float) -> Callable:
    """The panel of the predicted class over the unit square, the training points on top."""
    grid = torch.linspace(0, 1, 200)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    # 40,000 rows of 2 inputs: one batch
    outputs = predict(model, datamodule.normalize(torch.stack([xx.flatten(), yy.flatten()], dim=1)), xx.numel())
    classes = predicted_labels(outputs, datamodule.target_encoding, threshold).view(xx.shape)
    labels = true_labels(datamodule.train.targets, datamodule.target_encoding)
    return partial(figures.draw_decision_boundary, xx=xx.numpy(), yy=yy.numpy(), classes=classes.numpy(),
                   points=datamodule.train.inputs.numpy(), labels=labels.numpy())


def confusion_matrix(model, datamodule) -> Callable:
    """The panel of the confusion matrix on the test split, else the validation split."""
    on_test = datamodule.test is not None
    split = datamodule.test if on_test else datamodule.val
    predicted = predicted_labels(predict(model, datamodule.normalize(split.inputs)), datamodule.target_encoding)
    actual = true_labels(split.targets, datamodule.target_encoding)
    return partial(figures.draw_confusion_matrix, actual=actual.numpy(), predicted=predicted.numpy(),
                   split="test" if on_test else "validation")


def predicted_vs_actual(model, datamodule) -> Callable:
    """The panel of the predictions against the validation targets."""
    return partial(figures.draw_predicted_vs_actual, actual=datamodule.val.targets.numpy().ravel(),
                   predicted=predict(model, datamodule.normalize(datamodule.val.inputs)).numpy().ravel(),
                   target=getattr(datamodule, "target_name", "target"))


def plots_to_draw(model, datamodule, threshold: float,
                  losses: dict[str, dict[int, float]]) -> dict[str, figures.Plot]:
    """The plots that fit this run, by file name, from the model's predictions."""
    model.eval()
    encoding = datamodule.target_encoding
    loss_curves = partial(figures.draw_loss_curves, losses=losses)
    plots = {}
    if losses["train"]:
        plots["loss_curves.png"] = ((6, 4), [loss_curves])
    if datamodule.input_shape == (2,) and encoding in CLASSIFICATION:
        plots["decision_boundary.png"] = ((11, 4.5), [decision_boundary(model, datamodule, threshold), loss_curves])
    if encoding in ("index", "onehot") and datamodule.num_outputs > 2:
        plots["confusion_matrix.png"] = ((7, 6), [confusion_matrix(model, datamodule)])
    if encoding == "regression":
        plots["predicted_vs_actual.png"] = ((5, 5), [predicted_vs_actual(model, datamodule)])
    return plots


def start_plots(model, datamodule, threshold: float, losses: dict[str, dict[int, float]],
                output_dir: Path | None) -> Callable[[], list[str]]:
    """Start drawing the plots that fit this run, to be saved in `output_dir`, and return the function that logs
    them to the active MLflow run once drawn, returning their names. `losses`: each stage's loss by epoch, as
    `loss_history` reads them."""
    plots = plots_to_draw(model, datamodule, threshold, losses)
    folder = output_dir or Path(tempfile.mkdtemp())  # runs from Python have no output folder
    drawn = drawing.submit(figures.save_apart, plots, folder) if plots else None

    def log() -> list[str]:
        if drawn is None or drawn.exception() is not None:
            figures.save(plots, folder)  # here: its warnings go to the run's log, its error is the run's
        for name in plots:
            mlflow.log_artifact(str(folder / name), "plots")
        return list(plots)
    return log
