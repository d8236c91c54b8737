"""Predict whole sets of slices and score them per slice and per patient.

Post-processing (probability threshold, removal of small connected
components, test-time flips) is chosen on validation patients with
``choose_postprocessing`` and then applied unchanged to test patients.
"""

from __future__ import annotations

import itertools
import json
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from skimage import measure
from tqdm.auto import tqdm

from helpers import metrics
from helpers.data import square_padding
from helpers.model import require_one_channel


def remove_small_components(mask: np.ndarray, min_pixels: int, connectivity: int) -> np.ndarray:
    """Drop connected components with fewer than ``min_pixels`` pixels.

    Labels the components with ``skimage.measure.label`` and counts them,
    rather than calling ``skimage.morphology.remove_small_objects``, whose
    size keyword and its meaning changed in scikit-image 0.26 (Colab may
    hold an older version).

    Args:
        mask: bool (H, W) slice or (D, H, W) volume.
        min_pixels: smallest component kept.
        connectivity: 2 for 8-connected slices, 3 for 26-connected volumes.

    Returns:
        bool array of the same shape.
    """
    labels = measure.label(mask, connectivity=connectivity)
    keep = np.bincount(labels.ravel()) >= min_pixels
    keep[0] = False  # the background
    return keep[labels]


def load_model(path: str | Path) -> keras.Model:
    """Load a saved ``.keras`` model (custom losses and metrics registered by ``helpers``).

    Raises:
        FileNotFoundError: naming the path and the notebook that writes it.
        ValueError: naming the path, if it is not a model Keras saved (a
            ``.keras`` file is a zip archive).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No model at {path}. Train one first: run notebooks/04_training.ipynb "
            "(or `make run`), or pass the path of a saved .keras model."
        )
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a saved Keras model (a .keras file is a zip archive; this one is not). Pass a model "
            "saved by notebook 04 or benchmarks/quality.py."
        )
    return keras.models.load_model(path)


def predict_probabilities(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 32,
    flip_tta: bool = False,
    show_progress: bool = False,
) -> np.ndarray:
    """Tumour probability of every pixel, at the images' own size.

    Images are resized to the model's input size (area interpolation),
    predicted, and the probabilities resized back (bilinear). Images that
    are not square are first padded with black to a square, centred, so
    that anatomy is not stretched, and the probabilities cropped back.

    Args:
        model: a model mapping (B, S, S, 3) in [0, 1] to (B, S, S, 1).
        images: uint8 (N, H, W, 3), values 0-255.
        batch_size: slices per prediction batch.
        flip_tta: also predict the left-right flipped slice and average.
        show_progress: show a progress bar.

    Returns:
        float32 (N, H, W), values 0-1.

    Raises:
        ValueError: if the images are not (N, H, W, 3), or the model gives
            more than one channel (``helpers.model.require_one_channel``).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (N, H, W, 3), got {images.shape}: pass a batch of RGB "
                         "slices as helpers.data.load_arrays gives them (one slice: images[None]).")
    size = model.input_shape[1]
    original_height, original_width = images.shape[1:3]
    top, bottom, left, right = square_padding(original_height, original_width)
    if original_height != original_width:
        images = np.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))
    height, width = images.shape[1:3]
    outputs = np.empty(images.shape[:3], dtype=np.float32)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="Predicting", disable=not show_progress, leave=False):
        batch = tf.cast(images[start:start + batch_size], tf.float32) / 255.0
        if (height, width) != (size, size):
            batch = tf.image.resize(batch, (size, size), method="area")
        # predict_on_batch runs the compiled graph: a 128x128 slice takes about a third
        # of the time of an eager model(batch) call on a 2-core CPU.
        probabilities = model.predict_on_batch(batch)
        require_one_channel(model, probabilities)
        if flip_tta:
            flipped = model.predict_on_batch(tf.reverse(batch, axis=[2]))
            probabilities = (probabilities + flipped[:, :, ::-1]) / 2.0
        if (height, width) != (size, size):
            probabilities = tf.image.resize(probabilities, (height, width), method="bilinear")
        outputs[start:start + batch_size] = np.asarray(probabilities)[..., 0]
    return outputs[:, top:top + original_height, left:left + original_width]


