"""CSV datasets with a numeric target column (REFERENCE.md A2, Ames, any user CSV), for regression.

The CSV is checked before anything else runs, so bad input ends in one line before an MLflow run opens.
Preprocessing is a scikit-learn ColumnTransformer fitted on the training rows only: validation and
test rows are transformed with the training medians, means, deviations and categories, as new data
would be. It is saved with the model (`RowPreprocessing.state`, in model.pt and the MLflow model), so
predictions on new raw rows go through the same steps. The target is standardised on the training
rows by the model's last layer (models/target_scale.py): metrics and predictions are in its units.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import skops.io
import torch
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from experiments.data.tensors import Split, TensorDataModule
from experiments.errors import ConfigError
from experiments.task import predict

SPLITS = ("random", "none")


def csv_dataset(
    path: str,
    target: str,
    features: list[str] | None,
    numeric: list[str],
    categorical: list[str],
    log_target: bool,
    standardize_target: bool,
    split: str,
    val_fraction: float,
    test_fraction: float,
    url: str | None,
    md5: str | None,
    **loader,
) -> "TabularDataModule":
    """Read `path` (downloading it from `url` first if it is missing), then split and preprocess it."""
    if path is None:  # Path's TypeError, which named no option
        raise ConfigError("data.path=null: the data is read from a CSV file; point data.path at one")
    path = locate(Path(path), url, md5)
    frame = read_csv(path)
    features = choose_features(frame, path, target, features)
    targets = numeric_target(frame[target], path, log_target)
    numeric, categorical = column_types(frame[features], numeric, categorical)
    rows = split_rows(len(frame), split, val_fraction, test_fraction, loader["seed"])
    preprocessing = RowPreprocessing.fit(frame.iloc[rows["train"]], numeric, categorical, target, log_target)
    splits = {
        name: Split(preprocessing.inputs(frame.iloc[index]),
                    torch.tensor(targets[index], dtype=torch.float32).unsqueeze(1))
        for name, index in rows.items()
    }
    trained = targets[rows["train"]]
    # std 0 (one value in every training row): the network learns the difference from the mean as is
    target_scale = (float(trained.mean()), float(trained.std()) or 1.0) if standardize_target else None
    return TabularDataModule(splits["train"], splits["val"], splits.get("test"), preprocessing=preprocessing,
                             target_scale=target_scale, target_encoding="regression", **loader)


def locate(path: Path, url: str | None, md5: str | None) -> Path:
    """The CSV at `path`; missing, downloaded from `url` and checked against `md5` first."""
    if path.is_file():
        return path
    if not url:
        raise ConfigError(
            f"no CSV file at {path}: put the file there, point data.path at it, or set paths.data_dir "
            f"(or EXPERIMENTS_DATA_DIR) to the folder that holds it"
        )
    from torchvision.datasets.utils import calculate_md5, download_url

    # Download beside the target name and rename only once the checksum matches, so an interrupted
    # or corrupted download never sits at `path` looking like the real file.
    partial = path.with_name(path.name + ".part")
    partial.unlink(missing_ok=True)  # download_url would take a leftover as already downloaded
    try:
        download_url(url, str(path.parent), partial.name)
        found = calculate_md5(partial)
    except OSError as error:  # URLError and HTTPError are OSErrors
        partial.unlink(missing_ok=True)
        raise ConfigError(f"no CSV file at {path}, and downloading {url} failed ({error}): "
                          f"download it yourself to {path}, or set data.path") from error
    if md5 and found != md5:
        partial.unlink()
        raise ConfigError(f"the file downloaded from {url} has md5 {found}, expected {md5} (data.md5); "
                          f"it was not kept: download it yourself to {path}, or set data.url")
    partial.replace(path)
    return path


def read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise ConfigError(f"{path} is empty: expected a header line of column names, then one line per row") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not a readable CSV file: {str(error).splitlines()[0]}") from error
    if frame.empty:
        raise ConfigError(f"{path} has a header line but no rows")
    return frame


def choose_features(frame: pd.DataFrame, path: Path, target: str, features: list[str] | None) -> list[str]:
    """The input columns: `features`, or every column but the target; each must exist and hold some value."""
    columns = ", ".join(map(str, frame.columns))
    if target not in frame.columns:
        raise ConfigError(f"data.target={target}: {path} has no such column; its columns are {columns}")
    features = [c for c in frame.columns if c != target] if features is None else list(features)
    if missing := [c for c in features if c not in frame.columns]:
        raise ConfigError(f"data.features names {', '.join(missing)}, not in {path}; its columns are {columns}")
    if target in features:
        raise ConfigError(f"data.features lists the target {target}; the model would see the answer")
    if not features:
        raise ConfigError(f"{path} has no column besides the target {target} to predict it from")
    for column in [*features, target]:
        if frame[column].isna().all():
            raise ConfigError(f"column {column} of {path} is entirely empty: fill it in, or leave it out "
                              f"by listing the columns to use in data.features")
    return features


def numeric_target(column: pd.Series, path: Path, log: bool) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    if not (text := column[values.isna() & column.notna()]).empty:
        raise ConfigError(f"data.target={column.name} is not numeric: {text.iloc[0]!r} on line {text.index[0] + 2} "
                          f"of {path}; regression needs a number in every row of the target column")
    if (missing := int(values.isna().sum())) > 0:
        raise ConfigError(f"data.target={column.name} has no value in {missing} rows of {path}, "
                          f"first on line {values.index[values.isna()][0] + 2}; fill them in or remove those rows")
    if log and (values <= 0).any():
        raise ConfigError(f"data.log_target=true needs a positive target, {column.name} holds {values.min()}")
    return np.log(values.to_numpy()) if log else values.to_numpy()


def column_types(inputs: pd.DataFrame, numeric: list[str], categorical: list[str]) -> tuple[list[str], list[str]]:
    """The numeric and the categorical input columns: numbers (not true/false) are numeric, everything
    else categorical, except the columns `numeric` and `categorical` name."""
    for name, listed in (("numeric", numeric), ("categorical", categorical)):
        if unknown := [c for c in listed if c not in inputs.columns]:
            raise ConfigError(f"data.{name} names {', '.join(unknown)}, not among the input columns "
                              f"{', '.join(map(str, inputs.columns))}")
    if both := set(numeric) & set(categorical):
        raise ConfigError(f"{', '.join(sorted(both))} listed in both data.numeric and data.categorical")

    def is_numeric(column: str) -> bool:
        kind = inputs[column].dtype
        return column in numeric or (column not in categorical and pd.api.types.is_numeric_dtype(kind)
                                     and not pd.api.types.is_bool_dtype(kind))

    numbers = [c for c in inputs.columns if is_numeric(c)]
    return numbers, [c for c in inputs.columns if c not in numbers]


def typed_columns(inputs: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The columns `numeric` as numbers (text in them, such as "?" for unknown, becomes a missing value)
    and `categorical` as text, one type per column (codes such as 1, 2 as text), missing values kept missing."""
    inputs = inputs[[*numeric, *categorical]].copy()
    for column in numeric:
        inputs[column] = pd.to_numeric(inputs[column], errors="coerce")
    inputs[categorical] = inputs[categorical].astype(str).where(inputs[categorical].notna())
    return inputs


