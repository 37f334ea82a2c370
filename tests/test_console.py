"""What a run prints: its choices, the model summary, progress, the results and where the run and its files
are, with the libraries' chatter in the job's log file (`-v` brings it back), and a progress bar on a terminal."""
import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

from mlflow import MlflowClient

from conftest import ROOT, cli
from experiments.cli import PACKAGE_DIR, log_warning

CHATTER = ("TPU available", "litlogger", "Creating initial MLflow database tables", "alembic", "is deprecated")
# and in a sweep; Lightning's hint to use srun wherever SLURM is installed (as on the test machine): a single run logs it
SWEEP_CHATTER = (*CHATTER, "GPU available", "Running upgrade", "The `srun` command is available")
RUN = ("-m", "experiments", "trainer.max_epochs=3")  # circle, one-cycle over 3 short epochs


def output_folder(stdout: str, cwd: Path) -> Path:
    match = re.search(r"^Output folder: (outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6})/ \((.*)\)$", stdout, re.MULTILINE)
    assert match, stdout
    folder = cwd / match.group(1)
    assert folder.is_dir()
    assert match.group(2).split(", ") == sorted(path.name for path in folder.iterdir() if path.is_file())
    return folder


def test_a_run_prints_what_matters_and_logs_the_chatter(tmp_path):
    result = cli(*RUN, cwd=tmp_path)  # in a fresh folder: MLflow creates its database
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    for chatter in CHATTER:
        assert chatter not in console, chatter
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == ("loss=mse metrics=accuracy optimizer=adam data=circle model=mlp scheduler=one_cycle "
                        "trainer=default tracking=local · overrides: trainer.max_epochs=3")
    assert "Trainable params" in result.stdout  # the model summary
    # no terminal, so progress lines: after the first epoch, then every 30 s (none here), and after the last
    progress = [line for line in lines if line.startswith("epoch ")]
    assert len(progress) == 2, progress
    assert re.fullmatch(r"epoch 1/3 · train/loss [\d.]+ · val/loss [\d.]+ · 00:\d\d elapsed · 00:\d\d left",
                        progress[0])
    assert re.fullmatch(r"epoch 3/3 · train/loss [\d.]+ · val/loss [\d.]+ · 00:\d\d elapsed", progress[1])
    assert "circle · mlp · 3 epochs" in result.stdout  # the results table

    store = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    final_loss = float(re.search(r"train/loss ([\d.]+)", progress[1]).group(1))
    assert abs(final_loss - run.data.metrics["train/loss"]) < 1e-3 * final_loss
    assert f"MLflow run {run.info.run_id} · open the MLflow UI on this store: mlflow ui --backend-store-uri " \
           f"sqlite:///{tmp_path}/mlflow.db" in lines
    folder = output_folder(result.stdout, tmp_path)
    assert {"model.pt", "loss_curves.png", "decision_boundary.png", "experiments.log"} <= set(os.listdir(folder))

    log = (folder / "experiments.log").read_text()
    for chatter in CHATTER:
        assert chatter in log, chatter
    for line in (lines[0], *progress, f"MLflow run {run.info.run_id}", "Output folder: outputs/"):
        assert line in log, line


def test_verbose_brings_the_chatter_back_to_the_console(tmp_path):
    for verbose in ("-v", "hydra.verbose=true"):
        result = cli(*RUN, "trainer.enable_progress_bar=false", verbose, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        for chatter in ("TPU available", "litlogger", "is deprecated"):
            assert chatter in result.stderr, (verbose, chatter)
        assert "Output folder: outputs/" in result.stdout


def test_deprecation_notices_of_dependencies_are_logged_below_warning_ours_and_others_as_warnings(caplog):
    def level(category, filename: str) -> int:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="py.warnings"):
            log_warning(category("text"), category, filename, 1)
        (record,) = caplog.records
        assert record.name == "py.warnings" and "text" in record.getMessage()
        return record.levelno

    dependency = warnings.__file__
    assert level(DeprecationWarning, dependency) == level(FutureWarning, dependency) == logging.INFO
    assert level(UserWarning, dependency) == logging.WARNING
    assert level(DeprecationWarning, f"{PACKAGE_DIR}/run.py") == logging.WARNING


def test_progress_bar_over_epochs_on_a_terminal(tmp_path):
    """stderr a terminal (80 columns): a bar counting epochs, and no progress lines."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([sys.executable, *RUN], cwd=tmp_path, stdout=subprocess.PIPE, stderr=terminal,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    os.close(terminal)
    bar = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        bar += chunk
    stdout = process.communicate(timeout=600)[0]
    os.close(controller)
    assert process.returncode == 0, bar.decode(errors="replace")
    text = bar.decode(errors="replace")
    assert re.search(r"100%\|█+\| 3/3 \[00:\d\d<00:00, +[\d.]+epoch/s, loss=[\d.]+, val_loss=[\d.]+\]", text), text
    assert not any(chatter in text for chatter in CHATTER)
    assert not re.search(r"^epoch \d", stdout, re.MULTILINE)
    assert "circle · mlp · 3 epochs" in stdout and "Output folder: outputs/" in stdout


def test_progress_null_trains_the_same_run_without_progress(tmp_path, store):
    """progress=null, as a Hydra user drops a node (false reads the same), turns the progress off as
    trainer.enable_progress_bar=false does: no line and no bar, Lightning's own (`Epoch 1/1 ━━━`) included."""
    metrics = {}
    for progress in ("progress=null", "progress=false", ""):  # "": the default progress, lines in a pipe
        result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=2", *progress.split(), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        lines = re.findall(r"^epoch \d.*", result.stdout, re.MULTILINE | re.IGNORECASE)
        assert len(lines) == (0 if progress else 2), (progress, lines)
        run = store.get_run(re.search(r"^MLflow run (\w+)", result.stdout, re.MULTILINE).group(1))
        assert run.info.status == "FINISHED"
        metrics[progress] = {name: value for name, value in run.data.metrics.items() if not name.startswith("time/")}
    assert "val/loss" in metrics[""]
    assert metrics["progress=null"] == metrics["progress=false"] == metrics[""]


def test_a_sweep_launched_in_a_new_folder_prints_no_library_chatter(tmp_path):
    # the launching process creates the store (the sweep's parent run) and, vectorised, builds the trainers
    # (hydra/launcher=parallel, whose jobs run in worker processes of their own: tests/test_sweeps.py's 8-job sweep)
    for launcher in ("basic", "vectorized"):
        folder = tmp_path / launcher
        folder.mkdir()
        result = cli("-m", "experiments", "-m", f"hydra/launcher={launcher}", "seed=0,1", "data=xor",
                     "trainer.max_epochs=1", "trainer.enable_progress_bar=false", cwd=folder)
        assert result.returncode == 0, result.stderr
        for chatter in SWEEP_CHATTER:
            assert chatter not in result.stdout + result.stderr, (launcher, chatter)
        assert "2 jobs" in result.stdout + result.stderr  # the sweep's own lines stay
        # each job's results, the jobs' one model summarised once
        assert len(re.findall(r"xor · mlp · 1 epoch\b", result.stdout)) == 2, (launcher, result.stdout)
        assert result.stdout.count("Trainable params") == 1, (launcher, result.stdout)
