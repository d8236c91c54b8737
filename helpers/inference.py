"""Segment the MRI images a user brings: load any common image, predict its mask.

``load_image`` turns a PNG, JPEG or TIFF of any kind (grayscale, colour,
with alpha, palette, 16-bit, rotated by its EXIF tag, any size) into the
uint8 (H, W, 3) array the model expects, or raises ``ImageLoadError`` with a
message that names the file and says what to do. ``segment`` predicts the
tumour mask at the image's own height and width. The command line
(``helpers.predict``), the web app (``helpers.app``) and notebook 06 are thin
wrappers over these functions.

The model was trained on the LGG dataset's 256x256 slices (three channels:
pre-contrast, FLAIR, post-contrast; the shipped one reads them at 128x128).
Other images are segmented all the same, but the result means little unless
the image looks like those slices. This is for research and teaching, not diagnosis.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from helpers import evaluation, metrics, plots
from helpers.model import RouteFlairOnly

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "resunet_lgg.keras"
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MODEL_CACHE_SIZE = 4
# What an input must hold; the command line, the app and notebook 06 say it.
CHANNELS_NOTE = (
    "A colour image must hold the pre-contrast, FLAIR and post-contrast scans of one slice as its red, green and "
    "blue channels, as the dataset's slices do; a grey-scale image (or one whose three channels are equal) is "
    "read as FLAIR alone. Any other sequence given alone (T1, T2, post-contrast) gives a meaningless mask."
)
# Region sizes are counted on a slice of the dataset's size, where they were chosen.
REFERENCE_PIXELS = 256 * 256

_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_KNOWN_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff") + _TIFF_SIGNATURES
_model_cache: dict[tuple[Path, int], keras.Model] = {}


class ImageLoadError(ValueError):
    """Raised when a file cannot be read as an image; the message names the file."""


@dataclass
class Segmentation:
    """The model's answer for one image.

    Attributes:
        probabilities: float32 (H, W), values 0-1, tumour probability of each pixel.
        mask: uint8 (H, W), values 0 and 1, the thresholded prediction.
        overlay: uint8 (H, W, 3), the image with the predicted tumour
            outlined in yellow (``helpers.plots.overlay``).
        tumour_pixels: number of pixels in ``mask``.
        max_probability: the highest pixel probability, 0-1.
        flair_only: whether the image was read as FLAIR alone (its three
            channels equal, as a grey-scale image's are), by the rule the
            shipped model routes such slices with
            (``helpers.model.RouteFlairOnly``).
    """

    probabilities: np.ndarray
    mask: np.ndarray
    overlay: np.ndarray
    tumour_pixels: int
    max_probability: float
    flair_only: bool = False

    @property
    def read_as(self) -> str:
        """``"FLAIR alone"`` or ``"three sequences"``: how the image was read."""
        return "FLAIR alone" if self.flair_only else "three sequences"

    @property
    def tumour_present(self) -> bool:
        """Whether any pixel is predicted as tumour."""
        return self.tumour_pixels > 0


def load_image(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview, name: str | None = None) -> np.ndarray:
    """Read an image file of any common kind as an RGB uint8 array.

    Conversions, so that every kind reaches the model in the same form:

    * Grayscale (1, 8 or 16 bits) is replicated to three channels.
    * RGBA and grayscale with alpha are composited on black: each channel is
      multiplied by alpha / 255, so transparent pixels become background.
    * Palette images are expanded to RGB (or RGBA, then composited, when the
      palette has a transparent entry).
    * 16-bit images are stretched linearly from 0 to their own brightest
      value, which becomes 255 (so 12-bit MRI, at most 4095, keeps its grey
      levels); a 16-bit alpha channel is divided by 257. 16-bit colour
      PNGs are read with OpenCV, since Pillow keeps only their high byte.
    * Float, signed or 32-bit images likewise, from 0 to their brightest
      value; negative values are clipped to 0 (background).
    * CMYK, YCbCr and other colour spaces are converted to RGB by Pillow.
    * The EXIF orientation tag (JPEG, TIFF) is honoured: the array is
      rotated or flipped so that it looks as a photo viewer shows it, and
      its height and width are those of the rotated image.
    * Animated PNG or multi-frame files: the first frame is read; a TIFF of
      several pages is refused, since it holds a volume, not a slice.

    TIFF files are read with tifffile (which reads 16-bit colour, float and
    planar TIFFs that Pillow cannot), falling back to Pillow if tifffile
    fails; other formats (PNG, JPEG, and others Pillow reads, such as BMP
    and WebP) are read with Pillow.

    Args:
        path_or_bytes: a file path, or the file's content as bytes.
        name: the name used in error messages; defaults to the path, or
            ``"<uploaded bytes>"`` for bytes.

    Returns:
        uint8 array (H, W, 3), values 0-255, at the image's own height and width.

    Raises:
        ImageLoadError: naming the file and what to do, if it is missing,
            empty (0 bytes), truncated, not an image, or has more than
            ``MAX_PIXELS`` pixels once padded to a square (``segment`` pads it).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        content = bytes(path_or_bytes)
        name = name or "<uploaded bytes>"
    else:
        path = Path(path_or_bytes)
        name = name or str(path)
        if not path.is_file():
            raise ImageLoadError(f"{name}: no such file. Check the path and try again.")
        content = path.read_bytes()
    if len(content) == 0:
        raise ImageLoadError(
            f"{name}: the file is empty (0 bytes). Copy or upload it again from its source."
        )
    if content[:4] in _TIFF_SIGNATURES:
        try:
            array = _read_tiff(content, name)
        except ImageLoadError:
            raise
        except Exception as tiff_error:  # tifffile raises many types; Pillow may still read it.
            try:
                array = _read_with_pillow(content, name)
            except ImageLoadError as pillow_error:
                raise ImageLoadError(
                    f"{pillow_error} (tifffile also failed: {type(tiff_error).__name__}: {tiff_error})"
                ) from tiff_error
    else:
        array = _read_deep_colour_png(content, name)
        if array is None:
            array = _read_with_pillow(content, name)
    return _to_rgb_uint8(array, name)


def _read_deep_colour_png(content: bytes, name: str) -> np.ndarray | None:
    """A PNG of 16-bit colour (RGB, RGBA, grey with alpha) read with OpenCV; ``None`` for any other file.

    Pillow keeps only the high byte of such a PNG's channels, so a 12-bit
    export would fall to 16 grey levels; OpenCV keeps all 16 bits.
    """
    if not content.startswith(b"\x89PNG") or len(content) < 26 or content[24] != 16 or content[25] not in (2, 4, 6):
        return None
    _check_pixels(int.from_bytes(content[20:24], "big"), int.from_bytes(content[16:20], "big"), name)
    array = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        return None  # damaged: Pillow says how
    # OpenCV gives blue first (grey with alpha comes as four channels, grey repeated).
    array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    with Image.open(io.BytesIO(content)) as image:  # an eXIf chunk may say how the image is turned
        orientation = int(image.getexif().get(0x0112, 1))
    return _apply_orientation(array, orientation)


def _check_pixels(height: int, width: int, name: str) -> None:
    # ``segment`` pads an image to a square before resizing it, so the square's area is what counts:
    # a long thin image of few pixels would otherwise become a square of many.
    side = max(height, width)
    if side * side > MAX_PIXELS:
        padded = f" ({side}x{side} = {side * side:,} once padded to a square)" if height != width else ""
        raise ImageLoadError(
            f"{name}: {width}x{height} = {height * width:,} pixels{padded}, more than the limit of "
            f"{MAX_PIXELS:,} (MAX_PIXELS). Downscale the image first: the model works on "
            "256x256 slices, so nothing is lost by shrinking it."
        )


def _read_with_pillow(content: bytes, name: str) -> np.ndarray:
    """Decode with Pillow; returns (H, W), (H, W, 3) or (H, W, 4) before dtype scaling."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; treat
            # that as the error it is here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content))
            _check_pixels(image.height, image.width, name)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(
            f"{name}: refused as a possible decompression bomb ({error}). Downscale the "
            f"image to at most {MAX_PIXELS:,} pixels first."
        ) from error
    except UnidentifiedImageError as error:
        if content.startswith(_KNOWN_SIGNATURES):
            raise ImageLoadError(
                f"{name}: the image is truncated: it starts like a PNG, JPEG or TIFF but "
                "ends too soon. Copy or upload the file again from its source."
            ) from error
        raise ImageLoadError(
            f"{name}: not an image that can be read (the content is not PNG, JPEG or "
            "TIFF). Export the slice as PNG, JPEG or TIFF and try again."
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(
            f"{name}: the image is truncated or damaged ({error}). Copy or upload the "
            "file again from its source."
        ) from error
    return _pillow_to_array(image)


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        # Some Pillow versions give big-endian or odd dtypes for I;16B.
        array = array.astype(np.uint16)
    elif image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        # 16-bit grayscale PNGs open as 32-bit "I" in some Pillow versions.
        array = array.astype(np.uint16)
    return array


class _NotGreyOrRgb(Exception):
    """A TIFF whose pixels are not grey or RGB values (palette, CMYK, YCbCr...): Pillow converts those."""


def _read_tiff(content: bytes, name: str) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(content)) as tiff:
        pages = len(tiff.series[0].pages) if tiff.series else 1
        if pages > 1:
            raise ImageLoadError(
                f"{name}: a TIFF of {pages} pages (a volume or a stack of sequences?) where one slice is "
                "expected. Save each slice as its own file (three sequences of one slice as the red, green "
                "and blue channels of one page) and try again."
            )
        page = tiff.pages[0]
        axes = page.axes
        shape = dict(zip(axes, page.shape, strict=True))
        _check_pixels(shape.get("Y", 1), shape.get("X", 1), name)
        photometric = page.photometric
        if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB,
                               tifffile.PHOTOMETRIC.MINISWHITE):
            raise _NotGreyOrRgb(f"photometric {photometric.name}")
        array = page.asarray()
        if photometric == tifffile.PHOTOMETRIC.MINISWHITE:  # 0 is white: turn it the usual way round
            if array.dtype == bool:
                array = ~array
            elif np.issubdtype(array.dtype, np.integer):
                array = np.iinfo(array.dtype).max - array
            else:  # float: the brightest stored value is black
                array = np.nanmax(array) + np.nanmin(array) - array if array.size else array
        orientation_tag = page.tags.get("Orientation")
        orientation = int(orientation_tag.value) if orientation_tag is not None else 1
    if "S" in axes and axes.index("S") < axes.index("Y"):
        # Planar TIFFs store one plane per channel: move channels last.
        array = np.moveaxis(array, axes.index("S"), -1)
    array = np.squeeze(array)
    if array.ndim not in (2, 3):
        raise ImageLoadError(
            f"{name}: a TIFF of shape {array.shape} (axes {axes}) is not a 2D image. "
            "Save one slice per file and try again."
        )
    return _apply_orientation(array, orientation)


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate or flip as the EXIF/TIFF orientation tag says (same table as Pillow)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, 3),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return transforms.get(orientation, lambda a: a)(array)


def _to_rgb_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale to uint8 and give three channels, compositing alpha on black."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ImageLoadError(
            f"{name}: an image of shape {array.shape} has no 1, 2, 3 or 4 channels. "
            "Export the slice as a grayscale or RGB PNG and try again."
        )
    if array.dtype == bool:
        scaled = array.astype(np.float32) * 255.0
    elif array.dtype == np.uint8:
        scaled = array.astype(np.float32)
    else:
        # 16-bit, 32-bit, signed or float values are intensities with 0 as background. Negative values
        # (the ringing of a resampled scan, the padding of a signed export) are clipped to 0, which the
        # model's head mask takes for background; the rest are stretched from 0 to the brightest value,
        # not to the type's range: MRI exported at 12 bits (at most 4095) keeps its grey levels.
        values = array.astype(np.float64)
        values = np.where(np.isfinite(values), np.maximum(values, 0.0), 0.0)
        has_alpha = values.ndim == 3 and values.shape[2] in (2, 4)
        colour = values[..., :-1] if has_alpha else values
        peak = float(colour.max()) if colour.size else 0.0
        colour *= 255.0 / peak if peak > 0 else 0.0
        if has_alpha:  # 16-bit alpha runs to 65535, float alpha to 1
            alpha = values[..., -1]
            full = 65535.0 if array.dtype == np.uint16 else max(1.0, float(alpha.max()) if alpha.size else 1.0)
            values[..., -1] = alpha * (255.0 / full)
        scaled = values.astype(np.float32)
    if scaled.ndim == 3 and scaled.shape[2] in (2, 4):
        colour, alpha = scaled[..., :-1], scaled[..., -1:] / 255.0
        scaled = colour * alpha
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def segment(
    model: keras.Model, image: np.ndarray, threshold: float = 0.5, min_component_pixels: int = 0
) -> Segmentation:
    """Predict the tumour mask of one image at its own size.

    The image is resized to the model's input size (padded with black to
    a square first if it is not square), predicted, and the probabilities
    resized back (``helpers.evaluation.predict_probabilities``), then
    thresholded (``helpers.evaluation.binarize``).

    Args:
        model: a model mapping (B, S, S, 3) in [0, 1] to (B, S, S, 1).
        image: uint8 (H, W, 3), values 0-255, as returned by ``load_image``.
        threshold: a pixel is tumour when its probability is above this, 0-1.
        min_component_pixels: predicted regions (8-connected) with fewer
            pixels than this, counted on a 256x256 slice (the dataset's
            size, where it was chosen), are dropped; on an image of another
            size the count is scaled by the area of the square it is padded
            to (x4 at 512x512 and at 512x300). 0 keeps all.

    Returns:
        A ``Segmentation`` whose arrays have the image's height and width.

    Raises:
        ValueError: if the image is not uint8 (H, W, 3) or the threshold is
            outside 0-1.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"Expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}. "
            "Read files with helpers.inference.load_image."
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be between 0 and 1.")
    probabilities = evaluation.predict_probabilities(model, image[None])[0]
    scaled_pixels = round(min_component_pixels * max(image.shape[:2]) ** 2 / REFERENCE_PIXELS)
    if min_component_pixels > 0:
        scaled_pixels = max(scaled_pixels, 1)
    mask = evaluation.binarize(probabilities, threshold, scaled_pixels)
    return Segmentation(
        probabilities=probabilities.astype(np.float32),
        mask=mask,
        overlay=plots.overlay(image, prediction=mask),
        tumour_pixels=int(mask.sum()),
        max_probability=float(probabilities.max()),
        flair_only=is_flair_only(image),
    )


