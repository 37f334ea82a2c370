"""Convolutional networks for 1×28×28 images (MNIST, Fashion-MNIST)."""
import torch
import torchvision
from torch import nn

from experiments.errors import ConfigError

IMAGE_SHAPE = (1, 28, 28)


def require_image_input(model: str, input_shape: tuple[int, ...]) -> None:
    if tuple(input_shape) != IMAGE_SHAPE:
        raise ConfigError(
            f"model {model} expects input shape {IMAGE_SHAPE} (1-channel 28×28 images), "
            f"the data gives {tuple(input_shape)}; use an image dataset such as data=mnist"
        )


class CNN(nn.Sequential):
    """REFERENCE.md A1: conv 16 5×5 pad 2, pool, conv 32 5×5 pad 2, pool, 120, 84, logits (212,542 parameters)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int):
        require_image_input("cnn", input_shape)
        super().__init__(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_outputs),
        )


class LeNet(nn.Sequential):
    """REFERENCE.md B: conv 20 5×5, pool, conv 50 5×5, pool, 500, logits (431,080 parameters)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int):
        require_image_input("lenet", input_shape)
        super().__init__(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
            nn.Linear(500, num_outputs),
        )


def resnet18(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """torchvision's ResNet-18, untrained, its first convolution taking 1 channel instead of 3."""
    require_image_input("resnet18", input_shape)
    model = torchvision.models.resnet18(weights=None, num_classes=num_outputs)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
