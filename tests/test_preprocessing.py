"""Tests of helpers.preprocessing: patient splits, normalisation, augmentation, tf.data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers.preprocessing import (
    arrays_by_split,
    augment_batch,
    kfold_patients,
    make_dataset,
    normalize,
    split_patients,
    split_stacked,
)

# Patients per institution, shaped like the real dataset's mix, with one
# institution too small to share out.
INSTITUTION_SIZES = {"CS": 10, "DU": 17, "EZ": 1, "FG": 5, "HT": 11, "A8": 3}


def fake_manifest(sizes: dict[str, int] = INSTITUTION_SIZES, seed: int = 0) -> pd.DataFrame:
    """A manifest without files: a few slices per patient with random tumour sizes."""
    rng = np.random.default_rng(seed)
    rows = []
    for institution, count in sizes.items():
        for index in range(count):
            patient = f"TCGA_{institution}_{index:04d}"
            for number in range(1, int(rng.integers(2, 6)) + 1):
                rows.append({"patient": patient, "institution": institution, "slice": number,
                             "tumour_pixels": int(rng.integers(0, 3)) * int(rng.integers(0, 500))})
    return pd.DataFrame(rows)


# --- Splits --------------------------------------------------------------------------------


def test_split_one_side_per_patient_and_fractions():
    manifest = fake_manifest()
    split = split_patients(manifest, val_fraction=0.15, test_fraction=0.15, seed=1)
    patients = sorted(manifest["patient"].unique())
    assert sorted(split["patient"]) == patients
    assert set(split["split"]) <= {"train", "val", "test"}
    assert split["patient"].is_unique  # one side per patient, so all of a patient's slices go together
    n = len(patients)
    counts = split["split"].value_counts()
    assert abs(counts["test"] - 0.15 * n) <= 1
    assert abs(counts["val"] - 0.15 * n) <= 1
    assert counts["train"] == n - counts["test"] - counts["val"]
    institutions = manifest.groupby("patient")["institution"].first()
    assert split.set_index("patient")["institution"].equals(institutions.loc[split["patient"]])


def test_split_shares_out_institutions_and_tumour_burden():
    # Dealt in blocks ordered by institution, then burden: validation and test each get patients of
    # several institutions, and of tumours both below and above the median burden, whatever the seed.
    for seed in range(20):
        manifest = fake_manifest(seed=seed % 3)
        burden = manifest.groupby("patient")["tumour_pixels"].sum()
        split = split_patients(manifest, seed=seed)
        for side in ("val", "test"):
            chosen = split[split["split"] == side]
            assert chosen["institution"].nunique() >= 3, (seed, side)
            chosen_burden = burden.loc[chosen["patient"]]
            assert (chosen_burden < burden.median()).any() and (chosen_burden > burden.median()).any(), (seed, side)


def test_split_is_deterministic_and_depends_on_seed():
    manifest = fake_manifest()
    first = split_patients(manifest, seed=3)
    pd.testing.assert_frame_equal(first, split_patients(manifest, seed=3))
    others = [split_patients(manifest, seed=seed) for seed in range(4, 14)]
    differing = sum(not other["split"].equals(first["split"]) for other in others)
    assert differing >= 8


# Layouts where a 3-patient institution straddles two dealing blocks, as well as the default.
SMALL_INSTITUTION_LAYOUTS = [
    INSTITUTION_SIZES,
    {"AA": 6, "BB": 3, "CC": 12},
    {"AA": 5, "BB": 3, "CC": 4, "DD": 3, "EE": 9},
]


@pytest.mark.parametrize("fractions", [(0.15, 0.15), (0.1, 0.2), (0.25, 0.25)])
def test_split_keeps_a_training_patient_in_every_institution(fractions):
    val_fraction, test_fraction = fractions
    for sizes in SMALL_INSTITUTION_LAYOUTS:
        for seed in range(30):
            manifest = fake_manifest(sizes, seed=seed % 3)
            split = split_patients(manifest, val_fraction, test_fraction, seed=seed)
            for institution, sides in split.groupby("institution")["split"]:
                if len(sides) >= 3:
                    assert (sides == "train").any(), (
                        f"institution {institution} has no training patient "
                        f"(fractions {fractions}, seed {seed}): {sides.tolist()}"
                    )
            counts = split["split"].value_counts()
            assert counts.get("test", 0) == round(len(split) * test_fraction)
            assert counts.get("val", 0) == round(len(split) * val_fraction)


def test_split_rejects_fractions_leaving_no_training():
    with pytest.raises(ValueError, match="must be non-negative and sum to less than 1"):
        split_patients(fake_manifest(), val_fraction=0.5, test_fraction=0.5)


def test_kfold_every_patient_in_one_nonempty_fold():
    manifest = fake_manifest()
    folds = kfold_patients(manifest, folds=5, seed=0)
    assert sorted(folds["patient"]) == sorted(manifest["patient"].unique())
    assert folds["patient"].is_unique
    assert set(folds["fold"]) == set(range(5))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1  # dealt in blocks over all patients: only the last block is partial
    pd.testing.assert_frame_equal(folds, kfold_patients(manifest, folds=5, seed=0))
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_patients(manifest, folds=1)


# --- Normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_split_stacked_equals_normalize_and_keeps_the_mask(channels):
    rng = np.random.default_rng(5)
    # Every uint8 value in every channel, in a different order per channel.
    values = np.stack([rng.permutation(256) for _ in range(channels)], axis=-1).astype(np.uint8)
    images = values.reshape(4, 8, 8, channels)
    masks = (rng.random((4, 8, 8)) < 0.4).astype(np.uint8)
    stack = np.concatenate([images, masks[..., None]], axis=-1)
    got_images, got_masks = split_stacked(stack[:, :, ::-1])  # a view that is not C-ordered
    assert got_images.dtype == got_masks.dtype == np.float32
    np.testing.assert_array_equal(got_images, normalize(images[:, :, ::-1]).numpy())
    np.testing.assert_array_equal(got_masks, masks[:, :, ::-1, None].astype(np.float32))


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4, 4), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((2, 4, 4, 1), np.uint8)])
def test_split_stacked_names_what_it_expected(bad):
    with pytest.raises(ValueError, match=r"uint8 slices with their mask stacked as \(B, H, W, C \+ 1\)"):
        split_stacked(bad)


@pytest.mark.parametrize("training", [False, True])
def test_pipeline_declares_the_shapes_and_dtypes_it_delivers(training):
    images = np.zeros((6, 16, 16, 3), np.uint8)
    masks = np.zeros((6, 16, 16), np.uint8)
    dataset = make_dataset(images, masks, batch_size=4, training=training)
    assert dataset.element_spec == (tf.TensorSpec((None, 16, 16, 3), tf.float32),
                                    tf.TensorSpec((None, 16, 16, 1), tf.float32))
    batch_images, batch_masks = next(iter(dataset))
    assert batch_images.shape == (4, 16, 16, 3) and batch_masks.shape == (4, 16, 16, 1)


def test_normalize_black_and_white():
    black = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    out = normalize(black).numpy()
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out)) and not out.any()
    white = np.full((8, 8, 3), 255, dtype=np.uint8)
    np.testing.assert_array_equal(normalize(white).numpy(), np.ones((8, 8, 3), np.float32))
    np.testing.assert_allclose(normalize(np.array([51], np.uint8)).numpy(), [0.2])


# --- Augmentation ------------------------------------------------------------------------------

SIZE = 64
X_BAND = (16, 40)  # mask is 1 for pixel columns 16..39
Y_BAND = (20, 44)  # and rows 20..43


def position_batch(batch: int = 6, dtype=np.float32) -> tuple[tf.Tensor, tf.Tensor]:
    """Images whose pixels encode their own position, and a mask that is a function of it.

    Float images: channel 0 holds x / SIZE, channel 1 holds y / SIZE,
    channel 2 is 1 (so the constant fill outside the moved image shows as 0
    there). uint8 images hold 4x, 4y and 255, the same scaled to 0-255.
    """
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = np.stack([x / SIZE, y / SIZE, np.ones_like(x)], axis=-1)
    mask = ((x >= X_BAND[0]) & (x < X_BAND[1]) & (y >= Y_BAND[0]) & (y < Y_BAND[1])).astype(dtype)
    if dtype == np.uint8:
        image = np.round(image * np.array([4 * SIZE, 4 * SIZE, 255])).astype(np.uint8)
    images = np.repeat(image[None], batch, axis=0)
    masks = np.repeat(mask[None, ..., None], batch, axis=0)
    return tf.constant(images), tf.constant(masks)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_augmentation_moves_mask_with_image(dtype):
    images, masks = position_batch(dtype=dtype)
    # No gamma: the intensities encode positions here.
    moved_images, moved_masks = augment_batch(images, masks, seed=tf.constant([7, 11]),
                                              flair_only_probability=0.0, gamma_probability=0.0)
    assert moved_images.dtype == images.dtype and moved_masks.dtype == masks.dtype
    moved_images, moved_masks = moved_images.numpy().astype(np.float64), moved_masks.numpy()[..., 0]
    assert moved_images.shape == images.shape and moved_masks.shape == masks.shape[:3]
    assert set(np.unique(moved_masks).tolist()) <= {0, 1}

    # Where the source pixel came from, read back from the moved image.
    if dtype == np.uint8:
        source_x, source_y = moved_images[..., 0] / 4, moved_images[..., 1] / 4
        valid = moved_images[..., 2] >= 254  # fully inside the source image
    else:
        source_x, source_y = moved_images[..., 0] * SIZE, moved_images[..., 1] * SIZE
        valid = moved_images[..., 2] > 0.999
    # Bilinear sampling of the 0/1 mask, thresholded at 0.5, is 1 within half a pixel of the band.
    expected = ((source_x > X_BAND[0] - 0.5) & (source_x < X_BAND[1] - 0.5)
                & (source_y > Y_BAND[0] - 0.5) & (source_y < Y_BAND[1] - 0.5))
    near_edge = np.zeros_like(valid)
    for coordinate, band in ((source_x, X_BAND), (source_y, Y_BAND)):
        for edge in (band[0] - 0.5, band[1] - 0.5):
            near_edge |= np.abs(coordinate - edge) < 1.0
    checked = valid & ~near_edge
    assert checked.sum() > 0.5 * checked.size
    assert (expected & checked).sum() > 0.1 * expected.size / 2  # the band is in view
    np.testing.assert_array_equal(moved_masks[checked], expected[checked].astype(moved_masks.dtype))
    # The boundary strip left out is thin: a few percent of the valid pixels.
    assert (valid & near_edge).sum() < 0.15 * valid.sum()

    # The transform is not the identity: sources differ from the pixel grid somewhere.
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    displacement = np.abs(source_x - x) + np.abs(source_y - y)
    assert (displacement[valid] > 1.0).mean() > 0.2
    # Each image of the batch got its own transform.
    assert not np.allclose(moved_images[0], moved_images[1])


def test_without_rotation_slices_are_only_flipped():
    images, masks = position_batch(batch=16)
    moved_images, moved_masks = augment_batch(images, masks, seed=tf.constant([3, 4]), flair_only_probability=0.0,
                                              rotate_zoom_probability=0.0, gamma_probability=0.0)
    flipped = 0
    for image, mask, moved, moved_mask in zip(images.numpy(), masks.numpy(), moved_images.numpy(),
                                              moved_masks.numpy(), strict=True):
        if np.array_equal(moved, image[:, ::-1]):
            flipped += 1
            np.testing.assert_array_equal(moved_mask, mask[:, ::-1])
        else:
            np.testing.assert_array_equal(moved, image)
            np.testing.assert_array_equal(moved_mask, mask)
    assert 0 < flipped < 16


def test_flair_only_slices_repeat_the_middle_channel():
    images, masks = position_batch(batch=8, dtype=np.uint8)
    grey, _ = augment_batch(images, masks, seed=tf.constant([5, 6]), flair_only_probability=1.0,
                            rotate_zoom_probability=0.0, gamma_probability=0.0)
    grey = grey.numpy()
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 2], grey[..., 1])
    # The middle channel (y position) is kept, up to a flip.
    for kept, original in zip(grey[..., 1], images.numpy()[..., 1], strict=True):
        assert np.array_equal(kept, original) or np.array_equal(kept, original[:, ::-1])


def test_gamma_changes_the_intensity_curve_and_leaves_the_geometry_and_the_mask_alone():
    from helpers.preprocessing import GAMMA_RANGE, augment_arrays

    images, masks = position_batch(batch=8, dtype=np.uint8)
    images, masks = images.numpy(), masks.numpy()
    seed = [7, 8]
    plain, plain_masks = augment_arrays(images, masks, seed, gamma_probability=0.0, flair_only_probability=0.0)
    curved, curved_masks = augment_arrays(images, masks, seed, gamma_probability=1.0, flair_only_probability=0.0)
    # Same geometry: the mask is identical, and gamma keeps 0 and 255 and the order of grey levels.
    np.testing.assert_array_equal(curved_masks, plain_masks)
    def channels(batch):  # one row per channel of each slice: each row has one curve
        return batch.transpose(0, 3, 1, 2).reshape(batch.shape[0] * batch.shape[3], -1)

    for before, after in zip(channels(plain), channels(curved), strict=True):
        order = np.argsort(before, kind="stable")
        assert np.all(np.diff(after[order].astype(int)) >= 0)
        assert after[before == 0].max(initial=0) == 0 and after[before == 255].min(initial=255) == 255
    assert np.mean(curved != plain) > 0.5
    # The power applied is within the range, read back from every mid-grey pixel.
    middle = (plain >= 100) & (plain <= 150)
    powers = np.log(curved[middle] / 255.0) / np.log(plain[middle] / 255.0)
    assert GAMMA_RANGE[0] - 0.05 <= powers.min() and powers.max() <= GAMMA_RANGE[1] + 0.05
    # Floats get the same curve as uint8, up to rounding.
    curved_float, _ = augment_arrays(images.astype(np.float32) / 255, masks, seed, gamma_probability=1.0,
                                     flair_only_probability=0.0, rotate_zoom_probability=0.0)
    curved_uint8, _ = augment_arrays(images, masks, seed, gamma_probability=1.0,
                                     flair_only_probability=0.0, rotate_zoom_probability=0.0)
    assert np.abs(curved_float - curved_uint8 / 255.0).max() < 1.5 / 255
    # Other integer types are taken as fractions of their own maximum, not clipped to 0 and 1.
    wide, _ = augment_arrays(images.astype(np.uint16) * 257, masks, seed, gamma_probability=1.0,
                             flair_only_probability=0.0, rotate_zoom_probability=0.0)
    assert np.abs(wide / 65535.0 - curved_uint8 / 255.0).max() < 1.5 / 255
    # A grey (FLAIR-only) slice gets one gamma for its three channels, so it stays grey.
    grey, _ = augment_arrays(images, masks, seed, gamma_probability=1.0, flair_only_probability=1.0)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 2], grey[..., 1])


def test_augmentation_is_reproducible_with_a_stateless_seed():
    images, masks = position_batch(batch=3)
    first = augment_batch(images, masks, seed=tf.constant([1, 2]))
    second = augment_batch(images, masks, seed=tf.constant([1, 2]))
    other = augment_batch(images, masks, seed=tf.constant([2, 1]))
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())



def test_augmentation_is_the_same_for_every_input_layout():
    """uint8 and float, bool and uint8 masks, one or three channels: one transform for all."""
    from helpers.preprocessing import augment_arrays

    images, masks = position_batch(batch=8, dtype=np.uint8)
    images, masks = images.numpy(), masks.numpy()
    seed = [5, 6]
    reference_images, reference_masks = augment_arrays(images, masks, seed, flair_only_probability=0.0, gamma_probability=0.0)
    assert 0 < reference_masks.sum() and set(np.unique(reference_masks).tolist()) == {0, 1}
    # Boolean masks warp as their 0/1 bytes and come back boolean.
    _, bool_masks = augment_arrays(images, masks.astype(bool), seed, flair_only_probability=0.0, gamma_probability=0.0)
    assert bool_masks.dtype == bool
    np.testing.assert_array_equal(bool_masks, reference_masks.astype(bool))
    # Float masks, thresholded at one half, agree with the rounding of uint8 ones.
    _, float_masks = augment_arrays(images, masks.astype(np.float32), seed, flair_only_probability=0.0, gamma_probability=0.0)
    np.testing.assert_array_equal(float_masks, reference_masks.astype(np.float32))
    # A one-channel image moves as the first channel of the three-channel one, up to rounding:
    # OpenCV's four-channel path interpolates with coarser fixed-point weights than its
    # two-channel one (here 4 grey levels are one pixel of position).
    grey_images, grey_masks = augment_arrays(np.ascontiguousarray(images[..., :1]), masks, seed,
                                             flair_only_probability=0.0, gamma_probability=0.0)
    difference = np.abs(grey_images[..., 0].astype(int) - reference_images[..., 0].astype(int))
    assert difference.max() <= 4 and difference.mean() < 0.2
    assert (grey_masks != reference_masks).mean() < 0.001
    # Fortran-ordered input is written into fresh C-ordered outputs, not left uninitialised.
    fortran_images, _ = augment_arrays(np.asfortranarray(images), masks, seed, flair_only_probability=0.0, gamma_probability=0.0)
    np.testing.assert_array_equal(fortran_images, reference_images)
    # uint8 slices that are only flipped are exact mirrors.
    flipped, flipped_masks = augment_arrays(images, masks, seed, flair_only_probability=0.0, gamma_probability=0.0,
                                            rotate_zoom_probability=0.0)
    for image, mask, moved, moved_mask in zip(images, masks, flipped, flipped_masks, strict=True):
        mirrored = np.array_equal(moved, image[:, ::-1])
        assert mirrored or np.array_equal(moved, image)
        np.testing.assert_array_equal(moved_mask, mask[:, ::-1] if mirrored else mask)


def test_augmentation_rejects_masks_that_do_not_match():
    from helpers.preprocessing import augment_arrays

    images, masks = position_batch(batch=2, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"do not match images of shape \(2, 64, 64, 3\)"):
        augment_arrays(images.numpy(), masks.numpy()[..., 0], [1, 2])
    with pytest.raises(ValueError, match="int64 cannot be warped"):
        augment_arrays(images.numpy(), masks.numpy().astype(np.int64), [1, 2])


# --- tf.data pipeline ------------------------------------------------------------------------


def test_evaluation_dataset_is_ordered_and_unaugmented(synthetic_arrays):
    images, masks = synthetic_arrays
    images, masks = images[:10], masks[:10]
    dataset = make_dataset(images, masks, batch_size=4, training=False)
    batches = list(dataset.as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    got_images = np.concatenate([b[0] for b in batches])
    got_masks = np.concatenate([b[1] for b in batches])
    assert got_images.dtype == np.float32 and got_masks.dtype == np.float32
    np.testing.assert_allclose(got_images, images.astype(np.float32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(got_masks, masks[..., None].astype(np.float32))


def test_training_dataset_shapes_ranges_and_oversampling(synthetic_arrays):
    images, masks = synthetic_arrays
    images, masks = images[:12], masks[:12]
    n_tumour = int((masks.reshape(12, -1).max(axis=1) > 0).sum())
    assert 0 < n_tumour < 12
    for oversample, expected_count in ((0.0, 12), (1.0, 12 + n_tumour)):
        dataset = make_dataset(images, masks, batch_size=5, training=True, seed=0,
                               oversample_tumour=oversample)
        count = 0
        for batch_images, batch_masks in dataset:
            assert batch_images.dtype == tf.float32 and batch_masks.dtype == tf.float32
            assert batch_images.shape[1:] == (32, 32, 3) and batch_masks.shape[1:] == (32, 32, 1)
            assert batch_images.shape[0] == batch_masks.shape[0] <= 5
            assert 0.0 <= float(tf.reduce_min(batch_images)) and float(tf.reduce_max(batch_images)) <= 1.0
            assert set(np.unique(batch_masks.numpy()).tolist()) <= {0.0, 1.0}
            count += batch_images.shape[0]
        assert count == expected_count


def test_oversampled_tumour_slices_are_drawn_afresh_each_epoch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((40, 16, 16), np.uint8)
    masks[:20, 4:8, 4:8] = 1  # slices 0-19 hold tumour
    which = {image.tobytes(): index for index, image in enumerate(images)}

    def epochs(dataset, count):
        # Each pass over the dataset is an epoch, as in fit: which slice came how often.
        counts = []
        for _ in range(count):
            seen = np.zeros(40, int)
            for batch, _ in dataset.as_numpy_iterator():
                for image in np.rint(batch * 255).astype(np.uint8):
                    seen[which[image.tobytes()]] += 1
            counts.append(seen)
        return counts

    def make():
        return make_dataset(images, masks, batch_size=8, training=True, seed=0, oversample_tumour=1.0, augment=False)

    first, second, third = epochs(make(), 3)
    for seen in (first, second, third):
        assert seen.sum() == 60 and seen.min() == 1 and (seen[20:] == 1).all()  # every slice, 20 extra tumour
    assert not (np.array_equal(first, second) and np.array_equal(second, third))  # a new draw each epoch
    np.testing.assert_array_equal(epochs(make(), 1)[0], first)  # and the same draws from the same seed


def test_memory_mapped_slices_stream_the_same_batches(synthetic_arrays, tmp_path):
    images, masks = synthetic_arrays
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    mapped_images = np.load(tmp_path / "images.npy", mmap_mode="r")
    mapped_masks = np.load(tmp_path / "masks.npy", mmap_mode="r")
    assert isinstance(mapped_images, np.memmap)
    for expected, got in zip(make_dataset(images, masks, batch_size=4).as_numpy_iterator(),
                             make_dataset(mapped_images, mapped_masks, batch_size=4).as_numpy_iterator(),
                             strict=True):
        np.testing.assert_array_equal(expected[0], got[0])
        np.testing.assert_array_equal(expected[1], got[1])
    streamed = make_dataset(mapped_images, mapped_masks, batch_size=4, training=True, seed=0,
                            oversample_tumour=1.0)
    in_memory = make_dataset(images, masks, batch_size=4, training=True, seed=0, oversample_tumour=1.0)
    assert sum(len(b[0]) for b in streamed) == sum(len(b[0]) for b in in_memory) > len(images)


def test_training_dataset_without_augmentation_holds_the_same_slices(synthetic_arrays):
    images, masks = synthetic_arrays
    images, masks = images[:8], masks[:8]
    dataset = make_dataset(images, masks, batch_size=3, training=True, augment=False, seed=0)
    got = np.concatenate([b[0] for b in dataset.as_numpy_iterator()])
    expected = images.astype(np.float32) / 255.0
    # Shuffled, but the same slices, each once.
    order = sorted(range(8), key=lambda i: got[i].tobytes())
    reference = sorted(range(8), key=lambda i: expected[i].tobytes())
    np.testing.assert_array_equal(got[order], expected[reference])


def test_parallel_augmentation_gives_the_same_batches_as_one_at_a_time(synthetic_arrays):
    import cv2

    images, masks = synthetic_arrays
    threads = cv2.getNumThreads()
    try:
        one = list(make_dataset(images, masks, batch_size=4, training=True, seed=3,
                                parallel_augmentation=False).as_numpy_iterator())
        parallel = list(make_dataset(images, masks, batch_size=4, training=True, seed=3).as_numpy_iterator())
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(threads)
    assert len(one) == len(parallel) > 1
    for expected, got in zip(one, parallel, strict=True):
        np.testing.assert_array_equal(expected[0], got[0])
        np.testing.assert_array_equal(expected[1], got[1])
    # And augmented: the same shuffle without augmentation gives other pixels.
    plain = make_dataset(images, masks, batch_size=4, training=True, seed=3, augment=False)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(plain.as_numpy_iterator(), parallel, strict=True))


def test_arrays_by_split_maps_each_side_from_disk_when_asked(synthetic_manifest, tmp_path):
    split = split_patients(synthetic_manifest, val_fraction=0.2, test_fraction=0.2, seed=0)
    held = arrays_by_split(synthetic_manifest, split, 32, cache_dir=tmp_path, show_progress=False, in_memory=True)
    mapped = arrays_by_split(synthetic_manifest, split, 32, cache_dir=tmp_path, show_progress=False, in_memory=False)
    for side in ("train", "val", "test"):
        images, masks, rows = mapped[side]
        # Each side is its own mapped cache, never a copy of the whole set in memory.
        assert isinstance(images, np.memmap) and isinstance(masks, np.memmap)
        np.testing.assert_array_equal(images, held[side][0])
        np.testing.assert_array_equal(masks, held[side][1])
        pd.testing.assert_frame_equal(rows, held[side][2])
        assert set(rows["patient"]) == set(split.loc[split["split"] == side, "patient"])
    # Streamed, the training pipeline delivers the same number of slices.
    train_images, train_masks, _ = mapped["train"]
    delivered = sum(int(batch[0].shape[0]) for batch in make_dataset(train_images, train_masks, 4, training=True))
    assert delivered == len(train_images)


def test_split_stacked_without_scaling_keeps_the_bytes():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    masks = (rng.random((3, 8, 8)) < 0.4).astype(np.uint8)
    stack = np.concatenate([images, masks[..., None]], axis=-1)
    got_images, got_masks = split_stacked(stack, scale=False)
    assert got_images.dtype == got_masks.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_masks, masks[..., None])


@pytest.mark.parametrize("scale", [True, False])
def test_split_stacked_turns_soft_masks_into_fractions(scale):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    stack = np.concatenate([images, masks[..., None]], axis=-1)
    got_images, got_masks = split_stacked(stack, scale=scale, mask_levels=255)
    assert got_masks.dtype == np.float32 and got_masks.ctypes.data % 64 == 0
    np.testing.assert_array_equal(got_masks, (masks.astype(np.float32) / np.float32(255.0))[..., None])
    assert got_images.dtype == (np.float32 if scale else np.uint8)


@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
def test_pipeline_delivers_soft_masks_as_fractions(synthetic_arrays, image_dtype):
    images, hard = synthetic_arrays
    images, hard = images[:12], hard[:12]
    soft = hard * np.uint8(128)  # every tumour pixel half covered
    evaluation = make_dataset(images, soft, batch_size=4, image_dtype=image_dtype, mask_levels=255)
    assert evaluation.element_spec[1].dtype == tf.float32
    got = np.concatenate([masks for _, masks in evaluation.as_numpy_iterator()])
    np.testing.assert_allclose(got[..., 0], hard * (128 / 255), rtol=1e-6)
    # Training, flips only: each mask delivered is one of the soft masks, as it is or mirrored, and
    # oversampling still finds the tumour slices.
    expected = hard * np.float32(128 / 255)
    flipped = make_dataset(images, soft, batch_size=4, training=True, image_dtype=image_dtype, mask_levels=255,
                           oversample_tumour=1.0, rotate_zoom_probability=0.0)
    delivered = np.concatenate([masks[..., 0] for _, masks in flipped.as_numpy_iterator()])
    assert len(delivered) == 12 + int(hard.reshape(12, -1).max(axis=1).sum())
    for mask in delivered:
        assert any(np.allclose(mask, candidate) or np.allclose(mask, candidate[:, ::-1]) for candidate in expected)
    # Rotated and zoomed: the warp blends soft values (no threshold) and keeps them in [0, 128/255].
    warped = make_dataset(images, soft, batch_size=4, training=True, image_dtype=image_dtype, mask_levels=255,
                          rotate_zoom_probability=1.0)
    values = np.concatenate([masks.ravel() for _, masks in warped.as_numpy_iterator()])
    assert values.min() >= 0.0 and values.max() <= 128 / 255 + 1e-6
    assert np.any((values > 0.01) & (values < 0.49))  # blended edges, not 0 or the full 128/255
    assert values.sum() == pytest.approx(expected.sum(), rel=0.3)  # zoom 0.9-1.1 moves area by at most ~21%


def test_pipeline_refuses_masks_that_do_not_match_their_levels(synthetic_arrays):
    images, hard = synthetic_arrays
    with pytest.raises(ValueError, match="only 0 and 1.*mask_levels=1"):
        make_dataset(images, hard, mask_levels=255)
    with pytest.raises(ValueError, match="up to 255.*SOFT_MASK_LEVELS"):
        make_dataset(images, hard * np.uint8(255))
    with pytest.raises(ValueError, match="mask_levels=0"):
        make_dataset(images, hard, mask_levels=0)


@pytest.mark.parametrize("training", [False, True])
def test_uint8_pipeline_delivers_the_float_pipeline_bytes(synthetic_arrays, training):
    """image_dtype='uint8' gives the same slices, the same augmentation, unscaled."""
    images, masks = synthetic_arrays
    images, masks = images[:12], masks[:12]
    as_floats = make_dataset(images, masks, batch_size=4, training=training, seed=2)
    as_bytes = make_dataset(images, masks, batch_size=4, training=training, seed=2, image_dtype="uint8")
    assert as_bytes.element_spec[0].dtype == as_bytes.element_spec[1].dtype == tf.uint8
    batches = 0
    for (float_images, float_masks), (byte_images, byte_masks) in zip(as_floats.as_numpy_iterator(),
                                                                      as_bytes.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(byte_images.astype(np.float32) / np.float32(255.0), float_images)
        np.testing.assert_array_equal(byte_masks, float_masks.astype(np.uint8))
        batches += 1
    assert batches == 3


def test_pipeline_refuses_an_unknown_image_dtype(synthetic_arrays):
    images, masks = synthetic_arrays
    with pytest.raises(ValueError, match="image_dtype='float16'.*'float32'.*'uint8'"):
        make_dataset(images, masks, image_dtype="float16")


@pytest.mark.parametrize("scale", [True, False])
def test_split_stacked_outputs_are_64_byte_aligned(scale):
    """Aligned outputs let TensorFlow take them without a copy."""
    stack = np.random.default_rng(8).integers(0, 2, (3, 10, 7, 4), dtype=np.uint8)
    for array in split_stacked(stack, scale=scale):
        assert array.ctypes.data % 64 == 0 and array.flags["C_CONTIGUOUS"]
