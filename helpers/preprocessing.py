"""Patient-level splits, normalisation, augmentation and the tf.data pipeline.

Each slice is scaled linearly, ``image / 255`` (the training pipeline may
also hand the model the bytes as they are); the model's first layer
(``helpers.model.SliceStandardization``) then z-scores each channel of each
slice over the head, whatever the scale. Both are per slice, because a user's PNG or JPEG
is a single slice with no volume around it, so training and inference see
the same thing; an all-black slice stays finite (zeros).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd

try:
    import tensorflow as tf
except ImportError:  # Keras on JAX or PyTorch: the NumPy and OpenCV functions still work.
    tf = None

from helpers.data import DatasetError, check_split_leakage

SPLITS = ("train", "val", "test")


def require_tensorflow(what: str) -> None:
    """Raise a helpful ImportError when TensorFlow, which ``what`` needs, is not installed."""
    if tf is None:
        raise ImportError(f"helpers: {what} needs TensorFlow, which is not installed. Install the project's "
                          "requirements (make install), or, under Keras' JAX or PyTorch backend, feed Keras a "
                          "keras.utils.PyDataset as benchmarks/gpu_profile.py does.")


def split_patients(
    manifest: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign each patient to train, val or test, stratified by institution.

    Patients are ordered by institution, then by tumour burden, and dealt
    in consecutive blocks of about ``1 / min(val_fraction, test_fraction)``;
    each block, shuffled with the seed, gives one patient to test and one to
    validation. So every side gets a share of each institution and of small
    and large tumours. A block may straddle two institutions; an institution
    of three or more patients left with none in training gets one back
    (swapped with the training patient of closest burden). The result
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
        ValueError: if a fraction is negative, if they sum to 1 or more, or
            if they leave no training patient.
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

    Raises:
        ValueError: if ``folds`` is below 2.
    """
    if folds < 2:
        raise ValueError(f"folds={folds}: cross-validation needs at least 2 folds.")
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


FLAIR_ONLY_PROBABILITY = 0.1
"""Share of training slices shown as FLAIR only (see ``augment_batch``)."""

ROTATE_ZOOM_PROBABILITY = 1.0
"""Share of training slices rotated and zoomed (see ``augment_batch``)."""

GAMMA_PROBABILITY = 0.3
"""Share of training slices given a random gamma per channel (see ``augment_batch``)."""

GAMMA_RANGE = (0.7, 1.5)
"""Gamma factors are drawn from this range; nnU-Net's default (Isensee et al. 2021)."""


def normalize(images: np.ndarray | tf.Tensor) -> tf.Tensor:
    """Scale uint8 slices to float32 in [0, 1].

    Args:
        images: uint8 array (..., H, W, 3), values 0-255.

    Returns:
        float32 tensor of the same shape, values 0-1.
    """
    require_tensorflow("normalize")
    return tf.cast(images, tf.float32) / 255.0


WARPABLE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
"""Array dtypes ``cv2.warpAffine`` accepts."""


