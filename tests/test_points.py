"""The built-in 2-D datasets and the tutorial's claims about them (REFERENCE.md C and E)."""
import pytest
import torch

from conftest import QUIET
from experiments.api import run_experiment
from experiments.data.points import circle, diagonal, xor


def test_datasets_follow_the_published_rules():
    dm = circle(n_points=1000, radius=0.4, seed=3, targets="sign", val_fraction=0.2, batch_size=10, shuffle=False)
    assert (len(dm.train), len(dm.val)) == (800, 200)
    points = torch.cat([dm.train.inputs, dm.val.inputs])
    targets = torch.cat([dm.train.targets, dm.val.targets])
    assert points.min() >= 0 and points.max() <= 1
    assert torch.equal(targets.squeeze(1) > 0, (points - 0.5).norm(dim=1) < 0.4)
    assert set(targets.unique().tolist()) == {-1.0, 1.0}

    dm = diagonal(n_points=100, offset=0.3, seed=3, targets="onehot", val_fraction=0, batch_size=100, shuffle=False)
    assert dm.train is dm.val and dm.train.targets.shape == (100, 2)
    assert torch.equal(dm.train.targets.argmax(1).bool(), dm.train.inputs[:, 0] - dm.train.inputs[:, 1] < 0.3)

    dm = xor(targets="index", val_fraction=0, batch_size=4, shuffle=False, seed=0)
    assert dm.train.targets.tolist() == [0, 1, 1, 0] and dm.num_outputs == 2


def test_same_seed_same_points_other_seed_other_points():
    make = lambda seed: circle(n_points=50, radius=0.4, seed=seed, targets="binary", val_fraction=0.2, batch_size=10,
                               shuffle=True)
    assert torch.equal(make(1).train.inputs, make(1).train.inputs)
    assert not torch.equal(make(1).train.inputs, make(2).train.inputs)


def test_xor_needs_a_hidden_layer():
    mlp = run_experiment(["data=xor", "trainer.max_epochs=150", *QUIET])
    assert mlp.metrics["val/accuracy"] == 1.0
    linear = run_experiment(["data=xor", "model=linear", "trainer.max_epochs=150", *QUIET])
    assert linear.metrics["val/accuracy"] < 1.0


def hidden_weights(init: str) -> torch.Tensor:
    result = run_experiment(["data=circle", "model.hidden_sizes=[6]", "model.activation=sigmoid",
                             f"model.init={init}", "trainer.max_epochs=3", *QUIET])
    return result.model[1].weight


def test_zero_init_keeps_hidden_units_identical_random_init_does_not():
    zeros = hidden_weights("zeros")
    assert zeros.abs().sum() > 0, "training should have moved the weights"
    assert torch.allclose(zeros, zeros[:1].expand_as(zeros)), "every hidden unit should have the same weights"
    normal = hidden_weights("normal")
    assert not torch.allclose(normal, normal[:1].expand_as(normal), atol=1e-3)


@pytest.mark.parametrize("data", ["circle", "diagonal"])
def test_same_seed_same_metrics(data):
    overrides = [f"data={data}", "trainer.max_epochs=3", "seed=7", *QUIET]
    first, second = run_experiment(overrides), run_experiment(overrides)
    keys = [k for k in first.metrics if not k.startswith("time/")]
    assert {k: first.metrics[k] for k in keys} == {k: second.metrics[k] for k in keys}
    other = run_experiment([*overrides[:-2], "seed=8", *QUIET])
    assert other.metrics["val/loss"] != first.metrics["val/loss"]
