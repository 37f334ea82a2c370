"""A regression model whose outputs are in the target's own units, learning standardised targets.

Targets in any units (prices in dollars, of order 1e5, or in thousands) train alike: the network
learns the target standardised on the training rows, and a fixed last layer, `outputs * std + mean`
(buffers, saved with the weights, never trained), scales its outputs back. The scaling lives in
the model rather than in the data module so that every path that runs the model (metrics, plots,
`model.pt`, `experiments.predict`, the MLflow model) gives the target's units without knowing about
it. The optimizer minimises the loss on the standardised scale (`standardise`, see Task.losses), so
its steps, weight decay and clipping do not depend on the units either; the logged loss stays in
the target's units.
"""
import torch
from torch import nn


class TargetScaled(nn.Module):
    def __init__(self, network: nn.Module, mean: float, std: float):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.network(*inputs) * self.std + self.mean

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        """Outputs or targets in the target's units, standardised as the network learns them."""
        return (values - self.mean) / self.std
