"""Losses that torch.nn does not have (the config's `loss` group names torch.nn ones directly)."""
import torch


def mnist_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """REFERENCE.md D: with p = sigmoid(output), the mean of 1 - p where the target is 1, and p where it is 0."""
    p = outputs.sigmoid()
    return torch.where(targets == 1, 1 - p, p).mean()
