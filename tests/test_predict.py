"""A run's saved model: reloaded from model.pt (by run id or path) it predicts exactly as trained;
`python -m experiments.predict` writes predictions and recomputes the logged metrics."""
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import QUIET, SHARED_DATA, cli
from experiments import checkpoint
from experiments.api import predict, run_experiment


def test_saved_model_reloads_and_predicts_identically_and_pyfunc_gives_the_same_labels(isolated):
    result = run_experiment(["data=xor", "model=layers", "trainer.max_epochs=20", *QUIET])
    inputs = torch.rand(50, 2)
    expected = predict(result.model, inputs)
    saved = checkpoint.read(result.run_id, None, f"sqlite:///{isolated}/mlflow.db")
    assert torch.equal(predict(checkpoint.rebuild(saved), inputs), expected)

    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert np.array_equal(np.asarray(pyfunc.predict(inputs.numpy())).argmax(axis=1), expected.argmax(dim=1).numpy())


@pytest.mark.parametrize("targets", ["index", "sign"])  # sign: the circle's own, ±1 targets and one output
def test_predict_on_a_split_writes_csv_and_recomputes_the_logged_metrics(isolated, store, targets):
    loss = ["loss=cross_entropy"] if targets == "index" else []
    result = run_experiment(["data=circle", f"data.targets={targets}", *loss, "model=layers", "trainer.max_epochs=2",
                             *QUIET])
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=val", "output=val.csv", cwd=isolated)
    assert run.returncode == 0, run.stderr
    logged = store.get_run(result.run_id).data.metrics
    printed = dict(zip(*[iter(run.stdout.splitlines()[0].split())] * 2))
    assert printed.keys() == {"val/loss", "val/accuracy"}
    for key, value in printed.items():
        assert abs(float(value) - logged[key]) < 1e-4, key
    frame = pd.read_csv(isolated / "val.csv")
    outputs = ["output_0", "output_1"] if targets == "index" else ["output_0"]
    assert list(frame.columns) == ["sample", "label", "predicted", *outputs] and len(frame) == 200
    assert set(frame.label) == {0, 1} and set(frame.predicted) <= {0, 1}, "classes, whatever the targets' encoding"
    assert abs((frame.label == frame.predicted).mean() - logged["val/accuracy"]) < 1e-6


@pytest.mark.parametrize("run_of", ["mnist_3v7", "circle"])
def test_predict_on_a_split_of_0_1_targets_writes_labels_and_the_classes_the_run_counted(isolated, store, run_of):
    # Outputs that are logits, a class 1 above 0: REFERENCE.md D's baseline, MNIST threes (1) and sevens (0), whose
    # metrics=binary_accuracy says so; circle's 0/1 targets under bce_with_logits, where metrics=accuracy's threshold
    # follows the loss
    result = run_experiment(["model=mean_baseline", "data=mnist_3v7", *QUIET] if run_of == "mnist_3v7" else
                            ["data=circle", "data.targets=binary", "loss=bce_with_logits", "trainer.max_epochs=3", *QUIET])
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=val", cwd=isolated)
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(isolated / "predictions.csv")
    assert list(frame.columns) == ["sample", "label", "predicted", "output_0"]
    if run_of == "mnist_3v7":
        assert len(frame) == 2038 and (frame.label == 1).sum() == 1010, "the MNIST test set's threes"
    assert np.array_equal(frame.predicted, frame.output_0 > 0)
    logged = store.get_run(result.run_id).data.metrics
    assert abs((frame.label == frame.predicted).mean() - logged["val/accuracy"]) < 1e-6


def test_predict_on_a_csv_file_of_raw_inputs(isolated):
    result = run_experiment(["data=xor", "model=layers", "trainer.max_epochs=20", *QUIET])
    points = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.5, 0.25]])
    pd.DataFrame({"label": [1, 0, 1], "x0": points[:, 0], "x1": points[:, 1]}).to_csv(isolated / "points.csv", index=False)
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "input=points.csv", cwd=isolated)
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(isolated / "predictions.csv")
    assert list(frame.label) == [1, 0, 1]
    assert list(frame.predicted) == predict(result.model, points).argmax(dim=1).tolist()


