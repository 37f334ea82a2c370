"""Our command against plain PyTorch on the workloads our users run (issue "Speed where our users live").

    EXPERIMENTS_DATA_DIR=../shared/data python scripts/benchmark.py [--output benchmark.md] [--rows e2,a2,...]

Each row runs our path and a plain-PyTorch reference of the same workload (same data, model, seed, batches
and optimizer: the final losses are printed side by side) in this process, or as whole processes where the
row is about a whole command, and prints the ratio. Our Adam is torch's fused one (conf/optimizer/adam.yaml),
the plain loops' is torch's default, as the published scripts have it. The A1 and A2 fits are the medians of
three runs of each side in turn. The table goes to stdout and, as Markdown, to --output.
Run it on an idle machine: ratios taken beside other work are noisy.

  e2      REFERENCE.md E2 (experiment=circle_tanh_mlp): 50,000 SGD steps, validation every epoch; fit time
  a2      REFERENCE.md A2 (experiment=house_prices_linear): 8,000 Adam steps; fit time
  a2-compiled  A2 with trainer=compiled: fit time (compilation apart, cold and cached)
  a2-cmd  A2 as whole commands: `python -m experiments experiment=house_prices_linear` against a plain script
  a1      REFERENCE.md A1's timing (experiment=mnist_cnn_timing) against the published script's DataLoader loop
  mnist   one MNIST CNN epoch (model=cnn data=mnist trainer.max_epochs=1) against a plain loop over the tensors
  tiny    the whole command for a tiny run (data=xor trainer.max_epochs=1) where its MLflow store exists (and
          apart, the first one, which creates it), against the imports alone
  sweep   bookkeeping per job of a 10-job sweep of that tiny run (MLflow run, params, model, plots, checkpoint)
  sweep-job  a job's whole time in that sweep, against the same with Hydra's basic sweeper
  help    `python -m experiments --help`
  mnist-99  the fastest known MNIST recipe (experiment=mnist_one_epoch_99: one epoch to 99% test accuracy) against
          the published notebook's loop over the same tensors; on the GPU where there is one, else on the CPU
"""
import argparse
import copy
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false"]


def data_module(overrides: list[str]):
    """The data module our command builds for these overrides."""
    from hydra.utils import instantiate

    from experiments.api import compose_config

    return instantiate(compose_config(overrides).data)


STORE = None  # the MLflow store of every run of ours() (a temporary folder)


def ours(overrides: list[str]) -> dict[str, float]:
    """Run our command in this process; its final metrics. Every run goes to one throw-away MLflow store, as a
    user's runs go to their folder's: MLflow keeps each store it opens (its SQLAlchemy engine and tables, 48,000
    objects), which Python's garbage collector then scanned again in every later run, 0.15 to 0.25 s a scan,
    when each run had a store of its own."""
    from experiments.api import run_experiment

    global STORE
    STORE = STORE or tempfile.TemporaryDirectory()
    return run_experiment([*overrides, *QUIET, f"tracking.tracking_uri=sqlite:///{STORE.name}/mlflow.db"]).metrics


def plain_fit(model, optimizer, train_batches, val_batches, epochs: int, validate_every: int, loss_fn) -> tuple:
    """A hand-written loop: train on `train_batches()` each epoch, validate on `val_batches()` every
    `validate_every` epochs, keeping the epoch's mean loss as a user's loop would. Seconds, last train loss."""
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for inputs, targets in train_batches():
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
        if epoch % validate_every == 0 or epoch == epochs:
            model.eval()
            with torch.no_grad():
                sum(loss_fn(model(inputs), targets).item() * len(targets) for inputs, targets in val_batches())
    return time.perf_counter() - start, total / count


def warm_up(model, batches, loss_fn) -> None:
    """One untimed epoch on a copy of the model before either side is timed: the first calls of an operation
    on new shapes cost far more (0.1 s for a convolution), and would otherwise fall on whichever runs first."""
    model = copy.deepcopy(model)
    for inputs, targets in batches():
        loss_fn(model(inputs), targets).backward()


def stored_order(split, batch_size: int):
    return lambda: ((split.inputs[i:i + batch_size], split.targets[i:i + batch_size])
                    for i in range(0, len(split), batch_size))


