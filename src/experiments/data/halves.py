"""A dataset with two inputs per sample (REFERENCE.md B: "the forward may take several inputs"):
each MNIST image as its top half and its bottom half."""
from experiments.data.images import mnist
from experiments.data.tensors import Split, TensorDataModule


def mnist_halves(**options) -> TensorDataModule:
    """MNIST (see images.mnist for the options), each input split into the top and bottom 1×14×28 halves."""
    datamodule = mnist(**options)
    for name in ("train", "val", "test"):
        split = getattr(datamodule, name)
        setattr(datamodule, name, Split(tuple(split.inputs.chunk(2, dim=2)), split.targets))
    return datamodule