def test_declared_model_reloads_without_its_yaml_and_not_as_another_model(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "mine.yaml").write_text(
        "defaults: [layers, _self_]\nlayers: {hidden: {linear: 8}, output: {linear: num_outputs}}\n"
    )
    train = cli("-m", "experiments", "data=xor", "model=mine", "trainer.max_epochs=2",
                f"hydra.searchpath=[file://{tmp_path}/my_conf]", *QUIET, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    shutil.rmtree(tmp_path / "my_conf")
    (saved,) = tmp_path.glob("outputs/*/*/model.pt")  # in the run's Hydra output folder

    run = cli("-m", "experiments.predict", f"checkpoint={saved}", "split=val", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 4

    other = cli("-m", "experiments.predict", f"checkpoint={saved}", "model=layers", cwd=tmp_path)
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "different model config" in lines[0] and "layers" in lines[0], other.stderr


def test_evaluate_on_mnist_test_split_matches_training_and_idx_file_predictions_agree(isolated, store):
    result = run_experiment(["data=mnist", "model=lenet_layers", "data.limit=300", "data.val_size=100",
                             "scheduler=constant", "optimizer.lr=0.001", "trainer.max_epochs=1", *QUIET])
    split = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=test", "output=test.csv", cwd=isolated)
    assert split.returncode == 0, split.stderr
    logged = store.get_run(result.run_id).data.metrics
    printed = dict(zip(*[iter(split.stdout.splitlines()[0].split())] * 2))
    assert abs(float(printed["test/accuracy"]) - logged["test/accuracy"]) < 1e-4
    assert abs(float(printed["test/loss"]) - logged["test/loss"]) < 1e-4

    images = Path(os.environ.get("EXPERIMENTS_DATA_DIR", isolated / "data")) / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    idx = cli("-m", "experiments.predict", f"run_id={result.run_id}", f"input={images}", "output=idx.csv", cwd=isolated)
    assert idx.returncode == 0, idx.stderr
    from_split, from_file = pd.read_csv(isolated / "test.csv"), pd.read_csv(isolated / "idx.csv")
    assert len(from_split) == 300 and len(from_file) == 10_000
    assert np.allclose(from_file.filter(like="output_")[:300], from_split.filter(like="output_"), atol=1e-5)


BOSTON = Path(os.environ.get("EXPERIMENTS_DATA_DIR", SHARED_DATA)) / "house_prices" / "boston.csv"


def test_a2_predicts_raw_rows_through_its_preprocessing_alike_in_the_cli_the_api_and_pyfunc(isolated, store):
    # REFERENCE.md A2's preset, shortened: it trains and validates on all of boston.csv (split none), so
    # val/mse is the final model's MSE over the rows it trained on
    result = run_experiment(["experiment=house_prices_linear", "trainer.max_epochs=50", *QUIET])
    logged = store.get_run(result.run_id).data.metrics

    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", f"input={BOSTON}", cwd=isolated)
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(isolated / "predictions.csv")
    assert list(frame.columns) == ["sample", "MEDV", "predicted"] and len(frame) == 506
    assert np.array_equal(frame.MEDV, pd.read_csv(BOSTON).MEDV), "the target column copied through"
    assert abs(((frame.predicted - frame.MEDV) ** 2).mean() - logged["val/mse"]) < 1e-3
    printed = dict(zip(*[iter(run.stdout.splitlines()[0].split())] * 2))
    assert abs(float(printed["input/mse"]) - logged["val/mse"]) < 1e-3

    rows = pd.read_csv(BOSTON).drop(columns="MEDV")  # raw rows without the target
    from_api = predict(result.model, rows, result.preprocessing)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    from_pyfunc = pyfunc.predict(rows)
    assert list(from_api.columns) == list(from_pyfunc.columns) == ["predicted"]
    assert np.allclose(from_api.predicted, frame.predicted, atol=1e-4)
    assert np.allclose(from_pyfunc.predicted, frame.predicted, atol=1e-4)


def test_predict_on_a_split_of_a_tabular_run_writes_the_target_and_the_predicted_value(isolated, store):
    result = run_experiment(["data=house_prices", "model=mlp", "trainer.max_epochs=3", *QUIET])
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=test", cwd=isolated)
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(isolated / "predictions.csv")
    assert list(frame.columns) == ["sample", "MEDV", "predicted"] and len(frame) == 101, "as for raw rows"
    assert frame.MEDV.isin(pd.read_csv(BOSTON).MEDV).all()
    logged = store.get_run(result.run_id).data.metrics
    assert abs(((frame.predicted - frame.MEDV) ** 2).mean() / logged["test/mse"] - 1) < 1e-5
    assert abs((frame.predicted - frame.MEDV).abs().mean() - logged["test/mae"]) < 1e-4


def test_a_run_on_a_csv_named_by_a_relative_path_predicts_from_another_folder(isolated, store):
    rng = np.random.default_rng(0)
    size = rng.uniform(50, 250, 60)
    pd.DataFrame({"size": size, "price": 2.0 * size + rng.normal(0, 5, 60)}).to_csv(isolated / "my.csv", index=False)
    result = run_experiment(["data=csv", "data.path=my.csv", "data.target=price", "trainer.max_epochs=5", *QUIET])

    (isolated / "elsewhere").mkdir()
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=val",
              f"tracking.tracking_uri=sqlite:///{isolated}/mlflow.db", cwd=isolated / "elsewhere")
    assert run.returncode == 0, run.stderr
    logged = store.get_run(result.run_id).data
    printed = dict(zip(*[iter(run.stdout.splitlines()[0].split())] * 2))
    assert abs(float(printed["val/mse"]) / logged.metrics["val/mse"] - 1) < 1e-5
    assert list(pd.read_csv(isolated / "elsewhere" / "predictions.csv").columns) == ["sample", "price", "predicted"]
    assert logged.params["data.path"] == str(isolated / "my.csv"), "recorded as the file's absolute path"


def test_rows_with_text_unseen_categories_and_no_target_predict_and_missing_columns_are_one_line(isolated):
    rng = np.random.default_rng(0)
    size, garden = rng.uniform(50, 250, 120), rng.choice(["yes", "no"], 120)
    price = 2.0 * size + 60.0 * (garden == "yes")
    pd.DataFrame({"size": size, "garden": garden, "price": price}).to_csv(isolated / "train.csv", index=False)
    result = run_experiment(["data=csv", f"data.path={isolated / 'train.csv'}", "data.target=price",
                             "trainer.max_epochs=30", *QUIET])

    # columns in another order, one more column, no target, a text in a number column, unseen categories
    rows = pd.DataFrame({"garden": ["yes", "no", "maybe", None], "size": ["100", "100", "100", "?"],
                         "street": ["a", "b", "c", "d"]})
    rows.to_csv(isolated / "new.csv", index=False)
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "input=new.csv", "output=new_predictions.csv",
              cwd=isolated)
    assert run.returncode == 0, run.stderr
    predicted = pd.read_csv(isolated / "new_predictions.csv").predicted
    assert list(predicted.index) == [0, 1, 2, 3] and predicted.notna().all()
    assert abs(predicted[0] - 260) < 15 and abs(predicted[1] - 200) < 15, "in the target's units"
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert np.allclose(pyfunc.predict(pd.read_csv(isolated / "new.csv")).predicted, predicted, atol=1e-4)

    rows.drop(columns="size").to_csv(isolated / "short.csv", index=False)
    short = cli("-m", "experiments.predict", f"run_id={result.run_id}", "input=short.csv", cwd=isolated)
    assert short.returncode == 2
    last = short.stderr.strip().splitlines()[-1]  # after the download's progress bar
    assert last.startswith(f"error: input={isolated}/short.csv:") and "lack the input columns size" in last, short.stderr
