"""One full MNIST epoch of the A1 CNN on the CPU: our command against plain PyTorch, in one process.

    EXPERIMENTS_DATA_DIR=../shared/data python scripts/benchmark_mnist.py

All three train the same CNN for one epoch on the same 55,000 in-memory uint8 images (batch 64,
shuffled, normalised per batch, Adam lr 2e-3) and then evaluate the 5,000 validation images:
  ours        `python -m experiments model=cnn data=mnist trainer.max_epochs=1` (Lightning, MLflow
              logging, validation), as time/fit_seconds
  plain       a hand-written PyTorch loop indexing batches out of the tensors
  dataloader  the usual DataLoader(TensorDataset) loop, which fetches and collates sample by sample
Ratios are against `plain`; run it on an idle machine.
"""
import os
import tempfile
import time

import torch
from torch import nn

from experiments.api import run_experiment
from experiments.data.images import mnist
from experiments.models.cnn import CNN


def plain_epoch(dm, batches) -> float:
    """Train one epoch over `batches` (pairs of uint8 images and labels) and validate; return the seconds."""
    torch.manual_seed(0)
    model = CNN((1, 28, 28), 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    for images, labels in batches:
        optimizer.zero_grad()
        loss_fn(model(dm.normalize(images)), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(dm.normalize(x)).argmax(1) == y).sum().item() for x, y in dm.val_dataloader())
    seconds = time.perf_counter() - start
    print(f"    (validation accuracy {correct / len(dm.val):.4f})")
    return seconds


def main() -> None:
    root = os.environ.get("EXPERIMENTS_DATA_DIR", "data")
    dm = mnist(root, "MNIST", download=True, targets="index", val_size=5000, limit=None, index_range=None,
               mean=0.1307, std=0.3081, batch_size=64, shuffle=True, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(dm.train)} training images")

    with tempfile.TemporaryDirectory() as store:
        result = run_experiment(["model=cnn", "data=mnist", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                                 "trainer.enable_progress_bar=false", f"tracking.tracking_uri=sqlite:///{store}/b.db"])
    times = {"ours": result.metrics["time/fit_seconds"]}
    print(f"ours        {times['ours']:.2f} s (validation accuracy {result.metrics['val/accuracy']:.4f})")
    times["plain"] = plain_epoch(dm, dm.train_dataloader())
    print(f"plain       {times['plain']:.2f} s")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dm.train.inputs, dm.train.targets),
                                         batch_size=64, shuffle=True)
    times["dataloader"] = plain_epoch(dm, loader)
    print(f"dataloader  {times['dataloader']:.2f} s")
    print("\nratio to plain: " + ", ".join(f"{name} {t / times['plain']:.2f}x" for name, t in times.items()))


if __name__ == "__main__":
    main()