def is_flair_only(image: np.ndarray) -> bool:
    """Whether an image holds FLAIR alone, by the rule the shipped model routes slices with.

    Args:
        image: uint8 (H, W, 3), values 0-255, FLAIR in channel 1.

    Returns:
        True when the other two channels repeat FLAIR (a grey-scale image, or
        a patient scanned without contrast), within ``RouteFlairOnly``'s
        tolerance. Such an image carries FLAIR alone whatever network reads
        it; the shipped model answers it with its FLAIR network. A large
        image is judged on every n-th pixel, about 256 x 256 of them, as
        the model sees it at about that size.
    """
    step = max(1, max(image.shape[:2]) // 256)
    flags = RouteFlairOnly().is_flair_only(np.asarray(image[::step, ::step], np.float32)[None])
    return bool(keras.ops.convert_to_numpy(flags).item())


def recommended_settings(model_path: str | os.PathLike | None = None) -> dict:
    """Threshold and smallest region chosen on validation patients for a model, if recorded.

    A model may ship with ``<name>.json`` beside ``<name>.keras`` holding the
    ``threshold`` and ``min_component_pixels`` chosen for single slices on
    its validation patients (notebook 05 and ``benchmarks/quality.py`` write it).

    Args:
        model_path: the model file; ``None`` for ``DEFAULT_MODEL``.

    Returns:
        ``{"threshold": float, "min_component_pixels": int}``; 0.5 and 0 when
        nothing is recorded.

    Raises:
        ValueError: naming the ``.json`` file, if it is not a JSON object.
    """
    sidecar = Path(model_path or DEFAULT_MODEL).expanduser().with_suffix(".json")
    settings = {"threshold": 0.5, "min_component_pixels": 0}
    if sidecar.exists():
        try:
            recorded = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{sidecar}: the settings beside the model cannot be read ({error}). Restore it "
                             "from where the model came from, or move it aside to use 0.5 and 0.") from None
        if not isinstance(recorded, dict):
            raise ValueError(f"{sidecar}: the settings beside the model are not a JSON object. Restore it from "
                             "where the model came from, or move it aside to use 0.5 and 0.")
        recorded = recorded.get("single_slice", {})
        settings.update({k: recorded[k] for k in settings if k in recorded})
    return settings


