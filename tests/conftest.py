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


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m experiments ARGS` as a user runs it, with this checkout's sources first on the path."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=900
    )