@dataclass
class RowPreprocessing:
    """Raw rows, as the CSV holds them (numbers and text), to the model's inputs: the ColumnTransformer
    fitted on the training rows. Saved with the model, so that new rows are predicted as trained."""

    transformer: ColumnTransformer
    numeric: list[str]
    categorical: list[str]
    target: str
    log_target: bool

    @classmethod
    def fit(cls, rows: pd.DataFrame, numeric: list[str], categorical: list[str], target: str,
            log_target: bool) -> "RowPreprocessing":
        transformer = ColumnTransformer([
            # median: robust to the skewed counts and areas of house data
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            # a missing value is a category of its own; categories first seen after training encode as all zeros
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ]).fit(typed_columns(rows, numeric, categorical))
        return cls(transformer, numeric, categorical, target, log_target)

    @property
    def target_name(self) -> str:
        """The target the model predicts: the column, or its log."""
        return f"log({self.target})" if self.log_target else self.target

    def inputs(self, rows: pd.DataFrame) -> torch.Tensor:
        """The model's inputs for raw `rows`, which need the input columns (in any order; others are ignored)."""
        columns = [*self.numeric, *self.categorical]
        if missing := [c for c in columns if c not in rows.columns]:
            raise ConfigError(f"the rows lack the input columns {', '.join(map(str, missing))}; the model takes "
                              f"{', '.join(map(str, columns))} (the target {self.target} may be there or not)")
        return torch.tensor(self.transformer.transform(typed_columns(rows, self.numeric, self.categorical)),
                            dtype=torch.float32)

    def predict(self, model: torch.nn.Module, rows: pd.DataFrame) -> pd.DataFrame:
        """A row per raw row: the target where `rows` hold it, then `predicted`, both in the units the model
        was trained in (log units with data.log_target)."""
        predicted = pd.DataFrame({"predicted": predict(model, self.inputs(rows)).numpy()[:, 0]}, index=rows.index)
        if self.target in rows.columns:
            actual = pd.to_numeric(rows[self.target], errors="coerce")
            predicted.insert(0, self.target_name, np.log(actual) if self.log_target else actual)
        return predicted

    def state(self) -> dict:
        """As model.pt holds it: plain values, and the transformer serialised by skops, which (unlike
        pickle) loads only the types it is told to trust, as model.pt is read with weights_only=True."""
        return {"transformer": skops.io.dumps(self.transformer), "numeric": self.numeric,
                "categorical": self.categorical, "target": self.target, "log_target": self.log_target}

    @classmethod
    def from_state(cls, state: dict) -> "RowPreprocessing":
        return cls(**state | {"transformer": skops.io.loads(state["transformer"], trusted=SKOPS_TRUSTED)})


