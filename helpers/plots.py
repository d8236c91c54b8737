"""Figures of the notebooks.

Every plotting function returns a matplotlib Figure; ``overlay`` returns the
image it draws (an array), ``enable_colab_widgets`` only switches on Colab's
widget manager, and ``kept_epoch`` and ``three_epoch_mean`` read a training
history.
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from skimage import segmentation


def enable_colab_widgets() -> None:
    """Let Colab show ipywidgets 8 (sliders, upload buttons); elsewhere do nothing.

    Colab renders ipywidgets 8 only through its custom widget manager, which
    this turns on. Jupyter, VS Code and headless runs need nothing.
    """
    if "google.colab" in sys.modules:
        from google.colab import output

        output.enable_custom_widget_manager()


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
    """A grid of slices (the three channels, pre-contrast, FLAIR and post-contrast, as RGB) with the mask outlined in yellow."""
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


def standardization(scaled: np.ndarray, standardized: np.ndarray, foreground: np.ndarray, channel: int = 1,
                    channel_name: str = "FLAIR") -> plt.Figure:
    """Histograms of one channel over the head, before and after standardisation.

    One curve per slice: before, the slices sit at different levels and
    spreads; after, each is centred on 0 with unit spread.

    Args:
        scaled: float (N, H, W, C) in [0, 1], the slices scaled by ``normalize``.
        standardized: float (N, H, W, C), the same slices out of ``SliceStandardization``.
        foreground: bool (N, H, W), the head (``model.foreground_mask``).
        channel: the channel drawn (1 is FLAIR).
        channel_name: its name, for the titles.
    """
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    panels = ((axes[0], scaled, np.linspace(0, 1, 51), "scaled to [0, 1]"),
              (axes[1], standardized, np.linspace(-4, 4, 51), "standardised per slice"))
    for axis, values, bins, title in panels:
        for k in range(len(values)):
            pixels = values[k, ..., channel][foreground[k]]
            if pixels.size:
                axis.hist(pixels, bins=bins, density=True, histtype="step", linewidth=1.2)
        axis.set_title(f"{channel_name} over the head, {title}", fontsize=9)
        axis.set_xlabel("intensity")
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def learning_curves(history: pd.DataFrame) -> plt.Figure:
    """Loss and Dice per epoch, training against validation.

    The epoch whose checkpoint training keeps (the highest validation
    per-patient Dice, else per-slice Dice) is starred, beside the mean of that
    score over each epoch and its two neighbours: a star far above the mean
    marks a lone peak of a noisy curve, whose score likely overstates the kept
    network.

    Args:
        history: One row per epoch, the columns Keras logs (``loss``,
            ``val_loss``, ``dice``, ``val_dice``, ``val_patient_dice``).

    Returns:
        The figure: loss on the left, Dice on the right.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    epochs = np.arange(1, len(history) + 1)
    left.plot(epochs, history["loss"], label="train")
    if "val_loss" in history:
        left.plot(epochs, history["val_loss"], label="validation")
    left.set(xlabel="epoch", ylabel="Dice + BCE loss", title="Loss")
    left.legend()
    labels = {"dice": "train (per slice)", "val_dice": "validation (per slice)",
              "val_patient_dice": "validation (per patient)"}
    for column, label in labels.items():
        if column in history:
            right.plot(epochs, history[column], label=label)
    kept = kept_epoch(history)
    if kept is not None:
        column, index = kept
        right.plot(epochs, three_epoch_mean(history[column]), linestyle="--",
                   color="grey", label=f"{labels[column]}, mean of 3 epochs")
        right.plot(epochs[index], history[column].iloc[index], marker="*", markersize=14, linestyle="none",
                   color="black", label=f"checkpoint kept (epoch {epochs[index]})")
    right.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    return figure


def kept_epoch(history: pd.DataFrame) -> tuple[str, int] | None:
    """The score and row of the epoch whose checkpoint training keeps.

    Training keeps the first epoch with the highest validation per-patient Dice
    (``val_patient_dice``), or per-slice Dice (``val_dice``) when it has no
    per-patient score (``helpers.training.train``).

    Args:
        history: One row per epoch, as logged by Keras.

    Returns:
        The column and the 0-based row, or ``None`` when neither column holds a
        number.
    """
    for column in ("val_patient_dice", "val_dice"):
        if column in history and history[column].notna().any():
            return column, int(np.nanargmax(history[column].to_numpy(dtype=float)))
    return None


def three_epoch_mean(scores: pd.Series) -> pd.Series:
    """Each epoch's score averaged with its neighbours' (two at either end).

    Args:
        scores: One score per epoch, in order.

    Returns:
        The smoothed scores, one per epoch.
    """
    return scores.rolling(3, center=True, min_periods=1).mean()


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


