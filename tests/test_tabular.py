"""CSV regression (issue 4): house prices (REFERENCE.md A2, Ames), any CSV with a target column, bad input."""
import functools
import http.server
import os
import threading
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import r2_score, root_mean_squared_error

from conftest import QUIET, SHARED_DATA, cli, refusal
from experiments import metrics
from experiments.api import predict, run_experiment
from experiments.data.tabular import csv_dataset
from experiments.task import Task

BOSTON = Path(os.environ.get("EXPERIMENTS_DATA_DIR", SHARED_DATA)) / "house_prices" / "boston.csv"
REGRESSION_KEYS = [f"{stage}/{name}" for stage in ("train", "val", "test") for name in ("mse", "rmse", "mae", "r2")]


def write_csv(path: Path, n_rows: int = 200, seed: int = 0) -> Path:
    """A CSV as users have them: two numbers, a yes/no column, a price; a few values missing."""
    rng = np.random.default_rng(seed)
    size, age = rng.uniform(50, 250, n_rows), rng.uniform(0, 80, n_rows)
    garden = rng.choice(["yes", "no"], n_rows)
    price = 2.0 * size - 1.5 * age + 60.0 * (garden == "yes") + rng.normal(0, 5, n_rows)
    frame = pd.DataFrame({"size": size, "age": age, "garden": garden, "price": price})
    frame.loc[::20, "age"], frame.loc[5::20, "garden"] = np.nan, np.nan
    frame.to_csv(path, index=False)
    return path


def dataset(path: Path, **options):
    """csv_dataset with the options of conf/data/csv.yaml, changed by `options`."""
    defaults = dict(target="price", features=None, numeric=[], categorical=[], log_target=False,
                    standardize_target=True, split="random", val_fraction=0.2, test_fraction=0.2, url=None, md5=None,
                    batch_size=32, shuffle=True, seed=0)
    return csv_dataset(str(path), **(defaults | options))


def only_run(store):
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    return run


def runs_left_running(folder: Path) -> list:
    if not (folder / "mlflow.db").exists():
        return []
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id]) if run.info.status == "RUNNING"]


@pytest.mark.slow
def test_published_house_price_workload_a2(store, monkeypatch):
    """REFERENCE.md A2 from its preset: 500 unshuffled epochs over all 506 rows end at a training MSE of 21.9."""
    epochs = {}  # epoch: the batch losses and targets of its training steps
    log_epoch = Task._log_epoch

    def recorded(self, stage):
        if stage == "train":
            record = self.epoch_outputs["train"]
            epochs[self.current_epoch] = ([loss.item() for loss in record.losses], record.targets)
        return log_epoch(self, stage)

    monkeypatch.setattr(Task, "_log_epoch", recorded)
    result = run_experiment(["experiment=house_prices_linear", *QUIET])

    final = list(zip(*epochs[499]))
    assert [len(targets) for _, targets in final] == [32] * 15 + [26]
    medv = torch.tensor(pd.read_csv(BOSTON)["MEDV"].to_numpy(), dtype=torch.float32)
    assert torch.equal(torch.cat([targets for _, targets in final]).squeeze(1), medv), "all rows, in file order"
    # A2's "final mean training MSE" is the published loop's mean of the last epoch's 16 batch losses
    # (21.89 here). Lightning's train/loss weights each batch by its size, which makes it the MSE
    # over the 506 rows during that epoch: 0.12 higher (22.02), as the last, smaller batch fits worse.
    # Both are asserted: the first is what A2 states, the second what the run records.
    assert abs(np.mean([loss for loss, _ in final]) - 21.9) < 0.5
    run = only_run(store)
    assert abs(run.data.metrics["train/loss"] - 21.9) < 0.5
    params = run.data.params
    assert (params["data.split"], params["data.shuffle"], params["data.batch_size"]) == ("none", "False", "32")
    assert (params["optimizer.lr"], params["trainer.max_epochs"], params["model.hidden_sizes"]) == ("0.01", "500", "[]")
    assert params["optimizer._target_"] == "torch.optim.Adam" and params["loss._target_"] == "torch.nn.MSELoss"
    # The least-squares optimum bounds the trained linear model's MSE over the same rows, which approaches it.
    optimum = result.metrics["closed_form/train/mse"]
    assert abs(optimum - 21.895) < 0.01
    assert optimum <= result.metrics["val/mse"] < optimum + 0.5


