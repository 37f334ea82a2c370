"""Built-in 2-D datasets, generated from a seed (REFERENCE.md C and E): no download needed."""
import torch

from experiments.data.tensors import Split, TensorDataModule
from experiments.errors import ConfigError, typed

TARGET_ENCODINGS = ("index", "onehot", "sign", "binary")


def encode(labels: torch.Tensor, encoding: str, num_classes: int = 2) -> torch.Tensor:
    """Class labels (0/1/...) as the targets a loss expects."""
    if encoding == "index":
        return labels.long()
    if encoding == "onehot":
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if encoding == "sign":
        return (labels.float() * 2 - 1).unsqueeze(1)
    if encoding == "binary":
        return labels.float().unsqueeze(1)
    raise ConfigError(f"data.targets={typed(encoding)} is not a target encoding; choose one of "
                      f"{', '.join(TARGET_ENCODINGS)}")


def _points_module(points, labels, *, targets, val_fraction, seed, **loader) -> TensorDataModule:
    """Split the points into train and validation; val_fraction 0 validates on the training points."""
    data = Split(points, encode(labels, targets))
    n_val = round(len(data) * val_fraction)
    if n_val == len(data):  # an empty training split: a RuntimeError in the run's build
        raise ConfigError(f"data.val_fraction={val_fraction} of {len(data)} points leaves none to train on; lower it "
                          "(0 validates on the training points)")
    if n_val == 0:
        return TensorDataModule(data, data, target_encoding=targets, num_classes=2, seed=seed, **loader)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    train = Split(data.inputs[order[n_val:]], data.targets[order[n_val:]])
    val = Split(data.inputs[order[:n_val]], data.targets[order[:n_val]])
    return TensorDataModule(train, val, target_encoding=targets, num_classes=2, seed=seed, **loader)


def _uniform_points(n_points: int, seed: int) -> torch.Tensor:
    return torch.rand(n_points, 2, generator=torch.Generator().manual_seed(seed))


def xor(**options) -> TensorDataModule:
    """The 4 XOR points: (0,0)->0, (0,1)->1, (1,0)->1, (1,1)->0."""
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    return _points_module(points, torch.tensor([0, 1, 1, 0]), **options)


def diagonal(n_points: int, offset: float, seed: int, **options) -> TensorDataModule:
    """E1: points uniform in the unit square, label x0 - x1 < offset."""
    points = _uniform_points(n_points, seed)
    return _points_module(points, points[:, 0] - points[:, 1] < offset, seed=seed, **options)


def circle(n_points: int, radius: float, seed: int, **options) -> TensorDataModule:
    """E2: points uniform in the unit square, label = inside the circle of `radius` around (0.5, 0.5)."""
    points = _uniform_points(n_points, seed)
    return _points_module(points, (points - 0.5).norm(dim=1) < radius, seed=seed, **options)