def resolve_model_path(model_path: str | os.PathLike | None = None, artifacts_dir: str | os.PathLike | None = None) -> Path:
    """Choose which saved model to use.

    Order: ``model_path`` when given; else ``artifacts_dir/model.keras``
    when it exists (the model notebook 04 trained); else ``DEFAULT_MODEL``,
    the model shipped with the repository.

    Returns:
        The absolute path (it may not exist; ``load_default_model`` says so).
    """
    if model_path is not None:
        return Path(model_path).expanduser().resolve()
    if artifacts_dir is not None and (Path(artifacts_dir) / "model.keras").is_file():
        return (Path(artifacts_dir) / "model.keras").resolve()
    return DEFAULT_MODEL


def load_default_model(path: str | os.PathLike | None = None) -> keras.Model:
    """Load a saved model, once per path: later calls return the same object.

    A model file that changed on disk (retrained) is loaded again.

    Args:
        path: a ``.keras`` file; ``None`` for ``DEFAULT_MODEL``.

    Returns:
        The Keras model.

    Raises:
        FileNotFoundError: naming the path, if there is no file there.
        ValueError: naming the path, if the file is not a saved Keras model.
    """
    path = Path(path).expanduser().resolve() if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"No model at {path}. Train one with notebooks/04_training.ipynb (it writes "
            "ARTIFACTS_DIR/model.keras), or pass the path of a saved .keras model "
            "(--model PATH on the command line)."
        )
    key = (path, path.stat().st_mtime_ns)
    if key not in _model_cache:
        for old_key in [k for k in _model_cache if k[0] == path]:
            del _model_cache[old_key]
        while len(_model_cache) >= MODEL_CACHE_SIZE:
            del _model_cache[next(iter(_model_cache))]
        _model_cache[key] = evaluation.load_model(path)
    return _model_cache[key]


