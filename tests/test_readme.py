"""Every command in README.md's code blocks runs as written, with small limits added to the long ones.

The commands are read from the README itself, so a command added there is tested here. Those that cannot
run on this machine are listed in SKIPPED with the reason; a placeholder the test cannot fill fails the test.
"""
import re
import shlex
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import QUIET, ROOT, SHARED_DATA, cli

# A command matching the pattern is not run, for the reason given.
SKIPPED = {
    r"^python3? -m venv ": "installs a fresh virtual environment from PyPI: what .ci/run does for every CI run",
    r"^python -m pytest": "the test suite itself",
    r"^mlflow ui ": "the MLflow UI: a web server for a browser (tests/test_sweeps.py runs `mlflow server`)",
    r"^mlflow server ": "runs until stopped; tests/test_sweeps.py starts one and trains against it",
    r"hydra/launcher=slurm": "needs a SLURM cluster: tests/test_slurm.py starts one and runs such sweeps",
    r"<server host>": "needs a tracking server on another machine",
    r"trainer=ddp(?!.*trainer\.accelerator=cpu)": "needs GPUs",
    r"^python scripts/": "a benchmark: minutes of full MNIST epochs, meant for an idle machine",
}

# trainer.max_epochs: enough optimizer steps for the one-cycle schedule even at one step an epoch
LIMITS = {"trainer.max_epochs": 8, "data.limit": 512, "data.val_size": 128, "hydra.sweeper.n_trials": 2}
SWEPT_VALUES = 2  # a sweep keeps the first 2 values of its first swept key, the first value of the others


def readme_commands() -> list[str]:
    """The shell commands of README.md's code blocks (indented or fenced): lines starting with `python` or
    `mlflow`, continuation lines (ending in a backslash) joined."""
    commands, current, fenced = [], None, False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        text = line.strip() if fenced else line[4:] if line.startswith("    ") else None
        if current is not None:
            current += " " + (text or "").strip()
        elif text is not None and re.match(r"(python3?|mlflow) ", text):
            current = text
        if current is not None and not current.endswith("\\"):
            commands.append(current)
            current = None
        elif current is not None:
            current = current[:-1].rstrip()
    return commands


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED.items() if re.search(pattern, command)), None)


COMMANDS = readme_commands()


def test_readme_commands_are_found():
    assert len(COMMANDS) >= 20, COMMANDS
    assert {"python -m experiments.predict", "python -m experiments.reproduce", "mlflow ui"} <= {
        " ".join(command.split()[:3 if command.startswith("python") else 2]) for command in COMMANDS}


def limited(tokens: list[str]) -> list[str]:
    """The command with small limits: epochs, images, trials where its config has them (its own value kept
    when smaller), and the first values of each sweep."""
    overrides = [token for token in tokens if "=" in token and not token.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    single = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=single, return_hydra_config=True)
    kept, values = [], SWEPT_VALUES
    for token, override in zip(overrides, parsed):
        if override.is_sweep_override():
            token = f"{override.key_or_group}={','.join(list(override.sweep_string_iterator())[:values])}"
            values = 1
        kept.append(token)
    for key, limit in LIMITS.items():
        value = OmegaConf.select(config, key, default="absent")
        if value is None or isinstance(value, int) and not isinstance(value, bool) and value > limit:
            kept = [token for token in kept if not token.startswith(f"{key}=")] + [f"{key}={limit}"]
    return [token for token in tokens if token not in overrides] + kept


def run(tokens: list[str], cwd) -> subprocess.CompletedProcess:
    if tokens[2] == "experiments" and not {"--help", "--cfg"} & set(tokens):
        tokens = limited(tokens) + QUIET
    return cli(*tokens[1:], cwd=cwd)


TABULAR_INPUTS = ("my.csv", "new_houses.csv")  # files of house rows, for a tabular model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with the files the README's commands name, and two trained runs to predict with: an image
    model and a tabular one, each as its run id and model.pt."""
    folder = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    rooms = rng.uniform(2, 8, 60)
    houses = pd.DataFrame({"rooms": rooms, "area": rng.uniform(30, 200, 60), "town": rng.choice(["a", "b"], 60),
                           "price": 20_000 * rooms + rng.normal(0, 5_000, 60)})
    houses.to_csv(folder / "my.csv", index=False)
    houses.drop(columns="price").head(10).to_csv(folder / "new_houses.csv", index=False)
    digits = next((SHARED_DATA / "mnist_csv").glob("*.csv"))
    shutil.copy(digits, folder / "digits.csv")
    shutil.copy(digits, folder / "my_digits.csv")
    runs = {}
    for kind, overrides in {"image": ["model=linear", "data=mnist"],
                            "tabular": ["data=csv", "data.path=my.csv", "data.target=price"]}.items():
        result = run(["python", "-m", "experiments", *overrides], folder)
        assert result.returncode == 0, result.stderr
        run_id = re.search(r"MLflow run (\w+)", result.stdout).group(1)
        output = re.search(r"Output folder: (\S+)/ ", result.stdout).group(1)
        runs[kind] = {"<MLflow run id>": run_id, "<id>": run_id, "outputs/.../model.pt": f"{output}/model.pt"}
    return folder, runs


@pytest.mark.parametrize("command", COMMANDS, ids=[shlex.join(shlex.split(c, comments=True)) for c in COMMANDS])
def test_readme_command_runs(command, request):
    if skip_reason(command):
        pytest.skip(skip_reason(command))
    folder, runs = request.getfixturevalue("trained")
    tabular = any(f"input={name}" in command for name in TABULAR_INPUTS)
    for placeholder, value in runs["tabular" if tabular else "image"].items():
        command = command.replace(placeholder, value)
    assert not re.search(r"<[^>]+>|\.\.\./", command), f"a placeholder the test cannot fill: {command}"
    tokens = shlex.split(command, comments=True)
    assert tokens[:2] == ["python", "-m"], command
    if tokens[2] == "experiments.reproduce":  # all presets, as published, take many minutes
        if not any(token.startswith("presets=") for token in tokens):
            tokens.append("presets=[xor_mlp,xor_linear]")
        tokens.append(f"overrides=['trainer.max_epochs={LIMITS['trainer.max_epochs']}']")
    result = run(tokens, folder)
    assert result.returncode == 0, f"{shlex.join(tokens)}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "error:" not in result.stderr, result.stderr
    if tokens[2] == "experiments.reproduce":
        assert "no run recorded" not in result.stdout, result.stdout