def augment_stacked(
    stack: np.ndarray,
    seed,
    flair_only_probability: float = FLAIR_ONLY_PROBABILITY,
    rotate_zoom_probability: float = ROTATE_ZOOM_PROBABILITY,
    max_rotation_degrees: float = 15.0,
    zoom_range: tuple[float, float] = (0.9, 1.1),
    *,
    gamma_probability: float = GAMMA_PROBABILITY,
) -> np.ndarray:
    """Augment slices stored with their mask as the last channel (see ``augment_batch``).

    The training pipeline keeps each slice and its mask as one uint8 array of
    four channels, because OpenCV warps four interleaved channels about twice
    as fast as three (its vectorised path), and one warp then moves image and
    mask together. Each slice is warped by ``cv2.warpAffine`` (bilinear, zero
    fill) straight into the output; a slice that is only flipped is mirrored
    by ``cv2.flip``. The mask channel holds 0 and 1: on uint8 the bilinear
    warp rounds it, which is a threshold at one half; on floats it is
    thresholded at one half explicitly. A soft uint8 mask (0-255,
    ``helpers.data.resize_slice(soft_mask=True)``) is warped as the image is.

    Args:
        stack: (B, H, W, C + 1), image channels then the mask; uint8 (image
            0-255, mask 0/1) or float (image 0-1, mask 0/1); C + 1 <= 4.
        seed: two integers; the same seed gives the same output.

    Returns:
        A new array of the input's shape and dtype.

    Raises:
        ValueError: if the array is not (B, H, W, 2 to 4) or of a dtype
            OpenCV cannot warp.
    """
    import cv2

    if stack.ndim != 4 or not 2 <= stack.shape[-1] <= 4:
        raise ValueError(f"Expected slices with their mask stacked as (B, H, W, 2 to 4), got {stack.shape}.")
    if stack.dtype not in WARPABLE_DTYPES:
        raise ValueError(f"Arrays of dtype {stack.dtype} cannot be warped: use uint8 or float32.")
    rng = np.random.default_rng([int(s) & 0xFFFFFFFF for s in np.ravel(seed)])
    count, height, width, planes = stack.shape
    channels = planes - 1
    flip = rng.random(count) < 0.5
    grey = rng.random(count) < flair_only_probability
    warp = rng.random(count) < rotate_zoom_probability
    angle = rng.uniform(-max_rotation_degrees, max_rotation_degrees, count)
    zoom = rng.uniform(zoom_range[0], zoom_range[1], count)
    # Drawn after the others, so that gamma_probability=0 leaves every other draw as it was.
    gamma = np.where(rng.random(count)[:, None] < gamma_probability,
                     rng.uniform(*GAMMA_RANGE, (count, channels)), 1.0)
    mirror = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # C order, which OpenCV writes into; it would silently allocate anew for anything else.
    out = np.empty(stack.shape, stack.dtype)
    for i in range(count):
        source = np.ascontiguousarray(stack[i])
        if grey[i] and channels == 3:
            source = source.copy()
            source[..., 0] = source[..., 2] = source[..., 1]
        if warp[i]:
            matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), float(angle[i]), float(zoom[i]))
            if flip[i]:
                matrix = matrix @ mirror
            cv2.warpAffine(source, matrix, (width, height), dst=out[i],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            if not np.issubdtype(stack.dtype, np.integer):
                out[i, ..., channels] = out[i, ..., channels] > 0.5
        elif flip[i]:
            cv2.flip(source, 1, dst=out[i])
        else:
            out[i] = source
        if np.any(gamma[i] != 1.0):
            _apply_gamma(out[i], gamma[i][0] if grey[i] and channels == 3 else gamma[i])
    return out


def _apply_gamma(stacked_slice: np.ndarray, gamma) -> None:
    """Raise each image channel of one stacked slice (H, W, C + 1) to its gamma, in place.

    Intensities are taken as fractions of their maximum (the dtype's largest
    value for integers, 1 for floats), so 0 and the maximum stay where they
    are; the mask (last channel) is untouched.

    Args:
        stacked_slice: (H, W, C + 1), image channels then the mask.
        gamma: one power per image channel (C,), or one for all; 0.7-1.5
            in training. The caller passes one for a grey (FLAIR-only)
            slice, so that it stays grey.
    """
    import cv2

    channels = stacked_slice.shape[-1] - 1
    gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (channels,))
    if stacked_slice.dtype == np.uint8:
        levels = np.linspace(0.0, 1.0, 256)[:, None]
        table = np.concatenate([np.rint(255.0 * levels ** gamma), np.arange(256)[:, None]], axis=1)
        table = np.ascontiguousarray(table.astype(np.uint8).reshape(1, 256, channels + 1))
        cv2.LUT(stacked_slice, table, dst=stacked_slice)
    elif np.issubdtype(stacked_slice.dtype, np.integer):
        top = float(np.iinfo(stacked_slice.dtype).max)
        image = stacked_slice[..., :channels]
        scaled = np.clip(image / top, 0.0, 1.0) ** gamma
        image[...] = np.rint(scaled * top).astype(stacked_slice.dtype)
    else:
        image = stacked_slice[..., :channels]
        np.power(np.clip(image, 0.0, 1.0), gamma.astype(stacked_slice.dtype), out=image)


