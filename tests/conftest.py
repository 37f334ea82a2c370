"""Shared test set-up: every test runs in its own folder with its own MLflow store, and real
datasets are read from ../shared/data (the project itself never needs that folder)."""
import os
import subprocess
import sys
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


def start(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `python ARGS` as a user runs it, with this checkout's sources first on the path."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=environment)


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` (`-m experiments ...`) to the end, as a user runs it."""
    process = start(*args, cwd=cwd, env=env)
    stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
