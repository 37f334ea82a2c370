"""The trained model saved by every run, `model.pt`: its weights plus the resolved config that rebuilds it.

The file holds only tensors and plain containers (loaded with `weights_only=True`), and the config
holds everything `hydra.utils.instantiate` needs, so a model declared in YAML reloads without the
original config files. It goes to the Hydra run's output folder and to the MLflow run as an artifact.
"""
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from experiments import models
from experiments.errors import ConfigError

FILE = "model.pt"


def save(config: DictConfig, model: torch.nn.Module, datamodule, output_dir: Path | None) -> Path:
    """Write model.pt to the run's output folder (a temporary one for runs from Python, which have none)
    and log it to the active MLflow run."""
    path = Path(output_dir or tempfile.mkdtemp()) / FILE
    torch.save({
        "config": OmegaConf.to_container(config, resolve=True),
        "input_shape": datamodule.input_shape,
        "num_outputs": datamodule.num_outputs,
        "target_scale": datamodule.target_scale,
        # a tabular run's fitted preprocessing of raw rows (data/tabular.py)
        "preprocessing": datamodule.preprocessing.state() if datamodule.preprocessing else None,
        "state_dict": model.state_dict(),
    }, path)
    mlflow.log_artifact(str(path))
    return path


def read(run_id: str | None, path: str | None, tracking_uri: str) -> dict:
    """The checkpoint of an MLflow run (from the store at `tracking_uri`) or of a model.pt file."""
    if run_id is not None:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=FILE, tracking_uri=tracking_uri, dst_path=tempfile.mkdtemp()
            )
        except MlflowException as error:
            raise ConfigError(
                f"run_id={run_id}: no run with a {FILE} in the MLflow store {tracking_uri} "
                f"({error.message.splitlines()[0]})"
            ) from error
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint={path}: no such file")
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike for a file that is no checkpoint
        raise ConfigError(f"checkpoint={path} is not a model saved by a run: {str(error).splitlines()[0]}") from error


def rebuild(saved: dict, model_config: DictConfig | dict | None = None) -> torch.nn.Module:
    """The trained model of a checkpoint; `model_config`, when given, must be the config it was saved with."""
    saved_model = saved["config"]["model"]
    if model_config is not None:
        given = OmegaConf.to_container(model_config, resolve=True) if isinstance(model_config, DictConfig) else (
            model_config)
        if given != saved_model:
            keys = sorted(key for key in given.keys() | saved_model.keys() if given.get(key) != saved_model.get(key))
            raise ConfigError(
                f"the model was saved by a different model config ({saved_model['_target_']}); the one given "
                f"({given.get('_target_')}) differs in {', '.join(keys)}: leave the model config out to use "
                "the saved one"
            )
    model = models.build(saved_model, saved["input_shape"], saved["num_outputs"], saved.get("target_scale"))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ConfigError(f"the saved weights do not fit the saved model config: {detail}") from error
    return model.eval()