def binarize(probabilities: np.ndarray, threshold: float = 0.5, min_component_pixels: int = 0) -> np.ndarray:
    """Threshold probabilities and drop connected components smaller than a size.

    Args:
        probabilities: float (N, H, W) or (H, W), values 0-1.
        threshold: a pixel is tumour when its probability is above this.
        min_component_pixels: components (8-connected, per slice) with fewer
            pixels are removed; 0 keeps all.

    Returns:
        uint8 array of the same shape, values 0 and 1.
    """
    masks = probabilities > threshold
    if min_component_pixels > 0:
        stack = masks if masks.ndim == 3 else masks[None]
        stack = np.stack([
            remove_small_components(m, min_component_pixels, connectivity=2)
            if m.any() else m for m in stack
        ])
        masks = stack if masks.ndim == 3 else stack[0]
    return masks.astype(np.uint8)


def patient_dice_mean(truth: np.ndarray, prediction: np.ndarray, patients: np.ndarray) -> float:
    """Mean over patients of the Dice over each patient's stack of slices."""
    patients = np.asarray(patients)
    return float(np.mean([
        metrics.dice_score(truth[patients == p], prediction[patients == p])
        for p in np.unique(patients)
    ]))


def stacks(patients: np.ndarray, slice_numbers: np.ndarray | None = None) -> list[np.ndarray]:
    """The row indices of each run of neighbouring slices, one patient at a time.

    Args:
        patients: the patient of each slice, length N; a patient's slices
            in slice order.
        slice_numbers: the slice number of each row (the manifest's
            ``slice``), or ``None`` to take each patient's rows as one
            unbroken stack. A stack is cut where the step between two rows
            is more than twice the patient's usual (median) step: where
            more than one slice in a row is missing, and where the numbers
            start again (a second scan of the patient). One missing slice (a
            slice dropped by validation, say) does not cut it, since a
            tumour goes on across it, and halves of a tumour could each
            fall below the smallest size kept.

    Returns:
        Arrays of row indices, one per stack.
    """
    patients = np.asarray(patients)
    result = []
    for patient in np.unique(patients):
        rows = np.flatnonzero(patients == patient)
        if slice_numbers is None or len(rows) < 2:
            result.append(rows)
            continue
        steps = np.diff(np.asarray(slice_numbers, dtype=float)[rows])
        # A stack ends at a large gap, and where the numbering starts again (a second scan of the patient).
        gaps = np.flatnonzero((steps > 2 * np.median(steps)) | (steps <= 0)) + 1
        result.extend(np.split(rows, gaps))
    return result


def remove_small_volumes(masks: np.ndarray, patients: np.ndarray, min_volume_pixels: int,
                         slice_numbers: np.ndarray | None = None) -> np.ndarray:
    """Drop predicted regions whose 3D extent over a patient's stack is small.

    A glioma spans neighbouring slices; an isolated false positive usually
    does not. Each patient's slices (in manifest order, which is slice order)
    are stacked into a volume, and 26-connected components with fewer than
    ``min_volume_pixels`` pixels are removed.

    Args:
        masks: 0/1 (N, H, W) predicted masks.
        patients: the patient of each slice, length N; a patient's slices
            must be consecutive and in slice order.
        min_volume_pixels: smallest component kept; 0 keeps all.
        slice_numbers: the slice number of each row; where given, a stack
            is cut where more than one slice in a row is missing (see ``stacks``).

    Returns:
        uint8 (N, H, W), values 0 and 1.
    """
    masks = masks.astype(bool)
    if min_volume_pixels <= 0:
        return masks.astype(np.uint8)
    result = masks.copy()
    for rows in stacks(patients, slice_numbers):
        volume = masks[rows]
        if volume.any():
            result[rows] = remove_small_components(volume, min_volume_pixels, connectivity=3)
    return result.astype(np.uint8)


