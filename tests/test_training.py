"""Tests of helpers.training on a tiny ResUNet (32x32 inputs, 4 base filters, depth 2).

Each test builds its own model, so no test depends on another's weights. Most
run eagerly: for a few steps of a tiny model, tracing the graph costs four
times the training itself. The first test and the MirroredStrategy test run
in graph mode, as real training does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers.losses import DiceScore
from helpers.model import build_resunet
from helpers.preprocessing import make_dataset
from helpers.training import (
    average_kept_epochs,
    average_weights,
    check_run_split,
    choose_profile,
    command_line,
    compile_model,
    load_initial_weights,
    prepare_run,
    publish_model,
    recompute_batch_norm,
    train,
)

SIZE = 32

# Keras warns that fit's default shuffle=True does not apply to a tf.data pipeline,
# which shuffles itself. train passes shuffle=False for one: there, the warning is an error.
pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")


def tiny_model(learning_rate: float = 1e-3, eager: bool = True) -> keras.Model:
    model = compile_model(build_resunet((SIZE, SIZE, 3), base_filters=4, depth=2),
                          learning_rate=learning_rate)
    model.run_eagerly = eager
    return model


@pytest.fixture(scope="module")
def slices(synthetic_arrays, synthetic_manifest):
    """8 training slices (from two patients, tumour on most) and 4 validation slices of another."""
    images, masks = synthetic_arrays
    patients = synthetic_manifest["patient"].to_numpy()
    names = sorted(set(patients))
    train_rows = np.flatnonzero(np.isin(patients, names[:2]))[2:10]
    val_rows = np.flatnonzero(patients == names[2])[3:7]
    return {
        "train": (images[train_rows], masks[train_rows]),
        "val": (images[val_rows], masks[val_rows], patients[val_rows]),
    }


class Interrupted(Exception):
    """Stands for a kill of the training process."""


class EpochRecorder(keras.callbacks.Callback):
    """Records the epochs that ``fit`` runs and the weights it starts from; raises after ``stop_after`` if given."""

    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.stop_after = stop_after
        self.epochs: list[int] = []
        self.start_weights: list[np.ndarray] = []

    def on_train_begin(self, logs=None):
        # Called after train's own callbacks, BackupAndRestore's restore among them.
        self.start_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.stop_after:
            raise Interrupted(f"interrupted after epoch {epoch}")


def add_callback(monkeypatch, model: keras.Model, callback: keras.callbacks.Callback) -> None:
    """Make ``model.fit`` run ``callback`` after the callbacks that ``train`` passes."""
    fit = model.fit

    def fit_with_callback(*args, callbacks=(), **kwargs):
        return fit(*args, callbacks=[*callbacks, callback], **kwargs)

    monkeypatch.setattr(model, "fit", fit_with_callback)


def seeded_pipelines(slices, seed: int):
    """Seed Keras, then the training and validation batches (4 slices) and the per-patient arrays."""
    keras.utils.set_random_seed(seed)
    images, masks = slices["train"]
    val_images, val_masks, val_patients = slices["val"]
    return (make_dataset(images, masks, batch_size=4, training=True, seed=seed),
            make_dataset(val_images, val_masks, batch_size=4), (val_images, val_masks, val_patients))


def test_loss_falls_on_a_repeated_batch(slices):
    keras.utils.set_random_seed(0)
    images, masks = slices["train"]
    dataset = make_dataset(images, masks, batch_size=len(images), training=False)
    history = tiny_model(learning_rate=3e-3, eager=False).fit(dataset, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    # Five steps on one batch: the loss falls at every step, by a tenth or more in all.
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.filterwarnings("error:`shuffle=True` was passed")
def test_train_writes_outputs_and_resumes_after_interruption(slices, tmp_path, monkeypatch):
    train_data, val_data, val_arrays = seeded_pipelines(slices, seed=1)
    val_images = val_arrays[0]
    arguments = dict(epochs=4, val_patient_arrays=val_arrays, verbose=0)
    output = tmp_path / "run"

    first = tiny_model()
    first_epochs = EpochRecorder(stop_after=1)
    add_callback(monkeypatch, first, first_epochs)
    with pytest.raises(Interrupted):
        train(first, train_data, val_data, output, **arguments)
    assert first_epochs.epochs == [0, 1]
    assert (output / "best.keras").is_file()
    assert (output / "backup").is_dir()
    assert pd.read_csv(output / "history.csv")["epoch"].tolist() == [0, 1]

    # A new process would build a new model: the backup supplies its weights and epoch,
    # even over initial weights copied in first (quality.py --init-model on a resumed run).
    other = tiny_model()
    other.save(tmp_path / "other.keras")
    second = tiny_model()
    load_initial_weights(second, tmp_path / "other.keras")
    second_epochs = EpochRecorder()
    add_callback(monkeypatch, second, second_epochs)
    history = train(second, train_data, val_data, output, **arguments)
    assert second_epochs.epochs == [2, 3]
    for restored, interrupted in zip(second_epochs.start_weights, first.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, interrupted)
    on_disk = pd.read_csv(output / "history.csv")
    assert on_disk["epoch"].tolist() == [0, 1, 2, 3]
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    for column in ("loss", "dice", "val_loss", "val_dice", "val_patient_dice"):
        assert np.isfinite(on_disk[column]).all(), column
    assert on_disk["val_patient_dice"].between(0, 1).all()
    assert json.loads((output / "training_time.json").read_text())["seconds"] > 0

    best = keras.models.load_model(output / "best.keras")
    assert best.predict(val_images[:2].astype(np.float32) / 255.0, verbose=0).shape == (2, SIZE, SIZE, 1)


def test_resumed_run_counts_its_budget_and_schedule_on_from_the_time_spent(slices, tmp_path, monkeypatch):
    train_data, val_data, val_arrays = seeded_pipelines(slices, seed=2)
    output = tmp_path / "run"
    budget_minutes = 10.0
    arguments = dict(epochs=6, time_budget_minutes=budget_minutes, val_patient_arrays=val_arrays, verbose=0)

    first = tiny_model()
    add_callback(monkeypatch, first, EpochRecorder(stop_after=0))
    with pytest.raises(Interrupted):
        train(first, train_data, val_data, output, **arguments)
    clock = json.loads((output / "clock.json").read_text())
    assert clock["epochs"] == 1 and 0 < clock["seconds"] < 60
    # Stand for a first session that spent the whole budget but was cut off before its last epoch ended.
    spent = budget_minutes * 60
    (output / "clock.json").write_text(json.dumps({"seconds": spent, "epochs": 1}))

    second = tiny_model()
    rates = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    epochs = EpochRecorder()
    add_callback(monkeypatch, second, Record())
    add_callback(monkeypatch, second, epochs)
    history = train(second, train_data, val_data, output, **arguments)
    # No time was left: one epoch (the budget is checked as each ends), where a fresh budget would
    # have run all five remaining epochs.
    assert epochs.epochs == [1]
    assert history["epoch"].tolist() == [0, 1]
    # The cosine goes on at its floor (2% of 1e-3, the budget being spent), not back from the top.
    assert rates and max(rates) == pytest.approx(0.02 * 1e-3)
    timing = json.loads((output / "training_time.json").read_text())
    assert timing["seconds_before_resume"] == spent and timing["seconds"] > spent


def averaging_model(loss_scale: bool = False) -> keras.Model:
    """A tiny model whose Adam keeps a moving average of its weights (momentum 0.9)."""
    model = compile_model(build_resunet((SIZE, SIZE, 3), base_filters=4, depth=2), ema_momentum=0.9)
    if loss_scale:  # as under mixed precision, where Keras wraps the optimizer
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(model.optimizer), loss=model.loss,
                      metrics=[DiceScore()])
    model.run_eagerly = True
    return model


def raw_and_averaged(model: keras.Model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The trainable weights of the model and the moving averages its optimizer holds."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return ([keras.ops.convert_to_numpy(v) for v in model.trainable_variables],
            [keras.ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average])


@pytest.mark.parametrize("loss_scale", [False, True])
def test_averaged_weights_are_checkpointed_and_kept_when_the_budget_stops_the_run(slices, tmp_path, loss_scale):
    keras.utils.set_random_seed(3)
    images, masks = slices["train"]
    val_images, val_masks, val_patients = slices["val"]
    model = averaging_model(loss_scale)
    # A budget of a fraction of a second: the run stops after its first of three epochs.
    history = train(model, make_dataset(images, masks, batch_size=4, training=True, seed=3),
                    make_dataset(val_images, val_masks, batch_size=4), tmp_path / "run", epochs=3,
                    time_budget_minutes=1e-4, val_patient_arrays=(val_images, val_masks, val_patients),
                    verbose=0)
    assert history["epoch"].tolist() == [0]
    best = keras.models.load_model(tmp_path / "run" / "best.keras")
    # Saved after the swap: the averaged weights in the model, the raw ones in the optimizer's slots.
    saved, raw = raw_and_averaged(best)
    assert any(not np.array_equal(a, b) for a, b in zip(saved, raw))
    final = model.get_weights()
    assert len(final) == len(best.get_weights())
    for ours, kept in zip(final, best.get_weights()):
        np.testing.assert_array_equal(ours, kept)


class WeightsAtEpochStart(keras.callbacks.Callback):
    """Records the raw and averaged weights when each epoch begins."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(raw_and_averaged(self.model))


