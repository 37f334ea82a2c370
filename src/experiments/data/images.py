"""MNIST-style image datasets: the whole set as one uint8 tensor, normalised per batch on the device.

torchvision's dataset classes find, download (with checksums) and read the IDX files; we keep
their tensors (`.data`, `.targets`) and skip their per-sample PIL transforms.
"""
import contextlib
import io
from pathlib import Path

import pandas as pd
import torch
import torchvision

from experiments.data.points import encode
from experiments.data.tensors import Split, TensorDataModule
from experiments.errors import ConfigError, typed

PIXEL_SCALE = 255.0
CLASSES = 10  # MNIST's digits, Fashion-MNIST's clothes


def load_images(root: str, dataset: str, train: bool, download: bool) -> Split:
    """All images of one official split of a torchvision dataset (`MNIST`, `FashionMNIST`) as (N, 1, 28, 28) uint8."""
    if root is None:  # paths.data_dir=null: Path's TypeError, which named no option
        raise ConfigError("data.root=null: the images are read from (and downloaded to) a folder; leave paths.data_dir "
                          "and data.root out for EXPERIMENTS_DATA_DIR (else ./data), or set paths.data_dir to a folder")
    dataset_class = getattr(torchvision.datasets, dataset)
    raw = Path(root) / dataset / "raw"
    output = io.StringIO()  # torchvision prints each failed mirror; on failure our one line says it all
    try:
        with contextlib.redirect_stdout(output):
            images = dataset_class(root, train=train, download=download)
    except (RuntimeError, OSError) as error:
        if not all((raw / file).exists() for file in _raw_files(dataset_class, train)):
            how = "the download failed" if download else "data.download is false"
            raise ConfigError(
                f"{dataset} files are missing from {raw} and {how}; copy the four IDX files "
                f"({', '.join(_raw_files(dataset_class, train))}, ...) there, or point paths.data_dir "
                "(or EXPERIMENTS_DATA_DIR) at a folder that has them"
            ) from error
        raise _corrupt_file_error(raw, dataset_class, train) from error
    except (AssertionError, ValueError) as error:
        raise _corrupt_file_error(raw, dataset_class, train) from error
    print(output.getvalue(), end="")
    return Split(images.data.unsqueeze(1), images.targets)


def _raw_files(dataset_class, train: bool) -> list[str]:
    prefix = "train" if train else "t10k"
    names = [Path(url).stem for url, _ in dataset_class.resources]
    return [name for name in names if name.startswith(prefix)]


def _corrupt_file_error(raw: Path, dataset_class, train: bool) -> ConfigError:
    """Find which IDX file torchvision could not read, and say so."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    for name in _raw_files(dataset_class, train):
        try:
            read_sn3_pascalvincent_tensor(str(raw / name), strict=False)
        except (AssertionError, RuntimeError, ValueError, KeyError, IndexError) as error:
            return ConfigError(f"{raw / name} is truncated or corrupt ({type(error).__name__}); delete it to download "
                               "it again, or replace it with an intact copy")
    return ConfigError(f"the IDX files in {raw} do not match each other; replace them with intact copies")


def _subset(split: Split, limit: int | None, index_range: list[int] | None) -> Split:
    if index_range is not None:
        # reversed, it said "data.val_size=... leaves no training images out of 0"; of one item, Hydra's ValueError
        if len(index_range) != 2 or index_range[0] >= index_range[1]:
            raise ConfigError(f"data.index_range={list(index_range)}: expected [start, stop] with start below stop, "
                              "the training images start to stop - 1")
        start, stop = index_range
        split = Split(split.inputs[start:stop], split.targets[start:stop])
    return split.head(limit) if limit is not None else split


def _hold_out(split: Split, val_size: float, seed: int) -> tuple[Split, Split]:
    """A seeded random validation split: `val_size` below 1 is a share of the images (at least one), from
    1 a number of images; 0 validates on the training images."""
    if val_size == 0:
        return split, split
    if val_size >= 1 and val_size != int(val_size):
        raise ConfigError(f"data.val_size={val_size}: give a share of the images below 1 or a whole number of them")
    count = max(1, round(len(split) * val_size)) if val_size < 1 else int(val_size)
    if count >= len(split):
        raise ConfigError(f"data.val_size={val_size} leaves no training images out of {len(split)}; lower it")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return (Split(split.inputs[order[count:]], split.targets[order[count:]]),
            Split(split.inputs[order[:count]], split.targets[order[:count]]))


def _encoded(split: Split, targets: str) -> Split:
    if targets not in ("index", "onehot"):
        raise ConfigError(f"data.targets={typed(targets)} does not fit {CLASSES} classes; use index or onehot")
    return Split(split.inputs, encode(split.targets, targets, num_classes=CLASSES))


def mnist(root: str, dataset: str, download: bool, targets: str, val_size: float, limit: int | None,
          index_range: list[int] | None, mean: float, std: float, seed: int, **loader) -> TensorDataModule:
    """MNIST or Fashion-MNIST: validation held out of the official training set, the official test set for test/."""
    train = _subset(load_images(root, dataset, True, download), limit, index_range)
    train, val = _hold_out(_encoded(train, targets), val_size, seed)
    test = _encoded(_subset(load_images(root, dataset, False, download), limit, None), targets)
    return TensorDataModule(train, val, test, target_encoding=targets, num_classes=CLASSES, scale=PIXEL_SCALE,
                            mean=mean, std=std, seed=seed, **loader)


def mnist_3v7(root: str, download: bool, targets: str, flatten: bool, seed: int, **loader) -> TensorDataModule:
    """REFERENCE.md D: train on all training 3s and 7s, validate on the test set's; label 1 = three, pixels in [0, 1]."""

    def threes_and_sevens(split: Split) -> Split:
        keep = (split.targets == 3) | (split.targets == 7)
        images = split.inputs[keep]
        return Split(images.flatten(1) if flatten else images, encode(split.targets[keep] == 3, targets))

    train = threes_and_sevens(load_images(root, "MNIST", True, download))
    val = threes_and_sevens(load_images(root, "MNIST", False, download))
    return TensorDataModule(train, val, target_encoding=targets, num_classes=2, scale=PIXEL_SCALE, seed=seed, **loader)


def mnist_csv(path: str, targets: str, val_size: float, limit: int | None, mean: float, std: float, seed: int,
              **loader) -> TensorDataModule:
    """MNIST as CSV, Kaggle digit-recognizer style: a `label` column, then 784 pixel columns (0-255)."""
    if path is None:  # pandas' ValueError, which named no option
        raise ConfigError("data.path=null: the images are read from a CSV file; point data.path at an MNIST-style CSV")
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"no CSV at data.path={path}; point data.path at an MNIST-style CSV") from None
    if "label" not in table.columns or table.shape[1] != 785:
        raise ConfigError(f"{path} is not an MNIST CSV: it needs a `label` column and 784 pixel columns, "
                          f"it has {table.shape[1]} columns")
    pixels = torch.tensor(table.drop(columns="label").to_numpy(), dtype=torch.uint8).view(-1, 1, 28, 28)
    data = _subset(Split(pixels, torch.tensor(table["label"].to_numpy())), limit, None)
    train, val = _hold_out(_encoded(data, targets), val_size, seed)
    return TensorDataModule(train, val, target_encoding=targets, num_classes=CLASSES, scale=PIXEL_SCALE, mean=mean,
                            std=std, seed=seed, **loader)