def find_images(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """List the images to segment among files and folders.

    Folders are searched recursively for ``IMAGE_SUFFIXES`` (any letter
    case). A file named on its own is taken whatever its suffix. Files whose
    name (without suffix) ends in ``_mask`` are ground truth, not inputs.

    Args:
        inputs: files and folders.

    Returns:
        (images to segment, ground-truth files skipped), each sorted and
        without duplicates.

    Raises:
        FileNotFoundError: naming every input that does not exist.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"No such file or folder: {', '.join(missing)}.")
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(p for p in sorted(item.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    # The same file named twice (say as a file and inside a folder) is segmented once.
    seen: set[Path] = set()
    unique = [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]
    masks = [p for p in unique if is_mask_file(p)]
    images = [p for p in unique if not is_mask_file(p)]
    return images, masks


def is_mask_file(path: str | os.PathLike) -> bool:
    """Whether a file is ground truth: its name without suffix ends in ``_mask``."""
    return Path(path).stem.lower().endswith("_mask")


def ground_truth_for(image_path: str | os.PathLike) -> Path | None:
    """The ``NAME_mask.ext`` file beside ``NAME.ext``, if there is one.

    The same suffix is tried first, then the other ``IMAGE_SUFFIXES``.
    """
    image_path = Path(image_path)
    suffixes = [image_path.suffix] + [s for s in IMAGE_SUFFIXES if s != image_path.suffix.lower()]
    for suffix in suffixes:
        for candidate in (suffix, suffix.upper()):
            path = image_path.with_name(f"{image_path.stem}_mask{candidate}")
            if path.is_file():
                return path
    return None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask of any image kind as 0/1.

    A pixel is tumour when its brightest channel is above half the mask's
    maximum, so masks stored as 0/1, 0/255 or as a slightly noisy JPEG all work.
    (The dataset's own masks, lossless, are read by ``helpers.data.read_mask``,
    where any non-zero pixel is tumour: the same on their 0/255 values.)

    Returns:
        uint8 (H, W), values 0 and 1.

    Raises:
        ImageLoadError: as ``load_image``.
    """
    values = load_image(path).max(axis=2)
    top = int(values.max())
    return (values > top / 2).astype(np.uint8) if top > 0 else np.zeros_like(values)


def pick_test_slices(
    artifacts_dir: str | os.PathLike, count: int = 4, seed: int = 42, data_dir: str | os.PathLike | None = None,
    model_path: str | os.PathLike | None = None,
) -> list[Path]:
    """A few test-split slices to try the model on, half of them with tumour.

    Reads ``manifest.csv`` (notebook 01) and ``split.csv`` (notebook 02).

    Args:
        artifacts_dir: the folder holding ``manifest.csv`` and ``split.csv``.
        count: how many slices.
        seed: random seed of the choice.
        data_dir: the dataset folder, when it moved since the manifest was
            written (see ``helpers.data.load_manifest``, which finds it again).
        model_path: the model that will segment them: when its ``.json``
            records validation patients other than this split's, it was
            trained on another split, and a warning says that these "test"
            slices may be its training patients
            (``helpers.evaluation.check_model_split``).

    Returns:
        Paths of the slices (``*.tif``), tumour slices first.

    Raises:
        FileNotFoundError: if the tables are missing, saying which notebook writes them.

    Warns:
        UserWarning: when the split has no test patients (slices are then
            picked from all patients, training ones included), or when the
            model was trained on another split.
    """
    artifacts_dir = Path(artifacts_dir)
    tables = [artifacts_dir / "manifest.csv", artifacts_dir / "split.csv"]
    missing = [str(t) for t in tables if not t.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Missing {', '.join(missing)}. Run notebooks/01_data_download.ipynb and "
            "02_preprocessing.ipynb first (they write them), or list "
            "your own images in IMAGE_PATHS."
        )
    from helpers.data import load_manifest

    manifest, split = load_manifest(artifacts_dir, data_dir), pd.read_csv(tables[1])
    test_patients = set(split.loc[split["split"] == "test", "patient"])
    rows = manifest[manifest["patient"].isin(test_patients) & manifest["image_path"].notna()]
    if rows.empty:
        warnings.warn(f"{tables[1]} has no test patients with slices: picking from all patients, training ones "
                      "included, so the Dice shown says nothing of patients the model never saw.", stacklevel=2)
        rows = manifest[manifest["image_path"].notna()]
    if model_path is not None:
        evaluation.check_model_split(model_path, split.loc[split["split"] == "val", "patient"])
    rng = np.random.default_rng(seed)
    with_tumour = rows[rows["tumour_pixels"] > 0]
    without = rows[rows["tumour_pixels"] == 0]
    first = with_tumour.sample(min(len(with_tumour), (count + 1) // 2), random_state=rng)
    second = without.sample(min(len(without), count - len(first)), random_state=rng)
    chosen = pd.concat([first, second])
    return [Path(p) for p in chosen["image_path"]]


def read_ground_truth(image_path: str | os.PathLike, shape: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """Read the ground truth beside an image (``ground_truth_for``), checking its size.

    Args:
        image_path: the image.
        shape: (H, W) the mask must have: the image's.

    Returns:
        (uint8 (H, W) 0/1 mask, ``None``); ``(None, None)`` when there is no
        mask; ``(None, problem)`` when the mask cannot be read or is of
        another size, the problem naming the mask file.
    """
    truth_path = ground_truth_for(image_path)
    if truth_path is None:
        return None, None
    try:
        truth = load_mask(truth_path)
    except ImageLoadError as error:
        return None, f"{truth_path}: not used as ground truth: {error}"
    if truth.shape != tuple(shape):
        return None, (f"{truth_path}: its size differs from {Path(image_path).name}'s "
                      f"({truth.shape[1]}x{truth.shape[0]} against {shape[1]}x{shape[0]}); not used.")
    return truth, None


def ground_truths(image_paths: list[str | os.PathLike],
                  images: list[np.ndarray] | None = None) -> list[np.ndarray | None]:
    """The ground truth of each image: ``NAME_mask.ext`` beside it, read as 0/1, else ``None``.

    A mask that cannot be read, or whose size differs from its image's, gives
    ``None`` too, with a warning naming it (``read_ground_truth``).

    Args:
        image_paths: the images.
        images: the images already loaded (``load_image``), in the same
            order, so that they are not read again for their sizes; ``None``
            reads them.

    Returns:
        For each image, a uint8 (H, W) 0/1 mask or ``None``.

    Raises:
        ValueError: if ``images`` and ``image_paths`` differ in length.
    """
    if images is not None and len(images) != len(image_paths):
        raise ValueError(f"{len(images)} images for {len(image_paths)} image paths: give one image per path.")
    truths = []
    for k, image_path in enumerate(image_paths):
        image = images[k] if images is not None else load_image(image_path)
        truth, problem = read_ground_truth(image_path, image.shape[:2])
        if problem:
            warnings.warn(problem, stacklevel=2)
        truths.append(truth)
    return truths


def segmentation_figure(images: list[np.ndarray], segmentations: list[Segmentation], titles: list[str],
                        truths: list[np.ndarray | None] | None = None) -> plt.Figure:
    """Rows of image, predicted mask, and overlay with the tumour area in the title.

    With ground truth, a fourth column colours prediction against it (green
    found, red false alarm, blue missed) and gives the slice's Dice.

    Args:
        images: uint8 (H, W, 3) images, sizes may differ.
        segmentations: the ``segment`` result of each image.
        titles: a short name for each row.
        truths: for each image, its 0/1 (H, W) ground truth or ``None``
            (``ground_truths`` reads them); ``None`` for no fourth column.

    Returns:
        A matplotlib Figure.
    """
    columns = 3 if truths is None or all(truth is None for truth in truths) else 4
    truths = truths if truths is not None else [None] * len(images)
    figure, axes = plt.subplots(len(images), columns, figsize=(3 * columns, 3 * len(images)), squeeze=False)
    for row, (image, result, title, truth) in enumerate(zip(images, segmentations, titles, truths, strict=True)):
        panels = [(image, title), (result.mask, "predicted mask"),
                  (result.overlay, f"{result.tumour_pixels:,} tumour pixels (max p {result.max_probability:.2f})")]
        if truth is not None:
            dice = metrics.dice_score(truth, result.mask)
            panels.append((plots.overlay(image, truth=truth, prediction=result.mask),
                           f"against ground truth: Dice {dice:.2f}"))
        for column in range(columns):
            axes[row, column].axis("off")
        for column, (panel, name) in enumerate(panels):
            axes[row, column].imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1 if panel.ndim == 2 else None)
            axes[row, column].set_title(name, fontsize=8)
    figure.tight_layout()
    return figure