def e2() -> tuple:
    from experiments.models.mlp import MLP

    dm = data_module(["experiment=circle_tanh_mlp"])
    torch.manual_seed(0)
    model = MLP((2,), 1, [4], "tanh", "tanh", "default", 0.0)
    warm_up(model, stored_order(dm.train, 10), nn.MSELoss())
    result = ours(["experiment=circle_tanh_mlp"])
    seconds, loss = plain_fit(model, torch.optim.SGD(model.parameters(), lr=0.05), stored_order(dm.train, 10),
                              stored_order(dm.val, 10), 500, 1, nn.MSELoss())
    return result["time/fit_seconds"], seconds, f"train/loss {result['train/loss']:.6f} / {loss:.6f}"


def alternating(mine, plain, repeats: int = 3) -> tuple:
    """Our path (`mine()`: its final metrics) and the plain loop (`plain()`: seconds, final loss) run in turn
    `repeats` times; the medians of their times, our last metrics and the plain loop's loss. In turn, so that
    neither side gets the order's advantage (caches, a machine's slower moments): A1's ratio measured once,
    ours first, came out 1.04 to 1.08; alternated, 1.00 to 1.04."""
    results, plain_runs = [], []
    for _ in range(repeats):
        results.append(mine())
        plain_runs.append(plain())
    return (statistics.median(r["time/fit_seconds"] for r in results), statistics.median(s for s, _ in plain_runs),
            results[-1], plain_runs[-1][1])


def a2(overrides: tuple[str, ...] = ()) -> tuple:
    dm = data_module(["experiment=house_prices_linear"])

    def plain():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(13, 1))
        warm_up(model, stored_order(dm.train, 32), nn.MSELoss())
        return plain_fit(model, torch.optim.Adam(model.parameters(), lr=0.01), stored_order(dm.train, 32),
                         stored_order(dm.val, 32), 500, 500, nn.MSELoss())

    mine, seconds, result, loss = alternating(lambda: ours(["experiment=house_prices_linear", *overrides]), plain)
    return mine, seconds, f"train/loss {result['train/loss']:.4f} / {loss:.4f}; medians of 3, alternated", result


def a2_compiled() -> tuple:
    """A2 with trainer=compiled, in a new compilation cache: the first run compiles from nothing, the second
    (timed against the plain loop) finds its program in the cache."""
    with tempfile.TemporaryDirectory() as cache:
        compiled = ["trainer=compiled", f"trainer.compiled.cache_dir={cache}"]
        first = ours(["experiment=house_prices_linear", *compiled])
        mine, plain, note, second = a2(tuple(compiled))
    return mine, plain, (f"{note}; compiling {first['time/compile_seconds']:.1f} s, then "
                         f"{second['time/compile_seconds']:.1f} s from the cache; the epochs' metrics computed and "
                         f"logged after the fit {second['time/records_seconds']:.2f} s; Mojo 0.15 s")


