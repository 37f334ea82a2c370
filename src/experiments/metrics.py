"""Metrics, each a function (outputs, targets) -> scalar tensor, averaged over batches by Lightning.

Accuracy is written here rather than taken from torchmetrics because its rule follows the data's
target encoding (argmax, sign of ±1 targets, threshold for 0/1), which torchmetrics has no one class for.
"""
import torch


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, *, encoding: str, threshold: float) -> torch.Tensor:
    """Share of samples classified correctly.

    encoding index: argmax of the outputs equals the class; onehot: argmax equals the target's argmax;
    sign: the sign of the output equals the ±1 target; binary: output > threshold equals the 0/1 target.
    """
    if encoding == "index":
        correct = outputs.argmax(dim=1) == targets
    elif encoding == "onehot":
        correct = outputs.argmax(dim=1) == targets.argmax(dim=1)
    elif encoding == "sign":
        correct = (outputs >= 0) == (targets > 0)
    elif encoding == "binary":
        correct = (outputs > threshold) == (targets > 0.5)
    else:
        raise ValueError(f"accuracy has no rule for target encoding {encoding!r}")
    return correct.float().mean()


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, targets.float().view_as(outputs))
