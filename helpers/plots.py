"""Figures of the notebooks. Every function returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from skimage import segmentation

matplotlib.rcParams.setdefault("figure.max_open_warning", 0)


def overlay(image: np.ndarray, truth: np.ndarray | None = None, prediction: np.ndarray | None = None) -> np.ndarray:
    """Colour an image by agreement of prediction and ground truth.

    With both masks: true positives green, false positives red, false
    negatives blue. With one mask: its outline in yellow.

    Args:
        image: uint8 (H, W, 3), values 0-255.
        truth: 0/1 (H, W) ground truth, or None.
        prediction: 0/1 (H, W) prediction, or None.

    Returns:
        uint8 (H, W, 3) image.
    """
    result = image.astype(np.float32).copy()
    colours = []
    if truth is not None and prediction is not None:
        truth, prediction = truth.astype(bool), prediction.astype(bool)
        colours = [(truth & prediction, (0, 200, 0)), (~truth & prediction, (230, 0, 0)),
                   (truth & ~prediction, (0, 90, 255))]
    for region, colour in colours:
        result[region] = 0.45 * result[region] + 0.55 * np.array(colour)
    single = truth if prediction is None else prediction if truth is None else None
    if single is not None:
        result = segmentation.mark_boundaries(result / 255.0, single.astype(int), color=(1, 1, 0)) * 255
    return np.clip(result, 0, 255).astype(np.uint8)


def example_slices(images: np.ndarray, masks: np.ndarray, titles: list[str], columns: int = 4) -> plt.Figure:
    """A grid of slices (FLAIR channel shown as RGB) with the mask outlined in yellow."""
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, mask, title in zip(axes.ravel(), images, masks, titles):
        axis.imshow(overlay(image, truth=mask))
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def dataset_summary(manifest: pd.DataFrame) -> plt.Figure:
    """Slices per patient (with and without tumour) and tumour size distribution."""
    per_patient = manifest.assign(tumour=manifest["tumour_pixels"] > 0).groupby("patient")["tumour"].agg(["sum", "size"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    order = np.arange(len(per_patient))
    left.bar(order, per_patient["size"] - per_patient["sum"], label="no tumour", color="#9aa")
    left.bar(order, per_patient["sum"], bottom=per_patient["size"] - per_patient["sum"], label="tumour", color="#d55")
    left.set(xlabel="patient", ylabel="slices", title="Slices per patient")
    left.legend()
    sizes = manifest.loc[manifest["tumour_pixels"] > 0, "tumour_pixels"]
    right.hist(sizes, bins=40, color="#d55")
    share = (manifest["tumour_pixels"] > 0).mean()
    right.set(xlabel="tumour pixels per slice", ylabel="slices",
              title=f"Tumour size ({share:.0%} of slices hold tumour)")
    figure.tight_layout()
    return figure


def augmentation_examples(images: np.ndarray, masks: np.ndarray, augmented: list[tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """Original slices beside augmented versions, masks outlined.

    Args:
        images: float (N, H, W, 3) in [0, 1], the originals.
        masks: (N, H, W) 0/1.
        augmented: list of (images, masks) pairs of the same shapes.
    """
    columns = 1 + len(augmented)
    figure, axes = plt.subplots(len(images), columns, figsize=(2.6 * columns, 2.6 * len(images)), squeeze=False)
    for row in range(len(images)):
        versions = [(images[row], masks[row])] + [(a[0][row], a[1][row]) for a in augmented]
        for column, (image, mask) in enumerate(versions):
            axes[row, column].imshow(overlay((np.asarray(image) * 255).astype(np.uint8), truth=np.asarray(mask)))
            axes[row, column].axis("off")
            axes[row, column].set_title("original" if column == 0 else f"augmented {column}", fontsize=8)
    figure.tight_layout()
    return figure


def learning_curves(history: pd.DataFrame) -> plt.Figure:
    """Loss and Dice per epoch, training against validation."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    epochs = np.arange(1, len(history) + 1)
    left.plot(epochs, history["loss"], label="train")
    if "val_loss" in history:
        left.plot(epochs, history["val_loss"], label="validation")
    left.set(xlabel="epoch", ylabel="Dice + BCE loss", title="Loss")
    left.legend()
    for column, label in (("dice", "train (per slice)"), ("val_dice", "validation (per slice)"),
                          ("val_patient_dice", "validation (per patient)")):
        if column in history:
            right.plot(epochs, history[column], label=label)
    right.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    return figure


def prediction_grid(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, titles: list[str]) -> plt.Figure:
    """Rows of image, ground truth, prediction and the coloured overlay.

    Overlay colours: green true positive, red false positive, blue false negative.
    """
    figure, axes = plt.subplots(len(images), 4, figsize=(11, 2.8 * len(images)), squeeze=False)
    for row, (image, truth, prediction, title) in enumerate(zip(images, truths, predictions, titles)):
        panels = [(image, "image"), (truth, "ground truth"), (prediction, "prediction"),
                  (overlay(image, truth, prediction), "TP green, FP red, FN blue")]
        for column, (panel, name) in enumerate(panels):
            axes[row, column].imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1 if panel.ndim == 2 else None)
            axes[row, column].axis("off")
            axes[row, column].set_title(f"{title}: {name}" if column == 0 else name, fontsize=8)
    figure.tight_layout()
    return figure


def per_patient_dice(patient_table: pd.DataFrame) -> plt.Figure:
    """Per-patient Dice, sorted, and Dice against tumour size."""
    table = patient_table.sort_values("dice")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    left.barh(table["patient"], table["dice"], color="#48a")
    left.axvline(table["dice"].mean(), color="k", linestyle="--", label=f"mean {table['dice'].mean():.3f}")
    left.set(xlabel="Dice over the patient's slices", xlim=(0, 1), title="Per-patient Dice")
    left.tick_params(axis="y", labelsize=7)
    left.legend()
    right.scatter(table["tumour_pixels"], table["dice"], color="#48a")
    right.set(xscale="symlog", xlabel="tumour pixels (all slices)", ylabel="Dice", ylim=(0, 1.05),
              title="Dice against tumour size")
    figure.tight_layout()
    return figure