@pytest.mark.slow
def test_ames_linear_reaches_r2_of_080_and_an_mlp_matches_it(store):
    options = ["data=ames", "trainer.max_epochs=15", *QUIET]
    linear = run_experiment([*options, "model=linear"])
    assert linear.metrics["val/r2"] >= 0.80
    mlp = run_experiment([*options, "model=mlp"])
    # "Matches" within 0.005: the MLP's R² over the 586 validation rows moves by 0.002 with the last bits of its
    # updates (0.9096 with torch's default Adam, 0.9076 with its fused kernel, conf/optimizer/adam.yaml); the
    # linear model's does not
    assert mlp.metrics["val/r2"] >= linear.metrics["val/r2"] - 0.005

    run = store.get_run(linear.run_id)
    assert set(REGRESSION_KEYS) <= set(run.data.metrics)
    assert run.data.params["data.log_target"] == "True"
    assert run.data.metrics["closed_form/val/r2"] >= 0.85, "least squares on the same split, solved exactly"


def test_any_csv_with_numeric_and_yes_no_columns_needs_only_path_and_target(tmp_path, store):
    path = write_csv(tmp_path / "houses.csv")
    result = run_experiment(["data=csv", f"data.path={path}", "data.target=price", "trainer.max_epochs=40", *QUIET])
    assert result.model.network[1].in_features == 2 + 3, "size and age standardised; garden one-hot: yes, no, missing"
    assert result.metrics["val/r2"] > 0.9 and result.metrics["test/r2"] > 0.9

    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and set(REGRESSION_KEYS) <= set(run.data.metrics)
    assert {f"closed_form/{stage}/{name}" for stage in ("train", "val", "test") for name in ("mse", "r2")} \
        <= set(run.data.metrics)
    assert run.data.metrics["closed_form/val/r2"] > 0.98, "the data is linear up to noise"
    plot = Path(store.download_artifacts(result.run_id, "plots/predicted_vs_actual.png", str(tmp_path)))
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_rmse_and_r2_are_over_the_whole_epoch_not_averaged_over_batches(tmp_path):
    path = write_csv(tmp_path / "houses.csv", n_rows=100)
    result = run_experiment(["data=csv", f"data.path={path}", "data.target=price", "data.batch_size=4",
                             "trainer.max_epochs=3", *QUIET])
    val = dataset(path, batch_size=4).val  # the same seed gives the same split and preprocessing
    with torch.no_grad():
        predicted = result.model(val.inputs).numpy()
    assert result.metrics["val/r2"] == pytest.approx(r2_score(val.targets.numpy(), predicted), abs=1e-4)
    assert result.metrics["val/rmse"] == pytest.approx(root_mean_squared_error(val.targets.numpy(), predicted), rel=1e-4)


