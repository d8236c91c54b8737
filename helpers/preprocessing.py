"""Patient-level splits, normalisation, augmentation and the tf.data pipeline.

Normalisation is per slice and linear: ``image / 255``. The slices of this
dataset are already uint8 with a shared 0-255 range, and a user's PNG or
JPEG is a single slice with no volume around it, so a fixed scaling keeps
training and inference identical; an all-black slice stays finite (zeros).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.data import check_split_leakage

SPLITS = ("train", "val", "test")


def split_patients(
    manifest: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign each patient to train, val or test, stratified by institution.

    Within each institution, patients are ordered by tumour burden and dealt
    in blocks, then each block is shuffled with the seed, so every side gets
    a share of each institution and of small and large tumours. The result
    depends only on the manifest and the seed, never on the machine.

    Args:
        manifest: one row per slice with ``patient``, ``institution`` and
            ``tumour_pixels``.
        val_fraction: share of patients for validation.
        test_fraction: share of patients for testing.
        seed: random seed.

    Returns:
        One row per patient: ``patient``, ``institution``, ``split``.

    Raises:
        ValueError: if the fractions leave no training patient.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be "
            "non-negative and sum to less than 1."
        )
    patients = (
        manifest.groupby("patient")
        .agg(institution=("institution", "first"), burden=("tumour_pixels", "sum"))
        .reset_index()
        .sort_values(["institution", "burden", "patient"])
    )
    rng = np.random.default_rng(seed)
    n = len(patients)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    # Deal patients, ordered by institution then burden, into blocks of
    # about 1/fraction; each block gives one patient to test, one to val.
    pattern_length = max(2, round(1 / max(min(test_fraction, val_fraction), 1e-6)))
    order = []
    for start in range(0, n, pattern_length):
        block = list(range(start, min(start + pattern_length, n)))
        rng.shuffle(block)
        order.append(block)
    assignment = ["train"] * n
    picks = {"test": n_test, "val": n_val}
    for side in ("test", "val"):
        for block in order:
            if picks[side] == 0:
                break
            free = [i for i in block if assignment[i] == "train"]
            if free:
                assignment[free[0]] = side
                picks[side] -= 1
        # Any still wanted (fractions larger than one per block) come at random.
        remaining = [i for i in rng.permutation(n) if assignment[i] == "train"]
        for i in remaining[: picks[side]]:
            assignment[i] = side
    # An institution whose patients straddle two blocks can lose all of them
    # to val and test. Give one back to train, swapping it with the training
    # patient of closest burden from an institution that keeps another one.
    institutions = patients["institution"].to_numpy()
    burdens = patients["burden"].to_numpy()
    for institution in np.unique(institutions):
        members = np.flatnonzero(institutions == institution)
        if len(members) < 3 or any(assignment[i] == "train" for i in members):
            continue
        train_per_institution = pd.Series(
            [institutions[i] for i in range(n) if assignment[i] == "train"]
        ).value_counts()
        donors = [i for i in range(n) if assignment[i] == "train"
                  and train_per_institution[institutions[i]] >= 2]
        moved = members[0]
        side, assignment[moved] = assignment[moved], "train"
        if donors:
            donor = min(donors, key=lambda i: (abs(burdens[i] - burdens[moved]), i))
            assignment[donor] = side
    patients["split"] = assignment
    split = patients[["patient", "institution", "split"]].sort_values("patient").reset_index(drop=True)
    if (split["split"] == "train").sum() == 0:
        raise ValueError("The split left no training patient: lower the fractions.")
    check_split_leakage(split)
    return split


def kfold_patients(manifest: pd.DataFrame, folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each patient to one of ``folds`` folds, stratified by institution.

    Args:
        manifest: one row per slice with ``patient``, ``institution`` and
            ``tumour_pixels``.
        folds: number of folds, at least 2.
        seed: random seed.

    Returns:
        One row per patient: ``patient``, ``institution``, ``fold`` (0 to folds-1).
    """
    patients = (
        manifest.groupby("patient")
        .agg(institution=("institution", "first"), burden=("tumour_pixels", "sum"))
        .reset_index()
        .sort_values(["institution", "burden", "patient"])
        .reset_index(drop=True)
    )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(patients), dtype=int)
    for start in range(0, len(patients), folds):
        block = np.arange(start, min(start + folds, len(patients)))
        fold_of[block] = rng.permutation(folds)[: len(block)]
    patients["fold"] = fold_of
    return patients[["patient", "institution", "fold"]].sort_values("patient").reset_index(drop=True)


def normalize(images: np.ndarray | tf.Tensor) -> tf.Tensor:
    """Scale uint8 slices to float32 in [0, 1].

    Args:
        images: uint8 array (..., H, W, 3), values 0-255.

    Returns:
        float32 tensor of the same shape, values 0-1.
    """
    return tf.cast(images, tf.float32) / 255.0