def augment_arrays(
    images: np.ndarray,
    masks: np.ndarray,
    seed,
    flair_only_probability: float = FLAIR_ONLY_PROBABILITY,
    rotate_zoom_probability: float = ROTATE_ZOOM_PROBABILITY,
    max_rotation_degrees: float = 15.0,
    zoom_range: tuple[float, float] = (0.9, 1.1),
    *,
    gamma_probability: float = GAMMA_PROBABILITY,
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy and OpenCV version of ``augment_batch`` (the same arguments).

    Stacks each mask behind its image and calls ``augment_stacked``.

    Args:
        images: (B, H, W, C) uint8 0-255 or float 0-1, C <= 3.
        masks: (B, H, W, 1) uint8, bool or float, values 0 and 1.
        seed: two integers; the same seed gives the same output.

    Returns:
        New arrays of the inputs' shapes and dtypes.

    Raises:
        ValueError: if the masks are not (B, H, W, 1) for images
            (B, H, W, C), or of a dtype OpenCV cannot warp.
    """
    if images.ndim != 4 or masks.shape != (*images.shape[:3], 1):
        raise ValueError(f"masks of shape {masks.shape} do not match images of shape {images.shape}: "
                         "expected (B, H, W, 1) masks for (B, H, W, C) images.")
    for name, array in (("images", images), ("masks", masks)):
        if array.dtype not in (*WARPABLE_DTYPES, np.bool_):
            raise ValueError(f"{name} of dtype {array.dtype} cannot be warped: use uint8 or float32.")
    stack = np.concatenate([images, masks.astype(images.dtype)], axis=-1)
    moved = augment_stacked(stack, seed, flair_only_probability, rotate_zoom_probability,
                            max_rotation_degrees, zoom_range, gamma_probability=gamma_probability)
    return moved[..., :-1], moved[..., -1:].astype(masks.dtype)


def augment_batch(
    images,
    masks,
    seed=None,
    flair_only_probability: float = FLAIR_ONLY_PROBABILITY,
    rotate_zoom_probability: float = ROTATE_ZOOM_PROBABILITY,
    max_rotation_degrees: float = 15.0,
    zoom_range: tuple[float, float] = (0.9, 1.1),
    *,
    gamma_probability: float = GAMMA_PROBABILITY,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly flip, rotate and zoom each image together with its mask.

    Every slice is flipped left-right with probability 0.5. A share
    ``rotate_zoom_probability`` of the slices is also rotated (within
    +-``max_rotation_degrees``) and zoomed (by a factor within
    ``zoom_range``, >1 zooming in) about its centre, by one bilinear warp.
    Image and mask get the same transform, so they stay aligned; the mask is
    thresholded afterwards, so it stays binary.

    Some patients of the dataset lack the pre- and post-contrast scans: their
    slices repeat FLAIR in all three channels (grey images). To learn those
    too, a share of the training slices has its three channels replaced by
    FLAIR (the middle channel) first.

    A share ``gamma_probability`` of the slices then has each image channel
    raised to a random power within ``GAMMA_RANGE`` (intensities as
    fractions of their maximum). The model's per-slice standardisation
    undoes a change of brightness or contrast, but not this change of the
    intensity curve, which differs between scanners; nnU-Net's default
    augmentation includes it (Isensee et al. 2021). The mask is untouched.

    Works on uint8 slices (0-255, what the training pipeline passes, as it
    is cheapest) and on float slices (0-1) alike; runs as a TensorFlow op
    (``augment_arrays`` inside ``tf.numpy_function``), so tf.data can run it
    on several batches at once.

    Args:
        images: uint8 (B, H, W, C) 0-255, or float32 (B, H, W, C) 0-1.
        masks: (B, H, W, 1), values 0 and 1, uint8 or float32.
        seed: two integers (a stateless seed); ``None`` for random.
        flair_only_probability: share of three-channel slices turned into
            FLAIR-only (grey) slices; 0 for none.
        rotate_zoom_probability: share of slices rotated and zoomed.
        max_rotation_degrees: rotations are drawn from +-this angle.
        zoom_range: scale factors drawn uniformly from this range.
        gamma_probability: share of slices given a random gamma per
            channel; 0 for none.

    Returns:
        images of the input's dtype (B, H, W, C) and masks of the masks'
        dtype (B, H, W, 1), values 0 and 1.
    """
    require_tensorflow("augment_batch")
    images = tf.convert_to_tensor(images)
    masks = tf.convert_to_tensor(masks)
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)

    def run(batch_images, batch_masks, batch_seed):
        return augment_arrays(batch_images, batch_masks, batch_seed, flair_only_probability,
                              rotate_zoom_probability, max_rotation_degrees, zoom_range,
                              gamma_probability=gamma_probability)

    moved_images, moved_masks = tf.numpy_function(
        run, [images, masks, tf.cast(seed, tf.int64)], [images.dtype, masks.dtype], stateful=False
    )
    moved_images.set_shape(images.shape)
    moved_masks.set_shape(masks.shape)
    return moved_images, moved_masks


