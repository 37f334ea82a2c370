"""Models declared in YAML (model=layers, lenet_layers, halves_layers): inferred shapes, the summary
printed at the start of a run, bad specs reported in one line before training."""
import mlflow
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from conftest import QUIET, cli, refusal
from experiments import report
from experiments.api import predict, run_experiment
from experiments.models.cnn import LeNet
from experiments.models.layers import Layers


def declared(name: str, input_shape, num_outputs: int, *overrides: str) -> torch.nn.Module:
    with initialize_config_module("experiments.conf", version_base="1.3"):
        config = compose("config", overrides=[f"model={name}", *overrides])
    return instantiate(config.model, input_shape=input_shape, num_outputs=num_outputs)


def test_lenet_spec_infers_the_reference_shapes_and_the_parameter_count_of_lenet():
    model = declared("lenet_layers", (1, 28, 28), 10)
    shapes = [model.shapes[name] for name in ("layers_cv1", "layers_mp1", "layers_cv2", "layers_mp2", "flatten",
                                              "layers_hidden", "layers_classifier")]
    assert shapes == [(20, 24, 24), (20, 12, 12), (50, 8, 8), (50, 4, 4), (800,), (500,), (10,)]
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in LeNet((1, 28, 28), 10).parameters()) == 431_080
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_forward_with_two_inputs_a_shared_layer_temporaries_and_add():
    model = Layers(
        input_shape=((3,), (3,)), num_outputs=2, inputs={"a": None, "b": None},
        layers={"enc": {"linear": 4}, "out": {"linear": "num_outputs"}},
        forward=["ha = a.enc.tanh", "hb = enc(b).tanh", "add(ha, hb).out"],
    )
    a, b = torch.rand(5, 3), torch.rand(5, 3)
    enc, out = model.layers.enc, model.layers.out
    assert torch.allclose(model(a, b), out(torch.tanh(enc(a)) + torch.tanh(enc(b))))
    assert sum(p.numel() for p in model.parameters()) == (3 * 4 + 4) + (4 * 2 + 2)  # enc counted once
    assert model.shapes["ha"] == model.shapes["hb"] == (4,)


def test_every_layer_kind_and_function_infers_its_input_size():
    model = Layers(
        input_shape=((1, 8, 8), (5,)), num_outputs=3, inputs={"image": None, "tokens": None},
        layers={"conv": {"conv2d": {"out_channels": 4, "kernel_size": 3, "padding": 1}}, "bn": {"batchnorm2d": None},
                "pool": {"avgpool2d": 2}, "max": {"maxpool2d": 2}, "drop": {"dropout": 0.5},
                "seq": {"conv1d": [6, 3]}, "bn1": {"batchnorm1d": None}, "emb": {"embedding": [10, 4]},
                "out": {"linear": "num_outputs"}},
        forward=["i = image.conv.bn.gelu.pool.max.drop.flatten",          # 4×2×2 -> 16
                 "s = i.reshape(2, 8).seq.bn1.sigmoid.flatten",           # 6×6 -> 36
                 "e = tokens.emb.flatten.tanh",                           # 5×4 -> 20
                 "cat(i, s, e).softmax.relu.out"],
    )
    assert (model.shapes["i"], model.shapes["s"], model.shapes["e"], model.shapes["cat"]) == ((16,), (36,), (20,), (72,))
    assert model(torch.rand(2, 1, 8, 8), torch.randint(0, 10, (2, 5)).float()).shape == (2, 3)


