"""The pixel-mean baseline of REFERENCE.md D: nearest class-mean image by RMS distance."""
import torch
from torch import nn


class MeanImages(nn.Module):
    """Class-mean images computed by `fit` (no gradient training).

    The output follows the targets' encoding: one output (0/1 targets) gives d0 - d1, positive when
    nearer the mean of class 1, so sigmoid(output) > 0.5 picks class 1; several outputs give -d per class.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int):
        super().__init__()
        self.binary = num_outputs == 1
        self.register_buffer("means", torch.zeros(max(num_outputs, 2), *input_shape))

    @torch.no_grad()
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        labels = targets.view(-1).long()
        for label in range(len(self.means)):
            self.means[label] = inputs[labels == label].mean(dim=0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        distances = (inputs.unsqueeze(1) - self.means).pow(2).flatten(2).mean(dim=2).sqrt()
        return distances[:, :1] - distances[:, 1:] if self.binary else -distances
