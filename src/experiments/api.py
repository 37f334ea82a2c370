"""Python API, for notebooks and tests: the same runs as the command line, from a list of overrides.

    from experiments.api import run_experiment
    result = run_experiment(["data=xor", "model=mlp", "trainer.max_epochs=200"])
    result.metrics["val/accuracy"], result.model
    outputs = predict(result.model, inputs)
"""
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from experiments.data.tensors import take
from experiments.run import Result, run
from experiments.task import apply


def run_experiment(overrides: list[str] = ()) -> Result:
    """Compose the config as `python -m experiments OVERRIDES` would, then run it in this process."""
    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(config)
        with open_dict(config):
            del config["hydra"]  # as in the app, where the job's config holds no hydra node
        return run(config)


def predict(
    model: torch.nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int = 1000
) -> torch.Tensor:
    """The outputs of a trained model for `inputs` (normalised like its training data; a tuple of tensors
    for a model with several inputs), computed in eval mode, without gradients, `batch_size` rows at a time."""
    training = model.training
    model.eval()
    n = len(inputs if isinstance(inputs, torch.Tensor) else inputs[0])
    with torch.no_grad():
        outputs = torch.cat([apply(model, take(inputs, slice(i, i + batch_size))) for i in range(0, n, batch_size)])
    model.train(training)
    return outputs