def split_stacked(stack: np.ndarray, scale: bool = True, mask_levels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split slices stacked with their masks into the model's inputs and targets.

    The last step of every pipeline of ``make_dataset``: one OpenCV
    ``mixChannels`` pass splits image and mask, then NumPy divides the image
    by 255 in float32 (the same correctly rounded division as ``normalize``,
    so the result equals it bit for bit). On one core the split and scaling
    took about 0.21 ms per 256x256 slice, against 0.32 ms when OpenCV's
    ``multiply`` scaled in double precision, and 0.44-0.48 ms for
    TensorFlow's slice, cast and divide. The outputs start on 64-byte
    boundaries, so that TensorFlow takes them without a copy.
    ``benchmarks/pipeline.py`` measures the whole pipeline, and
    ``benchmarks/pipeline_stages.py`` each stage.

    With ``scale=False`` it only splits: image and mask stay uint8 (0-255
    and 0/1), a quarter of the bytes, for a model that standardises each
    slice itself (``make_dataset(image_dtype="uint8")``).

    Soft masks (``mask_levels`` other than 1, 0 to ``mask_levels``) are always
    divided into float32 fractions, whatever ``scale`` says: a loss cannot
    tell 255 from 1.

    Args:
        stack: uint8 (B, H, W, C + 1), image channels (0-255) then the mask
            (0/1, or 0 to ``mask_levels``); any memory layout (a copy is
            made if needed).
        scale: cast to float32 and scale the image to [0, 1]; ``False``
            keeps uint8.
        mask_levels: the value of a full tumour pixel in the mask: 1 for
            0/1 masks, ``helpers.data.SOFT_MASK_LEVELS`` for soft ones.

    Returns:
        images float32 (B, H, W, C) in [0, 1], masks float32 (B, H, W, 1) in
        {0, 1}; with ``scale=False``, uint8 images (0-255) and uint8 masks (0/1).
        Soft masks come back float32 in [0, 1].

    Raises:
        ValueError: if the array is not uint8 (B, H, W, C + 1) with C >= 1.
    """
    import cv2

    if stack.dtype != np.uint8 or stack.ndim != 4 or stack.shape[-1] < 2:
        raise ValueError(f"Expected uint8 slices with their mask stacked as (B, H, W, C + 1), "
                         f"got {stack.dtype} {stack.shape}.")
    count, height, width, planes = stack.shape
    channels = planes - 1
    # Rows of all slices one after another: one OpenCV image of B*H rows per call.
    rows = np.ascontiguousarray(stack).reshape(count * height, width, planes)
    image = aligned_empty((count * height, width, channels), np.uint8)
    mask = aligned_empty((count * height, width), np.uint8)
    pairs = [index for k in range(planes) for index in (k, k)]
    cv2.mixChannels([rows], [image, mask], pairs)
    if mask_levels != 1:
        mask_out = aligned_empty(mask.shape, np.float32)
        np.divide(mask, np.float32(mask_levels), out=mask_out, dtype=np.float32)
    elif scale:
        mask_out = aligned_empty(mask.shape, np.float32)
        np.copyto(mask_out, mask, casting="unsafe")
    else:
        mask_out = mask
    if not scale:
        return image.reshape(count, height, width, channels), mask_out.reshape(count, height, width, 1)
    scaled = aligned_empty(image.shape, np.float32)
    np.divide(image, np.float32(255.0), out=scaled, dtype=np.float32)
    return (scaled.reshape(count, height, width, channels), mask_out.reshape(count, height, width, 1))


def aligned_empty(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ``alignment``-byte boundary.

    NumPy aligns only to 16 bytes; TensorFlow wants 64 to use an array's
    memory as a tensor's without copying it.

    Args:
        shape: the array's shape.
        dtype: its dtype.
        alignment: the boundary in bytes.

    Returns:
        The array (a view into a slightly larger buffer).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(size + alignment, np.uint8)
    offset = (-buffer.ctypes.data) % alignment
    return buffer[offset:offset + size].view(dtype).reshape(shape)


def stack_with_masks(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Put each mask behind its slice as one more channel (see ``augment_stacked``).

    Args:
        images: uint8 (N, H, W, C), values 0-255.
        masks: uint8 (N, H, W), values 0 and 1 (or 0-255, soft).

    Returns:
        uint8 (N, H, W, C + 1), C-ordered.
    """
    stacked = np.empty((*images.shape[:3], images.shape[3] + 1), dtype=np.uint8)
    stacked[..., :-1] = images
    stacked[..., -1] = masks
    return stacked


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int = 16,
    training: bool = False,
    augment: bool = True,
    seed: int = 42,
    oversample_tumour: float = 0.0,
    flair_only_probability: float = FLAIR_ONLY_PROBABILITY,
    rotate_zoom_probability: float = ROTATE_ZOOM_PROBABILITY,
    parallel_augmentation: bool = True,
    gamma_probability: float = GAMMA_PROBABILITY,
    image_dtype: str = "float32",
    mask_levels: int = 1,
) -> tf.data.Dataset:
    """Build the tf.data pipeline over decoded uint8 slices.

    Training pipelines shuffle every epoch, optionally oversample slices with
    tumour, augment on the fly (whole batches at once, still in uint8, the
    cheapest form) and prefetch. Evaluation pipelines only batch and
    prefetch. Both end with ``split_stacked`` (image scaled to 0-1, or
    kept in uint8, mask apart), for training in the same call as the augmentation.

    Each slice travels with its mask as one more channel (``augment_stacked``
    explains why) until the last step splits them. Slices held in memory are
    stacked so once, into one tensor (the size of images and masks together,
    in place of them), and gathered from it. Memory-mapped slices
    (``np.memmap``, from ``helpers.data.load_arrays`` when they do not fit in
    memory) are streamed from disk and stacked batch by batch instead.

    Args:
        images: uint8 array (N, H, W, 3), values 0-255, in memory or mapped.
        masks: uint8 array (N, H, W), values 0 and 1 (0 to ``mask_levels``
            for soft masks), in memory or mapped.
        batch_size: slices per batch.
        training: shuffle, repeat-free epochs, and augment.
        augment: apply augmentation when ``training``.
        seed: seed of shuffling and augmentation.
        oversample_tumour: when > 0, each tumour slice is included
            ``1 + oversample_tumour`` times per epoch on average: every
            slice once, and that share of the tumour slices again, drawn
            afresh each epoch (with replacement).
        flair_only_probability: share of training slices shown as FLAIR
            only (see ``augment_batch``).
        rotate_zoom_probability: share of training slices rotated and
            zoomed (all are flipped at random).
        parallel_augmentation: augment one batch per core at once, each
            with OpenCV on one thread (sets ``cv2.setNumThreads(1)`` for the
            process); ``False`` augments one batch at a time and leaves
            OpenCV's threads alone.
        gamma_probability: share of training slices given a random gamma
            per channel (see ``augment_batch``).
        image_dtype: ``"float32"`` delivers images scaled to [0, 1];
            ``"uint8"`` delivers the bytes as they are (0-255, masks 0/1 in
            uint8), for a model whose first layer standardises each slice
            (``build_resunet``'s ``SliceStandardization``, which gives the
            same output for either scale): the model casts them to float in
            its own step, on the GPU where there is one, and the pipeline
            moves a quarter of the bytes. ``helpers.training.train`` refuses
            uint8 batches for a model without that layer.
        mask_levels: the value of a full tumour pixel in ``masks``: 1, or
            ``helpers.data.SOFT_MASK_LEVELS`` for soft masks
            (``load_arrays(soft_masks=True)``), delivered as float32
            fractions whatever ``image_dtype`` is.

    Returns:
        A dataset of (image float32 (B, H, W, 3) in [0, 1], mask float32
        (B, H, W, 1) in {0, 1}); with ``image_dtype="uint8"``, both uint8.
        Soft masks come as float32 fractions in [0, 1] either way.

    Raises:
        ValueError: if ``image_dtype`` is neither ``"float32"`` nor
            ``"uint8"``, or if the masks' values do not match ``mask_levels``
            (soft masks given as 0/1 ones, or the other way round).
    """
    require_tensorflow("make_dataset")
    if image_dtype not in ("float32", "uint8"):
        raise ValueError(f"image_dtype={image_dtype!r}: use 'float32' (scaled to [0, 1]) or 'uint8' (0-255 as stored).")
    # Each slice's largest mask value, in chunks, so that memory-mapped masks are never read whole into memory.
    slice_top = np.zeros(len(masks), dtype=np.uint8)
    for start in range(0, len(masks), 256):
        chunk = np.asarray(masks[start:start + 256])
        slice_top[start:start + len(chunk)] = chunk.reshape(len(chunk), -1).max(axis=1)
    _check_mask_levels(int(slice_top.max(initial=0)), mask_levels)
    scale = image_dtype == "float32"
    out_type = tf.float32 if scale else tf.uint8
    mask_type = tf.float32 if scale or mask_levels != 1 else tf.uint8
    indices = np.arange(len(images))
    dataset = tf.data.Dataset.from_tensor_slices(indices)
    epoch_length = len(indices)
    if training and oversample_tumour > 0:
        tumour = tf.constant(indices[slice_top > 0])
        extra = int(round(len(tumour) * oversample_tumour))
        if extra:
            # A fresh draw of tumour slices each epoch (each pass over the dataset), from the seed.
            draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(extra)
            dataset = dataset.concatenate(draws.map(lambda r: tf.gather(tumour, r % len(tumour))))
            epoch_length += extra
    if training:
        dataset = dataset.shuffle(epoch_length, seed=seed, reshuffle_each_iteration=True)

    # Each slice travels with its mask as one more channel: one gather, and one
    # four-channel warp (OpenCV's fastest path) moves both.
    channels = images.shape[3]
    stacked_shape = (*images.shape[1:3], channels + 1)
    if isinstance(images, np.memmap) or isinstance(masks, np.memmap):
        def read(batch_indices):
            order = np.sort(batch_indices)  # reads in file order; order within a batch does not matter
            return stack_with_masks(images[order], masks[order])

        def gather(batch_indices):
            batch = tf.numpy_function(read, [batch_indices], tf.uint8)
            batch.set_shape((None, *stacked_shape))
            return batch
    else:
        stacked_tensor = tf.constant(stack_with_masks(images, masks))

        def gather(batch_indices):
            return tf.gather(stacked_tensor, batch_indices)

    dataset = dataset.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    image_shape, mask_shape = (None, *stacked_shape[:2], channels), (None, *stacked_shape[:2], 1)

    def to_inputs(arrays_op, *arguments):
        images_out, masks_out = tf.numpy_function(arrays_op, list(arguments), [out_type, mask_type],
                                                  stateful=False)
        images_out.set_shape(image_shape)
        masks_out.set_shape(mask_shape)
        return images_out, masks_out

    if training and augment:
        def run(batch, batch_seed):
            return split_stacked(augment_stacked(batch, batch_seed, flair_only_probability, rotate_zoom_probability,
                                                 gamma_probability=gamma_probability), scale, mask_levels)

        def augment(batch, batch_seed):
            return to_inputs(run, batch, batch_seed)

        counter = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        if parallel_augmentation:
            import cv2

            # One batch per core at once, each warp on one OpenCV thread (a global setting);
            # otherwise OpenCV spreads every warp over all cores and concurrent calls fight
            # for them. benchmarks/augment_threads.py compares the two ways.
            cv2.setNumThreads(1)
        calls = (os.cpu_count() or 2) if parallel_augmentation else 1
        dataset = tf.data.Dataset.zip((dataset, counter)).map(augment, num_parallel_calls=calls)
    else:
        dataset = dataset.map(lambda batch: to_inputs(lambda stack: split_stacked(stack, scale, mask_levels), batch),
                              num_parallel_calls=tf.data.AUTOTUNE)
    # A pool of one thread per core for the pipeline's own work, apart from the model's.
    options = tf.data.Options()
    options.threading.private_threadpool_size = os.cpu_count() or 2
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def _check_mask_levels(top: int, mask_levels: int) -> None:
    """Refuse masks whose largest value ``top`` does not fit ``mask_levels`` (see ``make_dataset``)."""
    if mask_levels < 1:
        raise ValueError(f"mask_levels={mask_levels}: use 1 for 0/1 masks, "
                         "helpers.data.SOFT_MASK_LEVELS for soft ones.")
    if top > mask_levels:
        raise ValueError(f"The masks hold values up to {top}, above mask_levels={mask_levels}: soft masks "
                         "(load_arrays(soft_masks=True)) take mask_levels=helpers.data.SOFT_MASK_LEVELS.")
    if mask_levels > 1 and top == 1:
        raise ValueError(f"The masks hold only 0 and 1, but mask_levels={mask_levels} would read 1 as a sliver of "
                         "tumour: 0/1 masks take mask_levels=1.")