def random_affine(
    batch_size: int | tf.Tensor,
    size: int,
    max_rotation_degrees: float = 15.0,
    zoom_range: tuple[float, float] = (0.9, 1.1),
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Random rotation, zoom and horizontal flip as projective transforms.

    Args:
        batch_size: number of transforms.
        size: image height and width (the rotation centre is the middle).
        max_rotation_degrees: rotations are drawn from +-this angle.
        zoom_range: scale factors drawn uniformly from this range (>1 zooms in).
        seed: a stateless seed, shape (2,), int.

    Returns:
        float32 tensor (batch_size, 8): transforms mapping output to input
        coordinates, as ``keras.ops.image.affine_transform`` expects.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3) if seed is not None else [None] * 3

    def uniform(low, high, s):
        if s is None:
            return tf.random.uniform([batch_size], low, high)
        return tf.random.stateless_uniform([batch_size], s, low, high)

    angle = uniform(-max_rotation_degrees, max_rotation_degrees, seeds[0]) * math.pi / 180.0
    zoom = uniform(zoom_range[0], zoom_range[1], seeds[1])
    flip = tf.where(uniform(0.0, 1.0, seeds[2]) < 0.5, -1.0, 1.0)
    centre = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # Output pixel (x, y) samples input at A @ ([x, y] - c) + c, where A rotates,
    # scales by 1/zoom, and flips x.
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = centre - a0 * centre - a1 * centre
    b2 = centre - b0 * centre - b1 * centre
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(
    images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply one random rotation, zoom and flip to each image and its mask.

    Image and mask are transformed together, as one tensor, so they stay
    aligned; the mask is interpolated bilinearly and thresholded at 0.5, so
    it stays binary.

    Args:
        images: float32 (B, H, W, C), values 0-1.
        masks: float32 (B, H, W, 1), values 0 and 1.
        seed: a stateless seed, shape (2,), int; ``None`` for random.

    Returns:
        The transformed images (B, H, W, C) and masks (B, H, W, 1), masks 0/1.
    """
    import keras

    size = images.shape[1]
    channels = images.shape[-1]
    stacked = tf.concat([images, masks], axis=-1)
    transform = random_affine(tf.shape(images)[0], size, seed=seed)
    moved = keras.ops.image.affine_transform(
        stacked, transform, interpolation="bilinear", fill_mode="constant"
    )
    return moved[..., :channels], tf.cast(moved[..., channels:] > 0.5, tf.float32)


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int = 16,
    training: bool = False,
    augment: bool = True,
    seed: int = 42,
    oversample_tumour: float = 0.0,
) -> tf.data.Dataset:
    """Build the tf.data pipeline over decoded slices held in memory.

    Training pipelines shuffle every epoch, optionally oversample slices with
    tumour, normalise, augment on the fly (whole batches at once) and
    prefetch. Evaluation pipelines only normalise, batch and prefetch.

    Args:
        images: uint8 array (N, H, W, 3), values 0-255.
        masks: uint8 array (N, H, W), values 0 and 1.
        batch_size: slices per batch.
        training: shuffle, repeat-free epochs, and augment.
        augment: apply augmentation when ``training``.
        seed: seed of shuffling and augmentation.
        oversample_tumour: when > 0, each tumour slice is included
            ``1 + oversample_tumour`` times per epoch on average.

    Returns:
        A dataset of (image float32 (B, H, W, 3) in [0, 1], mask float32
        (B, H, W, 1) in {0, 1}).
    """
    indices = np.arange(len(images))
    if training and oversample_tumour > 0:
        tumour = indices[masks.reshape(len(masks), -1).max(axis=1) > 0]
        extra = np.random.default_rng(seed).choice(
            tumour, size=int(round(len(tumour) * oversample_tumour)), replace=True
        )
        indices = np.concatenate([indices, extra])
    dataset = tf.data.Dataset.from_tensor_slices(indices)
    if training:
        dataset = dataset.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    images_tensor = tf.constant(images)
    masks_tensor = tf.constant(masks)

    def gather(batch_indices):
        batch_images = normalize(tf.gather(images_tensor, batch_indices))
        batch_masks = tf.cast(tf.gather(masks_tensor, batch_indices), tf.float32)[..., None]
        return batch_images, batch_masks

    dataset = dataset.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        counter = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, counter)).map(
            lambda pair, s: augment_batch(pair[0], pair[1], seed=tf.cast(s, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def arrays_by_split(
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    size: int,
    cache_dir=None,
    show_progress: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
    """Decode the slices of each side of a split, resized to ``size``.

    Args:
        manifest: one row per slice (``patient``, ``image_path``, ``mask_path``).
        split: one row per patient (``patient``, ``split``).
        size: output height and width.
        cache_dir: cache folder for decoded arrays (see ``helpers.data.load_arrays``).
        show_progress: show a progress bar while decoding.

    Returns:
        ``{"train": (images, masks, rows), "val": ..., "test": ...}``: uint8
        images (N, size, size, 3), uint8 masks (N, size, size) 0/1, and the
        N manifest rows in the same order.
    """
    from helpers.data import load_arrays

    check_split_leakage(split)
    images, masks = load_arrays(manifest, size=size, cache_dir=cache_dir, show_progress=show_progress)
    side_of = manifest["patient"].map(dict(zip(split["patient"], split["split"], strict=True)))
    result = {}
    for side in SPLITS:
        chosen = (side_of == side).to_numpy()
        result[side] = (images[chosen], masks[chosen], manifest[chosen].reset_index(drop=True))
    return result


def load_split(artifacts_dir) -> pd.DataFrame:
    """Read ``ARTIFACTS_DIR/split.csv``, written by notebook 02.

    Raises:
        FileNotFoundError: naming the file and the notebook to run first.
    """
    from pathlib import Path

    from helpers.data import require_artifact

    split = pd.read_csv(require_artifact(Path(artifacts_dir) / "split.csv", "02_preprocessing"))
    check_split_leakage(split)
    return split


def measure_throughput(dataset: tf.data.Dataset, batches: int = 50, warmup: int = 2) -> dict:
    """Slices per second a pipeline delivers, after ``warmup`` batches.

    Returns:
        ``{"slices_per_second": float, "batches": int, "seconds": float}``.
    """
    import time

    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        count += int(images.shape[0])
    seconds = time.perf_counter() - start
    return {"slices_per_second": count / seconds, "batches": batches, "seconds": seconds}
