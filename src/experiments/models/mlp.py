"""Fully connected networks: `linear` is an MLP with no hidden layers."""
import math

import torch
from torch import nn

from experiments.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=1)}
INITS = ("default", "zeros", "normal")


def make_activation(name: str, option: str) -> nn.Module:
    """The activation `name`, which the config's `option` gives."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"{option}={name} is not an activation; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Flatten, then Linear layers of `hidden_sizes` with their activations, then a Linear output layer.

    activation: one name for every hidden layer, or a list with one name per hidden layer.
    init: "default" keeps PyTorch's initialisation, "zeros" sets every weight and bias to 0 (the
    symmetry the tutorial shows), "normal" draws weights from N(0, init_std²) and zeroes biases.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden_sizes: list[int],
        activation: str | list[str],
        output_activation: str | None,
        init: str,
        init_std: float,
    ):
        activations = [activation] * len(hidden_sizes) if isinstance(activation, str) else list(activation)
        if len(activations) != len(hidden_sizes):
            raise ConfigError(f"model.activation lists {len(activations)} activations for {len(hidden_sizes)} hidden "
                              "layers; give one for them all (model.activation=relu) or a list of one per layer")
        if init not in INITS:
            raise ConfigError(f"model.init={init} is not an initialisation; choose one of {', '.join(INITS)}")
        sizes = [math.prod(input_shape), *hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out, name in zip(sizes, sizes[1:], activations):
            layers += [nn.Linear(n_in, n_out), make_activation(name, "model.activation")]
        layers.append(nn.Linear(sizes[-1], num_outputs))
        if output_activation:
            layers.append(make_activation(output_activation, "model.output_activation"))
        super().__init__(*layers)
        self.hidden_layers = len(hidden_sizes)
        self._initialise(init, init_std)

    def _initialise(self, init: str, std: float) -> None:
        if init == "default":
            return
        for layer in self:
            if isinstance(layer, nn.Linear):
                with torch.no_grad():
                    nn.init.zeros_(layer.bias)
                    if init == "zeros":
                        nn.init.zeros_(layer.weight)
                    else:
                        nn.init.normal_(layer.weight, std=std)

    def diagnostics(self) -> dict[str, float]:
        """How many first-hidden-layer units differ (the zero-initialisation symmetry leaves 1)."""
        if not self.hidden_layers:
            return {}
        first = self[1]
        units = torch.cat([first.weight, first.bias.unsqueeze(1)], dim=1).detach()
        # rounded: the same arithmetic on identical units may still differ in the last bits
        return {"distinct_hidden_units": float(len(torch.unique((units * 1e6).round(), dim=0)))}
