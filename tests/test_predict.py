"""A run's saved model: reloaded from model.pt (by run id or path) it predicts exactly as trained;
`python -m experiments.predict` writes predictions and recomputes the logged metrics."""
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from conftest import QUIET, cli
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


def test_predict_on_a_split_writes_csv_and_recomputes_the_logged_metrics(isolated, store):
    result = run_experiment(["data=circle", "data.targets=index", "loss=cross_entropy", "model=layers",
                             "trainer.max_epochs=2", *QUIET])
    run = cli("-m", "experiments.predict", f"run_id={result.run_id}", "split=val", "output=val.csv", cwd=isolated)
    assert run.returncode == 0, run.stderr
    logged = store.get_run(result.run_id).data.metrics
    printed = dict(zip(*[iter(run.stdout.splitlines()[0].split())] * 2))
    assert printed.keys() == {"val/loss", "val/accuracy"}
    for key, value in printed.items():
        assert abs(float(value) - logged[key]) < 1e-4, key
    frame = pd.read_csv(isolated / "val.csv")
    assert list(frame.columns) == ["sample", "label", "predicted", "output_0", "output_1"] and len(frame) == 200
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
