"""Metrics, each a function (outputs, targets) -> scalar tensor, averaged over batches by Lightning.

Accuracy is written here rather than taken from torchmetrics because its rule follows the data's
target encoding (argmax, sign of ±1 targets, threshold for 0/1), which torchmetrics has no one class for.
"""
import torch


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
