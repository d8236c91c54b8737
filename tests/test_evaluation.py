"""Tests of helpers.evaluation: post-processing, its choice on validation data, scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.evaluation import (
    binarize,
    check_model_split,
    choose_postprocessing,
    evaluate,
    example_slices,
    single_slice_choice,
    write_model_settings,
)
from helpers.inference import recommended_settings


def two_blobs() -> np.ndarray:
    """A 16x16 probability map: a 3-pixel diagonal blob and a 20-pixel (4x5) blob, both at 0.9."""
    probabilities = np.zeros((16, 16), dtype=np.float32)
    probabilities[0, 0] = probabilities[1, 1] = probabilities[2, 2] = 0.9  # one component if 8-connected
    probabilities[8:12, 6:11] = 0.9
    return probabilities


def test_binarize_thresholds_strictly():
    probabilities = np.array([[0.2, 0.5], [0.51, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(binarize(probabilities, 0.5), [[0, 0], [1, 1]])
    assert binarize(probabilities, 0.5).dtype == np.uint8


@pytest.mark.parametrize(
    ("minimum", "small_kept", "large_kept"),
    [(0, True, True), (3, True, True), (4, False, True), (20, False, True), (21, False, False)],
)
def test_binarize_removes_small_components(minimum, small_kept, large_kept):
    probabilities = two_blobs()
    mask = binarize(probabilities, 0.5, min_component_pixels=minimum)
    assert mask[:3, :3].sum() == (3 if small_kept else 0)
    assert mask[8:12, 6:11].sum() == (20 if large_kept else 0)
    assert mask.sum() == 3 * small_kept + 20 * large_kept
    # The same on a stack of slices, each slice on its own.
    stack = np.stack([probabilities, np.zeros_like(probabilities)])
    np.testing.assert_array_equal(binarize(stack, 0.5, minimum), np.stack([mask, np.zeros_like(mask)]))


def test_choose_postprocessing_finds_the_best_pair():
    probabilities = np.zeros((2, 32, 32), dtype=np.float32)
    truth = np.zeros((2, 32, 32), dtype=np.uint8)
    for index in range(2):
        truth[index, 4:9, 4:9] = 1
        probabilities[index, 4:9, 4:9] = 0.65  # the tumour: 25 pixels, found above 0.6 only
        probabilities[index, 20:23, 20:23] = 0.55  # a false region, dropped by thresholds >= 0.6
        probabilities[index, 28, 2:4] = 0.95  # a 2-pixel speck, dropped by a minimum size of 5
    # Expected: threshold 0.6 keeps the tumour and the speck (Dice 50/52); a minimum of 5
    # removes the speck (Dice 1); 30 would remove the tumour; 0.7 loses the tumour.
    best, table = choose_postprocessing(
        probabilities, truth, np.array(["A", "B"]), min_components=(0, 5, 30)
    )
    assert best == {"threshold": 0.6, "min_component_pixels": 5, "min_volume_pixels": 0}
    assert len(table) == 5 * 3
    row = table.set_index(["threshold", "min_component_pixels"])["val_dice_per_patient"]
    assert row[(0.6, 5)] == pytest.approx(1.0)
    assert row[(0.6, 0)] == pytest.approx(2 * 25 / (2 * 25 + 2))
    assert row[(0.7, 5)] == pytest.approx(0.0)


def test_evaluate_scores_and_rejects_empty_set():
    truth = np.zeros((3, 8, 8), dtype=np.uint8)
    truth[0, :2, :2] = 1
    prediction = truth.copy()
    rows = pd.DataFrame({"patient": ["A", "A", "B"], "slice": [1, 2, 1]})
    summary, slice_table, patient_table = evaluate(truth, prediction, rows)
    assert summary["dice_per_patient_mean"] == 1.0
    assert len(slice_table) == 3 and len(patient_table) == 2
    with pytest.raises(ValueError, match="empty"):
        evaluate(truth[:0], prediction[:0], rows.iloc[:0])


def test_small_components_are_counted_by_connectivity():
    from helpers.evaluation import remove_small_components

    mask = binarize(two_blobs(), 0.5) > 0  # 3 diagonal pixels and 20 pixels
    assert remove_small_components(mask, 3, connectivity=2).sum() == 23  # "fewer than 3" keeps 3
    assert remove_small_components(mask, 4, connectivity=2).sum() == 20
    assert remove_small_components(mask, 2, connectivity=1).sum() == 20  # 4-connected: three single pixels
    volume = np.stack([mask, mask])  # 6 and 40 pixels, 26-connected across the two slices
    assert remove_small_components(volume, 7, connectivity=3).sum() == 40
    assert remove_small_components(volume, 41, connectivity=3).sum() == 0


class ColumnWeightedModel:
    """Stands for a model: probability = channel 0 of the input x a weight per column.

    Weights of 1 on the left half and ``right`` on the right half make a
    prediction that a left-right flip changes, unless ``right`` is 1.
    """

    def __init__(self, size: int, right: float):
        self.input_shape = (None, size, size, 3)
        self.weights = np.where(np.arange(size) < size // 2, 1.0, right).astype(np.float32)

    def predict_on_batch(self, batch):
        return (np.asarray(batch)[..., :1] * self.weights[None, None, :, None]).astype(np.float32)


def test_choose_on_validation_keeps_flips_only_when_strictly_better_and_can_pick_a_3d_filter():
    from helpers.evaluation import choose_on_validation

    truth = np.zeros((4, 8, 8), np.uint8)
    truth[:, 2:6, 1:7] = 1  # a tumour on both sides of the middle, in all 4 slices of 2 patients
    patients = np.array(["a", "a", "b", "b"])
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[..., 0] = truth * 230  # 0.9 inside the tumour
    images[3, 7, 0:4, 0] = 250  # a 4-pixel false alarm, apart from the tumour, on one slice of patient b
    candidates = dict(thresholds=(0.5,), min_components=(0,), min_volumes=(0, 5))

    # The right half weighted 0.4 (0.36 < 0.5): without flips the right half is missed; averaged
    # with the flipped prediction, every tumour pixel is 0.9 x 0.7 = 0.63.
    choice, table = choose_on_validation(ColumnWeightedModel(8, 0.4), images, truth, patients, **candidates)
    assert choice["flip_tta"] is True
    assert choice["min_volume_pixels"] == 5  # the 4-pixel alarm has no neighbour in the next slice
    assert choice["val_dice_per_patient"] == pytest.approx(1.0)
    assert len(table) == 4 and sorted(table["flip_tta"].tolist()) == [False, False, True, True]

    # A model that a flip does not change: a tie, so the cheaper choice (no flips) stays.
    choice, _ = choose_on_validation(ColumnWeightedModel(8, 1.0), images, truth, patients, **candidates)
    assert choice["flip_tta"] is False and choice["val_dice_per_patient"] == pytest.approx(1.0)


def test_remove_small_volumes_keeps_regions_that_span_slices():
    from helpers.evaluation import postprocess, remove_small_volumes

    masks = np.zeros((4, 8, 8), np.uint8)
    masks[0:3, 2:4, 2:4] = 1  # 3 slices x 4 pixels = 12 pixels, one 3D region
    masks[3, 6, 6] = 1  # an isolated single pixel on the last slice of patient b
    patients = np.array(["a", "a", "a", "b"])
    kept = remove_small_volumes(masks, patients, min_volume_pixels=5)
    expected = masks.copy()
    expected[3, 6, 6] = 0
    np.testing.assert_array_equal(kept, expected)
    # A region split across two patients is not joined: each half has 4 pixels.
    split = remove_small_volumes(masks[:2], np.array(["a", "b"]), min_volume_pixels=5)
    np.testing.assert_array_equal(split, np.zeros_like(masks[:2]))
    np.testing.assert_array_equal(remove_small_volumes(masks, patients, 0), masks)
    probabilities = masks.astype(np.float32) * 0.9
    np.testing.assert_array_equal(postprocess(probabilities, patients, 0.5, 0, 5), expected)


def test_the_3d_filter_cuts_a_stack_only_where_several_slices_are_missing():
    from helpers.evaluation import postprocess, remove_small_volumes, stacks

    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:, 2:4, 2:4] = 1  # 4 pixels on each of four rows of one patient: 16 in all
    patients = np.array(["a"] * 4)
    # Slices 1-4, or 1, 2, 4, 5 (one slice dropped): one region of 16 pixels, kept at 10.
    for numbers in ([1, 2, 3, 4], [1, 2, 4, 5], [2, 4, 6, 8]):
        np.testing.assert_array_equal(remove_small_volumes(masks, patients, 10, np.array(numbers)), masks)
    # Slices 1, 2, 5, 6 (3 and 4 missing): two regions of 8 pixels, neither kept at 10, both at 8.
    gapped = np.array([1, 2, 5, 6])
    np.testing.assert_array_equal(remove_small_volumes(masks, patients, 10, gapped), np.zeros_like(masks))
    np.testing.assert_array_equal(remove_small_volumes(masks, patients, 8, gapped), masks)
    np.testing.assert_array_equal(postprocess(masks * 0.9, patients, 0.5, 0, 10, gapped), np.zeros_like(masks))
    # Without slice numbers, the rows are taken as neighbours, as before.
    np.testing.assert_array_equal(remove_small_volumes(masks, patients, 10), masks)
    assert [rows.tolist() for rows in stacks(np.array(["a"] * 4 + ["b"] * 2), np.array([1, 2, 5, 6, 1, 2]))] == \
        [[0, 1], [2, 3], [4, 5]]
    # Two scans of one patient, numbered 1-3 and 1-3 again: the last slice of one is not the first's neighbour.
    assert [rows.tolist() for rows in stacks(np.array(["a"] * 6), np.array([1, 2, 3, 1, 2, 3]))] == [[0, 1, 2], [3, 4, 5]]


def test_missing_model_file_names_the_notebook_that_writes_it(tmp_path):
    from helpers.evaluation import load_model

    with pytest.raises(FileNotFoundError, match="04_training"):
        load_model(tmp_path / "model.keras")


def test_images_of_another_size_are_resized_and_wrong_shapes_are_refused(tiny_model_path):
    import keras

    from helpers.evaluation import predict_probabilities

    model = keras.models.load_model(tiny_model_path)
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 80, 3), dtype=np.uint8)
    probabilities = predict_probabilities(model, images, batch_size=2, flip_tta=True)
    assert probabilities.shape == (3, 48, 80)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    # Flip test-time augmentation is the mean of the prediction and the mirrored prediction of the mirror.
    plain = predict_probabilities(model, images, batch_size=2)
    mirrored = predict_probabilities(model, np.ascontiguousarray(images[:, :, ::-1]), batch_size=2)
    np.testing.assert_allclose(probabilities, (plain + mirrored[:, :, ::-1]) / 2, atol=1e-5)
    assert not np.allclose(plain, mirrored[:, :, ::-1], atol=1e-3)  # the flip changes something
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        predict_probabilities(model, images[..., 0])
    # Not square: predicted as the square it is padded to with black, centred, then cropped back,
    # so the anatomy is not stretched.
    square = np.zeros((3, 80, 80, 3), np.uint8)
    square[:, 16:64] = images
    np.testing.assert_allclose(plain, predict_probabilities(model, square, batch_size=2)[:, 16:64], atol=1e-6)
    tall = np.ascontiguousarray(images.transpose(0, 2, 1, 3))
    np.testing.assert_allclose(predict_probabilities(model, tall, batch_size=2),
                               predict_probabilities(model, square.transpose(0, 2, 1, 3), batch_size=2)[:, :, 16:64],
                               atol=1e-6)


def test_single_slice_settings_skip_flips_and_volume_filters_and_reach_inference(tmp_path):
    candidates = pd.DataFrame({
        "flip_tta": [True, False, False, False],
        "threshold": [0.3, 0.4, 0.5, 0.3],
        "min_component_pixels": [0, 30, 100, 0],
        "min_volume_pixels": [0, 0, 0, 300],
        "val_dice_per_patient": [0.90, 0.80, 0.70, 0.85],
    })
    # The flip row and the volume-filter row score higher, but a lone slice can use neither.
    choice = single_slice_choice(candidates)
    assert choice == {"threshold": 0.4, "min_component_pixels": 30, "val_dice_per_patient": 0.80}
    with pytest.raises(ValueError, match="without flips"):
        single_slice_choice(candidates[candidates["flip_tta"]])

    model_path = tmp_path / "model.keras"
    written = write_model_settings(model_path.with_suffix(".json"), choice, ["P2", "P1", "P2"], input_size=128)
    assert written == tmp_path / "model.json"
    assert recommended_settings(model_path) == {"threshold": 0.4, "min_component_pixels": 30}
    assert json.loads(written.read_text())["val_patients"] == ["P1", "P2"]
    # Chosen on 512x512 slices, 30 pixels are 7.5 of a 256x256 slice, the size segment counts in.
    write_model_settings(model_path.with_suffix(".json"), choice, ["P1"], scored_size=512)
    assert recommended_settings(model_path)["min_component_pixels"] == 8


def test_example_slices_show_best_median_and_worst_patients_at_their_largest_area():
    rows = pd.DataFrame({"patient": ["A"] * 3 + ["B"] * 3 + ["C"] * 3, "slice": [1, 2, 3] * 3})
    truth = np.zeros((9, 4, 4), np.uint8)
    prediction = np.zeros((9, 4, 4), np.uint8)
    truth[1, :2] = 1  # A: the tumour is on its second slice
    prediction[5, :3] = 1  # B: a false alarm on its third slice
    truth[6, 0, 0] = prediction[6, :, :1] = 1  # C: its first slice
    table = pd.DataFrame({"patient": ["A", "B", "C"], "dice": [0.9, 0.1, 0.5]})
    positions, titles = example_slices(table, rows, truth, prediction, count=3)
    assert positions == [1, 6, 5]  # best A, median C, worst B
    assert titles[0] == "A s2 (patient Dice 0.90)" and titles[2] == "B s3 (patient Dice 0.10)"
    assert example_slices(table, rows, truth, prediction, count=1)[0] == [1]


def test_a_model_chosen_on_other_validation_patients_is_flagged(tmp_path):
    model_path = tmp_path / "model.keras"
    assert check_model_split(model_path, ["P1"]) is None  # nothing recorded beside it
    choice = {"threshold": 0.4, "min_component_pixels": 30, "val_dice_per_patient": 0.8}
    write_model_settings(model_path.with_suffix(".json"), choice, ["P1", "P2"])
    assert check_model_split(model_path, ["P2", "P1", "P1"]) is True
    with pytest.warns(UserWarning, match=r"model\.json records validation patients.*\(1 of 2 shared\)"):
        assert check_model_split(model_path, ["P1", "P3"]) is False
