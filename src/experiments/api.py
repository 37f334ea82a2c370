"""Python API, for notebooks and tests: the same runs as the command line, from a list of overrides.

    from experiments.api import run_experiment
    result = run_experiment(["data=xor", "model=mlp", "trainer.max_epochs=200"])
    result.metrics["val/accuracy"], result.model
    outputs = predict(result.model, inputs)
"""
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from experiments.run import Result, run
from experiments.task import predict  # noqa: F401  (the fit/predict sugar: api.predict)


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `python -m experiments OVERRIDES` would run (its `hydra:` values resolve in this process)."""
    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(config)
    with open_dict(config):
        del config["hydra"]  # as in the app, where the job's config holds no hydra node
    return config


def run_experiment(overrides: list[str] = ()) -> Result:
    """Compose the config as `python -m experiments OVERRIDES` would, then run it in this process."""
    return run(compose_config(overrides))