def test_r2_is_scikit_learns_for_several_outputs_and_constant_targets():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, 2))
    outputs = targets + rng.normal(scale=0.5, size=(50, 2))
    constant = np.full((50, 1), 3.0)
    one_sample = [(targets[:1], outputs[:1])]  # undefined: NaN (and scikit-learn's warning)
    for actual, predicted in [(targets, outputs), (constant, outputs[:, :1]), (constant, constant), *one_sample]:
        ours = metrics.r2(torch.tensor(predicted, dtype=torch.float32), torch.tensor(actual, dtype=torch.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            assert float(ours) == pytest.approx(r2_score(actual, predicted), abs=1e-5, nan_ok=True)


def test_a_metric_set_to_null_is_dropped_and_the_others_are_recorded(tmp_path):
    path = write_csv(tmp_path / "houses.csv", n_rows=40)
    result = run_experiment(["data=csv", f"data.path={path}", "data.target=price", "metrics.r2=null",
                             "trainer.max_epochs=2", *QUIET])
    assert {"val/mse", "val/rmse", "val/mae"} <= set(result.metrics)
    assert not {"train/r2", "val/r2"} & set(result.metrics)


@pytest.mark.parametrize("batch_size", [32, 1])  # 1: R2Score needs two samples, which an epoch has, not a batch
def test_a_torchmetrics_metric_given_in_place_of_a_presets_function_metric_is_built_and_recorded(tmp_path, batch_size):
    # +metrics.r2=... merges into metrics=regression's r2, whose `_partial_: true` the Metric class then has
    path = write_csv(tmp_path / "houses.csv", n_rows=100)
    result = run_experiment(["data=csv", f"data.path={path}", "data.target=price", "trainer.max_epochs=3",
                             f"data.batch_size={batch_size}",
                             "+metrics.r2={_target_:torchmetrics.R2Score}",
                             "+metrics.r2_function={_target_:experiments.metrics.r2,_partial_:true}", *QUIET])
    for stage in ("train", "val", "test"):
        assert result.metrics[f"{stage}/r2"] == pytest.approx(result.metrics[f"{stage}/r2_function"], abs=1e-5)


def test_preprocessing_is_fitted_on_the_training_rows_only(tmp_path):
    frame = pd.DataFrame({"x": np.arange(50.0), "colour": ["red", "blue"] * 25, "price": np.arange(50.0) + 1})
    frame.to_csv(tmp_path / "first.csv", index=False)
    first = dataset(tmp_path / "first.csv")
    assert (len(first.train), len(first.val), len(first.test)) == (30, 10, 10)
    held_out = (torch.cat([first.val.targets, first.test.targets]).squeeze(1) - 1).long().numpy()

    # Outside the training rows: huge numbers, a missing number, a colour training never saw.
    frame.loc[held_out, "x"], frame.loc[held_out[0], "x"] = 1e6, np.nan
    frame.loc[held_out, "colour"] = "purple"
    frame.to_csv(tmp_path / "second.csv", index=False)
    second = dataset(tmp_path / "second.csv")
    assert torch.equal(second.train.inputs, first.train.inputs), "held-out rows changed nothing learnt"
    x = second.train.inputs[:, 0]
    assert abs(x.mean()) < 1e-5 and abs(x.std(correction=0) - 1) < 1e-5
    assert (second.val.inputs[:, 1:] == 0).all() and (second.test.inputs[:, 1:] == 0).all(), "unknown colour"
    imputed = {float(v) for v in torch.cat([second.val.inputs, second.test.inputs])[:, 0] if v < 1e3}
    assert len(imputed) == 1, "the missing x became the training median, standardised"

    assert not torch.equal(dataset(tmp_path / "first.csv", seed=1).val.targets, first.val.targets)
    everything = dataset(tmp_path / "first.csv", split="none")
    assert everything.test is None and torch.equal(everything.train.targets.squeeze(1), torch.arange(50.0) + 1)
    assert torch.equal(everything.val.inputs, everything.train.inputs)
    assert torch.allclose(dataset(tmp_path / "first.csv", split="none", log_target=True).train.targets.squeeze(1),
                          torch.log(torch.arange(50.0) + 1))


def test_column_types_are_detected_and_can_be_overridden(tmp_path):
    frame = pd.DataFrame({"zone": [1, 2, 3, 1] * 10, "rooms": ["3", "4", "5", "?"] * 10,
                          "new": [True, False] * 20, "price": np.arange(40.0)})
    frame.to_csv(tmp_path / "typed.csv", index=False)
    detected = dataset(tmp_path / "typed.csv", split="none")
    assert detected.input_shape == (1 + 4 + 2,), "zone a number; rooms text: 3, 4, 5, ?; new: True, False"
    overridden = dataset(tmp_path / "typed.csv", split="none", categorical=["zone"], numeric=["rooms"])
    assert overridden.input_shape == (3 + 1 + 2,), "zone codes 1, 2, 3; rooms a number, ? missing"
    assert dataset(tmp_path / "typed.csv", split="none", features=["zone"]).input_shape == (1,)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on loopback serving the folder `served/`; yields its base URL."""
    (tmp_path / "served").mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                directory=tmp_path / "served"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_missing_file_is_downloaded_from_the_url_and_checked(tmp_path, server, store):
    (tmp_path / "served" / "housing.csv").write_bytes(BOSTON.read_bytes())
    data_dir = tmp_path / "empty"
    result = run_experiment(["data=house_prices", f"paths.data_dir={data_dir}", f"data.url={server}/housing.csv",
                             "model=linear", "trainer.max_epochs=1", *QUIET])
    downloaded = data_dir / "house_prices" / "boston.csv"
    assert downloaded.read_bytes() == BOSTON.read_bytes(), "the preset's md5 is that of the real file"
    assert list(downloaded.parent.iterdir()) == [downloaded]
    run = store.get_run(result.run_id)
    assert run.data.params["data.path"] == str(downloaded) and "val/mse" in run.data.metrics


def test_download_with_the_wrong_checksum_is_refused(tmp_path, server):
    (tmp_path / "served" / "housing.csv").write_text(BOSTON.read_text().replace("24.0", "99.0", 1))
    data_dir = tmp_path / "empty"
    result = cli("-m", "experiments", "data=house_prices", f"paths.data_dir={data_dir}",
                 f"data.url={server}/housing.csv", *QUIET, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the download's progress bar
    assert "md5" in last and "9c1779811852cfe5bf00bb38f1df08f1" in last, result.stderr
    assert not [path for path in data_dir.rglob("*") if path.is_file()], "nothing kept"
    assert not (tmp_path / "mlflow.db").exists()


def bad_input(tmp_path: Path, case: str) -> list[str]:
    """Overrides pointing data=csv at a CSV with the problem `case`."""
    path, target, options = tmp_path / "bad.csv", "price", []
    if case == "missing file":
        return ["data=csv", f"data.path={path}", f"data.target={target}"]
    frame = pd.DataFrame({"size": [50.0, 70.0, 90.0], "garden": ["yes", "no", "yes"], "price": [1.0, 2.0, 3.0]})
    if case == "no such target":
        target = "Price"
    elif case == "text target":
        frame["price"] = ["1.0", "cheap", "3.0"]
    elif case == "empty column":
        frame["notes"] = np.nan
    elif case == "one-row validation split":  # R² is undefined for one sample
        frame = pd.concat([frame] * 4)
        options = ["data.val_fraction=0.1"]
    frame.to_csv(path, index=False)
    if case == "empty file":
        path.write_text("")
    return ["data=csv", f"data.path={path}", f"data.target={target}", *options]


@pytest.mark.parametrize("case, expected", [
    ("missing file", ["no CSV file at", "bad.csv"]),
    ("no such target", ["data.target=Price", "no such column", "size, garden, price"]),
    ("text target", ["not numeric", "'cheap'", "line 3"]),
    ("empty file", ["bad.csv is empty"]),
    ("empty column", ["column notes", "entirely empty"]),
    ("one-row validation split", ["val split holds a single sample", "metrics.r2 is undefined", "metrics.r2=null"]),
])
def test_bad_csv_input_is_refused_saying_what_is_wrong_and_leaves_no_run_running(tmp_path, case, expected):
    # each case in this process (refusal); the command's one line on stderr: the next test
    message = refusal([*bad_input(tmp_path, case), *QUIET])
    assert all(text in message for text in expected), message
    assert runs_left_running(tmp_path) == []


def test_bad_csv_input_is_one_line_and_leaves_no_run_running(tmp_path):
    result = cli("-m", "experiments", *bad_input(tmp_path, "text target"), *QUIET, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: data.target=price is not numeric: 'cheap' on line 3 of "), line
    assert runs_left_running(tmp_path) == []


def test_a_csv_file_named_by_a_number_is_read(isolated, store):
    """data.path=2024: Hydra reads the value as a number; it names the file (a TypeError's traceback before)."""
    pd.DataFrame({"size": [50.0, 70.0, 90.0, 60.0, 80.0] * 4, "price": [1.0, 2.0, 3.0, 1.5, 2.5] * 4}).to_csv(
        isolated / "2024", index=False)
    result = run_experiment(["data=csv", "data.path=2024", "data.target=price", "trainer.max_epochs=1", *QUIET])
    assert store.get_run(result.run_id).data.params["data.path"] == str(isolated / "2024")
    assert np.isfinite(result.metrics["val/loss"])


def test_missing_file_with_a_failing_download_is_one_line(tmp_path, server):
    result = cli("-m", "experiments", "data=ames", f"paths.data_dir={tmp_path / 'empty'}",
                 f"data.url={server}/nowhere.csv", *QUIET, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "downloading" in lines[0] and "404" in lines[0], result.stderr
    assert runs_left_running(tmp_path) == []


def test_a_target_of_order_1e5_trains_as_well_as_least_squares_and_is_reported_in_its_units(tmp_path, store):
    """Prices in dollars: the model learns them standardised, every number it reports is in dollars."""
    rng = np.random.default_rng(1)
    n_rows = 546
    size, rooms = rng.uniform(50, 250, n_rows), rng.integers(1, 7, n_rows)
    garden = rng.choice(["yes", "no"], n_rows)
    price = 1200 * size + 15_000 * rooms + 25_000 * (garden == "yes") + 40_000 + rng.normal(0, 20_000, n_rows)
    path = tmp_path / "prices.csv"
    pd.DataFrame({"size": size, "rooms": rooms, "garden": garden, "price": price}).to_csv(path, index=False)

    options = ["data=csv", f"data.path={path}", "data.target=price", *QUIET]  # the default 50 epochs
    linear = run_experiment([*options, "model=linear"])
    least_squares = linear.metrics["closed_form/val/r2"]
    assert least_squares > 0.9, "the data is linear up to the noise"
    linear_gap = least_squares - linear.metrics["val/r2"]
    assert abs(linear_gap) < 0.02  # reached: -0.00005
    mlp = run_experiment([*options, "model=mlp"])
    # the MLP at least as close: its validation R² no lower than the linear model's (reached: gap -0.0013,
    # with adam_regression's weight decay; 0.0022 without, the MLP fitting the noise of 328 training rows)
    assert least_squares - mlp.metrics["val/r2"] <= linear_gap

    # in dollars: the error is the noise's 20,000, the model's outputs are prices, the loss is their MSE
    assert 15_000 < linear.metrics["val/rmse"] < 25_000
    assert linear.metrics["val/loss"] == pytest.approx(linear.metrics["val/mse"], rel=1e-4)
    val = dataset(path).val
    predicted = predict(linear.model, val.inputs)
    assert float(predicted.mean()) == pytest.approx(float(val.targets.mean()), rel=0.05)
    assert linear.metrics["val/rmse"] == pytest.approx(
        root_mean_squared_error(val.targets.numpy(), predicted.numpy()), rel=1e-4)
