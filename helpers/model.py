"""The ResUNet: a U-Net whose blocks are pre-activation residual units.

Follows Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net" (IEEE
GRSL 2018): each unit is batch norm, ReLU, convolution, twice, added to a
shortcut; the encoder downsamples with strided convolutions; a 1x1
convolution projects the shortcut when its shape changes; the decoder
upsamples, concatenates the encoder's features at the same scale (skip
connections) and applies another residual unit. Built from Keras layers only,
so it saves to ``.keras`` and loads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="helpers")
class SliceStandardization(layers.Layer):
    """Z-score each channel of each slice over its foreground (the head).

    MRI intensities have no fixed scale: the same tissue is bright in one
    scanner's FLAIR and dim in another's, and the dataset's slices keep those
    differences. Standardising each slice, channel by channel, over the
    pixels that are not background removes them (nnU-Net does the same,
    per image, for MRI). It is per slice, not per patient volume, so a single
    slice that a user brings is normalised exactly as in training. Living in
    the model, it travels with the saved file.

    In the models ``build_resunet`` builds, foreground is where the FLAIR
    channel exceeds ``foreground_fraction`` of its brightest pixel, so the
    layer works for inputs in 0-1 or 0-255 alike. It is read from FLAIR
    alone because some institutions' slices have a grey, not black,
    background in another channel (the pre-contrast channel of TCGA_FG_7637
    sits at about 103 of 255 outside the head): a mask from all channels
    would then cover the whole slice. A slice with no foreground (all
    black) gives zeros, never NaN.

    Args:
        foreground_fraction: share of the slice maximum above which a pixel
            is foreground.
        foreground_channel: channel that defines the foreground (1, the
            FLAIR channel of the dataset's slices, is what ``build_resunet``
            passes; a one-channel input uses its only channel); ``None``,
            the default, uses the mean of all channels, as models saved
            before this option did.
        epsilon: floor of the standard deviation.
        clip: outputs are clipped to +-clip.

    Raises:
        ValueError: if ``foreground_channel`` is negative, or not below the
            number of channels of a multi-channel input.

    Input shape: (B, H, W, C), float or integer, any non-negative scale
    (0-1 and 0-255 give the same output, to rounding).
    Output shape: float32 (B, H, W, C), about zero mean and unit variance
    over the foreground, within +-clip.
    """

    def __init__(self, foreground_fraction: float = 0.05, epsilon: float = 1e-3,
                 clip: float = 5.0, foreground_channel: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if foreground_channel is not None and int(foreground_channel) < 0:
            raise ValueError(f"foreground_channel must be None or a channel index >= 0, not {foreground_channel}.")
        self.foreground_fraction = foreground_fraction
        self.foreground_channel = foreground_channel
        self.epsilon = epsilon
        self.clip = clip

    def call(self, images):
        images = ops.cast(images, "float32")
        channels = images.shape[-1]
        channel = self.foreground_channel
        if channel is None or channels == 1:
            brightness = ops.mean(images, axis=-1, keepdims=True)
        elif channels is not None and channel >= channels:
            raise ValueError(f"foreground_channel {channel} does not exist in an input of {channels} channels.")
        else:
            brightness = images[..., channel:channel + 1]
        peak = ops.max(brightness, axis=(1, 2, 3), keepdims=True)
        foreground = ops.cast(brightness > self.foreground_fraction * peak, "float32")
        pixels = ops.sum(foreground, axis=(1, 2), keepdims=True)
        count = ops.maximum(pixels, 1.0)
        mean = ops.sum(images * foreground, axis=(1, 2), keepdims=True) / count
        variance = ops.sum(ops.square(images - mean) * foreground, axis=(1, 2), keepdims=True) / count
        scale = ops.maximum(ops.sqrt(variance), self.epsilon * ops.maximum(peak, 1e-6))
        standardized = ops.clip((images - mean) / scale, -self.clip, self.clip)
        # No foreground (a black slice, or black FLAIR): zeros, not a saturated +-clip.
        # (images * 0 rather than 0, so that a NaN input still shows as NaN.)
        return ops.where(pixels > 0, standardized, images * 0.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "foreground_fraction": self.foreground_fraction,
                "epsilon": self.epsilon, "clip": self.clip,
                "foreground_channel": self.foreground_channel}


@keras.saving.register_keras_serializable(package="helpers")
class SelectChannels(layers.Layer):
    """Keep some channels of the input and drop the others.

    The dataset's slices hold three MRI sequences (pre-contrast, FLAIR,
    post-contrast), but a few patients lack one or both contrast scans and
    have FLAIR copied in their place. A model that reads FLAIR alone
    (``channels=(1,)``) cannot be misled by such a copy, and the tumour
    outlines of this dataset were drawn on FLAIR. Living in the model, the
    choice travels with the saved file: callers keep passing all channels.

    Args:
        channels: indices of the channels to keep, in order.

    Raises:
        ValueError: if ``channels`` is empty, holds a negative index, or is
            text (as papermill's ``-p`` passes a list).

    Input shape: (B, H, W, C) with C greater than every index.
    Output shape: (B, H, W, len(channels)), the input's dtype.
    """

    def __init__(self, channels=(1,), **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, str):  # papermill's -p CHANNELS [1] passes the text "[1]"
            raise ValueError(f"channels must be a list of indices, not the text {channels!r}; "
                             "from papermill, pass lists with -y 'CHANNELS: [1]'.")
        self.channels = tuple(int(c) for c in channels)
        if not self.channels or min(self.channels) < 0:
            raise ValueError(f"channels must be one or more indices >= 0, not {channels}.")

    def build(self, input_shape):
        if input_shape[-1] is not None and max(self.channels) >= input_shape[-1]:
            raise ValueError(f"channel {max(self.channels)} does not exist in an input of {input_shape[-1]} channels.")

    def call(self, images):
        return ops.take(images, list(self.channels), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.channels))

    def get_config(self):
        return {**super().get_config(), "channels": list(self.channels)}


@keras.saving.register_keras_serializable(package="helpers")
class RouteFlairOnly(layers.Layer):
    """Choose, slice by slice, between two predictions by whether the slice is FLAIR only.

    Four of the 68 patients here (TCGA_DU_7013, TCGA_FG_A60K, TCGA_HT_7877,
    TCGA_HT_A61B) have no contrast scans: FLAIR is copied into all three
    channels. A network that reads all three sequences loses most on such
    slices (on the validation patients made FLAIR-only, the three-sequence
    run 5 scores 0.689 against 0.789 as given), and one that reads FLAIR
    alone does not. This layer gives FLAIR-only slices the second prediction
    and the others the first. A slice counts as FLAIR only when each other
    channel differs from FLAIR by at most ``tolerance`` of FLAIR's brightest
    pixel on average over the slice: 0 on those four patients, at least 0.01
    on every slice of the other 64, so the default 0.005 separates them with
    room for a lossy copy.

    Args:
        flair_channel: index of FLAIR (1 in the dataset's slices).
        tolerance: largest mean absolute difference from FLAIR, as a share
            of FLAIR's peak, of a FLAIR-only slice.

    Input: a list ``[images, ordinary, flair_only]``: the model's input
    (B, H, W, C), any non-negative scale, and two predictions
    (B, H', W', K) of the same shape.
    Output: float32 (B, H', W', K), ``flair_only`` for FLAIR-only slices and
    ``ordinary`` for the rest.
    """

    def __init__(self, flair_channel: int = 1, tolerance: float = 0.005, **kwargs):
        super().__init__(**kwargs)
        self.flair_channel = int(flair_channel)
        self.tolerance = float(tolerance)

    def call(self, inputs):
        images, ordinary, flair_only = inputs
        return ops.where(self.is_flair_only(images), ops.cast(flair_only, "float32"),
                         ops.cast(ordinary, "float32"))

    def is_flair_only(self, images):
        """(B, 1, 1, 1) booleans: which slices of (B, H, W, C) are FLAIR copied into every channel."""
        images = ops.cast(images, "float32")
        flair = images[..., self.flair_channel:self.flair_channel + 1]
        peak = ops.maximum(ops.max(flair, axis=(1, 2, 3), keepdims=True), 1e-6)
        difference = ops.mean(ops.abs(images - flair), axis=(1, 2), keepdims=True)
        return ops.max(difference, axis=-1, keepdims=True) <= self.tolerance * peak

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "flair_channel": self.flair_channel, "tolerance": self.tolerance}


def foreground_mask(images, foreground_channel: int | None = 1, foreground_fraction: float = 0.05):
    """The pixels ``SliceStandardization`` standardises over: the head.

    The same rule as the layer, in NumPy, for figures and checks: a pixel is
    foreground where the foreground channel (the mean of the channels when
    it is ``None``, or the only channel of a one-channel input) exceeds
    ``foreground_fraction`` of that slice's brightest value in it.

    Args:
        images: (N, H, W, C) array, any non-negative scale.
        foreground_channel: channel that defines the foreground (1 is FLAIR,
            as ``build_resunet`` uses); ``None``: the mean of the channels.
        foreground_fraction: share of the slice maximum above which a pixel
            is foreground.

    Returns:
        bool (N, H, W).
    """
    images = np.asarray(images, np.float32)
    if foreground_channel is None or images.shape[-1] == 1:
        brightness = images.mean(axis=-1)
    else:
        brightness = images[..., foreground_channel]
    peak = brightness.max(axis=(1, 2), keepdims=True)
    return brightness > foreground_fraction * peak


def residual_unit(
    inputs: keras.KerasTensor,
    filters: int,
    strides: int = 1,
    first: bool = False,
    residual: bool = True,
    name: str = "unit",
) -> keras.KerasTensor:
    """One pre-activation residual unit (or a plain U-Net block).

    Args:
        inputs: feature map (B, H, W, C).
        filters: output channels.
        strides: 2 to halve height and width (the encoder's downsampling).
        first: the network's first unit, which sees the raw image and so
            starts with a convolution instead of batch norm and ReLU.
        residual: add the shortcut; False gives a plain two-convolution
            block of the same width, for comparison.
        name: prefix of the layer names.

    Returns:
        Feature map (B, H / strides, W / strides, filters).
    """
    x = inputs
    if not first:
        x = layers.BatchNormalization(name=f"{name}_bn1")(x)
        x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = layers.Activation("relu", name=f"{name}_relu2")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(x)
    if not residual:
        return x
    shortcut = inputs
    if strides != 1 or inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, name=f"{name}_proj")(inputs)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def build_resunet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    base_filters: int = 16,
    depth: int = 4,
    dropout: float = 0.0,
    num_classes: int = 1,
    residual: bool = True,
    standardize: bool = True,
    channels: tuple[int, ...] | None = None,
    name: str = "resunet",
) -> keras.Model:
    """Build the ResUNet (or a plain U-Net with ``residual=False``).

    Args:
        input_shape: (H, W, channels); H and W must be divisible by
            ``2 ** depth``.
        base_filters: channels of the first level; each level below doubles it.
        depth: number of downsamplings (levels below the first, the last
            being the bridge).
        dropout: dropout rate before the bridge and in the decoder, 0 for none.
        num_classes: 1 gives a sigmoid mask (B, H, W, 1); more give a softmax
            over classes (B, H, W, num_classes), class 0 being background.
        residual: use residual units; False gives plain U-Net blocks.
        standardize: start with ``SliceStandardization`` (per-slice,
            per-channel z-score over the head); False feeds the 0-1 input
            as it is.
        channels: input channels the network reads (``SelectChannels``),
            e.g. ``(1,)`` for FLAIR alone; ``None`` reads all of them. The
            model still takes all C channels, so callers need not change.
        name: the model's name.

    Returns:
        An uncompiled Keras model mapping float32 (B, H, W, C) in [0, 1] to
        probabilities (B, H, W, num_classes), float32 even under mixed
        precision. With ``standardize``, images of 0-255 (uint8 batches of
        ``make_dataset(image_dtype="uint8")``) give the same output.

    Raises:
        ValueError: if H or W is not divisible by ``2 ** depth``.
    """
    height, width = input_shape[:2]
    if height % 2**depth or width % 2**depth:
        odd = height if height % 2**depth else width
        raise ValueError(
            f"Input size {height}x{width} must be divisible by 2**depth = {2**depth}: choose an input size "
            f"that is a multiple of {2**depth} ({max(odd // 2**depth, 1) * 2**depth} or "
            f"{(odd // 2**depth + 1) * 2**depth}, say) or a smaller depth."
        )
    inputs = keras.Input(shape=input_shape, name="image")
    x = SliceStandardization(foreground_channel=1, name="standardize")(inputs) if standardize else inputs
    if channels is not None:
        x = SelectChannels(channels, name="select_channels")(x)
    x = residual_unit(x, base_filters, first=True, residual=residual, name="enc0")
    skips = [x]
    for level in range(1, depth + 1):
        if level == depth and dropout:
            x = layers.Dropout(dropout, name="bridge_dropout")(x)
        x = residual_unit(
            x, base_filters * 2**level, strides=2, residual=residual,
            name="bridge" if level == depth else f"enc{level}",
        )
        if level < depth:
            skips.append(x)
    for level in range(depth - 1, -1, -1):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_skip")([x, skips[level]])
        if dropout:
            x = layers.Dropout(dropout, name=f"dec{level}_dropout")(x)
        x = residual_unit(x, base_filters * 2**level, residual=residual, name=f"dec{level}")
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = layers.Conv2D(
        num_classes, 1, activation=activation, dtype="float32", name="mask"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def count_residual_additions(model: keras.Model) -> int:
    """Number of ``Add`` layers (residual additions) in a model."""
    return sum(isinstance(layer, layers.Add) for layer in model.layers)


def require_one_channel(model: keras.Model, probabilities: np.ndarray) -> None:
    """Refuse a model's output that is not one tumour-probability channel.

    Prediction and per-patient Dice here read the tumour channel of a
    sigmoid model; channel 0 of a softmax model is the background, so its
    Dice would be the background's, with no error.

    Args:
        model: the segmentation model that gave the output (named in the error).
        probabilities: its output, shape (B, H, W, C).

    Raises:
        ValueError: if C is not 1; the message names the model and what to use.
    """
    channels = probabilities.shape[-1]
    if channels != 1:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"Model {name!r} gives {channels} channels (a softmax over classes, class 0 the background); "
            "this function reads one tumour channel (build_resunet(num_classes=1)). For several classes, "
            "call model.predict and take the argmax over the last axis."
        )


PRETRAINED_SKIPS = ("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu")


def build_pretrained_resunet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    base_filters: int = 16,
    num_classes: int = 1,
    encoder_weights: str | None = "imagenet",
    freeze_encoder: bool = False,
    name: str = "resunet_resnet50v2",
) -> keras.Model:
    """A ResUNet whose encoder is ResNet50V2, optionally ImageNet-pretrained.

    ResNet50V2 (``keras.applications``) is built from the same pre-activation
    residual units as the ResUNet, so its ImageNet weights can start the
    encoder (transfer learning); the decoder is the ResUNet's. The encoder's
    features at 1/2, 1/4, 1/8 and 1/16 of the input feed the skip
    connections, its 1/32 output is the bridge, and a residual unit on the
    full-resolution image gives the last skip.

    Args:
        input_shape: (H, W, 3); H and W divisible by 32.
        base_filters: channels of the decoder's full-resolution level; each
            level below doubles it.
        num_classes: 1 for a sigmoid mask, more for a softmax over classes.
        encoder_weights: ``"imagenet"`` to download the pretrained weights
            (needs network, as in Colab), ``None`` for random initialisation.
        freeze_encoder: keep the encoder's weights fixed.
        name: the model's name.

    Returns:
        An uncompiled model mapping float32 (B, H, W, 3) in [0, 1] to
        probabilities (B, H, W, num_classes), float32.

    Raises:
        ValueError: if H or W is not divisible by 32.
    """
    height, width = input_shape[:2]
    if height % 32 or width % 32:
        raise ValueError(f"Input size {height}x{width} must be divisible by 32 for the ResNet50V2 encoder.")
    inputs = keras.Input(shape=input_shape, name="image")
    # ResNet50V2 expects inputs in [-1, 1].
    scaled = layers.Rescaling(2.0, offset=-1.0, name="to_minus_one_one")(inputs)
    encoder = keras.applications.ResNet50V2(include_top=False, weights=encoder_weights, input_tensor=scaled)
    encoder.trainable = not freeze_encoder
    skips = [residual_unit(inputs, base_filters, first=True, name="enc0")]
    skips += [encoder.get_layer(layer_name).output for layer_name in PRETRAINED_SKIPS]
    x = encoder.get_layer("post_relu").output
    for level in range(len(skips) - 1, -1, -1):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_skip")([x, skips[level]])
        x = residual_unit(x, base_filters * 2**level, name=f"dec{level}")
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = layers.Conv2D(num_classes, 1, activation=activation, dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


def average_models(models: list[keras.Model], name: str = "ensemble",
                   flair_only_members: list[int] | None = None) -> keras.Model:
    """One model whose output is the mean of several models' outputs.

    Averaging the probabilities of networks trained from different random
    starts, or reading the slices differently (all three sequences, FLAIR
    alone), smooths out each one's mistakes: an ensemble. The shipped model
    is the mean of two such ResUNets, with FLAIR-only slices given to the one
    reading FLAIR alone (``flair_only_members=[1]``). The result is a single functional
    model, so it saves to one ``.keras`` file and is used like any other;
    predicting costs the sum of its members.

    Args:
        models: two or more models with the same input and output shapes,
            e.g. ResUNets trained with different ``--init-seed`` or
            ``--channels``.
        name: the ensemble's name.
        flair_only_members: indices of the members whose mean alone answers
            for slices that are FLAIR copied into every channel (those
            reading FLAIR alone: they are not misled by the copies), chosen
            by ``RouteFlairOnly``; ``None``: every slice gets the mean of all.

    Returns:
        An uncompiled model mapping (B, H, W, C) to the mean of the members'
        (B, H, W, num_classes) outputs, float32 (on FLAIR-only slices, with
        ``flair_only_members``, the mean of those members only). The members
        are copies, named ``member0``, ``member1``, ..., without optimizer
        state.

    Raises:
        ValueError: with fewer than two models, shapes that differ, or
            ``flair_only_members`` empty, naming no member, or given for an
            input without a FLAIR channel (fewer than two channels).
    """
    if len(models) < 2:
        raise ValueError(f"An ensemble needs at least two models, got {len(models)}.")
    shapes = {(tuple(m.input_shape), tuple(m.output_shape)) for m in models}
    if len(shapes) > 1:
        raise ValueError(f"Models to average must share input and output shapes, got {sorted(shapes)}.")
    if flair_only_members is not None and (
            not flair_only_members or not set(flair_only_members) <= set(range(len(models)))):
        raise ValueError(f"flair_only_members must name members 0 to {len(models) - 1}, not {flair_only_members}.")
    if flair_only_members is not None and (models[0].input_shape[-1] or 0) < 2:
        raise ValueError(f"flair_only_members routes slices by comparing their channels with FLAIR (channel 1); "
                         f"an input of shape {models[0].input_shape[1:]} has no such channel.")
    inputs = keras.Input(shape=models[0].input_shape[1:], name="image")
    outputs = []
    for index, model in enumerate(models):
        # Rebuilt from its config under a new name: layer names must be unique.
        member = keras.Model.from_config({**model.get_config(), "name": f"member{index}"})
        member.set_weights(model.get_weights())
        outputs.append(member(inputs))
    averaged = layers.Average(dtype="float32", name="mean_probability")(outputs)
    if flair_only_members is not None:
        chosen = [outputs[index] for index in sorted(set(flair_only_members))]
        flair_only = chosen[0] if len(chosen) == 1 else layers.Average(
            dtype="float32", name="mean_probability_flair_only")(chosen)
        averaged = RouteFlairOnly(dtype="float32", name="route_flair_only")([inputs, averaged, flair_only])
    return keras.Model(inputs, averaged, name=name)


def unit_table(model: keras.Model):
    """One row per unit of a ResUNet: output shape, layers and parameters.

    Layers are grouped by the prefix of their names (``enc1``, ``bridge``,
    ``dec0``...), which ``build_resunet`` gives them.

    Returns:
        A pandas DataFrame with columns ``unit``, ``output_shape``,
        ``layers`` and ``parameters``.
    """
    import pandas as pd

    rows: dict[str, dict] = {}
    for layer in model.layers:
        unit = layer.name.split("_")[0]
        row = rows.setdefault(unit, {"unit": unit, "output_shape": None, "layers": 0, "parameters": 0})
        row["layers"] += 1
        row["parameters"] += layer.count_params()
        row["output_shape"] = tuple(layer.output.shape[1:])
    return pd.DataFrame(list(rows.values()))
