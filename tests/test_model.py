"""Tests of helpers.model: the ResUNet's shapes, outputs, structure and saving."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

import helpers  # noqa: F401  (registers the custom loss and metric for loading)
from helpers.model import (
    RouteFlairOnly,
    SelectChannels,
    average_models,
    build_resunet,
    count_residual_additions,
)
from helpers.training import compile_model


@pytest.mark.parametrize(
    ("height", "width", "depth"), [(16, 16, 2), (32, 64, 2), (48, 24, 3)]
)
def test_output_shape_and_sigmoid_range(height, width, depth):
    model = build_resunet((height, width, 3), base_filters=4, depth=depth)
    batch = np.random.default_rng(0).uniform(0, 1, (2, height, width, 3)).astype(np.float32)
    output = np.asarray(model(batch, training=False))
    assert output.shape == (2, height, width, 1)
    assert output.dtype == np.float32
    assert output.min() >= 0.0 and output.max() <= 1.0


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_residual_additions(depth):
    # Units: one per encoder level above the bridge (depth of them: enc0..enc{depth-1}),
    # the bridge, and one per decoder level (depth of them): 2 * depth + 1, each with one Add.
    model = build_resunet((32, 32, 3), base_filters=4, depth=depth)
    assert count_residual_additions(model) == 2 * depth + 1
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 2 * depth + 1
    plain = build_resunet((32, 32, 3), base_filters=4, depth=depth, residual=False)
    assert count_residual_additions(plain) == 0


def test_downsampling_doubles_filters():
    model = build_resunet((32, 32, 3), base_filters=4, depth=2)
    assert model.get_layer("enc0_conv2").output.shape[1:] == (32, 32, 4)
    assert model.get_layer("enc1_conv2").output.shape[1:] == (16, 16, 8)
    assert model.get_layer("bridge_conv2").output.shape[1:] == (8, 8, 16)
    assert model.get_layer("dec0_conv2").output.shape[1:] == (32, 32, 4)


@pytest.mark.parametrize(("shape", "depth"), [((30, 32, 3), 2), ((32, 36, 3), 3), ((40, 40, 3), 4)])
def test_size_not_divisible_raises(shape, depth):
    with pytest.raises(ValueError, match=str(2**depth)):
        build_resunet(shape, base_filters=4, depth=depth)


def test_softmax_for_several_classes():
    model = build_resunet((16, 16, 3), base_filters=4, depth=2, num_classes=3)
    batch = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    output = np.asarray(model(batch, training=False))
    assert output.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(output.sum(axis=-1), 1.0, atol=1e-5)
    assert output.min() >= 0.0


def test_dropout_layers_only_when_asked():
    assert not any(isinstance(layer, keras.layers.Dropout)
                   for layer in build_resunet((16, 16, 3), base_filters=4, depth=2).layers)
    with_dropout = build_resunet((16, 16, 3), base_filters=4, depth=2, dropout=0.2)
    # One before the bridge and one per decoder level.
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in with_dropout.layers) == 3


# The optimizer was never stepped, so Keras notes that it has no state to load.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_save_and_load_gives_identical_predictions(tmp_path):
    model = compile_model(build_resunet((16, 16, 3), base_filters=4, depth=2))
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    # Move every weight off its initial value (batch-norm statistics too; variances stay
    # near 1, so positive), so loading must restore them all to match.
    model.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    np.testing.assert_array_equal(
        np.asarray(loaded(images, training=False)), np.asarray(model(images, training=False))
    )
    assert type(loaded.loss).__name__ == "DiceBCELoss"
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert '"Lambda"' not in config
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    assert json.loads(config)["class_name"] == "Functional"


def perturbed_resunets(count: int, rng: np.random.Generator) -> list:
    """``count`` tiny ResUNets whose weights differ, so that their outputs do."""
    models = []
    for _ in range(count):
        model = build_resunet((16, 16, 3), base_filters=4, depth=2)
        model.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
        models.append(model)
    return models


def test_average_of_models_is_the_mean_of_their_outputs_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    members = perturbed_resunets(2, rng)
    images = rng.uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    outputs = [np.asarray(model(images, training=False)) for model in members]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # the members differ, so the mean is not either one
    ensemble = average_models(members)
    expected = (outputs[0] + outputs[1]) / 2
    np.testing.assert_allclose(np.asarray(ensemble(images, training=False)), expected, atol=1e-6)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == ["image", "member0", "member1", "mean_probability"]


def test_flair_only_slices_get_the_flair_members_mean_and_the_rest_the_mean_of_all(tmp_path):
    rng = np.random.default_rng(5)
    members = perturbed_resunets(3, rng)
    ordinary = rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    flair_only = np.repeat(rng.uniform(0, 255, (2, 16, 16, 1)), 3, axis=-1).astype(np.float32)
    # A lossy copy (about 0.1% of the peak off FLAIR) still counts as FLAIR only.
    flair_only[1, ..., 0] = np.clip(flair_only[1, ..., 0] + rng.choice([-1.0, 0.0, 1.0], (16, 16)) * 0.5, 0, 255)
    images = np.concatenate([ordinary, flair_only])
    outputs = [np.asarray(model(images, training=False)) for model in members]
    routed = average_models(members, flair_only_members=[1, 2])
    expected = np.concatenate([(outputs[0][:2] + outputs[1][:2] + outputs[2][:2]) / 3,
                               (outputs[1][2:] + outputs[2][2:]) / 2])
    np.testing.assert_allclose(np.asarray(routed(images, training=False)), expected, atol=1e-6)
    assert np.abs(expected[2:] - sum(o[2:] for o in outputs) / 3).max() > 1e-4  # routing changed something
    path = tmp_path / "routed.keras"
    routed.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)
    # One member alone answers for FLAIR-only slices; 0-1 inputs route as 0-255 do.
    single = average_models(members[:2], flair_only_members=[1])
    np.testing.assert_allclose(np.asarray(single(images / 255.0, training=False))[2:],
                               np.asarray(members[1](images / 255.0, training=False))[2:], atol=1e-6)


def test_flair_only_detection_on_the_datasets_kinds_of_slice():
    rng = np.random.default_rng(6)
    head = np.zeros((1, 32, 32, 1), np.float32)
    head[:, 6:26, 6:26] = rng.uniform(40, 200, (1, 20, 20, 1))
    copies = np.repeat(head, 3, axis=-1)
    # Contrast scans that differ from FLAIR by 1% of its peak on average: not FLAIR only.
    shifted = copies.copy()
    shifted[..., 2] += 0.01 * head[..., 0].max()
    black = np.zeros((1, 32, 32, 3), np.float32)
    flags = np.asarray(RouteFlairOnly().is_flair_only(np.concatenate([copies, shifted, black]))).ravel()
    assert flags.tolist() == [True, False, True]


def test_average_of_models_refuses_one_model_or_different_shapes():
    small = build_resunet((16, 16, 3), base_filters=4, depth=2)
    with pytest.raises(ValueError, match="at least two"):
        average_models([small])
    with pytest.raises(ValueError, match="share input and output shapes"):
        average_models([small, build_resunet((32, 32, 3), base_filters=4, depth=2)])
    with pytest.raises(ValueError, match="flair_only_members"):
        average_models([small, small], flair_only_members=[2])
    grey = build_resunet((16, 16, 1), base_filters=4, depth=2)
    with pytest.raises(ValueError, match="no such channel"):
        average_models([grey, grey], flair_only_members=[1])


def test_pretrained_encoder_variant_builds_without_weights_and_round_trips(tmp_path):
    from helpers.model import build_pretrained_resunet

    model = build_pretrained_resunet((64, 64, 3), base_filters=8, encoder_weights=None)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    output = model.predict(images, verbose=0)
    assert output.shape == (2, 64, 64, 1)
    assert output.dtype == np.float32 and np.all((output >= 0) & (output <= 1))
    # The encoder's residual additions plus the decoder's five units.
    assert count_residual_additions(model) >= 16 + 5
    path = tmp_path / "pretrained.keras"
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(images, verbose=0), output, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_pretrained_resunet((48, 48, 3), encoder_weights=None)


def test_slice_standardization_is_finite_scale_free_and_standard():
    from helpers.model import SliceStandardization

    rng = np.random.default_rng(0)
    slices = np.zeros((3, 32, 32, 3), dtype=np.float32)
    slices[1, 8:24, 8:24] = rng.uniform(40, 200, size=(16, 16, 3))  # a bright "head" on black
    slices[2] = rng.uniform(0, 255, size=(32, 32, 3))
    layer = SliceStandardization()
    out = np.asarray(layer(slices))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)  # an all-black slice gives zeros, not NaN
    head = out[1, 8:24, 8:24]
    np.testing.assert_allclose(head.mean(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(head.std(axis=(0, 1)), 1.0, atol=1e-3)
    # 0-1 and 0-255 inputs give the same output, so the layer does not care which it gets.
    np.testing.assert_allclose(np.asarray(layer(slices / 255.0)), out, atol=1e-4)


def test_slice_standardization_finds_the_head_when_another_channel_has_a_grey_background():
    from helpers.model import SliceStandardization

    # As in TCGA_FG_7637: FLAIR on black, the pre-contrast channel grey (about 103) everywhere.
    rng = np.random.default_rng(1)
    image = np.zeros((1, 32, 32, 3), dtype=np.float32)
    image[..., 0] = 103.0
    image[0, 8:24, 8:24] = rng.uniform(60, 200, size=(16, 16, 3))
    head = np.zeros((32, 32), dtype=bool)
    head[8:24, 8:24] = True
    out = np.asarray(SliceStandardization(foreground_channel=1)(image))[0]
    np.testing.assert_allclose(out[head].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out[head].std(axis=0), 1.0, atol=1e-3)
    # The old rule (mean of the channels) took the whole slice for the head, so FLAIR's
    # statistics were diluted by the background and the head's values were no longer standard.
    diluted = np.asarray(SliceStandardization(foreground_channel=None)(image))[0]
    assert abs(diluted[head][:, 1].std() - 1.0) > 0.2
    # Black FLAIR means no head: zeros, as for a black slice, whatever the other channels hold.
    no_flair = image.copy()
    no_flair[..., 1] = 0.0
    np.testing.assert_array_equal(np.asarray(SliceStandardization(foreground_channel=1)(no_flair)), 0.0)
    with pytest.raises(ValueError, match="does not exist"):
        SliceStandardization(foreground_channel=3)(image)
    with pytest.raises(ValueError, match=">= 0"):
        SliceStandardization(foreground_channel=-1)


def test_models_build_with_the_flair_head_mask_and_old_configs_keep_the_mean():
    from helpers.model import SliceStandardization

    layer = build_resunet((32, 32, 3), 16, depth=2).get_layer("standardize")
    assert layer.get_config()["foreground_channel"] == 1
    # A model saved before the option has no such key: it loads with the rule it was trained with.
    old_config = {key: value for key, value in layer.get_config().items() if key != "foreground_channel"}
    assert SliceStandardization.from_config(old_config).foreground_channel is None


def test_resunet_starts_by_standardizing_unless_told_not_to():
    assert "standardize" in [layer.name for layer in build_resunet((32, 32, 3), 4, depth=2).layers]
    plain_input = build_resunet((32, 32, 3), 4, depth=2, standardize=False)
    assert "standardize" not in [layer.name for layer in plain_input.layers]


def test_foreground_mask_is_where_the_layer_standardises():
    """The NumPy head mask matches the layer: over it each channel has mean 0 and std 1.

    Channel 0 has a grey background (as TCGA_FG_7637's pre-contrast scan), so
    a mask from channel 0 or from the mean of the channels would cover the
    whole slice, and the statistics over it would not be 0 and 1.
    """
    from helpers.model import SliceStandardization, foreground_mask

    rng = np.random.default_rng(3)
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[..., 0] = 0.4  # grey outside the head
    images[:, 8:24, 8:24] = rng.uniform(0.2, 0.9, (2, 16, 16, 3))
    images[1, 8:24, 8:24, 1] *= 0.5  # a dimmer FLAIR on the second slice
    head = foreground_mask(images, foreground_channel=1)
    assert head.shape == (2, 32, 32) and head[:, 8:24, 8:24].all() and not head[:, :8].any()
    assert foreground_mask(images, foreground_channel=None).all()  # the mean: the grey covers everything
    standardized = np.asarray(SliceStandardization(foreground_channel=1)(images))
    for k in range(2):
        pixels = standardized[k][head[k]]
        np.testing.assert_allclose(pixels.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(pixels.std(axis=0), 1.0, atol=1e-3)
    # One channel: its only channel, as the layer does.
    single = images[..., 1:2]
    np.testing.assert_array_equal(foreground_mask(single, foreground_channel=1), head)


def test_flair_only_model_ignores_the_other_channels_and_round_trips(tmp_path):
    model = build_resunet((16, 16, 3), base_filters=4, depth=2, channels=(1,))
    assert model.input_shape == (None, 16, 16, 3)  # callers still pass all three sequences
    assert model.get_layer("enc0_conv1").kernel.shape[2] == 1  # the network sees one channel
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    flair_copied = images.copy()
    flair_copied[..., 0] = flair_copied[..., 2] = flair_copied[..., 1]  # a patient without contrast scans
    expected = np.asarray(model(images, training=False))
    np.testing.assert_allclose(np.asarray(model(flair_copied, training=False)), expected, atol=1e-6)
    changed_flair = images.copy()
    changed_flair[..., 1] = rng.uniform(0, 1, (2, 16, 16))
    assert not np.allclose(np.asarray(model(changed_flair, training=False)), expected, atol=1e-4)
    path = tmp_path / "flair.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True by default
    np.testing.assert_array_equal(np.asarray(loaded(images, training=False)), expected)
    assert loaded.get_layer("select_channels").channels == (1,)


def test_select_channels_refuses_missing_or_negative_channels():
    with pytest.raises(ValueError, match="indices >= 0"):
        SelectChannels(())
    with pytest.raises(ValueError, match="indices >= 0"):
        SelectChannels((-1,))
    with pytest.raises(ValueError, match="channel 3 does not exist in an input of 3 channels"):
        build_resunet((16, 16, 3), 4, depth=2, channels=(1, 3))
    # papermill's -p CHANNELS [1] arrives as text: say how to pass a list instead of failing on "[".
    with pytest.raises(ValueError, match=r"text '\[1\]'.*-y 'CHANNELS: \[1\]'"):
        SelectChannels("[1]")
