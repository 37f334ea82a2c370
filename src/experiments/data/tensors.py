"""The in-memory data module every dataset is served through.

Each split is a pair of tensors held whole in memory; a batch is one indexing operation on them,
where a DataLoader over a TensorDataset fetches and collates sample by sample. For the MNIST CNN
that difference is small (scripts/benchmark.py times both); it grows as the model shrinks.

A Lightning step gets a list of batches, not one: in a single process the whole epoch's, so that
Lightning's per-step work (some 30 hooks, the loop's bookkeeping) is paid once an epoch instead of
once a batch, which for the small models of REFERENCE.md cost more than the training itself (see
task.py and scripts/benchmark.py).
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

    def to(self, device: torch.device) -> "Split":
        inputs = self.inputs.to(device) if isinstance(self.inputs, torch.Tensor) else tuple(x.to(device) for x in self.inputs)
        return Split(inputs, self.targets.to(device))


class TensorBatches:
    """Yields lists of (inputs, targets) batches of a Split, reshuffled each epoch from a seeded generator:
    one list of every batch of the epoch, or with `whole_epoch` false a list of one batch per step.

    In a run of several processes (DDP), process `rank` of `world_size` takes every world_size-th
    sample of the epoch's order, the way DistributedSampler shards a DataLoader (Lightning adds that
    sampler to DataLoaders only, so these batches shard themselves). A training shard (`equal_shards`)
    is padded by repeating the order's first samples so that every process takes the same number of
    steps, as DDP's gradient exchange at each step needs; evaluation shards are not, so no sample is
    counted twice.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 rank: int = 0, world_size: int = 1, equal_shards: bool = False, whole_epoch: bool = True):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.rank, self.world_size, self.equal_shards = rank, world_size, equal_shards
        self.whole_epoch = whole_epoch
        self.generator = generator

    def _shard_size(self) -> int:
        n = len(self.split)
        return -(-n // self.world_size) if self.equal_shards else len(range(self.rank, n, self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        return -(-self._shard_size() // self.batch_size)

    def __len__(self) -> int:
        """Lightning steps per epoch."""
        return 1 if self.whole_epoch else self.batches_per_epoch

    def order(self) -> torch.Tensor | None:
        """This process's sample indices for the epoch, in order; None for all samples in stored order."""
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        if self.world_size == 1:
            return order
        order = torch.arange(n) if order is None else order
        if self.equal_shards:
            order = order[torch.arange(self._shard_size() * self.world_size) % n]
        return order[self.rank :: self.world_size]

    def batches(self):
        """The epoch's (inputs, targets) batches, in order."""
        order = self.order()
        for start in range(0, self._shard_size(), self.batch_size):
            # stored order: a slice, which indexes without copying
            index = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
            yield take(self.split.inputs, index), self.split.targets[index]

    def __iter__(self):
        if self.whole_epoch:
            yield list(self.batches())
        else:
            yield from ([batch] for batch in self.batches())


class TensorDataModule(L.LightningDataModule):
    """Train, validation and (optional) test splits as tensors.

    `scale`, `mean` and `std` normalise inputs per batch after the transfer to the device
    (x / scale - mean) / std, so images can stay uint8 in memory.

    A split goes to the training device whole, once, when a Trainer first asks for its batches, so that
    batches are indexed out of it there: no transfer per batch (on the CPU, Lightning's walk over each
    step's batches to move them cost as much as 5% of REFERENCE.md E2's training).
    """

    # Regression data sets these: the training targets' (mean, std), which the model's last layer
    # scales its outputs by (models/target_scale.py), and the fitted preprocessing of raw rows.
    target_scale: tuple[float, float] | None = None
    preprocessing = None

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
        num_classes: int | None = None,
        scale: float = 1.0,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.target_encoding = target_encoding
        self.num_classes = num_classes  # a classification's: the outputs a model gives for index targets
        self.scale, self.mean, self.std = scale, mean, std
        self.on_device: dict[tuple[str, torch.device], Split] = {}
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
        if self.target_encoding == "index":  # the dataset's classes: a few training images may lack some
            return self.num_classes
        return self.train.targets.shape[1] if self.train.targets.dim() > 1 else 1

    def _batches(self, name: str, training: bool) -> TensorBatches:
        """Batches of the split `name` ("train", "val", "test")."""
        split, trainer = getattr(self, name), self.trainer  # no trainer yet: the one-batch check before a run
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if trainer:
            device = trainer.strategy.root_device
            split = self.on_device.setdefault((name, device), split.to(device))
        generator = torch.Generator().manual_seed(self.seed)
        if training:
            self.batch_order = generator
            if self.restored_batch_order is not None:  # a resumed run: continue the interrupted one's order
                generator.set_state(self.restored_batch_order)
        # Several processes (DDP) take a batch per step: DDP synchronises the gradients of one backward pass
        # per forward call of its wrapped module, which calls the step.
        return TensorBatches(split, self.batch_size, shuffle=self.shuffle and training, generator=generator,
                             rank=rank, world_size=world_size, equal_shards=training, whole_epoch=world_size == 1)

    def steps_per_epoch(self, world_size: int) -> int:
        """The training batches of an epoch in each of `world_size` processes, as train_dataloader's in fit: the
        epoch's optimizer steps (task.optimizer_steps), known before a trainer is attached."""
        return TensorBatches(self.train, self.batch_size, shuffle=False, generator=None, world_size=world_size,
                             equal_shards=True).batches_per_epoch

    def state_dict(self) -> dict:
        """Saved in a run's checkpoints: the generator of the training batches' order."""
        return {"batch_order": self.batch_order.get_state()} if self.batch_order is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restored when a run resumes, before Lightning asks for the training batches."""
        self.restored_batch_order = state.get("batch_order")

    def train_dataloader(self):
        return self._batches("train", training=True)

    def val_dataloader(self):
        return self._batches("val", training=False)

    def test_dataloader(self):
        return self._batches("test", training=False)

    def normalize(self, inputs: Inputs) -> Inputs:
        if not isinstance(inputs, torch.Tensor):
            return tuple(self.normalize(x) for x in inputs)
        inputs = inputs.float()
        if (self.scale, self.mean, self.std) == (1.0, 0.0, 1.0):
            return inputs
        return (inputs / self.scale - self.mean) / self.std

    def transfer_batch_to_device(self, batches, device: torch.device, dataloader_idx: int):
        return batches  # indexed out of splits on the device already

    def on_after_batch_transfer(self, batches, dataloader_idx: int):
        # lazily, batch by batch as the step takes them: an epoch of MNIST as floats would take 170 MB at once
        return ((self.normalize(inputs), targets) for inputs, targets in batches)

    def log_extras(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Log what this dataset adds to a run after training (baselines, plots) to the active MLflow
        run, its metrics at `step` (the run's last); return those metrics. Nothing by default."""
        return {}