def postprocess(probabilities: np.ndarray, patients: np.ndarray, threshold: float = 0.5,
                min_component_pixels: int = 0, min_volume_pixels: int = 0,
                slice_numbers: np.ndarray | None = None) -> np.ndarray:
    """``binarize`` each slice, then ``remove_small_volumes`` over each patient's stack.

    Args:
        probabilities: float (N, H, W), values 0-1.
        patients: the patient of each slice (consecutive, in slice order).
        threshold: probability above which a pixel is tumour.
        min_component_pixels: smallest region kept on a slice; 0 keeps all.
        min_volume_pixels: smallest region kept over a patient's stack; 0 keeps all.
        slice_numbers: the slice number of each row, or ``None`` (see ``stacks``).

    Returns:
        uint8 (N, H, W), values 0 and 1.
    """
    masks = binarize(probabilities, threshold, min_component_pixels)
    return remove_small_volumes(masks, patients, min_volume_pixels, slice_numbers)


def choose_postprocessing(
    probabilities: np.ndarray,
    truth: np.ndarray,
    patients: np.ndarray,
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7),
    min_components: tuple[int, ...] = (0, 10, 30, 60, 100),
    min_volumes: tuple[int, ...] = (0,),
    slice_numbers: np.ndarray | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Pick the post-processing that maximises validation per-patient Dice.

    Searches every combination of threshold, minimum 2D component size and
    minimum 3D (per-patient) component size. Call this on validation
    patients only; apply the result to test patients.

    Args:
        probabilities: float (N, H, W) validation probabilities.
        truth: 0/1 (N, H, W) validation masks.
        patients: the patient of each slice (consecutive, in slice order).
        thresholds: candidate thresholds.
        min_components: candidate minimum component sizes in pixels, per slice.
        min_volumes: candidate minimum component sizes in pixels over a
            patient's stack (see ``remove_small_volumes``).
        slice_numbers: the slice number of each row, so that stacks are
            cut where several slices are missing (see ``stacks``).

    Returns:
        The best ``{"threshold", "min_component_pixels", "min_volume_pixels"}``
        and the table of every candidate's validation per-patient Dice. Ties
        go to the first candidate in the order searched: thresholds in the
        order given, then 2D sizes, then 3D sizes (so, among equal scores,
        the lowest threshold listed first wins, not the least filtering).
    """
    rows = []
    for threshold, minimum, volume in itertools.product(thresholds, min_components, min_volumes):
        prediction = postprocess(probabilities, patients, threshold, minimum, volume, slice_numbers)
        rows.append({"threshold": threshold, "min_component_pixels": minimum, "min_volume_pixels": volume,
                     "val_dice_per_patient": patient_dice_mean(truth, prediction, patients)})
    table = pd.DataFrame(rows)
    best = table.loc[table["val_dice_per_patient"].idxmax()]
    return {"threshold": float(best["threshold"]),
            "min_component_pixels": int(best["min_component_pixels"]),
            "min_volume_pixels": int(best["min_volume_pixels"])}, table


def choose_on_validation(
    model: keras.Model,
    images: np.ndarray,
    truth: np.ndarray,
    patients: np.ndarray,
    batch_size: int = 32,
    flip_options: tuple[bool, ...] = (False, True),
    **candidates,
) -> tuple[dict, pd.DataFrame]:
    """Choose flip test-time augmentation and post-processing on validation patients.

    Predicts the validation slices with and without flip averaging, runs
    ``choose_postprocessing`` on each, and keeps the best; flip averaging
    (the costlier) is kept only when strictly better.

    Args:
        model: the trained model.
        images: uint8 (N, H, W, 3) validation slices.
        truth: 0/1 (N, H, W) validation masks.
        patients: the patient of each slice (consecutive, in slice order).
        batch_size: prediction batch size.
        flip_options: which of without / with flip averaging to try.
        **candidates: ``thresholds``, ``min_components``, ``min_volumes`` and
            ``slice_numbers`` for ``choose_postprocessing``.

    Returns:
        The chosen ``{"flip_tta", "threshold", "min_component_pixels",
        "min_volume_pixels", "val_dice_per_patient"}`` and the table of every
        candidate (with a ``flip_tta`` column).
    """
    tables, best = [], None
    for flip in flip_options:
        probabilities = predict_probabilities(model, images, batch_size, flip_tta=flip, show_progress=True)
        choice, table = choose_postprocessing(probabilities, truth, patients, **candidates)
        table.insert(0, "flip_tta", flip)
        tables.append(table)
        score = float(table["val_dice_per_patient"].max())
        if best is None or score > best["val_dice_per_patient"]:
            best = {"flip_tta": flip, **choice, "val_dice_per_patient": score}
    return best, pd.concat(tables, ignore_index=True)


def example_slices(patient_table: pd.DataFrame, rows: pd.DataFrame, truth: np.ndarray, prediction: np.ndarray,
                   count: int = 3) -> tuple[list[int], list[str]]:
    """One telling slice each of the best, median and worst patients (then the next best).

    For each patient, the slice where mask and prediction together cover the
    most pixels: its largest tumour, or its largest false alarm.

    Args:
        patient_table: ``evaluate``'s per-patient table (``patient``, ``dice``).
        rows: the manifest rows of the slices (``patient``, ``slice``), N rows.
        truth: 0/1 (N, H, W) masks.
        prediction: 0/1 (N, H, W) predicted masks.
        count: how many patients (at least 1).

    Returns:
        The slices' positions in ``rows`` and a title for each, naming the
        patient, the slice and the patient's Dice.
    """
    ranked = patient_table.sort_values("dice", ascending=False)["patient"].tolist()
    picks = list(dict.fromkeys([ranked[0], ranked[len(ranked) // 2], ranked[-1]] + ranked[1:count]))[:max(count, 1)]
    dice = patient_table.set_index("patient")["dice"]
    positions, titles = [], []
    for patient in picks:
        on_patient = np.flatnonzero(rows["patient"].to_numpy() == patient)
        area = truth[on_patient].reshape(len(on_patient), -1).sum(1) + \
            prediction[on_patient].reshape(len(on_patient), -1).sum(1)
        position = int(on_patient[int(np.argmax(area))])
        positions.append(position)
        titles.append(f"{patient} s{rows['slice'].iloc[position]} (patient Dice {float(dice[patient]):.2f})")
    return positions, titles


def single_slice_choice(candidates: pd.DataFrame) -> dict:
    """The best post-processing for a slice on its own, from ``choose_on_validation``'s table.

    A slice that a user brings has no mirror averaged in and no patient stack
    around it, so only candidates without flips and without a volume filter
    apply to it.

    Args:
        candidates: the table ``choose_on_validation`` returns.

    Returns:
        ``{"threshold", "min_component_pixels", "val_dice_per_patient"}``.

    Raises:
        ValueError: if the table holds no such candidate (flips only, or no
            volume filter of 0 tried).
    """
    usable = candidates[~candidates["flip_tta"].astype(bool) & (candidates["min_volume_pixels"] == 0)]
    if usable.empty:
        raise ValueError("No candidate without flips and without a volume filter: include False in the flip "
                         "options and 0 in the volume filters.")
    best = usable.loc[usable["val_dice_per_patient"].idxmax()]
    return {"threshold": float(best["threshold"]), "min_component_pixels": int(best["min_component_pixels"]),
            "val_dice_per_patient": float(best["val_dice_per_patient"])}


def write_model_settings(path: str | Path, single_slice: dict, val_patients, scored_size: int = 256,
                         **facts) -> Path:
    """Write the settings chosen for single slices beside a model, as ``<model>.json``.

    ``helpers.inference.recommended_settings`` reads them, so notebook 06,
    the command line and the web app use the threshold and the smallest
    region chosen on the model's validation patients.

    Args:
        path: the ``.json`` file, named as the model (``model.keras`` ->
            ``model.json``).
        single_slice: ``threshold``, ``min_component_pixels`` and
            ``val_dice_per_patient`` (``single_slice_choice``).
        val_patients: the validation patients they were chosen on.
        scored_size: the height and width of the slices they were chosen
            on. The smallest region is written as pixels of a 256x256 slice
            (``helpers.inference.REFERENCE_PIXELS``), as ``segment`` reads
            it, so a region size chosen at another size is converted.
        **facts: more entries to record first, such as ``input_size``.

    Returns:
        The path written.
    """
    from helpers.inference import REFERENCE_PIXELS

    path = Path(path)
    region = round(int(single_slice["min_component_pixels"]) * REFERENCE_PIXELS / scored_size**2)
    path.write_text(json.dumps({
        **facts,
        "single_slice": {"threshold": float(single_slice["threshold"]),
                         "min_component_pixels": region,
                         "val_dice_per_patient": float(single_slice["val_dice_per_patient"])},
        "chosen_on": "validation patients", "val_patients": sorted(set(val_patients)),
    }, indent=2))
    return path


def check_model_split(model_path: str | Path, val_patients) -> bool | None:
    """Say whether a model was chosen on this split's validation patients.

    A model trained on another split (the shipped one, trained on this
    project's 68-patient copy, scored on a split of the full 110-patient
    download) may have trained on patients that are test patients here, and
    its test figures would then be optimistic. Its ``<model>.json``, written
    beside it by ``write_model_settings``, names the validation patients it
    was chosen on; they are compared with these.

    Args:
        model_path: the ``.keras`` model file.
        val_patients: this split's validation patients (repeats allowed).

    Returns:
        ``True`` when the recorded validation patients are these, ``False``
        (with a warning) when they are not, ``None`` when nothing is recorded.

    Warns:
        UserWarning: naming the ``.json`` file, when the patients differ.
    """
    sidecar = Path(model_path).with_suffix(".json")
    recorded = json.loads(sidecar.read_text()).get("val_patients") if sidecar.is_file() else None
    if not recorded:
        return None
    here, there = set(val_patients), set(recorded)
    if here == there:
        return True
    warnings.warn(
        f"{sidecar} records validation patients other than this split's ({len(here & there)} of "
        f"{len(here)} shared), so the model was trained on another split: some test patients here may be "
        "patients it trained on, and its figures below may be optimistic. Score it on the data it was "
        "trained on, or read its own figures (for the shipped model, models/MODEL_CARD.md).", stacklevel=2)
    return False


def evaluate(
    truth: np.ndarray, prediction: np.ndarray, manifest_rows: pd.DataFrame
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Score predictions per slice and per patient.

    Args:
        truth: 0/1 (N, H, W) ground truth.
        prediction: 0/1 (N, H, W) predicted masks.
        manifest_rows: the N manifest rows (``patient``, ``slice``), in order.

    Returns:
        (summary dict, per-slice table, per-patient table).

    Raises:
        ValueError: if there is nothing to evaluate.
    """
    if len(truth) == 0:
        raise ValueError("No slices to evaluate: the test split is empty. Check split.csv.")
    slice_table = metrics.per_slice_table(
        truth, prediction, manifest_rows["patient"].to_numpy(), manifest_rows["slice"].to_numpy()
    )
    patient_table = metrics.per_patient_table(slice_table)
    return metrics.summarize(slice_table, patient_table), slice_table, patient_table
