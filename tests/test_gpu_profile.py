"""Tests of benchmarks/gpu_profile.py: the pack that travels to a GPU machine and the batches that feed it.

The training step itself runs only where a GPU is lent (under Keras' JAX
backend); here the pack round trip and the PyDataset run under TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from helpers import preprocessing, training
from helpers.data import build_manifest, load_arrays
from helpers.synthetic import make_synthetic_dataset
from helpers.training import train

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_profile.py"
_SPEC = importlib.util.spec_from_file_location("gpu_profile", _SCRIPT)
gpu_profile = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_profile)


def test_pack_keeps_masks_and_split_and_bounds_the_jpeg_error(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_patients=7, slices_per_patient=3, size=256, seed=1)
    out = tmp_path / "slices.npz"
    gpu_profile.pack(argparse.Namespace(data_dir=str(root), out=str(out), jpeg_quality=95, seed=42,
                                        cache_dir=str(tmp_path / "cache")))
    packed = gpu_profile.unpack(out)

    manifest = build_manifest(root / "kaggle_3m", show_progress=False)
    split = preprocessing.split_patients(manifest, seed=42)
    side_of = dict(zip(split["patient"], split["split"], strict=True))
    images, masks = load_arrays(manifest, size=256, show_progress=False)
    for side in ("train", "val"):
        stacks, patients = packed[side]
        rows = manifest["patient"].map(side_of).eq(side).to_numpy()
        assert stacks.shape == (rows.sum(), 256, 256, 4)
        assert sorted(set(patients)) == sorted(p for p, s in side_of.items() if s == side)
        assert patients.tolist() == manifest.loc[rows, "patient"].tolist()
        np.testing.assert_array_equal(stacks[..., 3], masks[rows])
        error = np.abs(stacks[..., :3].astype(int) - images[rows]).mean()
        assert 0 < error < 2.0
    assert not set(packed["train"][1]) & set(packed["val"][1])
    assert 0 < packed["mean_abs_error"] < 2.0 and packed["jpeg_quality"] == 95


def stacks_with_tumour_on(count: int, tumour: int, size: int = 16) -> np.ndarray:
    stacks = np.zeros((count, size, size, 4), np.uint8)
    stacks[..., :3] = np.arange(count, dtype=np.uint8)[:, None, None, None]  # each slice shows its index
    stacks[:tumour, 4:8, 4:8, 3] = 1
    return stacks


def drawn_indices(batches) -> list[int]:
    """The slice index that each image of each batch shows (read from its first pixel)."""
    return [int(round(float(image[0, 0, 0]) * 255)) for k in range(len(batches)) for image in batches[k][0]]


def without_augmentation(monkeypatch) -> None:
    """Leave slices as they are, so that each still shows its index."""
    monkeypatch.setattr(preprocessing, "augment_stacked", lambda stack, seed: stack.copy())


def test_training_batches_are_augmented_with_their_masks():
    stacks = stacks_with_tumour_on(16, tumour=16)
    stacks[..., 1] = 0
    stacks[..., 1][stacks[..., 3] == 1] = 200  # the tumour is bright in FLAIR
    batches = gpu_profile.make_batches(stacks, 16, training=True, seed=1, workers=1)
    images, masks = batches[0]
    assert images.shape == (16, 16, 16, 3) and images.dtype == np.float32
    assert masks.shape == (16, 16, 16, 1) and set(np.unique(masks)) <= {0.0, 1.0}
    assert not np.array_equal(masks[..., 0], stacks[..., 3])  # moved (flips at least) ...
    assert np.all(images[..., 1][masks[..., 0] == 1] > 0.3)  # ... together with the image


def test_training_batches_oversample_tumour_reshuffle_and_drop_the_last_partial_batch(monkeypatch):
    without_augmentation(monkeypatch)
    stacks = stacks_with_tumour_on(40, tumour=10)
    batches = gpu_profile.make_batches(stacks, 8, training=True, seed=1, workers=1, oversample_tumour=0.5)
    assert len(batches) == 45 // 8  # 40 slices + 5 tumour slices again; the partial batch dropped
    first = drawn_indices(batches)
    assert len(first) == 40 and set(first) <= set(range(40))
    batches.on_epoch_end()
    second = drawn_indices(batches)
    assert first != second
    again = gpu_profile.make_batches(stacks, 8, training=True, seed=1, workers=1, oversample_tumour=0.5)
    assert drawn_indices(again) == first


def test_oversampling_adds_half_the_tumour_slices(monkeypatch):
    without_augmentation(monkeypatch)
    stacks = stacks_with_tumour_on(64, tumour=16)
    batches = gpu_profile.make_batches(stacks, 4, training=True, seed=3, workers=1, oversample_tumour=0.5)
    drawn = drawn_indices(batches)
    assert len(drawn) == 64 + 8
    assert sum(index < 16 for index in drawn) == 16 + 8
    assert set(range(16, 64)) <= set(drawn)
    # The extra tumour slices are drawn afresh each epoch; every slice still comes at least once.
    extras = []
    for _ in range(3):
        drawn = drawn_indices(batches)
        assert len(drawn) == 72 and set(range(64)) <= set(drawn)
        extras.append(sorted(index for index in drawn if index < 16))
        batches.on_epoch_end()
    assert not extras[0] == extras[1] == extras[2]



def test_resized_stacks_match_the_slices_load_arrays_would_give():
    rng = np.random.default_rng(5)
    stacks = rng.integers(0, 256, (3, 32, 32, 4), dtype=np.uint8)
    stacks[..., 3] = rng.random((3, 32, 32)) < 0.3
    small = gpu_profile.resize_stacks(stacks, 16)
    assert small.shape == (3, 16, 16, 4) and small.dtype == np.uint8
    for k in range(3):
        np.testing.assert_array_equal(small[k, ..., :3], cv2.resize(stacks[k, ..., :3], (16, 16), interpolation=cv2.INTER_AREA))
        share = cv2.resize(stacks[k, ..., 3].astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(small[k, ..., 3], (share >= 0.5).astype(np.uint8))  # the mask's 2x2 blocks
    assert set(np.unique(small[..., 3])) <= {0, 1}
    assert gpu_profile.resize_stacks(stacks, 32) is stacks

def test_validation_batches_keep_every_slice_in_order():
    stacks = stacks_with_tumour_on(10, tumour=3)
    batches = gpu_profile.make_batches(stacks, 4, training=False, seed=0, workers=1)
    assert len(batches) == 3
    assert drawn_indices(batches) == list(range(10))
    np.testing.assert_array_equal(np.concatenate([batches[k][1] for k in range(3)])[..., 0], stacks[..., 3])


def test_without_tensorflow_the_tf_data_functions_say_what_to_do(monkeypatch, synthetic_arrays):
    monkeypatch.setattr(preprocessing, "tf", None)
    monkeypatch.setattr(training, "tf", None)
    images, masks = synthetic_arrays
    with pytest.raises(ImportError, match="make_dataset needs TensorFlow.*PyDataset"):
        preprocessing.make_dataset(images, masks, batch_size=4)
    with pytest.raises(ImportError, match="choose_strategy needs TensorFlow"):
        training.choose_strategy()
    assert training.count_gpus() == 0 and training.describe_device().startswith("CPU only")


def test_train_logs_what_extra_callbacks_add(synthetic_arrays, tmp_path, monkeypatch):
    class AddToLogs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["extra_figure"] = 0.25 + epoch

    images, masks = synthetic_arrays
    stacks = preprocessing.stack_with_masks(images[:8], masks[:8])
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="dice")])
    batches = gpu_profile.make_batches(stacks, 4, training=True, seed=0, workers=1)
    val = gpu_profile.make_batches(stacks, 4, training=False, seed=0, workers=1)
    train(model, batches, val, tmp_path / "run", epochs=2, verbose=0, extra_callbacks=[AddToLogs()])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["extra_figure"].tolist() == [0.25, 1.25]
    assert (tmp_path / "run" / "logs").is_dir()

    # Without TensorFlow (Keras on JAX), the same run writes no TensorBoard logs and still trains.
    monkeypatch.setattr(training, "tf", None)
    train(model, batches, val, tmp_path / "run_without_tf", epochs=1, verbose=0)
    assert not (tmp_path / "run_without_tf" / "logs").exists()
    assert len(pd.read_csv(tmp_path / "run_without_tf" / "history.csv")) == 1


def test_train_refuses_an_output_folder_in_use(tmp_path):
    (tmp_path / "history.csv").write_text("epoch\n0\n")
    arguments = argparse.Namespace(out=str(tmp_path), pack="unused.npz", minutes=1.0, epochs=None)
    with pytest.raises(SystemExit, match="is not empty"):
        gpu_profile.train_profile(arguments)