def test_resumed_averaging_run_trains_on_the_raw_weights(slices, tmp_path, monkeypatch):
    train_data, val_data, val_arrays = seeded_pipelines(slices, seed=4)
    arguments = dict(epochs=3, val_patient_arrays=val_arrays, verbose=0)

    first = averaging_model()
    add_callback(monkeypatch, first, EpochRecorder(stop_after=0))
    with pytest.raises(Interrupted):
        train(first, train_data, val_data, tmp_path / "run", **arguments)
    # After epoch 0 the swap left the averaged weights in the model and the raw ones in the slots.
    averaged_then, raw_then = raw_and_averaged(first)

    second = averaging_model()
    seen = WeightsAtEpochStart()
    add_callback(monkeypatch, second, seen)
    train(second, train_data, val_data, tmp_path / "run", **arguments)
    raw_now, averaged_now = seen.seen[0]
    assert any(not np.array_equal(a, b) for a, b in zip(raw_then, averaged_then))
    for now, then in zip(raw_now, raw_then):
        np.testing.assert_array_equal(now, then)
    for now, then in zip(averaged_now, averaged_then):
        np.testing.assert_array_equal(now, then)


def test_nan_loss_stops_training_and_keeps_last_good_backup(slices, tmp_path):
    keras.utils.set_random_seed(2)
    images, masks = slices["train"]
    good = make_dataset(images, masks, batch_size=4)
    nan_images = np.full(images.shape, np.nan, dtype=np.float32)
    poisoned = tf.data.Dataset.from_tensor_slices(
        (nan_images, masks[..., None].astype(np.float32))
    ).batch(4)
    output = tmp_path / "run"
    model = tiny_model()

    train(model, good, good, output, epochs=1, verbose=0)
    assert (output / "backup").is_dir()
    good_weights = [w.copy() for w in model.get_weights()]

    history = train(model, poisoned, good, output, epochs=5, verbose=0)
    # The run resumed at epoch 1, whose first batch gave a NaN loss: TerminateOnNaN
    # ended it there instead of running epochs 2 to 4.
    assert history["epoch"].tolist() == [0, 1]
    assert np.isfinite(history["loss"].iloc[0]) and not np.isfinite(history["loss"].iloc[1])
    assert (output / "backup").is_dir()
    # Nor was the NaN model saved as the best one.
    best = keras.models.load_model(output / "best.keras")
    assert all(np.all(np.isfinite(w)) for w in best.get_weights())

    # The backup still holds the last good epoch: restoring it gives finite, unchanged weights.
    restored = tiny_model()
    train(restored, good, good, output, epochs=1, verbose=0)  # epoch 1 already done: restore only
    for before, after in zip(good_weights, restored.get_weights(), strict=True):
        assert np.all(np.isfinite(after))
        np.testing.assert_array_equal(after, before)


