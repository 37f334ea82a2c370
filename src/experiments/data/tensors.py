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
    """Yields (inputs, targets) batches of a Split, reshuffled each epoch from a seeded generator.

    In a run of several processes (DDP), process `rank` of `world_size` takes every world_size-th
    sample of the epoch's order, the way DistributedSampler shards a DataLoader (Lightning adds that
    sampler to DataLoaders only, so these batches shard themselves). A training shard (`equal_shards`)
    is padded by repeating the order's first samples so that every process takes the same number of
    steps, as DDP's gradient exchange at each step needs; evaluation shards are not, so no sample is
    counted twice.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, equal_shards: bool = False):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.rank, self.world_size, self.equal_shards = rank, world_size, equal_shards
        self.generator = generator

    def _shard_size(self) -> int:
        n = len(self.split)
        return -(-n // self.world_size) if self.equal_shards else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._shard_size() // self.batch_size)

    def _order(self) -> torch.Tensor | None:
        """This process's sample indices for the epoch, in order; None for all samples in stored order."""
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        if self.world_size == 1:
            return order
        order = torch.arange(n) if order is None else order
        if self.equal_shards:
            order = order[torch.arange(self._shard_size() * self.world_size) % n]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        order = self._order()
        for start in range(0, self._shard_size(), self.batch_size):
            # stored order: a slice, which indexes without copying
            index = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
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
        self.batch_order = self.restored_batch_order = None  # the training batches' generator, its saved state

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

    def _batches(self, split: Split, training: bool) -> TensorBatches:
        trainer = self.trainer  # None until a Trainer runs this module (the one-batch check before a run)
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        generator = torch.Generator().manual_seed(self.seed)
        if training:
            self.batch_order = generator
            if self.restored_batch_order is not None:  # a resumed run: continue the interrupted one's order
                generator.set_state(self.restored_batch_order)
        return TensorBatches(split, self.batch_size, shuffle=self.shuffle and training, generator=generator,
                             rank=rank, world_size=world_size, equal_shards=training)

    def state_dict(self) -> dict:
        """Saved in a run's checkpoints: the generator of the training batches' order."""
        return {"batch_order": self.batch_order.get_state()} if self.batch_order is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restored when a run resumes, before Lightning asks for the training batches."""
        self.restored_batch_order = state.get("batch_order")

    def train_dataloader(self):
        return self._batches(self.train, training=True)

    def val_dataloader(self):
        return self._batches(self.val, training=False)

    def test_dataloader(self):
        return self._batches(self.test, training=False)

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
