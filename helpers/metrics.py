"""Segmentation metrics in NumPy: per slice, per patient, pooled.

Empty-mask policy (it changes the numbers a lot on this dataset, where most
slices hold no tumour):

* Per slice, Dice and IoU are 1 when ground truth and prediction are both
  empty, 0 when exactly one of them is empty, and the usual ratio otherwise.
  Precision is undefined (NaN) when nothing is predicted; recall is NaN when
  the ground truth is empty. Per-slice tables say how many slices are empty.
* Per patient, all of a patient's slices are stacked and counted together
  (as the dataset's paper reports), so empty slices add only their false
  positives. A patient with no tumour anywhere and none predicted scores 1.
* Pooled: all pixels of all slices counted together.
* The 95th-percentile Hausdorff distance is defined only where both masks
  are non-empty; its mean is over those slices (``hd95_slices`` counts them).
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
from scipy import ndimage, stats


def confusion_counts(truth: np.ndarray, prediction: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts of true positives, false positives, false negatives, true negatives.

    Args:
        truth: bool or 0/1 array of any shape.
        prediction: bool or 0/1 array of the same shape.

    Returns:
        (tp, fp, fn, tn) as Python ints.

    Raises:
        ValueError: if the shapes differ.
    """
    truth = np.asarray(truth).astype(bool)
    prediction = np.asarray(prediction).astype(bool)
    if truth.shape != prediction.shape:
        raise ValueError(f"Shapes differ: truth {truth.shape}, prediction {prediction.shape}.")
    tp = int(np.count_nonzero(truth & prediction))
    fp = int(np.count_nonzero(~truth & prediction))
    fn = int(np.count_nonzero(truth & ~prediction))
    tn = truth.size - tp - fp - fn
    return tp, fp, fn, tn


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Dice, IoU, accuracy, precision, recall and specificity from counts.

    Dice and IoU are 1 when there is no positive pixel in either mask; other
    ratios with a zero denominator are NaN.

    Returns:
        A dict with keys ``dice``, ``iou``, ``accuracy``, ``precision``,
        ``recall``, ``specificity``.
    """

    def ratio(numerator: float, denominator: float) -> float:
        return float(numerator / denominator) if denominator else float("nan")

    empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if empty else tp / (tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }


def hausdorff95(truth: np.ndarray, prediction: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance between two masks' boundaries, in pixels.

    Boundary pixels are the mask's pixels with a 4-neighbour outside it. The
    distances from every boundary pixel of each mask to the nearest boundary
    pixel of the other are pooled and their 95th percentile returned, as
    MedPy's ``hd95`` does; MONAI's takes the larger of the two directed
    95th percentiles, which is never smaller. It is per 2D slice: compare it
    with figures computed the same way, not with 3D HD95 in mm.

    Args:
        truth: 0/1 array (H, W).
        prediction: 0/1 array (H, W).

    Returns:
        The distance in pixels; NaN when either mask is empty (undefined).
    """
    truth, prediction = np.asarray(truth).astype(bool), np.asarray(prediction).astype(bool)
    if not truth.any() or not prediction.any():
        return float("nan")
    truth_edge = truth & ~ndimage.binary_erosion(truth, border_value=0)
    prediction_edge = prediction & ~ndimage.binary_erosion(prediction, border_value=0)
    to_prediction = ndimage.distance_transform_edt(~prediction_edge)[truth_edge]
    to_truth = ndimage.distance_transform_edt(~truth_edge)[prediction_edge]
    return float(np.percentile(np.concatenate([to_prediction, to_truth]), 95))