def architecture(model) -> plt.Figure:
    """The ResUNet as a U: one box per unit, its depth by resolution, skips as arrows.

    Args:
        model: a model built by ``helpers.model.build_resunet``.
    """
    units = []
    for layer in model.layers:
        name = layer.name
        if name.endswith("_add") or (name.endswith("_conv2") and not any(
                other.name == name.replace("_conv2", "_add") for other in model.layers)):
            units.append((name.rsplit("_", 1)[0], layer.output.shape))
    figure, axis = plt.subplots(figsize=(10, 4.2))
    top = units[0][1][1]
    positions = {}
    for index, (name, shape) in enumerate(units):
        level = int(np.log2(top // shape[1]))
        x, y = index, -level
        positions[name] = (x, y)
        colour = "#7ab" if name.startswith("enc") else "#c96" if name == "bridge" else "#8b7"
        axis.add_patch(plt.Rectangle((x - 0.4, y - 0.3), 0.8, 0.6, color=colour))
        axis.text(x, y + 0.05, name, ha="center", va="center", fontsize=8)
        axis.text(x, y - 0.18, f"{shape[1]}x{shape[2]}x{shape[3]}", ha="center", va="center", fontsize=6)
        if index:
            previous = positions[units[index - 1][0]]
            axis.annotate("", (x - 0.4, y), (previous[0] + 0.4, previous[1]),
                          arrowprops={"arrowstyle": "->", "color": "k"})
    for name, (x, y) in positions.items():
        if name.startswith("dec"):
            source = positions.get("enc" + name[3:])
            if source:
                axis.annotate("", (x - 0.3, y + 0.3), (source[0] + 0.3, source[1] + 0.3),
                              arrowprops={"arrowstyle": "->", "color": "#888", "linestyle": "--",
                                          "connectionstyle": "arc3,rad=-0.15"})
    axis.set_xlim(-0.8, len(units) - 0.2)
    axis.set_ylim(min(y for _, y in positions.values()) - 0.6, 0.9)
    axis.axis("off")
    axis.set_title("ResUNet: encoder (blue), bridge (orange), decoder (green); dashed: skip connections")
    return figure


def postprocessing_curve(table: pd.DataFrame) -> plt.Figure:
    """Validation per-patient Dice against threshold, one line per smallest 3D region kept.

    Each point is the best over the per-slice minimum component sizes tried.
    """
    figure, axis = plt.subplots(figsize=(6, 3.5))
    volume_column = "min_volume_pixels" if "min_volume_pixels" in table else None
    groups = table.groupby(volume_column) if volume_column else [(0, table)]
    for volume, rows in groups:
        best = rows.groupby("threshold")["val_dice_per_patient"].max()
        axis.plot(best.index, best.values, marker="o", label=f"smallest region over the stack {volume} px")
    axis.set(xlabel="probability threshold", ylabel="validation per-patient Dice",
             title="Post-processing chosen on validation patients")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def detection_confusion(slice_table: pd.DataFrame) -> plt.Figure:
    """Slice-level confusion matrix: tumour present in ground truth against prediction."""
    truth = slice_table["tumour_pixels"] > 0
    predicted = slice_table["predicted_pixels"] > 0
    matrix = np.array([[(~truth & ~predicted).sum(), (~truth & predicted).sum()],
                       [(truth & ~predicted).sum(), (truth & predicted).sum()]])
    figure, axis = plt.subplots(figsize=(3.8, 3.4))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["no tumour", "tumour"],
             yticklabels=["no tumour", "tumour"], xlabel="predicted", ylabel="ground truth",
             title="Slice-level detection")
    figure.tight_layout()
    return figure


def tumour_burden(patient_table: pd.DataFrame) -> plt.Figure:
    """Predicted against true tumour area per patient, with Pearson's r."""
    true_area, predicted_area = patient_table["tumour_pixels"], patient_table["predicted_pixels"]
    r = float(np.corrcoef(true_area, predicted_area)[0, 1]) if len(patient_table) > 1 else float("nan")
    figure, axis = plt.subplots(figsize=(4.5, 4))
    axis.scatter(true_area, predicted_area, color="#48a")
    limit = max(true_area.max(), predicted_area.max(), 1) * 1.05
    axis.plot([0, limit], [0, limit], "k--", linewidth=1)
    axis.set(xlabel="true tumour pixels (all slices)", ylabel="predicted tumour pixels",
             title=f"Tumour burden per patient (r = {r:.3f})", xlim=(0, limit), ylim=(0, limit))
    figure.tight_layout()
    return figure


def slice_strip(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, numbers, columns: int = 6) -> plt.Figure:
    """A static grid of one patient's slices, coloured by TP (green), FP (red), FN (blue)."""
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, truth, prediction, number in zip(axes.ravel(), images, truths, predictions, numbers):
        axis.imshow(overlay(image, truth, prediction))
        axis.set_title(f"slice {number}", fontsize=7)
    figure.tight_layout()
    return figure
