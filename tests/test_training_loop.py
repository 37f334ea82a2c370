"""Our training loop (a whole epoch's batches per Lightning step, see task.py) does the arithmetic of a plain
PyTorch loop: for the same seed, the per-epoch losses a run logs are those of the loop a user would write."""
import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import QUIET, cli
from experiments.api import compose_config, run_experiment
from experiments.errors import ConfigError
from experiments.task import apply


def plain_loop_losses(overrides: list[str], epochs: int) -> tuple[list[float], list[float]]:
    """Per-epoch mean train and validation losses of a hand-written loop over the same data, model, optimizer
    and schedule, built from the same config in the same order as a run builds them (so the same seed)."""
    config = compose_config(overrides)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = instantiate(config.data)
    model = instantiate(config.model, input_shape=dm.input_shape, num_outputs=dm.num_outputs)
    loss_fn = instantiate(config.loss)
    optimizer = instantiate(config.optimizer)(model.parameters())
    train = dm.train_dataloader()
    scheduler = config.scheduler and instantiate(config.scheduler)(optimizer, total_steps=epochs * train.batches_per_epoch)
    train_losses, val_losses = [], []
    for _ in range(epochs):
        total = count = 0
        for inputs, targets in train.batches():
            loss = loss_fn(apply(model, dm.normalize(inputs)), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler:
                scheduler.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
        train_losses.append(total / count)
        with torch.no_grad():
            batches = [(apply(model, dm.normalize(x)), y) for x, y in dm.val_dataloader().batches()]
        val_losses.append(sum(loss_fn(out, y).item() * len(y) for out, y in batches) / len(dm.val))
    return train_losses, val_losses


@pytest.mark.parametrize("overrides", [
    ["data=circle", "seed=3"],  # Adam under the one-cycle schedule, shuffled batches, a validation split
    ["data=diagonal", "optimizer=sgd", "optimizer.lr=0.3", "model.hidden_sizes=[8,8]", "scheduler=constant"],
])
def test_logged_epoch_losses_are_a_plain_pytorch_loops(store, overrides):
    epochs = 4
    result = run_experiment([*overrides, f"trainer.max_epochs={epochs}", *QUIET])
    logged = {key: [m.value for m in sorted(store.get_metric_history(result.run_id, key), key=lambda m: m.step)]
              for key in ("train/loss", "val/loss")}
    train, val = plain_loop_losses(overrides, epochs)
    assert logged["train/loss"] == pytest.approx(train, rel=1e-5)
    assert logged["val/loss"] == pytest.approx(val, rel=1e-5)


def test_max_steps_stops_inside_an_epoch(store):
    result = run_experiment(["data=circle", "trainer.max_steps=25", "scheduler=constant", *QUIET])  # 80 per epoch
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert [m.step for m in store.get_metric_history(run.info.run_id, "train/loss")] == [24]  # from 0, as Lightning
    assert result.metrics["time/samples_per_second"] > 0


def metric_history(store, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(store.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_compiled_epochs_log_the_standard_paths_metrics(store, tmp_path, monkeypatch):
    # REFERENCE.md A2's workload, shortened: 4 batches an epoch (the compiled program unrolls them), 20 epochs
    overrides = ["experiment=house_prices_linear", "data.batch_size=128", "trainer.max_epochs=20", *QUIET]
    standard = run_experiment(overrides)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))  # restored after the test
    cache = tmp_path / "compiled"
    compiled = run_experiment([*overrides, "trainer=compiled", f"trainer.callbacks.compiled_epochs.cache_dir={cache}"])

    assert metric_history(store, compiled.run_id, "train/loss") == pytest.approx(
        metric_history(store, standard.run_id, "train/loss"), rel=1e-4)
    for name in ("val/mse", "val/r2", "train/loss"):
        assert compiled.metrics[name] == pytest.approx(standard.metrics[name], rel=1e-4)
    logged = store.get_run(compiled.run_id).data.metrics
    assert logged["time/compile_seconds"] > 0 and logged["time/fit_seconds"] > 0
    assert "time/compile_seconds" not in store.get_run(standard.run_id).data.metrics
    assert any(path.is_file() for path in cache.rglob("*"))  # the programs, for the next run of these shapes


def test_compiled_epochs_refuse_a_schedule(store):
    with pytest.raises(ConfigError, match=r"trainer=compiled needs a constant learning rate \(scheduler=constant\)"):
        run_experiment(["data=circle", "trainer=compiled", "scheduler=one_cycle", "trainer.max_epochs=1", *QUIET])
    (run,) = store.search_runs([store.get_experiment_by_name("experiments").experiment_id])
    assert run.info.status == "FAILED"


def test_a_run_validating_only_at_its_end_keeps_a_checkpoint_to_resume_from(tmp_path):
    # as REFERENCE.md A1's and A2's presets validate; here not even at the end (every 100th of 3 epochs)
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=3", "+trainer.check_val_every_n_epoch=100",
                 "trainer.callbacks.last_checkpoint.interval=0", "objective.metric=train/loss", *QUIET)
    assert result.returncode == 0, result.stderr
    (saved,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    state = torch.load(saved, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] > 0 and state["optimizer_states"]