def plain_a2_script() -> None:
    """The plain script of A2 as a user writes it, for `a2-cmd`: read, standardise, train, print the MSE."""
    import pandas as pd

    frame = pd.read_csv(f"{os.environ.get('EXPERIMENTS_DATA_DIR', 'data')}/house_prices/boston.csv")
    inputs = torch.tensor(frame.drop(columns="MEDV").to_numpy(), dtype=torch.float32)
    inputs = (inputs - inputs.mean(0)) / inputs.std(0)
    targets = torch.tensor(frame["MEDV"].to_numpy(), dtype=torch.float32).unsqueeze(1)
    model = nn.Linear(13, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(500):
        for i in range(0, len(targets), 32):
            loss = nn.functional.mse_loss(model(inputs[i:i + 32]), targets[i:i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"final batch MSE {loss.item():.3f}")


def command_seconds(args: list[str], repeats: int = 3, folder: str | None = None) -> float:
    """The median wall time of a whole command, in `folder` (its MLflow store), else in a fresh folder each
    time (so with a new MLflow store)."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as fresh:
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=folder or fresh, check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def a2_cmd() -> tuple:
    command = ["-m", "experiments", "experiment=house_prices_linear", *QUIET]
    with tempfile.TemporaryDirectory() as folder:
        command_seconds(command, repeats=1, folder=folder)  # creates the folder's MLflow store, as a user's first run
        mine = command_seconds(command, repeats=2, folder=folder)
    plain = command_seconds([str(Path(__file__).resolve()), "--plain-a2"], repeats=2)
    return mine, plain, "whole processes, ours in a folder with an MLflow store"


def a1() -> tuple:
    from experiments.models.cnn import CNN

    dm = data_module(["experiment=mnist_cnn_timing"])
    images = dm.normalize(dm.train.inputs)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, dm.train.targets), batch_size=8,
                                         shuffle=True)

    def plain():
        torch.manual_seed(0)
        model = CNN((1, 28, 28), 10)
        warm_up(model, lambda: loader, nn.CrossEntropyLoss())
        return plain_fit(model, torch.optim.Adam(model.parameters(), lr=2e-3), lambda: loader, lambda: loader,
                         20, 20, nn.CrossEntropyLoss())

    mine, seconds, result, loss = alternating(lambda: ours(["experiment=mnist_cnn_timing"]), plain)
    return mine, seconds, (f"train/loss {result['train/loss']:.4f} / {loss:.4f} (shuffles differ); medians of 3, "
                           "alternated")


def mnist() -> tuple:
    from experiments.models.cnn import CNN

    overrides = ["model=cnn", "data=mnist", "trainer.max_epochs=1", "trainer.accelerator=cpu"]
    dm = data_module(overrides)
    batches = dm.train_dataloader()
    epoch = lambda: ((dm.normalize(x), y) for x, y in batches.batches())
    validation = lambda: ((dm.normalize(x), y) for x, y in dm.val_dataloader().batches())
    torch.manual_seed(0)
    model = CNN((1, 28, 28), 10)
    warm_up(model, lambda: [next(epoch())], nn.CrossEntropyLoss())  # one batch: the other shapes are the last batch's
    result = ours(overrides)
    seconds, loss = plain_fit(model, torch.optim.Adam(model.parameters(), lr=2e-3), epoch, validation, 1, 1,
                              nn.CrossEntropyLoss())
    return result["time/fit_seconds"], seconds, f"train/loss {result['train/loss']:.4f} / {loss:.4f} (ours: one-cycle)"


def tiny() -> tuple:
    command = ["-m", "experiments", "data=xor", "trainer.max_epochs=1", *QUIET]
    with tempfile.TemporaryDirectory() as folder:
        first = command_seconds(command, repeats=1, folder=folder)  # creates the folder's MLflow store
        mine = command_seconds(command, folder=folder)
    # the imports as the command makes them (cli.heavy_import), then the process ends at once, as the command's does
    imports = command_seconds(["-c", "import os; from experiments.cli import heavy_import; "
                                     "heavy_import('experiments.run'); os._exit(0)"])
    return mine, imports, (f"in a folder with an MLflow store; the first command in a new folder (creating it) "
                           f"{first:.1f} s; reference: importing torch, Lightning, MLflow, matplotlib alone")


SWEEP_JOBS = 10


def tiny_sweep(folder: str, *overrides: str) -> float:
    """Run a 10-job sweep of the tiny run in `folder`; return the median interval between Hydra's launches of its
    jobs 2 to 10 (the first imports everything): a job's whole time in the sweep, its run and Hydra's work for it."""
    launched = subprocess.run([sys.executable, "-m", "experiments", "-m", f"seed=range({SWEEP_JOBS})", "data=xor",
                               "trainer.max_epochs=1", *QUIET, *overrides], cwd=folder, check=True, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    times = [datetime.datetime.strptime(stamp, "%H:%M:%S,%f")
             for stamp in re.findall(r"^\[[\d-]+ ([\d:,]+)\]\[HYDRA\] \t#\d+ :", launched, re.MULTILINE)]
    return statistics.median((later - earlier).total_seconds() for earlier, later in zip(times[1:], times[2:]))


def sweep() -> tuple:
    """The bookkeeping of a job in a sweep of tiny runs (its MLflow run, params, model, plots, checkpoint): the
    median over jobs 2 to 10 of each job's MLflow run, from its start to its end as MLflow recorded them, less its
    fit (time/fit_seconds). As the row's note, a job's whole time in the sweep (tiny_sweep)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        between = tiny_sweep(folder)
        client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("experiments").experiment_id])
    jobs_runs = sorted((run for run in runs if "sweep.job" in run.data.tags),  # not the sweep's parent run
                       key=lambda run: int(run.data.tags["sweep.job"]))
    per_job = statistics.median((run.info.end_time - run.info.start_time) / 1000 - run.data.metrics["time/fit_seconds"]
                                for run in jobs_runs[1:])
    return per_job, None, (f"median of jobs 2 to {SWEEP_JOBS}: MLflow run's duration less its fit; between Hydra's "
                           f"launches of jobs {between:.2f} s (its composition of each job's config included)")


