"""Dice (or Tversky) and binary cross-entropy losses and the Dice metric, for Keras.

All are registered as serializable, so a saved model loads with
``keras.models.load_model`` after ``import helpers`` (``safe_mode=True``).

Empty masks: Dice here is computed per image with a smoothing term of 1
added to numerator and denominator, so an image whose mask and prediction
are both empty scores 1, and a prediction on an empty mask scores near 0.

Cross-entropy from a sigmoid or softmax output: under TensorFlow, Keras finds
the logits behind the activation and computes the cross-entropy from them.
The other backends cannot, and clip the probabilities to [1e-7, 1 - 1e-7]
instead; a clipped pixel then has no gradient, so a model whose output has
saturated (say, every pixel below 1e-7, an all-background prediction) can
never leave that state. There, ``pixel_cross_entropy`` recovers the logits
from the probabilities first, which keeps the gradient of a saturated pixel
where TensorFlow has it.
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
def soft_tversky(y_true, y_pred, miss_weight: float = 0.5, smooth: float = 1.0):
    """Smoothed soft Tversky index of each image in a batch; Dice at ``miss_weight`` 0.5.

    ``(2 TP + smooth) / (2 TP + 2 (1 - miss_weight) FP + 2 miss_weight FN + smooth)``,
    with TP, FP and FN summed over soft predictions (Salehi, Erdogmus and
    Gholipour, 2017, weigh FP by alpha and FN by beta; here alpha =
    1 - miss_weight, beta = miss_weight, and the factor 2 makes 0.5 give
    ``soft_dice`` exactly). A ``miss_weight`` above 0.5 costs a missed tumour
    pixel more than a false alarm, which pushes recall up.

    Args:
        y_true: float (B, H, W, C), values 0 and 1.
        y_pred: float (B, H, W, C), probabilities 0-1.
        miss_weight: weight of false negatives, in [0, 1].
        smooth: added to numerator and denominator.

    Returns:
        float32 (B,): Tversky index per image, 0-1.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    axes = tuple(range(1, len(y_pred.shape)))
    true_positive = ops.sum(y_true * y_pred, axis=axes)
    false_positive = ops.sum((1.0 - y_true) * y_pred, axis=axes)
    false_negative = ops.sum(y_true * (1.0 - y_pred), axis=axes)
    denominator = 2.0 * (true_positive + (1.0 - miss_weight) * false_positive + miss_weight * false_negative)
    return (2.0 * true_positive + smooth) / (denominator + smooth)


# Probabilities below this are treated as this when recovering logits: a
# sigmoid output reaches it at a logit of about -69, far past any saturation
# seen in training, and float32 holds it without denormals.
_TINY = 1e-30


def logits_from_probabilities(y_pred, multiclass: bool = False):
    """Logits that give back ``y_pred`` through a sigmoid (or a softmax).

    Args:
        y_pred: float32 probabilities, (B, H, W, 1) from a sigmoid or
            (B, H, W, C) from a softmax over the last axis.
        multiclass: ``y_pred`` comes from a softmax: the log-probabilities
            are returned (logits up to a constant per pixel, which a softmax
            ignores).

    Returns:
        float32 logits of ``y_pred``'s shape, within about +-69. Their
        gradient with respect to the probabilities is exact wherever the
        probability lies in [1e-30, 1 - 1e-30]; a sigmoid in float32 rounds
        to 1 above a logit of about 17, so there it is lost.
    """
    log_p = ops.log(ops.maximum(y_pred, _TINY))
    if multiclass:
        return log_p
    return log_p - ops.log(ops.maximum(1.0 - y_pred, _TINY))


def pixel_cross_entropy(y_true, y_pred):
    """Per-pixel cross-entropy of a sigmoid (one channel) or softmax output, with the gradient of the logits.

    Under TensorFlow this is Keras' own binary or categorical cross-entropy,
    which reads the logits behind the output's activation. Under the other
    backends the logits are recovered by ``logits_from_probabilities``,
    because Keras would clip the probabilities and lose the gradient of
    every saturated pixel (see the module's docstring).

    Args:
        y_true: float32 (B, H, W, C), 0/1 (one-hot when C > 1).
        y_pred: float32 (B, H, W, C), probabilities.

    Returns:
        float32 (B, H, W): cross-entropy per pixel.
    """
    multiclass = y_pred.shape[-1] > 1
    loss = keras.losses.categorical_crossentropy if multiclass else keras.losses.binary_crossentropy
    if keras.backend.backend() == "tensorflow":
        return loss(y_true, y_pred)
    return loss(y_true, logits_from_probabilities(y_pred, multiclass), from_logits=True)


@keras.saving.register_keras_serializable(package="helpers")
class DiceBCELoss(keras.losses.Loss):
    """``dice_weight * (1 - soft Dice) + bce_weight * cross-entropy``.

    With ``miss_weight`` other than 0.5, the Dice term becomes the Tversky
    index of ``soft_tversky`` (one-channel outputs only).

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
        miss_weight: weight of false negatives in the Tversky index, in
            [0, 1]; 0.5 (the default) is Dice.

    Raises:
        ValueError: ``miss_weight`` outside [0, 1].
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 smooth: float = 1.0, name: str = "dice_bce", miss_weight: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= miss_weight <= 1.0:
            raise ValueError(f"miss_weight must lie in [0, 1] (0.5 is Dice); got {miss_weight}.")
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth
        self.miss_weight = miss_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        pixel_axes = tuple(range(1, len(y_pred.shape) - 1))
        if y_pred.shape[-1] == 1:
            overlap = (soft_dice(y_true, y_pred, self.smooth) if self.miss_weight == 0.5
                       else soft_tversky(y_true, y_pred, self.miss_weight, self.smooth))
            dice = 1.0 - overlap
        elif self.miss_weight != 0.5:
            raise ValueError("miss_weight applies to one-channel (sigmoid) outputs; keep 0.5 for several classes.")
        else:
            per_class = [soft_dice(y_true[..., k:k + 1], y_pred[..., k:k + 1], self.smooth)
                         for k in range(1, y_pred.shape[-1])]
            dice = 1.0 - ops.mean(ops.stack(per_class, axis=-1), axis=-1)
        cross_entropy = ops.mean(pixel_cross_entropy(y_true, y_pred), axis=pixel_axes)
        return self.dice_weight * dice + self.bce_weight * cross_entropy

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight,
                "bce_weight": self.bce_weight, "smooth": self.smooth, "miss_weight": self.miss_weight}


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
