"""Vectorised sweeps against the same jobs one after another, timed in one invocation:

    python scripts/benchmark_vectorized.py [--seeds 64] [--epochs 500] [--alone 2] [--mnist-seeds 4]

1. E2 (`experiment=circle_tanh_mlp`, REFERENCE.md E2) over `--seeds` seeds with
   `hydra/launcher=vectorized`: the group's training time and the whole command's, against one E2 run
   as a plain PyTorch loop over the same tensors (the issue's target: all 64 trained in ≤ 3× one plain
   run), against those plain loops one after another, and against `--alone` of the same jobs run one
   after another by the basic launcher (each a single run, as `-m` runs them today), per job.
2. The Fashion-MNIST MLP (`experiment=fashion_mnist_mlp`, compute-bound steps) over `--mnist-seeds`
   seeds, 1 epoch: the vectorised group against the same jobs one after another (basic launcher).

Prints a Markdown table (the README quotes it) with the machine and its load.
"""
import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false"]


def command(folder: Path, *overrides: str) -> tuple[float, float]:
    """Run `python -m experiments -m ...` in `folder` (its own store); the whole command's seconds, elapsed and
    of CPU (user and system: on a machine that other work shares, closer to what it takes alone)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "experiments", "-m", *overrides, *QUIET], cwd=folder, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(overrides)}\n{result.stderr[-3000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def child_metrics(folder: Path) -> list[dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("experiments").experiment_id])
    return [run.data.metrics for run in runs if "mlflow.parentRunId" in run.data.tags]


def plain_e2(seed: int, epochs: int) -> float:
    """One E2 run as a plain PyTorch loop: the same data module, model and settings as the preset."""
    import torch
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=["experiment=circle_tanh_mlp", f"seed={seed}"])
    torch.manual_seed(seed)
    datamodule = instantiate(config.data)
    model = instantiate(config.model, input_shape=datamodule.input_shape, num_outputs=datamodule.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optimizer.lr)
    loss_function = torch.nn.MSELoss()
    inputs, targets = datamodule.train.inputs, datamodule.train.targets
    batch_size = config.data.batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        for first in range(0, len(targets), batch_size):
            loss = loss_function(model(inputs[first : first + batch_size]), targets[first : first + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64, help="E2 jobs in the vectorised sweep")
    parser.add_argument("--epochs", type=int, default=500, help="E2's epochs (the preset's 500)")
    parser.add_argument("--alone", type=int, default=2, help="of those jobs, how many to time as single runs")
    parser.add_argument("--mnist-seeds", type=int, default=4, help="Fashion-MNIST MLP jobs (0: skip)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        e2 = ["experiment=circle_tanh_mlp", f"trainer.max_epochs={args.epochs}"]
        (ours := scratch / "e2_vectorized").mkdir()
        whole, whole_cpu = command(ours, "hydra/launcher=vectorized", *e2, f"seed=range({args.seeds})")
        group = max(metrics["time/group_fit_seconds"] for metrics in child_metrics(ours))
        plain = plain_e2(0, args.epochs)
        rows += [
            (f"E2 × {args.seeds} seeds, vectorised: training", f"{group:.2f} s", f"one plain-loop E2 run: {plain:.2f} s",
             f"{group / plain:.2f}× (target ≤ 3×)"),
            (f"E2 × {args.seeds} seeds, vectorised: training", f"{group:.2f} s",
             f"{args.seeds} plain-loop runs one after another: {plain * args.seeds:.1f} s",
             f"{plain * args.seeds / group:.1f}× the throughput"),
        ]
        if args.alone:
            (alone := scratch / "e2_alone").mkdir()
            alone_whole, _ = command(alone, *e2, f"seed=range({args.alone})")
            fit = sum(metrics["time/fit_seconds"] for metrics in child_metrics(alone)) / args.alone
            rows += [
                (f"E2 × {args.seeds} seeds, vectorised: whole command", f"{whole:.1f} s (CPU {whole_cpu:.0f} s)",
                 f"single runs one after another (basic launcher): {alone_whole / args.alone:.1f} s a job "
                 f"(timed on {args.alone}), {alone_whole / args.alone * args.seeds:.0f} s for {args.seeds}",
                 f"{alone_whole / args.alone * args.seeds / whole:.0f}× faster (target: whole ≤ 90 s)"),
                (f"E2 × {args.seeds} seeds, vectorised: training per job", f"{group / args.seeds:.3f} s",
                 f"a single run's fit: {fit:.2f} s", f"{fit * args.seeds / group:.0f}× faster"),
            ]
        else:
            rows.append((f"E2 × {args.seeds} seeds, vectorised: whole command", f"{whole:.1f} s (CPU {whole_cpu:.0f} s)",
                         "", "target ≤ 90 s"))
        if args.mnist_seeds:
            mlp = ["experiment=fashion_mnist_mlp", "trainer.max_epochs=1", f"seed=range({args.mnist_seeds})"]
            (ours := scratch / "mnist_vectorized").mkdir()
            whole, _ = command(ours, "hydra/launcher=vectorized", *mlp)
            group = max(metrics["time/group_fit_seconds"] for metrics in child_metrics(ours))
            (alone := scratch / "mnist_alone").mkdir()
            alone_whole, _ = command(alone, *mlp)
            fits = sum(metrics["time/fit_seconds"] for metrics in child_metrics(alone))
            rows += [
                (f"Fashion-MNIST MLP × {args.mnist_seeds} seeds, 1 epoch: training", f"{group:.2f} s",
                 f"one after another (basic launcher), fits: {fits:.2f} s", f"{fits / group:.2f}× (target ≥ 1×)"),
                (f"Fashion-MNIST MLP × {args.mnist_seeds} seeds, 1 epoch: whole command", f"{whole:.1f} s",
                 f"one after another: {alone_whole:.1f} s", f"{alone_whole / whole:.2f}×"),
            ]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{load:.1f}' for load in os.getloadavg())}; torch threads: "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| workload | vectorised | one after another | ratio |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
