"""Tests of helpers.losses (Keras) and helpers.metrics (NumPy) against hand-worked values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from helpers import metrics
from helpers.losses import DiceBCELoss, DiceScore, logits_from_probabilities, soft_dice, soft_tversky


def as_batch(*rows_2x2) -> np.ndarray:
    """Stack 2x2 masks into a float32 batch (B, 2, 2, 1)."""
    return np.array(rows_2x2, dtype=np.float32)[..., None]


ONE_PIXEL = [[1, 0], [0, 0]]
EMPTY = [[0, 0], [0, 0]]
FULL = [[1, 1], [1, 1]]

# --- soft_dice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("truth", "prediction", "smooth", "expected"),
    [
        # (2 * intersection + smooth) / (sum truth + sum prediction + smooth)
        (ONE_PIXEL, ONE_PIXEL, 1.0, (2 * 1 + 1) / (1 + 1 + 1)),  # perfect: 1
        (ONE_PIXEL, [[0.5, 0.5], [0, 0]], 1.0, (2 * 0.5 + 1) / (1 + 1 + 1)),  # 2/3
        (ONE_PIXEL, [[0.5, 0.5], [0, 0]], 0.0, (2 * 0.5) / (1 + 1)),  # 1/2
        (EMPTY, EMPTY, 1.0, 1.0),  # both empty: 1/1
        (EMPTY, FULL, 1.0, 1 / 5),  # prediction on empty truth: 1 / (4 + 1)
        (ONE_PIXEL, EMPTY, 1.0, 1 / 2),  # missed one pixel: 1 / (1 + 1)
        (FULL, [[1, 1], [0, 0]], 1.0, (2 * 2 + 1) / (4 + 2 + 1)),  # 5/7
    ],
)
def test_soft_dice_by_hand(truth, prediction, smooth, expected):
    value = np.asarray(soft_dice(as_batch(truth), as_batch(prediction), smooth=smooth))
    assert value.shape == (1,)
    assert value[0] == pytest.approx(expected, rel=1e-6)


def test_soft_dice_is_per_image():
    values = np.asarray(soft_dice(as_batch(ONE_PIXEL, EMPTY), as_batch(ONE_PIXEL, FULL)))
    np.testing.assert_allclose(values, [1.0, 0.2], rtol=1e-6)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_soft_tversky_at_one_half_is_soft_dice(smooth):
    rng = np.random.default_rng(0)
    truth = (rng.random((4, 8, 8, 1)) > 0.7).astype(np.float32)
    prediction = rng.random((4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(soft_tversky(truth, prediction, 0.5, smooth)),
                               np.asarray(soft_dice(truth, prediction, smooth)), rtol=1e-6)


def test_soft_tversky_by_hand_weighs_misses_and_false_alarms():
    truth = as_batch(FULL)
    prediction = as_batch([[1, 1], [0, 0]])  # TP 2, FP 0, FN 2
    # (2 * 2 + 1) / (2 * (2 + 0.3 * 0 + 0.7 * 2) + 1) = 5 / 7.8
    assert float(soft_tversky(truth, prediction, 0.7)[0]) == pytest.approx(5 / 7.8, rel=1e-6)
    missed = float(soft_tversky(as_batch(FULL), as_batch([[1, 1], [1, 0]]), 0.7)[0])  # one miss
    false_alarm = float(soft_tversky(as_batch([[1, 1], [1, 0]]), as_batch(FULL), 0.7)[0])  # one false alarm
    assert missed < false_alarm  # above 0.5, a miss costs more


# --- DiceBCELoss ----------------------------------------------------------------------------


def test_dice_bce_loss_by_hand():
    truth = as_batch(ONE_PIXEL)
    prediction = as_batch([[0.8, 0.2], [0.1, 0.1]])
    # Dice: intersection 0.8, sums 1 + 1.2 -> (1.6 + 1) / (2.2 + 1) = 0.8125.
    dice_term = 1 - 2.6 / 3.2
    # Cross-entropy: mean of -log(0.8), -log(1 - 0.2), -log(1 - 0.1), -log(1 - 0.1).
    bce_term = -(2 * math.log(0.8) + 2 * math.log(0.9)) / 4
    loss = float(DiceBCELoss()(truth, prediction))
    assert loss == pytest.approx(dice_term + bce_term, rel=1e-5)
    weighted = float(DiceBCELoss(dice_weight=2.0, bce_weight=0.5)(truth, prediction))
    assert weighted == pytest.approx(2 * dice_term + 0.5 * bce_term, rel=1e-5)


def test_dice_bce_loss_averages_over_batch():
    truth = as_batch(ONE_PIXEL, EMPTY)
    prediction = as_batch([[0.8, 0.2], [0.1, 0.1]], [[0.5, 0.5], [0.5, 0.5]])
    first = (1 - 2.6 / 3.2) - (2 * math.log(0.8) + 2 * math.log(0.9)) / 4
    # Second image: Dice (0 + 1) / (0 + 2 + 1) = 1/3; cross-entropy -log(0.5) everywhere.
    second = (1 - 1 / 3) - math.log(0.5)
    assert float(DiceBCELoss()(truth, prediction)) == pytest.approx((first + second) / 2, rel=1e-5)


def test_dice_bce_loss_config_round_trip():
    loss = DiceBCELoss(dice_weight=0.3, bce_weight=0.7, smooth=2.0, miss_weight=0.7)
    again = DiceBCELoss.from_config(loss.get_config())
    assert (again.dice_weight, again.bce_weight, again.smooth, again.miss_weight) == (0.3, 0.7, 2.0, 0.7)
    old_config = {k: v for k, v in loss.get_config().items() if k != "miss_weight"}  # saved before it existed
    assert DiceBCELoss.from_config(old_config).miss_weight == 0.5


def test_dice_bce_loss_with_miss_weight_uses_tversky():
    truth = as_batch(FULL)
    prediction = as_batch([[0.9, 0.9], [0.2, 0.2]])
    cross_entropy = -(2 * math.log(0.9) + 2 * math.log(0.2)) / 4
    expected = 1 - float(soft_tversky(truth, prediction, 0.7)[0]) + cross_entropy
    assert float(DiceBCELoss(miss_weight=0.7)(truth, prediction)) == pytest.approx(expected, rel=1e-5)
    assert float(DiceBCELoss(miss_weight=0.7)(truth, prediction)) > float(DiceBCELoss()(truth, prediction))
    with pytest.raises(ValueError, match="miss_weight must lie in"):
        DiceBCELoss(miss_weight=1.5)
    with pytest.raises(ValueError, match="one-channel"):
        DiceBCELoss(miss_weight=0.7)(np.zeros((1, 2, 2, 3), np.float32), np.full((1, 2, 2, 3), 1 / 3, np.float32))


def test_logits_from_probabilities_invert_sigmoid_and_softmax():
    z = np.linspace(-40, 8, 25, dtype=np.float32)[None, :, None, None]
    recovered = keras.ops.convert_to_numpy(logits_from_probabilities(keras.ops.sigmoid(z)))
    np.testing.assert_allclose(recovered, z, atol=2e-3, rtol=2e-4)
    # A softmax ignores a constant per pixel: the log-probabilities give the probabilities back.
    logits = np.array([[[[-40.0, 3.0, 0.5]]]], np.float32)
    probabilities = keras.ops.softmax(logits)
    again = keras.ops.softmax(logits_from_probabilities(probabilities, multiclass=True))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again), keras.ops.convert_to_numpy(probabilities),
                               rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("classes", [1, 3])
def test_cross_entropy_keeps_the_gradient_of_a_saturated_output(classes):
    """An output saturated on the wrong answer must still be pulled back, through ``fit``'s own step.

    The model predicts background with a logit margin of 30 on every pixel; a
    quarter of the pixels are tumour. From the logits, cross-entropy's
    gradient with respect to the output bias is (p - y) averaged over the
    pixels: -1/4 (binary) or (+1/4, -1/4, 0) (softmax), so one step of SGD at
    rate 1 moves the bias by minus that. Clipping the probabilities, as Keras
    does outside TensorFlow, would leave it where it is, and the model could
    never leave an all-background prediction.
    """
    bias = np.zeros(classes, np.float32)
    bias[0] = -30.0 if classes == 1 else 30.0  # background certain
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Conv2D(classes, 1, activation="sigmoid" if classes == 1 else "softmax",
                                  kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(bias))(inputs)
    model = keras.Model(inputs, outputs)
    model.layers[-1].kernel.trainable = False
    model.compile(keras.optimizers.SGD(learning_rate=1.0), loss=DiceBCELoss(dice_weight=0.0, bce_weight=1.0))
    tumour = np.zeros((1, 4, 4), np.float32)
    tumour[0, :2, :2] = 1
    y = tumour[..., None] if classes == 1 else np.stack([1 - tumour, tumour, np.zeros_like(tumour)], -1)
    model.train_on_batch(np.ones((1, 4, 4, 1), np.float32), y)
    moved = keras.ops.convert_to_numpy(model.layers[-1].bias) - bias
    expected = [0.25] if classes == 1 else [-0.25, 0.25, 0.0]
    np.testing.assert_allclose(moved, expected, atol=1e-4)


# --- DiceScore ------------------------------------------------------------------------------


def test_dice_score_thresholds_and_averages_images():
    metric = DiceScore()
    # Image 1: thresholded prediction [[1, 1], [0, 0]] against one pixel: (2 + 1) / (1 + 2 + 1).
    # Image 2: both empty: 1.
    metric.update_state(as_batch(ONE_PIXEL, EMPTY), as_batch([[0.8, 0.6], [0.1, 0.1]], EMPTY))
    assert float(metric.result()) == pytest.approx((0.75 + 1.0) / 2, rel=1e-6)
    # A third image, predicted everywhere on empty truth: 1 / (4 + 1); the mean runs over all three.
    metric.update_state(as_batch(EMPTY), as_batch([[0.9, 0.9], [0.9, 0.9]]))
    assert float(metric.result()) == pytest.approx((0.75 + 1.0 + 0.2) / 3, rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_dice_score_threshold_is_strict():
    metric = DiceScore(threshold=0.5)
    metric.update_state(as_batch(ONE_PIXEL), as_batch([[0.5, 0], [0, 0]]))
    assert float(metric.result()) == pytest.approx(1 / 2)  # 0.5 is not above 0.5: a miss


# --- helpers.metrics against scikit-learn ---------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=(3, 16, 16)) < 0.3
    prediction = rng.uniform(size=(3, 16, 16)) < 0.4
    flat_truth, flat_prediction = truth.ravel(), prediction.ravel()
    scores = metrics.scores_from_counts(*metrics.confusion_counts(truth, prediction))
    assert scores["dice"] == pytest.approx(f1_score(flat_truth, flat_prediction))
    assert scores["iou"] == pytest.approx(jaccard_score(flat_truth, flat_prediction))
    assert scores["precision"] == pytest.approx(precision_score(flat_truth, flat_prediction))
    assert scores["recall"] == pytest.approx(recall_score(flat_truth, flat_prediction))
    assert scores["accuracy"] == pytest.approx(accuracy_score(flat_truth, flat_prediction))
    assert scores["specificity"] == pytest.approx(recall_score(flat_truth, flat_prediction, pos_label=False))
    assert metrics.dice_score(truth, prediction) == pytest.approx(f1_score(flat_truth, flat_prediction))


def test_confusion_counts_by_hand_and_shape_check():
    truth = np.array([[1, 1], [0, 0]])
    prediction = np.array([[1, 0], [1, 0]])
    assert metrics.confusion_counts(truth, prediction) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"Shapes differ: truth \(2, 2\), prediction \(2, 3\)"):
        metrics.confusion_counts(truth, np.zeros((2, 3)))


def test_empty_mask_policy():
    empty = np.zeros((4, 4), dtype=np.uint8)
    two = empty.copy()
    two[0, :2] = 1
    shifted = empty.copy()
    shifted[0, 1:3] = 1

    both_empty = metrics.scores_from_counts(*metrics.confusion_counts(empty, empty))
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0
    assert math.isnan(both_empty["precision"]) and math.isnan(both_empty["recall"])
    assert both_empty["accuracy"] == 1.0 and both_empty["specificity"] == 1.0

    truth_empty = metrics.scores_from_counts(*metrics.confusion_counts(empty, two))
    assert truth_empty["dice"] == 0.0 and truth_empty["iou"] == 0.0
    assert truth_empty["precision"] == 0.0 and math.isnan(truth_empty["recall"])
    assert truth_empty["specificity"] == pytest.approx(14 / 16)

    prediction_empty = metrics.scores_from_counts(*metrics.confusion_counts(two, empty))
    assert prediction_empty["dice"] == 0.0 and prediction_empty["iou"] == 0.0
    assert math.isnan(prediction_empty["precision"]) and prediction_empty["recall"] == 0.0

    # Truth and prediction of 2 pixels each, overlapping on 1: Dice 2/4, IoU 1/3.
    overlap = metrics.scores_from_counts(*metrics.confusion_counts(two, shifted))
    assert overlap["dice"] == pytest.approx(0.5) and overlap["iou"] == pytest.approx(1 / 3)
    assert overlap["precision"] == pytest.approx(0.5) and overlap["recall"] == pytest.approx(0.5)


# --- Per-patient tables and the summary ---------------------------------------------------------


def hand_example():
    """Two patients: A with two slices, B with one; 2x2 masks."""
    truth = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    prediction = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[1, 0], [0, 0]]])
    return truth, prediction, ["A", "A", "B"], [3, 4, 7]


def test_per_slice_table_by_hand():
    table = metrics.per_slice_table(*hand_example())
    assert table["patient"].tolist() == ["A", "A", "B"]
    assert table["slice"].tolist() == [3, 4, 7]
    assert table[["tp", "fp", "fn", "tn"]].values.tolist() == [[1, 0, 1, 2], [0, 1, 0, 3], [1, 0, 0, 3]]
    assert table["tumour_pixels"].tolist() == [2, 0, 1]
    assert table["predicted_pixels"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(table["dice"], [2 / 3, 0.0, 1.0])


def test_per_patient_table_sums_slices():
    patient_table = metrics.per_patient_table(metrics.per_slice_table(*hand_example()))
    a, b = (patient_table.set_index("patient").loc[p] for p in ("A", "B"))
    # A: slice 3 gives tp 1, fn 1, tn 2; slice 4 gives fp 1, tn 3.
    assert (a["slices"], a["tp"], a["fp"], a["fn"], a["tn"]) == (2, 1, 1, 1, 5)
    assert (a["tumour_pixels"], a["predicted_pixels"]) == (2, 2)
    assert a["dice"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # 0.5, not the slice mean 1/3
    assert a["iou"] == pytest.approx(1 / 3)
    assert (b["slices"], b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 1, 0, 0, 3)
    assert b["dice"] == 1.0


def test_summarize_by_hand():
    slice_table = metrics.per_slice_table(*hand_example())
    summary = metrics.summarize(slice_table, metrics.per_patient_table(slice_table))
    expected = {
        "patients": 2, "slices": 3, "slices_with_tumour": 2, "slices_empty": 1,
        "dice_per_patient_mean": (0.5 + 1.0) / 2,
        "dice_per_patient_min": 0.5,
        # two patients: resampled means are 0.5, 0.75 or 1.0 with chances 1/4, 1/2, 1/4
        "dice_per_patient_ci95_low": 0.5, "dice_per_patient_ci95_high": 1.0,
        "dice_per_slice_mean_all": (2 / 3 + 0 + 1) / 3,
        "dice_per_slice_mean_tumour": (2 / 3 + 1) / 2,
        "pooled_dice": 2 * 2 / (2 * 2 + 1 + 1),  # tp 2, fp 1, fn 1
        "slice_false_positives": 1, "slice_false_negatives": 0,
        "detection_sensitivity": 1.0, "detection_specificity": 0.0,
        # patient A: tp 1, fp 1, fn 1; patient B: tp 1 alone
        "dice_per_patient_median": 0.75, "iou_per_patient_mean": (1 / 3 + 1) / 2,
        "precision_per_patient_mean": (1 / 2 + 1) / 2, "recall_per_patient_mean": (1 / 2 + 1) / 2,
        "precision_patients": 2, "recall_patients": 2,
        "pooled_iou": 2 / (2 + 1 + 1),
        # slice distances, both directions pooled: [0, 1, 0] on A's slice (95th percentile 0.9), 0 on B's
        "hd95_slices": 2, "hd95_pixels_mean": (0.9 + 0) / 2,
    }
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value), key
    for key, value in summary.items():
        assert isinstance(value, (int, float)), key
        if not key.endswith("_patients") and any(word in key for word in (
                "dice", "iou", "precision", "recall", "accuracy", "specificity", "sensitivity")):
            assert 0.0 <= value <= 1.0, key
    assert pd.Series(summary).index.is_unique


def test_summarize_counts_the_patients_behind_precision():
    truth, prediction, patients, slices = hand_example()
    prediction = prediction.copy()
    prediction[2] = 0  # nothing predicted for patient B: its precision is undefined, its recall 0
    slice_table = metrics.per_slice_table(truth, prediction, patients, slices)
    summary = metrics.summarize(slice_table, metrics.per_patient_table(slice_table))
    assert summary["precision_patients"] == 1 and summary["precision_per_patient_mean"] == pytest.approx(0.5)
    assert summary["recall_patients"] == 2 and summary["recall_per_patient_mean"] == pytest.approx((0.5 + 0) / 2)


def test_hausdorff95_matches_a_brute_force_distance():
    from scipy.spatial.distance import cdist

    from helpers.metrics import hausdorff95

    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = np.zeros((24, 24), bool)
        prediction = np.zeros((24, 24), bool)
        y, x = rng.integers(4, 14, size=2)
        truth[y:y + rng.integers(3, 8), x:x + rng.integers(3, 8)] = True
        y, x = rng.integers(4, 14, size=2)
        prediction[y:y + rng.integers(3, 8), x:x + rng.integers(3, 8)] = True

        def edge(mask):
            padded = np.pad(mask, 1)
            inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            return np.argwhere(mask & ~inner)

        distances = cdist(edge(truth), edge(prediction))
        expected = np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95)
        assert hausdorff95(truth, prediction) == pytest.approx(expected)
    empty = np.zeros((8, 8), bool)
    assert np.isnan(hausdorff95(empty, truth[:8, :8]))
    assert hausdorff95(truth, truth) == 0.0


def test_mean_confidence_interval_matches_the_normal_approximation():
    values = np.random.default_rng(3).normal(0.8, 0.1, size=400)
    low, high = metrics.mean_confidence_interval(values)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # about 0.0098
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert (low, high) == metrics.mean_confidence_interval(values)  # seeded
    narrower = metrics.mean_confidence_interval(values, level=0.5)
    assert low < narrower[0] < narrower[1] < high


def test_mean_confidence_interval_edge_cases():
    assert np.isnan(metrics.mean_confidence_interval([0.7])).all()
    assert np.isnan(metrics.mean_confidence_interval([0.7, np.nan])).all()
    assert metrics.mean_confidence_interval([0.7, 0.7, np.nan]) == (0.7, 0.7)


def test_summary_reports_the_tumour_burden_correlation():
    truth = np.zeros((3, 4, 4), np.uint8)
    prediction = np.zeros((3, 4, 4), np.uint8)
    truth[0, :1] = 1  # patient a: 4 true pixels, 4 predicted
    prediction[0, :1] = 1
    truth[1, :2] = 1  # patient b: 8 true pixels, 6 predicted
    prediction[1, :1] = 1
    prediction[1, 1, :2] = 1
    truth[2, :3] = 1  # patient c: 12 true pixels, 12 predicted
    prediction[2, 1:4] = 1
    slices = metrics.per_slice_table(truth, prediction, ["a", "b", "c"])
    summary = metrics.summarize(slices, metrics.per_patient_table(slices))
    expected = np.corrcoef([4, 8, 12], [4, 6, 12])[0, 1]
    assert summary["tumour_burden_pearson_r"] == pytest.approx(expected)
