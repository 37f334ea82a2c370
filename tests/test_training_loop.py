"""Our training loop (a whole epoch's batches per Lightning step, see task.py) does the arithmetic of a plain
PyTorch loop: for the same seed, the per-epoch losses a run logs are those of the loop a user would write."""
import lightning as L
import pytest
import torch
from hydra.utils import instantiate

import experiments.compiled
from conftest import QUIET, cli
from experiments.api import compose_config, run_experiment
from experiments.errors import ConfigError, Diverged
from experiments.task import apply


def plain_loop_losses(overrides: list[str], epochs: int) -> tuple[list[float], list[float]]:
    """Per-epoch mean train and validation losses of a hand-written loop over the same data, model, optimizer
    and schedule, built from the same config in the same order as a run builds them (so the same seed)."""
    config = compose_config(overrides)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = instantiate(config.data)
    model = instantiate(config.model, input_shape=dm.input_shape, num_outputs=dm.num_outputs)
    loss_fn = instantiate(config.loss)
    # as a user writes it: torch's default update, not the fused kernel our Adam configs choose (conf/optimizer)
    optimizer = instantiate(config.optimizer, fused=None)(model.parameters())
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


def logged_metrics(store, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric a run logged but its timings, as (step, value) pairs in step order."""
    names = [name for name in store.get_run(run_id).data.metrics if not name.startswith("time/")]
    return {name: [(m.step, m.value) for m in sorted(store.get_metric_history(run_id, name), key=lambda m: m.step)]
            for name in names}


# REFERENCE.md A2's workload, shortened to 3 batches an epoch (the compiled program unrolls them) and 20 epochs,
# on shuffled rows with a validation every 5 epochs and a test set
COMPILED_WORKLOAD = ["experiment=house_prices_linear", "data.split=random", "data.shuffle=true", "data.batch_size=128",
                     "trainer.max_epochs=20", "trainer.check_val_every_n_epoch=5", *QUIET]


def test_compiled_epochs_log_the_standard_paths_metrics(store, tmp_path, monkeypatch):
    standard = run_experiment(COMPILED_WORKLOAD)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))  # restored after the test
    cache = tmp_path / "compiled"
    # Dynamo's limit of recompilations of one function, 8 by default, down to 1: each run's program is a new one
    # (monkeypatch cannot restore Dynamo's config)
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled = run_experiment([*COMPILED_WORKLOAD, "trainer=compiled", f"trainer.compiled.cache_dir={cache}"])
        # again, its epochs' metrics computed as it trains, as when their outputs would fill the memory kept for them
        monkeypatch.setattr(experiments.compiled, "RECORDS_BYTES", 0)
        again = run_experiment([*COMPILED_WORKLOAD, "trainer=compiled", f"trainer.compiled.cache_dir={cache}"])

    assert logged_metrics(store, again.run_id) == logged_metrics(store, compiled.run_id)  # the same seed, the same metrics
    expected, logged = logged_metrics(store, standard.run_id), logged_metrics(store, compiled.run_id)
    assert {"train/r2", "val/r2", "test/r2", "epoch"} <= set(logged) and logged.keys() == expected.keys()
    for name, history in expected.items():  # the same steps, the same values but for the order of the arithmetic
        assert [step for step, _ in logged[name]] == [step for step, _ in history], name
        assert [value for _, value in logged[name]] == pytest.approx([value for _, value in history], rel=1e-4), name
    # 20 epochs of 3 steps, counted from 0: the test at the last, with the last epoch's values
    assert len(logged["val/loss"]) == 4 and logged["val/loss"][-1][0] == logged["test/loss"][0][0] == 59
    for name in ("val/mse", "test/r2", "train/loss"):
        assert compiled.metrics[name] == pytest.approx(standard.metrics[name], rel=1e-4)
    timings = store.get_run(compiled.run_id).data.metrics
    assert timings["time/compile_seconds"] > 0 and timings["time/fit_seconds"] > 0 and timings["time/records_seconds"] > 0
    assert "time/compile_seconds" not in store.get_run(standard.run_id).data.metrics
    assert any(path.is_file() for path in cache.rglob("*"))  # the programs, for the next run of these shapes


def test_compiled_epochs_fail_a_diverging_run_at_the_standard_paths_epoch(store, tmp_path):
    diverging = [*COMPILED_WORKLOAD, "optimizer=sgd", "optimizer.lr=1.0"]
    with pytest.raises(Diverged) as standard:
        run_experiment(diverging)
    with pytest.raises(Diverged) as compiled:
        run_experiment([*diverging, "trainer=compiled", f"trainer.compiled.cache_dir={tmp_path}"])

    assert str(compiled.value) == str(standard.value)  # the same epoch and value, in the same line
    runs = store.search_runs([store.get_experiment_by_name("experiments").experiment_id], order_by=["start_time"])
    assert [run.info.status for run in runs] == ["FAILED", "FAILED"]
    assert runs[1].data.tags["error"] == runs[0].data.tags["error"]
    expected, logged = (logged_metrics(store, run.info.run_id)["train/loss"] for run in runs)
    assert [step for step, _ in logged] == [step for step, _ in expected]  # up to the epoch that diverged


@pytest.mark.parametrize("override, refusal", [
    ("scheduler=one_cycle", r"a constant learning rate \(scheduler=constant\)"),
    ("trainer.max_steps=5", r"whole epochs \(trainer.max_epochs, not trainer.max_steps\)"),
    ("+trainer.limit_val_batches=0.5", r"none of the trainer options it does not follow \(trainer.limit_val_batches\)"),
    ("+trainer.callbacks.stop.monitor=val/loss", r"no callback that hooks into Lightning's loop.*\(EarlyStopping\)"),
])
def test_compiled_epochs_refuse_what_their_loop_cannot_do_before_a_run_opens(store, override, refusal):
    extra = ["+trainer.callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping"] if "stop" in override else []
    with pytest.raises(ConfigError, match=rf"^trainer=compiled needs {refusal}; change that or use trainer=default$"):
        run_experiment(["data=circle", "trainer=compiled", "scheduler=constant", override, *extra,
                        "trainer.max_epochs=1", *QUIET])
    experiment = store.get_experiment_by_name("experiments")  # none yet: no run was opened
    assert experiment is None or not store.search_runs([experiment.experiment_id])


def test_a_run_validating_only_at_its_end_keeps_a_checkpoint_to_resume_from(tmp_path):
    # as REFERENCE.md A1's and A2's presets validate; here not even at the end (every 100th of 3 epochs)
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=3", "+trainer.check_val_every_n_epoch=100",
                 "trainer.callbacks.last_checkpoint.interval=0", "objective.metric=train/loss", *QUIET)
    assert result.returncode == 0, result.stderr
    (saved,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    state = torch.load(saved, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] > 0 and state["optimizer_states"]
