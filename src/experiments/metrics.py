"""Metrics, each a function (outputs, targets) -> scalar tensor over all of an epoch's samples (task.py).

Accuracy is written here rather than taken from torchmetrics because its rule follows the data's
target encoding (argmax, sign of ±1 targets, threshold for 0/1), which torchmetrics has no one class for.
The regression metrics are plain functions rather than torchmetrics' Metric objects, whose update,
compute and reset took 0.28 ms an epoch for the four (REFERENCE.md A2: 0.14 s of a 2.3 s fit; these take
0.05 ms), and rather than its functional r2_score, which vmap cannot batch (vectorized.py).
"""
import functools

import torch
from torchmetrics import Metric

from experiments.losses import mnist_loss


def binary_threshold(loss) -> float:
    """The output above which a 0/1 target's class is 1, for `loss` (a torch.nn loss, or a partial of a function
    of losses.py): 0 where the loss trains each output as a logit (BCEWithLogitsLoss, mnist_loss: class 1 where its
    sigmoid is above 0.5), else 0.5 (MSE trains the outputs towards the 0/1 targets themselves)."""
    logits = isinstance(loss, torch.nn.BCEWithLogitsLoss) or getattr(loss, "func", None) is mnist_loss
    return 0.0 if logits else 0.5


def configured_metrics(metrics: dict, loss) -> dict:
    """The config's metrics, instantiated, for a run with `loss` (configured_metric); those set to null dropped
    (metrics.r2=null)."""
    return {name: configured_metric(metric, loss) for name, metric in metrics.items() if metric is not None}


def configured_metric(metric, loss):
    """One of the config's metrics, instantiated, for a run with `loss`: a threshold left null (metrics=accuracy's,
    for 0/1 targets) set for the loss (binary_threshold), and a torchmetrics Metric class given as a partial built. A
    preset's function metric has `_partial_: true`, which a Metric given in its place keeps (Hydra merges
    `+metrics.r2={_target_:torchmetrics.R2Score}` into metrics=regression's r2): called with an epoch's outputs and
    targets, the class would take them for its options."""
    if isinstance(metric, functools.partial) and isinstance(metric.func, type) and issubclass(metric.func, Metric):
        return metric()
    if isinstance(metric, functools.partial) and metric.keywords.get("threshold", 0.0) is None:
        threshold = binary_threshold(loss)
        return functools.partial(metric.func, *metric.args, **metric.keywords | {"threshold": threshold})
    return metric


def class_threshold(metrics: dict, loss) -> float:
    """The output above which a 0/1 target's class is 1 in a run with these configured metrics and `loss`: its
    accuracy's threshold, else the loss's (binary_threshold)."""
    threshold = getattr(metrics.get("accuracy"), "keywords", {}).get("threshold")
    return binary_threshold(loss) if threshold is None else threshold


def predicted_labels(outputs: torch.Tensor, encoding: str, threshold: float = 0.5) -> torch.Tensor:
    """The class each output picks: argmax (index, onehot), its sign (sign), or above `threshold` (binary)."""
    if encoding in ("index", "onehot"):
        return outputs.argmax(dim=1)
    if encoding == "sign":
        return (outputs >= 0).long().view(-1)
    if encoding == "binary":
        return (outputs > threshold).long().view(-1)
    raise ValueError(f"no class rule for target encoding {encoding!r}")


def true_labels(targets: torch.Tensor, encoding: str) -> torch.Tensor:
    """The class of each target in `encoding`."""
    if encoding == "index":
        return targets
    if encoding == "onehot":
        return targets.argmax(dim=1)
    return (targets > (0 if encoding == "sign" else 0.5)).long().view(-1)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, *, encoding: str, threshold: float) -> torch.Tensor:
    """Share of samples whose predicted class (see `predicted_labels`) is the target's."""
    return (predicted_labels(outputs, encoding, threshold) == true_labels(targets, encoding)).float().mean()


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, targets.float().view_as(outputs))


def rmse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return mse(outputs, targets).sqrt()


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.l1_loss(outputs, targets.float().view_as(outputs))


def r2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The coefficient of determination of each output column, averaged (as torchmetrics' R2Score and
    scikit-learn's r2_score). Where a column's targets are constant, 1 if it predicts them exactly, else 0 (as
    scikit-learn); NaN for a single sample, whose R² is undefined (scikit-learn: NaN, torchmetrics: an error)."""
    targets = targets.float().view_as(outputs)
    residual = ((targets - outputs) ** 2).sum(0)
    total = ((targets - targets.mean(0)) ** 2).sum(0)
    r2 = torch.where(total > 0, 1 - residual / total, (residual == 0).float()).mean()
    return r2 if len(targets) > 1 else torch.full_like(r2, float("nan"))
