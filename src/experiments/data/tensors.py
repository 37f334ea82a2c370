"""The in-memory data module every dataset is served through.

Each split is a pair of tensors held whole in memory; a batch is one indexing operation on them,
where a DataLoader over a TensorDataset fetches and collates sample by sample. For the MNIST CNN
that difference is small (scripts/benchmark_mnist.py times both); it grows as the model shrinks.
"""
from dataclasses import dataclass

import lightning as L
import torch


Inputs = torch.Tensor | tuple[torch.Tensor, ...]  # a tuple for a model with several inputs


def take(inputs: Inputs, index) -> Inputs:
    """`inputs[index]`, of each tensor when there are several inputs."""
    return inputs[index] if isinstance(inputs, torch.Tensor) else tuple(x[index] for x in inputs)


@dataclass
class Split:
    inputs: Inputs
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int) -> "Split":
        return Split(take(self.inputs, slice(n)), self.targets[:n])


class TensorBatches:
    """Yields (inputs, targets) batches of a Split, reshuffled each epoch from a seeded generator."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start : start + self.batch_size]
            yield take(self.split.inputs, index), self.split.targets[index]


class TensorDataModule(L.LightningDataModule):
    """Train, validation and (optional) test splits as tensors.

    `scale`, `mean` and `std` normalise inputs per batch after the transfer to the device
    (x / scale - mean) / std, so images can stay uint8 in memory.
    """

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        target_encoding: str,
        scale: float = 1.0,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.target_encoding = target_encoding
        self.scale, self.mean, self.std = scale, mean, std

    @property
    def input_shape(self) -> tuple:
        """The shape of one sample's input; a tuple of shapes when there are several inputs."""
        if isinstance(self.train.inputs, torch.Tensor):
            return tuple(self.train.inputs.shape[1:])
        return tuple(tuple(x.shape[1:]) for x in self.train.inputs)

    @property
    def num_outputs(self) -> int:
        """Output units a model needs for these targets: classes, one-hot width or 1."""
        if self.target_encoding == "index":
            return int(self.train.targets.max()) + 1
        return self.train.targets.shape[1] if self.train.targets.dim() > 1 else 1

    def train_dataloader(self):
        return TensorBatches(self.train, self.batch_size, self.shuffle, self.seed)

    def val_dataloader(self):
        return TensorBatches(self.val, self.batch_size, shuffle=False, seed=self.seed)

    def test_dataloader(self):
        return TensorBatches(self.test, self.batch_size, shuffle=False, seed=self.seed)

    def normalize(self, inputs: Inputs) -> Inputs:
        if not isinstance(inputs, torch.Tensor):
            return tuple(self.normalize(x) for x in inputs)
        inputs = inputs.float()
        if (self.scale, self.mean, self.std) == (1.0, 0.0, 1.0):
            return inputs
        return (inputs / self.scale - self.mean) / self.std

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        inputs, targets = batch
        return self.normalize(inputs), targets

    def log_extras(self, model: torch.nn.Module) -> dict[str, float]:
        """Log what this dataset adds to a run after training (baselines, plots) to the active MLflow
        run; return the metrics among it. Nothing by default."""
        return {}
