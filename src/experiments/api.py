"""Python API, for notebooks and tests: the same runs as the command line, from a list of overrides.

    from experiments.api import run_experiment
    result = run_experiment(["data=xor", "model=mlp", "trainer.max_epochs=200"])
    result.metrics["val/accuracy"], result.model
    outputs = predict(result.model, inputs)
    predictions = predict(result.model, rows, result.preprocessing)   # a tabular run: raw rows
"""
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from experiments.cli import heavy_import
from experiments.ranges import check_ranges

heavy_import("experiments.run")  # torch, Lightning and MLflow, then kept out of the garbage collector's scans
from experiments import task  # noqa: E402
from experiments.run import Result, run  # noqa: E402


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `python -m experiments OVERRIDES` would run (its `hydra:` values resolve in this process)."""
    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(config)
    with open_dict(config):
        del config["hydra"]  # as in the app, where the job's config holds no hydra node
    check_ranges(config)
    return config


def run_experiment(overrides: list[str] = ()) -> Result:
    """Compose the config as `python -m experiments OVERRIDES` would, then run it in this process."""
    return run(compose_config(overrides))


def predict(model, inputs, preprocessing=None):
    """The outputs of a trained model for `inputs`, normalised like its training data (task.predict).
    With a tabular run's `preprocessing` (`result.preprocessing`), `inputs` are raw rows: a pandas
    DataFrame as the CSV holds them (numbers and text, the target column there or not), and the answer
    is a DataFrame with the column `predicted`, in the target's units (log units with data.log_target)."""
    return task.predict(model, inputs) if preprocessing is None else preprocessing.predict(model, inputs)