def arrays_by_split(
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    size: int,
    cache_dir=None,
    show_progress: bool = True,
    in_memory: bool | None = None,
    soft_masks: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
    """Decode the slices of each side of a split, resized to ``size``.

    In memory, all slices are decoded (or read from the cache) at once and
    each side is taken from them. When they do not fit, each side is decoded
    into its own memory-mapped cache instead, since taking a side out of one
    mapped array would copy it into memory; ``make_dataset`` then streams it.

    Args:
        manifest: one row per slice (``patient``, ``image_path``, ``mask_path``).
        split: one row per patient (``patient``, ``split``).
        size: output height and width.
        cache_dir: cache folder for decoded arrays (see ``helpers.data.load_arrays``).
        show_progress: show a progress bar while decoding.
        in_memory: ``True`` to hold the slices in memory, ``False`` to map
            them from the cache, ``None`` to decide by
            ``helpers.data.fits_in_memory``.
        soft_masks: masks resized by area averaging, 0 to
            ``helpers.data.SOFT_MASK_LEVELS`` (see ``helpers.data.resize_slice``).

    Returns:
        ``{"train": (images, masks, rows), "val": ..., "test": ...}``: uint8
        images (N, size, size, 3), uint8 masks (N, size, size) 0/1 (0 to
        ``helpers.data.SOFT_MASK_LEVELS`` with ``soft_masks``), and the
        N manifest rows in the same order; ``np.memmap`` arrays when not in
        memory.
    """
    from helpers.data import fits_in_memory, load_arrays

    check_split_leakage(split)
    if in_memory is None:
        in_memory = fits_in_memory(len(manifest), size)
    side_of = manifest["patient"].map(dict(zip(split["patient"], split["split"], strict=True)))
    if in_memory:
        images, masks = load_arrays(manifest, size=size, cache_dir=cache_dir, show_progress=show_progress,
                                    in_memory=True, soft_masks=soft_masks)
    result = {}
    for side in SPLITS:
        chosen = (side_of == side).to_numpy()
        rows = manifest[chosen].reset_index(drop=True)
        if in_memory:
            result[side] = (images[chosen], masks[chosen], rows)
        else:
            result[side] = (*load_arrays(rows, size=size, cache_dir=cache_dir, show_progress=show_progress,
                                         in_memory=False, soft_masks=soft_masks), rows)
    return result


def load_split(artifacts_dir) -> pd.DataFrame:
    """Read ``ARTIFACTS_DIR/split.csv``, written by notebook 02.

    Args:
        artifacts_dir: the folder the notebooks write to.

    Returns:
        One row per patient: ``patient``, ``institution`` and ``split``
        (``train``, ``val`` or ``test``).

    Raises:
        FileNotFoundError: naming the file and the notebook to run first.
        DatasetError: naming the file, if a patient is on more than one side.
    """
    from pathlib import Path

    from helpers.data import require_artifact

    path = require_artifact(Path(artifacts_dir) / "split.csv", "02_preprocessing")
    split = pd.read_csv(path)
    try:
        check_split_leakage(split)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    return split


def split_fingerprint(split: pd.DataFrame) -> str:
    """A short name for a split, which changes when any patient changes side.

    Notebook 04 records it with a training run, so that a run is never kept
    or resumed on another split (its validation or test patients could then
    be patients it trained on), and notebook 05 checks it before scoring.

    Args:
        split: one row per patient, with ``patient`` and ``split`` columns.

    Returns:
        For example ``"48 train, 10 val, 10 test patients (3f2a9c1d)"``:
        the counts, and the first 8 hex digits of a SHA-1 of the sorted
        (split, patient) pairs.
    """
    pairs = sorted(zip(split["split"].astype(str), split["patient"].astype(str)))
    digest = hashlib.sha1("\n".join(f"{side},{patient}" for side, patient in pairs).encode()).hexdigest()[:8]
    counts = split.groupby("split")["patient"].nunique()
    sides = ", ".join(f"{counts.get(side, 0)} {side}" for side in ("train", "val", "test"))
    return f"{sides} patients ({digest})"


def measure_throughput(dataset: tf.data.Dataset, batches: int = 50, warmup: int = 2) -> dict:
    """Slices per second a pipeline delivers, after ``warmup`` batches.

    The rows of each element's first tensor are counted: the images of an
    (images, masks) pair, or the element itself when it is one tensor.

    Args:
        dataset: a batched ``tf.data.Dataset`` (repeated here, so a finite one
            will do).
        batches: batches timed.
        warmup: batches drawn first and not timed (the pipeline filling up).

    Returns:
        ``{"slices_per_second": float, "batches": int, "seconds": float}``.
    """
    require_tensorflow("measure_throughput")
    import time

    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        element = next(iterator)
        count += int((element[0] if isinstance(element, (tuple, list)) else element).shape[0])
    seconds = time.perf_counter() - start
    return {"slices_per_second": count / seconds, "batches": batches, "seconds": seconds}