def dice_score(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two binary masks (1 when both are empty)."""
    return scores_from_counts(*confusion_counts(truth, prediction))["dice"]


def per_slice_table(
    truth: np.ndarray, prediction: np.ndarray, patients: list[str] | np.ndarray,
    slices: list[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """One row of scores per slice.

    Args:
        truth: 0/1 array (N, H, W).
        prediction: 0/1 array (N, H, W).
        patients: the patient of each slice, length N.
        slices: the slice number of each slice, length N.

    Returns:
        Columns ``patient``, ``slice``, ``tumour_pixels``, ``predicted_pixels``,
        ``tp``, ``fp``, ``fn``, ``tn`` (true and false positive, false and
        true negative pixels), the scores of ``scores_from_counts``, and
        ``hd95`` (``hausdorff95``, in pixels; NaN unless both masks hold
        tumour).
    """
    rows = []
    for index in range(len(truth)):
        counts = confusion_counts(truth[index], prediction[index])
        rows.append({
            "patient": patients[index],
            "slice": int(slices[index]) if slices is not None else index,
            "tumour_pixels": counts[0] + counts[2],
            "predicted_pixels": counts[0] + counts[1],
            **dict(zip(("tp", "fp", "fn", "tn"), counts)),
            **scores_from_counts(*counts),
            "hd95": hausdorff95(truth[index], prediction[index]),
        })
    return pd.DataFrame(rows)


def per_patient_table(slice_table: pd.DataFrame) -> pd.DataFrame:
    """Scores over each patient's whole stack of slices.

    Args:
        slice_table: the output of ``per_slice_table``.

    Returns:
        One row per patient: ``patient``, ``slices``, ``tumour_pixels``,
        ``predicted_pixels``, counts, and the scores of ``scores_from_counts``.
    """
    grouped = slice_table.groupby("patient").agg(
        slices=("slice", "size"),
        tumour_pixels=("tumour_pixels", "sum"),
        predicted_pixels=("predicted_pixels", "sum"),
        tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), tn=("tn", "sum"),
    ).reset_index()
    scores = [scores_from_counts(r.tp, r.fp, r.fn, r.tn) for r in grouped.itertuples()]
    return pd.concat([grouped, pd.DataFrame(scores)], axis=1)


def mean_confidence_interval(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of a mean, e.g. of per-patient Dice.

    With ten test patients the mean per-patient Dice is uncertain by several
    points; this says by how much. Resampling is over the values given (the
    patients), so it measures the spread between patients, not between runs.
    For two models scored on the same patients, pass the per-patient
    differences to get a paired interval of the difference.

    Args:
        values: 1-D array-like of floats; NaNs are dropped.
        level: the confidence level, in (0, 1).
        resamples: number of bootstrap resamples.
        seed: seed of the resampling, so the interval is reproducible.

    Returns:
        ``(low, high)``; both NaN when fewer than two values remain, both the
        value itself when all values are equal.
    """
    values = np.asarray(values, dtype=float).ravel()
    values = values[~np.isnan(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    # SciPy 1.15 named the generator argument rng; earlier versions (Colab may hold one) random_state.
    generator = {"rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state":
                 np.random.default_rng(seed)}
    result = stats.bootstrap((values,), np.mean, confidence_level=level, n_resamples=resamples,
                             method="percentile", **generator)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(slice_table: pd.DataFrame, patient_table: pd.DataFrame) -> dict[str, float]:
    """The headline numbers: per-patient means, per-slice means, pooled scores.

    Args:
        slice_table: the output of ``per_slice_table``.
        patient_table: the output of ``per_patient_table`` for the same slices.

    Returns:
        A flat dict of floats and ints, JSON-ready. ``dice_per_patient_mean``
        is the headline; ``dice_per_patient_ci95_low`` and ``_high`` are its
        95% bootstrap interval over patients (``mean_confidence_interval``).
    """
    pooled = scores_from_counts(*(int(slice_table[c].sum()) for c in ("tp", "fp", "fn", "tn")))
    with_tumour = slice_table["tumour_pixels"] > 0
    predicted = slice_table["predicted_pixels"] > 0
    detection = scores_from_counts(
        int((with_tumour & predicted).sum()), int((~with_tumour & predicted).sum()),
        int((with_tumour & ~predicted).sum()), int((~with_tumour & ~predicted).sum()),
    )
    summary = {
        "patients": int(len(patient_table)),
        "slices": int(len(slice_table)),
        "slices_with_tumour": int(with_tumour.sum()),
        "slices_empty": int((~with_tumour).sum()),
        "dice_per_patient_mean": float(patient_table["dice"].mean()),
        "dice_per_patient_median": float(patient_table["dice"].median()),
        "dice_per_patient_min": float(patient_table["dice"].min()),
        **dict(zip(("dice_per_patient_ci95_low", "dice_per_patient_ci95_high"),
                   mean_confidence_interval(patient_table["dice"]))),
        "iou_per_patient_mean": float(patient_table["iou"].mean()),
        # Over the patients where each is defined: precision where something was predicted,
        # recall where there is tumour. The counts say how many that was.
        "precision_per_patient_mean": float(np.nanmean(patient_table["precision"]))
        if patient_table["precision"].notna().any() else float("nan"),
        "precision_patients": int(patient_table["precision"].notna().sum()),
        "recall_per_patient_mean": float(np.nanmean(patient_table["recall"]))
        if patient_table["recall"].notna().any() else float("nan"),
        "recall_patients": int(patient_table["recall"].notna().sum()),
        "dice_per_slice_mean_all": float(slice_table["dice"].mean()),
        "dice_per_slice_mean_tumour": float(slice_table.loc[with_tumour, "dice"].mean())
        if with_tumour.any() else float("nan"),
        "iou_per_slice_mean_all": float(slice_table["iou"].mean()),
        "accuracy_per_slice_mean": float(slice_table["accuracy"].mean()),
        "specificity_per_slice_mean": float(np.nanmean(slice_table["specificity"])),
        "hd95_pixels_mean": float(np.nanmean(slice_table["hd95"])) if slice_table["hd95"].notna().any() else float("nan"),
        "hd95_slices": int(slice_table["hd95"].notna().sum()),
        "slice_false_positives": int((~with_tumour & predicted).sum()),
        "slice_false_negatives": int((with_tumour & ~predicted).sum()),
        "detection_sensitivity": detection["recall"],
        "detection_specificity": detection["specificity"],
        "tumour_burden_pearson_r": float(np.corrcoef(patient_table["tumour_pixels"], patient_table["predicted_pixels"])[0, 1])
        if len(patient_table) > 1 and patient_table["tumour_pixels"].std() > 0 and patient_table["predicted_pixels"].std() > 0
        else float("nan"),
    }
    summary.update({f"pooled_{k}": v for k, v in pooled.items()})
    return summary