def first_epoch_loss(images: np.ndarray, masks: np.ndarray, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    model = tiny_model(eager=False)  # in graph mode, as real training runs
    dataset = make_dataset(images, masks, batch_size=4, training=True, seed=seed)
    return model.fit(dataset, epochs=1, verbose=0).history["loss"][0]


def test_same_seed_gives_same_first_epoch_loss(slices):
    images, masks = slices["train"]
    first = first_epoch_loss(images, masks, seed=5)
    second = first_epoch_loss(images, masks, seed=5)
    assert np.isfinite(first)
    assert first == second
    # The seed is what fixes it: another seed draws other weights and batches.
    assert first_epoch_loss(images, masks, seed=6) != first


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import tensorflow as tf

    # Logical devices must be set before TensorFlow initialises its runtime.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

    from helpers.data import build_manifest, load_arrays
    from helpers.model import build_resunet
    from helpers.preprocessing import make_dataset
    from helpers.synthetic import make_synthetic_dataset
    from helpers.training import compile_model, train

    root = make_synthetic_dataset(sys.argv[1], n_patients=2, slices_per_patient=8, size=32)
    manifest = build_manifest(root / "kaggle_3m", show_progress=False)
    images, masks = load_arrays(manifest, size=32, show_progress=False)
    patients = manifest["patient"].to_numpy()
    val = patients == patients[-1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = compile_model(build_resunet((32, 32, 3), base_filters=4, depth=2))
    # As notebook 04 does: built and compiled in the scope, trained by train() with all its callbacks.
    history = train(model, make_dataset(images[~val], masks[~val], batch_size=4, training=True),
                    make_dataset(images[val], masks[val], batch_size=4), sys.argv[2], epochs=2, verbose=0,
                    val_patient_arrays=(images[val], masks[val], patients[val]))
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync,
                                  "loss": history["loss"].tolist(),
                                  "val_patient_dice": history["val_patient_dice"].tolist()}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "data"), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout[-2000:] + completed.stderr[-2000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert len(result["loss"]) == 2 and np.isfinite(result["loss"]).all()
    assert all(0.0 <= dice <= 1.0 for dice in result["val_patient_dice"])
    assert pd.read_csv(tmp_path / "run" / "history.csv")["epoch"].tolist() == [0, 1]
    best = keras.models.load_model(tmp_path / "run" / "best.keras")
    assert best.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 32, 32, 1)


