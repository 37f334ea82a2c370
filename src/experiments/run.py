"""One experiment run: build data, model and task from the config, train, test, track, report."""
from dataclasses import dataclass

import lightning as L
import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig

from experiments import tracking
from experiments.errors import ConfigError
from experiments.report import print_results
from experiments.task import Task


@dataclass
class Result:
    run_id: str
    metrics: dict[str, float]
    model: torch.nn.Module


def check_one_batch(task: Task, datamodule) -> None:
    """Run the model and loss on one training batch, so a model, loss or target encoding that does not
    fit the data fails here, in one line, before a run is opened or any training starts."""
    inputs, targets = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    try:
        with torch.no_grad():
            task.loss(task.model(inputs), targets)
    except (RuntimeError, ValueError, IndexError) as error:
        detail = str(error).splitlines()[0]
        raise ConfigError(
            f"the model and loss do not fit the data: inputs {tuple(inputs.shape[1:])}, targets "
            f"{tuple(targets.shape)} {targets.dtype} ({datamodule.target_encoding} encoding): {detail}"
        ) from error


def run(config: DictConfig) -> Result:
    """Train and evaluate as `config` says, tracked in MLflow; print and return the final metrics."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = instantiate(config.data)
    model = instantiate(config.model, input_shape=datamodule.input_shape, num_outputs=datamodule.num_outputs)
    metrics = instantiate(config.metrics, _convert_="all")
    task = Task(model, instantiate(config.loss), metrics, instantiate(config.optimizer))
    check_one_batch(task, datamodule)

    choices = HydraConfig.get().runtime.choices
    title = f"{choices.data} · {choices.model}"
    timer = Timer()
    with tracking.start_run(config, config.tracking.run_name or f"{choices.data}-{choices.model}") as logger:
        trainer = instantiate(config.trainer, logger=logger, callbacks=[timer])
        trainer.fit(task, datamodule=datamodule)
        results = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if datamodule.test is not None:  # testing replaces the callback metrics: add to those of fit
            results |= trainer.test(task, datamodule=datamodule, verbose=False)[0]
        fit_seconds = timer.time_elapsed("train")
        results["time/fit_seconds"] = fit_seconds
        results["time/samples_per_second"] = len(datamodule.train) * trainer.current_epoch / fit_seconds
        mlflow.log_metrics({key: value for key, value in results.items() if key.startswith("time/")})
        results |= datamodule.log_extras(model)
        tracking.log_model(model, datamodule.normalize(datamodule.train.inputs[:2]))

    print_results(f"{title} · {trainer.current_epoch} epochs", results, logger.run_id,
                  tracking.ui_command(config.tracking.tracking_uri))
    return Result(logger.run_id, results, model)
