"""The learning-curve figure marks the checkpoint training keeps."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers import plots


def history_with_a_lone_peak() -> pd.DataFrame:
    return pd.DataFrame({
        "loss": [0.9, 0.6, 0.5, 0.45, 0.4],
        "val_loss": [0.95, 0.7, 0.6, 0.6, 0.55],
        "dice": [0.3, 0.5, 0.6, 0.65, 0.7],
        "val_dice": [0.2, 0.9, 0.5, 0.6, 0.6],
        "val_patient_dice": [0.1, 0.4, 0.8, 0.4, 0.8],
    })


def test_kept_epoch_is_the_first_highest_per_patient_score_else_per_slice():
    history = history_with_a_lone_peak()
    # Keras's ModelCheckpoint saves only on a strict improvement: of two equal
    # highest scores, the first is kept.
    assert plots.kept_epoch(history) == ("val_patient_dice", 2)
    assert plots.kept_epoch(history.drop(columns="val_patient_dice")) == ("val_dice", 1)
    with_nan = history.assign(val_patient_dice=[np.nan, 0.3, np.nan, 0.5, 0.2])
    assert plots.kept_epoch(with_nan) == ("val_patient_dice", 3)
    assert plots.kept_epoch(history[["loss", "dice"]]) is None
    assert plots.kept_epoch(history.assign(val_patient_dice=np.nan, val_dice=np.nan)) is None


def test_learning_curves_star_the_kept_epoch_beside_a_three_epoch_mean():
    figure = plots.learning_curves(history_with_a_lone_peak())
    right = figure.axes[1]
    lines = {line.get_label(): line for line in right.get_lines()}
    star = lines["checkpoint kept (epoch 3)"]
    assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [0.8]
    mean = lines["validation (per patient), mean of 3 epochs"].get_ydata()
    np.testing.assert_allclose(mean, [0.25, 1.3 / 3, 1.6 / 3, 2.0 / 3, 0.6])
    # Without any validation score, the figure has no star and no mean.
    plain = plots.learning_curves(history_with_a_lone_peak()[["loss", "dice"]])
    assert [line.get_label() for line in plain.axes[1].get_lines()] == ["train (per slice)"]
    plt.close("all")