def test_cosine_decay_follows_half_a_cosine_over_the_epochs():
    from helpers.training import CosineDecay

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rates = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    x = np.zeros((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=8, epochs=4, verbose=0, callbacks=[CosineDecay(4, final_fraction=0.0), Record()])
    # One batch per epoch: progress 0, 1/4, 2/4, 3/4 at the batches' starts.
    expected = [1e-2 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_exported_model_has_no_optimizer_and_predicts_the_same(tmp_path):
    from helpers.model import build_resunet
    from helpers.training import compile_model, export_model

    model = compile_model(build_resunet((32, 32, 3), base_filters=16, depth=2))
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    model.fit(x, (x[..., :1] > 0.5).astype("float32"), epochs=1, verbose=0)
    model.save(tmp_path / "trained.keras")
    export_model(tmp_path / "trained.keras", tmp_path / "clean.keras")
    clean = keras.models.load_model(tmp_path / "clean.keras")
    assert getattr(clean, "optimizer", None) is None
    assert (tmp_path / "clean.keras").stat().st_size < 0.6 * (tmp_path / "trained.keras").stat().st_size
    np.testing.assert_allclose(clean.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_published_model_keeps_the_previous_one_and_a_finished_run_keeps_its_own(tmp_path):
    x = np.random.default_rng(2).random((2, 32, 32, 3)).astype("float32")
    first, second = (build_resunet((32, 32, 3), base_filters=4, depth=2) for _ in range(2))
    model_path = tmp_path / "model.keras"
    first.save(tmp_path / "best.keras")
    assert publish_model(tmp_path / "best.keras", model_path)
    np.testing.assert_allclose(keras.models.load_model(model_path).predict(x, verbose=0),
                               first.predict(x, verbose=0), atol=1e-6)
    settings = {"single_slice": {"threshold": 0.35}}
    model_path.with_suffix(".json").write_text(json.dumps(settings))  # as notebook 05 writes them

    # The notebook opened again on the finished run: the model and its settings stay; no previous one.
    assert not publish_model(tmp_path / "best.keras", model_path)
    assert json.loads(model_path.with_suffix(".json").read_text()) == settings
    assert not (tmp_path / "model.previous.keras").exists()

    # A new best checkpoint: the earlier model and its settings move to .previous.
    second.save(tmp_path / "best.keras")
    later = model_path.stat().st_mtime_ns + 10**9
    os.utime(tmp_path / "best.keras", ns=(later, later))
    assert publish_model(tmp_path / "best.keras", model_path)
    np.testing.assert_allclose(keras.models.load_model(model_path).predict(x, verbose=0),
                               second.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.previous.keras").predict(x, verbose=0),
                               first.predict(x, verbose=0), atol=1e-6)
    assert json.loads((tmp_path / "model.previous.json").read_text()) == settings
    assert not model_path.with_suffix(".json").exists()


def test_initial_weights_carry_over_into_a_bfloat16_model_and_a_misfit_is_named(tmp_path):
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype("float32")
    keras.utils.set_random_seed(3)
    saved = build_resunet((32, 32, 3), base_filters=4, depth=2, channels=[0])
    saved.save(tmp_path / "saved.keras")
    keras.utils.set_random_seed(4)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fresh = build_resunet((32, 32, 3), base_filters=4, depth=2, channels=[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert not np.allclose(fresh.get_weights()[0], saved.get_weights()[0])
    load_initial_weights(fresh, tmp_path / "saved.keras")
    for got, want in zip(fresh.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    # bfloat16 arithmetic: close to the saved network's answer, not equal to it.
    np.testing.assert_allclose(fresh.predict(x, verbose=0), saved.predict(x, verbose=0), atol=0.05)

    wider = build_resunet((32, 32, 3), base_filters=8, depth=2, channels=[0])
    with pytest.raises(ValueError, match=r"saved\.keras: its weights do not fit this model"):
        load_initial_weights(wider, tmp_path / "saved.keras")


def test_every_epoch_is_kept_at_a_constant_rate_and_averaged(slices, tmp_path):
    train_data, val_data, val_arrays = seeded_pipelines(slices, seed=2)
    model = tiny_model(learning_rate=2e-3)
    history = train(model, train_data, val_data, tmp_path / "run", epochs=3, val_patient_arrays=val_arrays,
                    verbose=0, schedule="constant", keep_epochs=True)
    assert len(history) == 3 and np.isclose(float(model.optimizer.learning_rate), 2e-3)
    files = sorted((tmp_path / "run" / "epochs").glob("*.weights.h5"))
    assert [path.name for path in files] == ["epoch_001.weights.h5", "epoch_002.weights.h5", "epoch_003.weights.h5"]
    # The last epoch's file holds the weights training ended with.
    last = tiny_model()
    average_weights(last, files[-1:])
    for got, want in zip(last.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    each = []
    for path in files:
        one = tiny_model()
        one.load_weights(path)
        each.append(one.get_weights())
    assert not np.allclose(each[0][0], each[2][0])
    averaged = average_weights(tiny_model(), files)
    for position, got in enumerate(averaged.get_weights()):
        np.testing.assert_allclose(got, np.mean([weights[position] for weights in each], axis=0), rtol=1e-6,
                                   atol=1e-7)

    with pytest.raises(ValueError, match="no weight files"):
        average_weights(tiny_model(), [])
    wider = compile_model(build_resunet((SIZE, SIZE, 3), base_filters=8, depth=2))
    with pytest.raises(ValueError, match=r"epoch_001\.weights\.h5: its weights do not fit this model"):
        average_weights(wider, files[:1])
    with pytest.raises(ValueError, match="'steady'"):
        train(tiny_model(), train_data, val_data, tmp_path / "other", epochs=1, verbose=0, schedule="steady")


def test_kept_epochs_average_into_one_float32_network_its_batch_norm_recomputed(tmp_path):
    run = tmp_path / "run"
    (run / "epochs").mkdir(parents=True)
    keras.utils.set_random_seed(7)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_resunet((32, 32, 3), base_filters=4, depth=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(run / "best.keras")
    start = model.get_weights()
    for epoch in (1, 2, 3, 4, 5):
        model.set_weights([weight + epoch for weight in start])
        model.save_weights(run / "epochs" / f"epoch_{epoch:03d}.weights.h5")

    # By default, the second half of the run: epochs 3 to 5, whose mean is start + 4, computed in float32.
    averaged, epochs = average_kept_epochs(run)
    assert epochs == [3, 4, 5]
    assert {layer.dtype_policy.name for layer in averaged.layers} == {"float32"}
    for got, want in zip(averaged.get_weights(), start, strict=True):
        np.testing.assert_allclose(got, want + 4, rtol=1e-6, atol=1e-6)

    # One epoch, its batch-norm statistics recomputed over the slices given: only those change.
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    recomputed, epochs = average_kept_epochs(run, first=2, last=2, train_images=images)
    assert epochs == [2]
    moving = 0
    for variable, want in zip(recomputed.weights, start, strict=True):
        if "moving_" in variable.path:
            moving += 1
            assert not np.allclose(variable.numpy(), want + 2)
        else:
            np.testing.assert_allclose(variable.numpy(), want + 2, rtol=1e-6, atol=1e-6)
    assert moving > 0
    # Recomputed after the float32 export, as the exported network will predict.
    exported, _ = average_kept_epochs(run, first=2, last=2)
    for got, want in zip(recomputed.get_weights(), recompute_batch_norm(exported, images).get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)

    with pytest.raises(ValueError, match=r"epochs: no weights for epochs \[6\] \(it holds 1 to 5\)"):
        average_kept_epochs(run, first=5, last=6)
    with pytest.raises(ValueError, match="the first epoch averaged, 7, comes after the last, 5"):
        average_kept_epochs(run, first=7)
    with pytest.raises(FileNotFoundError, match=r"no epoch weights; train with keep_epochs=True"):
        average_kept_epochs(tmp_path / "unkept")


def test_batch_norm_statistics_become_the_mean_over_the_batches_and_nothing_else_changes():
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Conv2D(2, 1)(keras.layers.BatchNormalization()(inputs))
    model = keras.Model(inputs, outputs)
    norm = model.layers[1]
    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    others = [weight.copy() for weight in model.layers[2].get_weights()] + [norm.gamma.numpy(), norm.beta.numpy()]
    recompute_batch_norm(model, images, batch_size=16)
    # Batches of 16, 16 and 8: each batch's mean and (biased) variance counts once.
    batches = [images[start:start + 16].astype(np.float32) / 255.0 for start in (0, 16, 32)]
    np.testing.assert_allclose(norm.moving_mean.numpy(), np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0), rtol=1e-4)
    assert norm.momentum == 0.99
    for got, want in zip(model.layers[2].get_weights() + [norm.gamma.numpy(), norm.beta.numpy()], others):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="no images"):
        recompute_batch_norm(model, images[:0])
    plain = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(1, 1)])
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        recompute_batch_norm(plain, images)


def test_a_run_on_another_split_is_refused_for_training_and_for_scoring(tmp_path):
    from helpers.preprocessing import split_fingerprint

    split = pd.DataFrame({"patient": ["A", "B", "C", "D"], "split": ["train", "train", "val", "test"]})
    moved = split.assign(split=["train", "val", "train", "test"])  # B and C swap sides
    fingerprint = split_fingerprint(split)
    assert fingerprint.startswith("2 train, 1 val, 1 test patients (")
    assert split_fingerprint(split.iloc[::-1]) == fingerprint  # the order of the rows does not matter
    assert split_fingerprint(moved) != fingerprint
    run_dir = tmp_path / "training"
    settings = {"input_size": 128, "split": fingerprint}
    assert prepare_run(run_dir, settings) == "new"
    (run_dir / "history.csv").write_text("epoch,loss\n0,0.5\n")
    (run_dir / "training_time.json").write_text('{"seconds": 1.0}')
    with pytest.raises(ValueError, match=r"split: '2 train.*there, '2 train.*now"):
        prepare_run(run_dir, {**settings, "split": split_fingerprint(moved)})
    check_run_split(run_dir, fingerprint)  # the split it trained on: no complaint
    with pytest.raises(ValueError, match=r"settings\.json: the model was trained on another split.*RESUME = False"):
        check_run_split(run_dir, split_fingerprint(moved))
    # The model scored must be the run's export, written after its best.keras; an older one is an earlier run's.
    model_path = tmp_path / "model.keras"
    model_path.write_text("an earlier run's model")
    with pytest.raises(ValueError, match=r"model\.keras is not the model of the run.*no best\.keras yet.*MODEL_PATH"):
        check_run_split(run_dir, fingerprint, model_path)
    (run_dir / "best.keras").write_text("this run's checkpoint")
    os.utime(model_path, ns=(1, 1))
    with pytest.raises(ValueError, match=r"a newer best\.keras"):
        check_run_split(run_dir, fingerprint, model_path)
    model_path.write_text("this run's export")  # written after the checkpoint, as publish_model does
    check_run_split(run_dir, fingerprint, model_path)
    # A run recorded before runs recorded their split is neither refused nor checked, and is not recorded as
    # having today's split when it resumes: it may have begun on another.
    (run_dir / "settings.json").write_text(json.dumps({"input_size": 128}))
    assert prepare_run(run_dir, settings) == "finished"
    check_run_split(run_dir, split_fingerprint(moved))
    (run_dir / "training_time.json").unlink()
    with pytest.warns(UserWarning, match=r"records no split.*RESUME = False"):
        assert prepare_run(run_dir, settings) == "resume"
    assert "split" not in json.loads((run_dir / "settings.json").read_text())


@pytest.mark.parametrize(("overrides", "says"), [
    ({"epochs": -3}, "EPOCHS = -3: give a whole number of at least 1"),
    ({"batch_size": 0}, "BATCH_SIZE = 0"),
    ({"input_size": 100}, "INPUT_SIZE = 100: the ResUNet (depth 4) halves it 4 times, so give a multiple of 16 (96 or 112"),
    ({"time_budget_minutes": -1}, "TIME_BUDGET_MINUTES = -1"),
    ({"oversample_tumour": -0.5}, "OVERSAMPLE_TUMOUR = -0.5"),
    ({"epochs": 2.5}, "EPOCHS = 2.5"),
    ({"oversample_tumour": True}, "OVERSAMPLE_TUMOUR = True"),
], ids=["negative-epochs", "zero-batch", "input-100", "negative-budget", "negative-oversampling", "fractional-epochs",
        "boolean-share"])
def test_a_profile_value_out_of_range_is_refused_naming_the_parameter(overrides, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        choose_profile(**overrides)
    assert choose_profile(epochs=1, input_size=96, time_budget_minutes=0)["epochs"] == 1


def test_every_bad_profile_value_is_named_at_once_and_the_depth_sets_the_multiple():
    with pytest.raises(ValueError, match=r"BATCH_SIZE = -1.*EPOCHS = 0"):
        choose_profile(epochs=0, batch_size=-1)
    assert choose_profile(input_size=24, depth=3)["input_size"] == 24  # notebook 03 builds depth 3 at 24
    with pytest.raises(ValueError, match=r"depth 3.*multiple of 8 \(16 or 24"):
        choose_profile(input_size=20, depth=3)


def test_prepare_run_starts_resumes_keeps_and_refuses_other_settings(tmp_path):
    run_dir = tmp_path / "training"
    settings = {"input_size": 128, "base_filters": 16, "residual": True, "learning_rate": 1e-3, "epochs": 40}
    assert prepare_run(run_dir, settings) == "new"
    assert json.loads((run_dir / "settings.json").read_text()) == settings
    # Stopped before anything trained (a parameter to fix, data missing): started anew with the new settings.
    assert prepare_run(run_dir, {**settings, "input_size": 160}) == "new"
    assert json.loads((run_dir / "settings.json").read_text())["input_size"] == 160
    assert prepare_run(run_dir, settings) == "new"
    (run_dir / "history.csv").write_text("epoch,loss\n0,0.5\n")
    # Stopped before train returned (a crash, a lost connection): resumed.
    assert prepare_run(run_dir, settings) == "resume"
    # More epochs or another device may continue a run.
    assert prepare_run(run_dir, {**settings, "epochs": 60, "device": "GPU"}) == "resume"
    (run_dir / "training_time.json").write_text('{"seconds": 1.0}')
    assert prepare_run(run_dir, settings) == "finished"
    # A finished run is not trained again: its record keeps the 60 epochs it was trained with.
    assert prepare_run(run_dir, {**settings, "epochs": 80}) == "finished"
    assert json.loads((run_dir / "settings.json").read_text())["epochs"] == 60
    with pytest.raises(ValueError, match=r"base_filters: 16 there, 32 now.*settings\.json.*RESUME = False"):
        prepare_run(run_dir, {**settings, "base_filters": 32})
    with pytest.raises(ValueError, match=r"residual: True there, False now"):
        prepare_run(run_dir, {**settings, "residual": False})
    # Nothing was overwritten by the refusals.
    assert json.loads((run_dir / "settings.json").read_text())["base_filters"] == 16

    # resume=False moves the run aside, whole, and starts anew.
    assert prepare_run(run_dir, {**settings, "base_filters": 32}, resume=False) == "new"
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("training_")]
    assert len(moved) == 1 and (moved[0] / "history.csv").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == ["settings.json"]

    # A run from before settings were recorded cannot be compared: a warning says so.
    (run_dir / "settings.json").unlink()
    (run_dir / "history.csv").write_text("epoch,loss\n0,0.5\n")
    with pytest.warns(UserWarning, match=r"without settings\.json.*RESUME = False"):
        assert prepare_run(run_dir, settings) == "resume"
    assert json.loads((run_dir / "settings.json").read_text()) == settings


def test_uint8_batches_train_a_standardising_model_and_are_refused_without_one(slices, tmp_path):
    """A ResUNet standardises each slice, so 0-255 bytes give what [0, 1] floats give; a model without
    that layer is refused uint8 batches before training starts."""
    keras.utils.set_random_seed(4)
    images, masks = slices["train"]
    model = tiny_model(eager=False)
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               model.predict(images.astype(np.float32) / 255, verbose=0), atol=1e-4)
    as_bytes = make_dataset(images, masks, batch_size=4, training=True, image_dtype="uint8")
    history = train(model, as_bytes, make_dataset(images, masks, batch_size=4, image_dtype="uint8"),
                    tmp_path / "bytes", epochs=1)
    assert len(history) == 1 and np.isfinite(history["loss"]).all()

    unstandardised = compile_model(build_resunet((SIZE, SIZE, 3), base_filters=4, depth=2, standardize=False))
    with pytest.raises(ValueError, match="training batches hold integer images.*no SliceStandardization.*"
                                         "image_dtype='float32'"):
        train(unstandardised, as_bytes, as_bytes, tmp_path / "refused", epochs=1)
    as_floats = make_dataset(images, masks, batch_size=4)
    with pytest.raises(ValueError, match="validation batches hold integer images"):
        train(unstandardised, as_floats, as_bytes, tmp_path / "refused", epochs=1)
    assert not (tmp_path / "refused").exists()

    # A ResUNet nested in another model still standardises: accepted.
    wrapped = compile_model(keras.Sequential([keras.Input((SIZE, SIZE, 3)), model]))
    assert len(train(wrapped, as_bytes, as_floats, tmp_path / "wrapped", epochs=1)) == 1


def test_command_line_reruns_the_script_with_the_same_arguments():
    import argparse
    import shlex

    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="artifacts/x")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--soft-masks", action="store_true")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--init-seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=1e-3)
    parser.add_argument("--also", nargs="+", default=[])
    arguments = parser.parse_args(["a", "b c", "--soft-masks", "--sizes", "64"])
    command = command_line("benchmarks/x.py", arguments, positional=("runs",), prefix="KERAS_BACKEND=jax")
    assert command == ("KERAS_BACKEND=jax python benchmarks/x.py a 'b c' --out artifacts/x --sizes 64 --soft-masks "
                       "--rate 0.001")
    words = shlex.split(command)
    assert words[:3] == ["KERAS_BACKEND=jax", "python", "benchmarks/x.py"]
    assert parser.parse_args(words[3:]) == arguments
