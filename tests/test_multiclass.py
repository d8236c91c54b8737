"""Several tumour classes: a softmax ResUNet, categorical loss and per-class Dice."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import helpers  # noqa: F401
from helpers import evaluation, training
from helpers.losses import DiceBCELoss, DiceScore
from helpers.model import build_resunet


def two_class_data(count: int = 16, size: int = 32, seed: int = 0):
    """Images with a bright square (class 1) and a dark-ringed disc (class 2); one-hot masks."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.4, 0.05, (count, size, size, 3)).astype(np.float32)
    labels = np.zeros((count, size, size), np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    for index in range(count):
        y, x = rng.integers(2, size // 2 - 6, size=2)
        labels[index, y:y + 6, x:x + 6] = 1
        cy, cx = rng.integers(size // 2 + 4, size - 5, size=2)
        labels[index, (yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 2
    images[labels == 1] += 0.5
    images[labels == 2, 1] -= 0.3
    return np.clip(images, 0, 1), np.eye(3, dtype=np.float32)[labels]


def test_per_class_dice_against_hand_values():
    truth = np.zeros((1, 2, 2, 3), np.float32)
    truth[0, :, :, 0] = 1  # all background ...
    truth[0, 0, 0] = [0, 1, 0]  # ... but one pixel of class 1
    prediction = np.zeros((1, 2, 2, 3), np.float32)
    prediction[..., 0] = 0.6
    prediction[0, 0, 0] = [0.1, 0.8, 0.1]  # class 1 found
    prediction[0, 1, 1] = [0.1, 0.1, 0.8]  # a false class-2 pixel
    class_1, class_2 = DiceScore(class_index=1), DiceScore(class_index=2)
    class_1.update_state(truth, prediction)
    class_2.update_state(truth, prediction)
    # Class 1: 2*1+1 / (1+1+1) = 1. Class 2: truth empty, one false pixel: (0+1)/(0+1+1) = 0.5.
    assert float(class_1.result()) == pytest.approx(1.0)
    assert float(class_2.result()) == pytest.approx(0.5)


def test_softmax_loss_is_categorical_cross_entropy_plus_mean_class_dice():
    truth = np.eye(3, dtype=np.float32)[np.array([[[0, 1], [2, 0]]])]
    prediction = np.full((1, 2, 2, 3), 1 / 3, np.float32)
    loss = float(DiceBCELoss()(truth, prediction))
    cross_entropy = np.log(3.0)
    # Each tumour class: one true pixel, soft prediction 1/3 on all 4 pixels.
    dice = (2 * (1 / 3) + 1) / (1 + 4 / 3 + 1)
    assert loss == pytest.approx((1 - dice) + cross_entropy, rel=1e-5)


def test_two_class_model_trains_and_saves(tmp_path):
    keras.utils.set_random_seed(1)
    images, masks = two_class_data()
    model = build_resunet((32, 32, 3), base_filters=16, depth=2, num_classes=3)
    training.compile_model(model, learning_rate=3e-3)
    history = model.fit(images, masks, batch_size=8, epochs=12, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    # Both tumour classes are learnt, each scored by its own Dice.
    for name in ("dice_class_1", "dice_class_2"):
        assert history[name][-1] > 0.9 and history[name][-1] > history[name][0], (name, history[name])
    model.save(tmp_path / "two_class.keras")
    loaded = keras.models.load_model(tmp_path / "two_class.keras")
    probabilities = loaded.predict(images[:4], verbose=0)
    np.testing.assert_array_equal(probabilities, model.predict(images[:4], verbose=0))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


def test_one_channel_tools_refuse_a_softmax_model():
    """Per-patient Dice and prediction read one tumour channel: a softmax model's channel 0 is the
    background, so they refuse it by name instead of scoring the background."""
    model = build_resunet((16, 16, 3), base_filters=4, depth=2, num_classes=3, name="three_classes")
    images = np.zeros((2, 16, 16, 3), np.uint8)
    masks = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"'three_classes' gives 3 channels.*argmax"):
        training.patient_dice(model, images, masks, ["a", "b"])
    with pytest.raises(ValueError, match=r"'three_classes' gives 3 channels"):
        evaluation.predict_probabilities(model, images, show_progress=False)