def test_summary_of_every_layer_is_printed_and_logged_at_the_start_of_a_run(capsys, store, monkeypatch):
    # a process prints an architecture's summary once (a sweep's first job): this worker's earlier tests may have
    monkeypatch.setattr(report, "_printed", set())
    result = run_experiment(["data=xor", "model=layers", "trainer.max_epochs=1", *QUIET])
    printed = capsys.readouterr().out
    logged = open(store.download_artifacts(result.run_id, "model_summary.txt")).read()
    for summary in (printed, logged):
        rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.count("|") > 4}
        assert "[2, 2]" in rows["model.layers.hidden"] and "[2, 32]" in rows["model.layers.hidden"]
        assert "96" in rows["model.layers.hidden"] and "[2, 2]" in rows["model.layers.output"]
        assert "162       Total params" in summary  # 2*32+32 + 32*2+2
        assert all(name.startswith("model") for name in rows if name != "Name")  # no loss or metric modules
    assert printed.index("Total params") < printed.index("xor · layers")  # before the results table


BAD_SPECS = {
    "5x5 conv on a 2x1 map": (
        "layers: {conv: {conv2d: [4, 5]}, output: {linear: num_outputs}}\nforward: x.reshape(1, 2, 1).conv.flatten.output",
        ["model.layers.conv", "conv2d", "(1, 2, 1)", "Kernel size"],
    ),
    "unknown layer kind": (
        "layers: {conv: {conv3x: 4}, output: {linear: num_outputs}}\nforward: x.conv.output",
        ["model.layers.conv", "conv3x", "conv2d"],
    ),
    "unknown function": (
        "layers: {output: {linear: num_outputs}}\nforward: x.flatten.relux.output",
        ["model.forward", "relux", "relu"],
    ),
    "undefined value": (
        "layers: {output: {linear: num_outputs}}\nforward: [h = x.flatten, y.output]",
        ["model.forward", "'y'", "x, h"],
    ),
}


def bad_model(tmp_path, case: str) -> list[str]:
    """Overrides choosing model=bad, a config in tmp_path/my_conf declaring the spec of BAD_SPECS[case]."""
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "bad.yaml").write_text(
        f"_target_: experiments.models.layers.Layers\ninputs: {{x: null}}\n{BAD_SPECS[case][0]}\n"
    )
    return ["data=xor", "model=bad", f"hydra.searchpath=[file://{tmp_path}/my_conf]", *QUIET]


@pytest.mark.parametrize("case", BAD_SPECS)
def test_bad_spec_is_refused_naming_the_layer_before_any_run(case, tmp_path):
    # each case in this process (refusal); the command's one line on stderr: the next test
    message = refusal(bad_model(tmp_path, case))
    assert all(text in message for text in BAD_SPECS[case][1]), message
    assert not (tmp_path / "mlflow.db").exists(), "no MLflow run should be opened for a model that cannot be built"


def test_bad_spec_is_one_line_naming_the_layer_before_any_run(tmp_path):
    result = cli("-m", "experiments", *bad_model(tmp_path, "unknown function"), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: model.forward") and "relux" in line, line
    assert not (tmp_path / "mlflow.db").exists(), "no MLflow run should be opened for a model that cannot be built"


MNIST_SUBSET = ["data.limit=1500", "data.val_size=300", "optimizer=adam", "optimizer.lr=0.001", "trainer.max_epochs=1", *QUIET]


def test_lenet_layers_trains_on_mnist_exactly_as_the_hand_built_lenet():
    # Lazy layers initialise in forward order, drawing the same random numbers as lenet's layers.
    declared_run = run_experiment(["data=mnist", "model=lenet_layers", *MNIST_SUBSET])
    lenet_run = run_experiment(["data=mnist", "model=lenet", *MNIST_SUBSET])
    assert declared_run.metrics["test/accuracy"] == lenet_run.metrics["test/accuracy"] > 0.5


def test_two_input_model_on_mnist_halves_trains_above_chance_and_reloads_from_mlflow():
    result = run_experiment(["data=mnist_halves", "model=halves_layers", *MNIST_SUBSET])
    assert result.metrics["test/accuracy"] > 0.3  # 10 classes: chance is 0.1
    top, bottom = torch.rand(4, 1, 14, 28), torch.rand(4, 1, 14, 28)
    loaded = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    assert torch.allclose(loaded(top, bottom), predict(result.model, (top, bottom)), atol=1e-6)
