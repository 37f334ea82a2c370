"""Shared test set-up: every test runs in its own folder with its own MLflow store, and real
datasets are read from ../shared/data (the project itself never needs that folder)."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
QUIET = ["trainer.enable_progress_bar=false"]

# One thread per test worker (pyproject runs a worker per core), for the runs they start too:
# OpenMP threads competing for the same cores slow every worker down.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in a fresh folder; the default tracking URI then puts mlflow.db there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if "EXPERIMENTS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        monkeypatch.setenv("EXPERIMENTS_DATA_DIR", str(SHARED_DATA))
    return tmp_path


@pytest.fixture
def store(isolated):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{isolated}/mlflow.db")


def start(*args: str, cwd: Path | None = None, env: dict | None = None, **options) -> subprocess.Popen:
    """Start `python ARGS` as a user runs it, with this checkout's sources first on the path; `options` for Popen."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=environment, **options)


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` (`-m experiments ...`) to the end, as a user runs it."""
    process = start(*args, cwd=cwd, env=env)
    stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def refusal(overrides: list[str]) -> str:
    """What `python -m experiments OVERRIDES` says of bad input in its one line (after `error: `), found in this
    process, as many cases are checked in seconds: run_experiment's refusal as the command words it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from experiments.api import run_experiment
    from experiments.cli import one_line
    from experiments.errors import ConfigError

    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException)) as refused:
        run_experiment(overrides)
    return one_line(refused.value)


def free_port() -> int:
    """A free port below the ephemeral range: one from that range may be taken by an outgoing connection while a
    stopped server is down, and the server could not start again on it."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10_000, ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


class TrackingServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and a local artifact folder in `folder`; started again
    after a kill on the same port, with the same store."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri, self.folder, self.process = f"http://127.0.0.1:{self.port}", folder, None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             "1", "--backend-store-uri", f"sqlite:///{self.folder}/server.db", "--artifacts-destination",
             str(self.folder / "served")],
            # No background job workers (the tests need none); its own process group, to stop them all.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(240):  # up to 2 minutes to start on a busy machine
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        pytest.fail("mlflow server did not start")

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (SIGKILL: as a crash would)."""
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def mlflow_server(isolated):
    """A running TrackingServer, stopped at the end."""
    server = TrackingServer(isolated)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def tracking_server(mlflow_server):
    """A running tracking server's address."""
    return mlflow_server.uri


def assert_continued_as_uninterrupted(client, run_id: str, uninterrupted_id: str, epochs: int) -> None:
    """A run continued after a stop has the final metrics of an uninterrupted run with the same seed, and
    records each of its epochs once; its MLflow model carries those final metrics."""
    run, reference = client.get_run(run_id), client.get_run(uninterrupted_id).data.metrics
    metrics = run.data.metrics
    for name in ("train/loss", "val/loss", "val/accuracy"):
        assert metrics[name] == reference[name], name
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == [m.step for m in client.get_metric_history(uninterrupted_id, name)]
        assert len(steps) == epochs, f"{name}: each epoch once"
    assert linked_metrics(logged_model(client, run)) == metrics


def logged_model(client, run):
    """The MLflow model `run` logged (MLflow 3 keeps it apart from the run, which it names as its source)."""
    (model,) = client.search_logged_models([run.info.experiment_id],
                                           filter_string=f"source_run_id = '{run.info.run_id}'")
    return model


def linked_metrics(model) -> dict[str, float]:
    """The metrics MLflow links with a logged model: what its page and the UI's Models tab show."""
    return {metric.key: metric.value for metric in model.metrics}
