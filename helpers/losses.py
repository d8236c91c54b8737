"""Dice and binary cross-entropy losses and the Dice metric, for Keras.

All are registered as serializable, so a saved model loads with
``keras.models.load_model`` after ``import helpers`` (``safe_mode=True``).

Empty masks: Dice here is computed per image with a smoothing term of 1
added to numerator and denominator, so an image whose mask and prediction
are both empty scores 1, and a prediction on an empty mask scores near 0.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="helpers")
def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Smoothed soft Dice of each image in a batch.

    Args:
        y_true: float (B, H, W, C), values 0 and 1.
        y_pred: float (B, H, W, C), probabilities 0-1.
        smooth: added to numerator and denominator.

    Returns:
        float32 (B,): Dice per image, 0-1.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    axes = tuple(range(1, len(y_pred.shape)))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="helpers")
class DiceBCELoss(keras.losses.Loss):
    """``dice_weight * (1 - soft Dice) + bce_weight * cross-entropy``.

    Dice is per image (smoothed, see ``soft_dice``); cross-entropy is the mean
    over pixels. Both are averaged over the batch. With one output channel
    (a sigmoid mask) the cross-entropy is binary. With several channels (a
    softmax over classes, class 0 the background, ``y_true`` one-hot) it is
    categorical, and Dice is the mean over the tumour classes 1..C-1 of each
    class's per-image Dice.

    Args:
        dice_weight: weight of the Dice term.
        bce_weight: weight of the cross-entropy term.
        smooth: Dice smoothing.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 smooth: float = 1.0, name: str = "dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        pixel_axes = tuple(range(1, len(y_pred.shape) - 1))
        if y_pred.shape[-1] == 1:
            dice = 1.0 - soft_dice(y_true, y_pred, self.smooth)
            cross_entropy = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=pixel_axes)
        else:
            per_class = [soft_dice(y_true[..., k:k + 1], y_pred[..., k:k + 1], self.smooth)
                         for k in range(1, y_pred.shape[-1])]
            dice = 1.0 - ops.mean(ops.stack(per_class, axis=-1), axis=-1)
            cross_entropy = ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred), axis=pixel_axes)
        return self.dice_weight * dice + self.bce_weight * cross_entropy

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight,
                "bce_weight": self.bce_weight, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="helpers")
class DiceScore(keras.metrics.Metric):
    """Mean per-image Dice of thresholded predictions, smoothed by 1.

    Args:
        threshold: probability above which a pixel is tumour (one-channel
            outputs).
        smooth: Dice smoothing (an empty mask predicted empty scores 1).
        class_index: for softmax outputs (B, H, W, C) with one-hot targets,
            the class to score; a pixel belongs to it when it is the most
            probable class. ``None`` for one-channel outputs.
    """

    def __init__(self, threshold: float = 0.5, smooth: float = 1.0, name: str = "dice",
                 class_index: int | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.class_index = class_index
        self.smooth = smooth
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self.class_index is None:
            y_pred = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        else:
            k = self.class_index
            y_pred = ops.cast(ops.argmax(y_pred, axis=-1) == k, "float32")[..., None]
            y_true = ops.cast(y_true, "float32")[..., k:k + 1]
        dice = soft_dice(y_true, y_pred, self.smooth)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "smooth": self.smooth,
                "class_index": self.class_index}