SKOPS_TRUSTED = ["numpy.dtype"]  # besides scikit-learn's own types, which skops trusts


class RawRowsModel(mlflow.pyfunc.PythonModel):
    """A tabular run's MLflow model: raw rows in (a pandas DataFrame as the CSV holds them, the target
    column there or not), a DataFrame with the column `predicted` out, through the run's model.pt (its
    weights, target scaling and preprocessing), exactly as `python -m experiments.predict input=...`."""

    def load_context(self, context) -> None:
        from experiments import checkpoint

        saved = checkpoint.read(None, context.artifacts["checkpoint"], None)
        self.model, self.preprocessing = checkpoint.rebuild(saved), RowPreprocessing.from_state(saved["preprocessing"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.preprocessing.predict(self.model, model_input)


def log_model(checkpoint_path: Path, step: int) -> None:
    """Log the model of a tabular run (RawRowsModel, as code: tabular_model.py) to the active MLflow run, as
    `model`, linked to the run's metrics at `step`. No signature: MLflow would then demand exactly the training
    columns and types, where raw rows may lack the target, hold other columns, or read a number column as text."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)  # its warning that it inferred no signature: none is wanted (above)
    try:
        mlflow.pyfunc.log_model(
            name="model", step=step, python_model=str(Path(__file__).with_name("tabular_model.py")),
            artifacts={"checkpoint": str(checkpoint_path)},
            # Stating the requirements skips MLflow's slow import scan of the environment.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "scikit-learn", "pandas", "skops"],
        )
    finally:
        pyfunc_logger.setLevel(level)


def split_rows(n_rows: int, split: str, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Row indices per split: seeded random train/val/test, or every row in file order ("none")."""
    if split == "none":
        everything = np.arange(n_rows)
        return {"train": everything, "val": everything}
    if split != "random":
        raise ConfigError(f"data.split={split}: choose one of {', '.join(SPLITS)}")
    n_val, n_test = round(n_rows * val_fraction), round(n_rows * test_fraction)
    if n_val < 1 or n_rows - n_val - n_test < 1:
        raise ConfigError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} of {n_rows} "
                          f"rows leave {n_rows - n_val - n_test} to train on and {n_val} to validate on; "
                          f"both need at least one (data.split=none trains and validates on every row)")
    order = np.random.default_rng(seed).permutation(n_rows)
    rows = {"train": order[n_val + n_test:], "val": order[:n_val]}
    return rows | ({"test": order[n_val:n_val + n_test]} if n_test else {})


REGRESSION_METRICS = {
    "mse": metrics.mean_squared_error,
    "rmse": metrics.root_mean_squared_error,
    "mae": metrics.mean_absolute_error,
    "r2": metrics.r2_score,
}


class TabularDataModule(TensorDataModule):
    """Preprocessed CSV splits (`preprocessing` made them from the raw rows), targets in their own units,
    which the model scales its outputs to (`target_scale`: the training targets' mean and std; None
    trains on the targets as they are)."""

    def __init__(self, train: Split, val: Split, test: Split | None, *, preprocessing: RowPreprocessing,
                 target_scale: tuple[float, float] | None, **options):
        super().__init__(train, val, test, **options)
        self.preprocessing, self.target_scale = preprocessing, target_scale

    @property
    def target_name(self) -> str:
        return self.preprocessing.target_name

    def splits(self) -> dict[str, Split]:
        return {name: split for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
                if split is not None}

    def closed_form_metrics(self) -> dict[str, float]:
        """`closed_form/<split>/<metric>` of least squares (LinearRegression) fitted to the training split:
        the optimum a linear model trained by gradient descent on the same data approaches."""
        # float64: one-hot columns make the least-squares problem ill-conditioned, and solved in the
        # tensors' float32 its validation R² on Ames drops from 0.89 to below 0
        least_squares = LinearRegression().fit(self.train.inputs.double().numpy(), self.train.targets.double().numpy())
        return {
            f"closed_form/{name}/{metric}": float(score(split.targets.double().numpy(),
                                                        least_squares.predict(split.inputs.double().numpy())))
            for name, split in self.splits().items() for metric, score in REGRESSION_METRICS.items()
        }

    def log_extras(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Log the least-squares baseline beside the run (plots.py draws predicted vs actual)."""
        baseline = self.closed_form_metrics()
        mlflow.log_metrics(baseline, step=step)
        return baseline