def sweep_job() -> tuple:
    """A job's whole time in a sweep of tiny runs (tiny_sweep) with the default sweeper, which composes each job's
    config once, against Hydra's basic sweeper (hydra/sweeper=basic), which composes each twice: medians of three
    sweeps of each, alternated."""
    mine, hydras = [], []
    for _ in range(3):
        for times, overrides in ((mine, []), (hydras, ["hydra/sweeper=basic"])):
            with tempfile.TemporaryDirectory() as folder:
                times.append(tiny_sweep(folder, *overrides))
    return statistics.median(mine), statistics.median(hydras), ("median interval between Hydra's launches of jobs 2 "
                                                                "to 10, medians of 3 sweeps each, alternated")


def mnist_99() -> tuple:
    """REFERENCE.md's fastest known MNIST result (99% test accuracy in one epoch, 0.76 s on a laptop GPU) as
    experiment=mnist_one_epoch_99, against its notebook's loop: the same network, optimizer, schedule and batch size
    over the normalised images held on the device, with no per-step synchronisation; both then test on the 10,000
    test images. On the GPU where there is one, else on the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = ["experiment=mnist_one_epoch_99", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"]
    dm = data_module(overrides)
    images, labels = dm.normalize(dm.train.inputs.to(device)), dm.train.targets.to(device)
    test_images, test_labels = dm.normalize(dm.test.inputs.to(device)), dm.test.targets.to(device)
    batch = 256
    epoch = lambda: ((images[i:i + batch], labels[i:i + batch]) for i in range(0, len(labels), batch))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def plain():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 24, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(24, 32, 3), nn.MaxPool2d(2),
                              nn.ReLU(), nn.Flatten(), nn.Linear(800, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
        warm_up(model, lambda: [next(epoch())], nn.CrossEntropyLoss())
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=-(-len(labels) // batch),
                                                       cycle_momentum=False)
        synchronize()
        start = time.perf_counter()
        for inputs, targets in epoch():
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        synchronize()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            return seconds, (model.eval()(test_images).argmax(1) == test_labels).float().mean().item()

    plain()  # on a GPU the first one creates CUDA's context and the libraries' handles, which no timing should pay
    mine, seconds, result, accuracy = alternating(lambda: ours(overrides), plain)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    return mine, seconds, (f"test/accuracy {result['test/accuracy']:.4f} / {accuracy:.4f}; on the {where}; medians "
                           "of 3, alternated; published: 0.76 s on a GTX 1660 Ti")


def help_() -> tuple:
    return command_seconds(["-m", "experiments", "--help"]), None, ""


ROWS = {  # name: (what, function, target)
    "e2": ("E2 circle_tanh_mlp fit, plain loop", e2, "≤ 1.5×"),
    "a2": ("A2 house_prices_linear fit, plain loop", lambda: a2()[:3], "≤ 1.5×"),
    "a2-compiled": ("A2 fit with trainer=compiled, plain loop", a2_compiled, "≤ 0.15 s"),
    "a2-cmd": ("A2 whole command, plain script", a2_cmd, "≤ 1.5×"),
    "a1": ("A1 mnist_cnn_timing fit, DataLoader loop", a1, "≤ 1×"),
    "mnist": ("MNIST CNN epoch fit, plain loop", mnist, "≤ 1.1×"),
    "tiny": ("xor 1 epoch whole command (s), imports alone", tiny, "≤ 5 s"),
    "sweep": ("bookkeeping per sweep job (s)", sweep, "≤ 0.3 s"),
    "sweep-job": ("a tiny sweep's job, with Hydra's basic sweeper (s)", sweep_job, "below 1×"),
    "help": ("--help (s)", help_, "≤ 1.5 s"),
    "mnist-99": ("MNIST to 99% in one epoch, notebook's loop", mnist_99, "≥ 99% test accuracy"),
}


def machine() -> str:
    load = os.getloadavg()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load:.1f} at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--plain-a2", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_a2:
        return plain_a2_script()
    lines = [f"Machine: {machine()}", "", "| workload, reference | ours | reference | ratio | target | note |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for name in args.rows.split(","):
        what, function, target = ROWS[name]
        mine, reference, note = function()
        ratio = f"{mine / reference:.2f}×" if reference else ""
        reference = f"{reference:.2f} s" if reference else ""
        lines.append(f"| {what} | {mine:.2f} s | {reference} | {ratio} | {target} | {note} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.output:
        Path(args.output).write_text(table)


if __name__ == "__main__":
    main()
