"""`python -m experiments.predict run_id=... [split=test | input=FILE] [output=predictions.csv]`.

Rebuilds a trained model from its model.pt (see checkpoint.py), predicts on a split of the dataset it
was trained on (also printing that split's loss and metrics: val's and test's equal the ones logged at
training time, train's are the final model's, not the logged mean over the last epoch's changing weights)
or on a CSV or IDX file of inputs, and writes the predictions to a CSV file.
"""
from pathlib import Path

import scipy.special  # noqa: F401, I001 (first of the heavy imports, for a tabular model's skops: see run.py)
import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments import checkpoint
from experiments.cli import make_paths_absolute, reported_as_one_line, run_app
from experiments.errors import ConfigError
from experiments.metrics import class_threshold, configured_metrics, predicted_labels, true_labels
from experiments.ranges import check_ranges
from experiments.task import STAGES, predict


def scores(config: dict, outputs: torch.Tensor, targets: torch.Tensor, prefix: str) -> dict[str, float]:
    """`<prefix>/loss` and `<prefix>/<metric>` of `outputs` over all of them, as the run's `config` computes
    them (the loss over all samples equals the batch-size-weighted mean of its batches' that training logs)."""
    loss = instantiate(config["loss"])
    metrics = configured_metrics(instantiate(config["metrics"], _convert_="all"), loss)
    values = {f"{prefix}/loss": loss(outputs, targets)}
    values |= {f"{prefix}/{name}": metric(outputs, targets) for name, metric in metrics.items()}
    return {key: float(value) for key, value in values.items()}


def evaluate(
    config: dict, model: torch.nn.Module, datamodule, split: str, batch_size: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The model's outputs on a split, and its loss and metrics over the whole split."""
    data = getattr(datamodule, split)
    outputs = predict(model, datamodule.normalize(data.inputs), batch_size)
    return outputs, scores(config, outputs, data.targets, split)


def read_rows(path: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConfigError(f"input={path} is not a readable CSV file: {str(error).splitlines()[0]}") from error


def predict_rows(saved: dict, model: torch.nn.Module, path: str) -> pd.DataFrame:
    """A tabular model's predictions for the raw rows of a CSV file, through the run's preprocessing; with
    the target column there, also printing the loss and metrics over those rows."""
    from experiments.data.tabular import RowPreprocessing

    if not Path(path).is_file():
        raise ConfigError(f"input={path}: no such file")
    preprocessing, rows = RowPreprocessing.from_state(saved["preprocessing"]), read_rows(path)
    try:
        frame = preprocessing.predict(model, rows)
    except ConfigError as error:
        raise ConfigError(f"input={path}: {error}") from None
    if preprocessing.target_name in frame and frame[preprocessing.target_name].notna().all():
        outputs, targets = (torch.tensor(frame[[column]].to_numpy(), dtype=torch.float32)
                            for column in ("predicted", preprocessing.target_name))
        print("  ".join(f"{key} {value:.4f}" for key, value in scores(saved["config"], outputs, targets,
                                                                        "input").items()))
    return frame


def read_inputs(path: str, input_shape) -> tuple[torch.Tensor, pd.Series | None]:
    """Raw inputs of a CSV (one sample a row, a `label` column set aside) or IDX file, shaped per sample
    as `input_shape`."""
    if not Path(path).is_file():
        raise ConfigError(f"input={path}: no such file")
    if path.endswith(".csv"):
        frame = read_rows(path)
        labels = frame.pop("label") if "label" in frame else None
        inputs = torch.tensor(frame.to_numpy(), dtype=torch.float32)
    else:
        from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

        inputs, labels = read_sn3_pascalvincent_tensor(path), None
    try:
        return inputs.reshape(len(inputs), *input_shape), labels
    except RuntimeError as error:
        raise ConfigError(
            f"input={path}: {inputs[0].numel()} values per sample, the model takes {input_shape}"
        ) from error


def predictions(outputs: torch.Tensor, encoding: str, threshold: float) -> pd.DataFrame:
    """One row per sample: `predicted` (the class), then the outputs. The class of 0/1 targets is an output above
    `threshold`, which depends on the loss: 0.5 on probabilities, 0 on logits."""
    frame = pd.DataFrame(outputs.numpy(), columns=[f"output_{i}" for i in range(outputs.shape[1])])
    frame.insert(0, "predicted", predicted_labels(outputs, encoding, threshold).numpy())
    return frame


def split_predictions(datamodule, split: str, outputs: torch.Tensor, threshold: float) -> pd.DataFrame:
    """A split's predictions: `label` (each target's class), then those of `predictions`; a tabular model's as for its
    raw rows (`predict_rows`): the target under its name, then `predicted` in the target's units."""
    targets, encoding = getattr(datamodule, split).targets, datamodule.target_encoding
    if datamodule.preprocessing is not None:
        return pd.DataFrame({datamodule.target_name: targets[:, 0].numpy(), "predicted": outputs[:, 0].numpy()})
    frame = predictions(outputs, encoding, threshold)
    frame.insert(0, "label", true_labels(targets, encoding).numpy())
    return frame


def run(config: DictConfig) -> pd.DataFrame:
    if (config.run_id is None) == (config.checkpoint is None):
        raise ConfigError("give the model as run_id=<MLflow run id> or as checkpoint=<path to model.pt>, one of them")
    saved = checkpoint.read(config.run_id, config.checkpoint, config.tracking.tracking_uri)
    model = checkpoint.rebuild(saved, config.get("model"))
    if config.input is not None and saved.get("preprocessing"):
        frame = predict_rows(saved, model, config.input)
        frame.to_csv(config.output, index_label="sample")
        print(f"wrote {len(frame)} predictions to {config.output}")
        return frame
    datamodule = instantiate(saved["config"]["data"])
    encoding = datamodule.target_encoding
    # the class of 0/1 targets as the run's accuracy counted it, or its plots without one
    loss = instantiate(saved["config"]["loss"])
    threshold = class_threshold(configured_metrics(instantiate(saved["config"]["metrics"], _convert_="all"), loss),
                                loss)
    if config.input is not None:
        if not isinstance(datamodule.train.inputs, torch.Tensor):
            raise ConfigError(f"input={config.input}: the model takes several inputs; predict on a split instead")
        inputs, labels = read_inputs(config.input, saved["input_shape"])
        frame = predictions(predict(model, datamodule.normalize(inputs), config.batch_size), encoding, threshold)
        if labels is not None:
            frame.insert(0, "label", labels)
    else:
        if config.split not in STAGES or getattr(datamodule, config.split) is None:
            raise ConfigError(f"split={config.split}: the dataset has the splits "
                              f"{', '.join(s for s in STAGES if getattr(datamodule, s, None) is not None)}")
        outputs, metrics = evaluate(saved["config"], model, datamodule, config.split, config.batch_size)
        frame = split_predictions(datamodule, config.split, outputs, threshold)
        print("  ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    frame.to_csv(config.output, index_label="sample")
    print(f"wrote {len(frame)} predictions to {config.output}")
    return frame


@hydra.main(config_path="pkg://experiments.conf", config_name="predict", version_base="1.3")
def app(config: DictConfig) -> None:
    with reported_as_one_line():
        check_ranges(config)
        make_paths_absolute(config, ("checkpoint", "input", "output"))  # hydra.job.chdir=true: not the job's folder
        run(config)


if __name__ == "__main__":
    run_app(app)
