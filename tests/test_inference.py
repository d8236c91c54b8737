"""Tests of helpers.inference: every kind of image file, errors, and segment()."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from helpers import inference, metrics
from helpers.inference import ImageLoadError, load_image, segment
from helpers.model import build_resunet


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """An untrained 32x32 ResUNet saved as .keras: fast, and enough to check shapes."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_resunet((32, 32, 3), base_filters=4, depth=2).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    return inference.load_default_model(tiny_model_path)


def gradient(height: int = 20, width: int = 30) -> np.ndarray:
    """uint8 (H, W) with distinct values, so a wrong rotation or channel is visible."""
    return (np.arange(height * width).reshape(height, width) % 251).astype(np.uint8)


def save_pillow(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_grayscale_png_is_replicated_to_three_channels(tmp_path):
    gray = gradient()
    path = save_pillow(Image.fromarray(gray, mode="L"), tmp_path / "gray.png")
    loaded = load_image(path)
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_rgb_png_is_unchanged(tmp_path):
    rgb = np.stack([gradient(), 255 - gradient(), np.full((20, 30), 7, np.uint8)], axis=-1)
    path = save_pillow(Image.fromarray(rgb, mode="RGB"), tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(path), rgb)


def test_rgba_png_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[0, 255, 128], [255, 255, 255]]
    path = save_pillow(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    loaded = load_image(path)
    assert loaded.shape == (2, 3, 3)
    np.testing.assert_array_equal(loaded[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(loaded[0, 1], (200, 100, 50))
    # 200 * 128 / 255 = 100.4, 100 * 128 / 255 = 50.2, 50 * 128 / 255 = 25.1
    np.testing.assert_array_equal(loaded[0, 2], (100, 50, 25))


def test_palette_png_is_expanded_to_rgb(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2, 1, 2, 0, 1, 1])
    path = save_pillow(image, tmp_path / "palette.png")
    loaded = load_image(path)
    assert loaded.shape == (2, 4, 3)
    np.testing.assert_array_equal(loaded[0, 1], (255, 0, 0))
    np.testing.assert_array_equal(loaded[0, 2], (0, 0, 255))
    np.testing.assert_array_equal(loaded[0, 0], (0, 0, 0))


@pytest.mark.parametrize("peak", [65535, 4095], ids=["full-range", "12-bit"])
def test_16_bit_png_is_stretched_to_its_brightest_value(tmp_path, peak):
    values = np.array([[0, peak * 100 // 255, peak // 2, peak]], dtype=np.uint16)
    path = save_pillow(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    # A 12-bit export keeps its grey levels instead of falling to 16 of them (4095 / 257).
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 100, 127, 255])


def test_16_bit_colour_with_alpha_keeps_its_alpha_scale():
    from helpers.inference import _to_rgb_uint8

    pixel = np.array([[[4095, 0, 2048, 65535], [4095, 4095, 4095, 0]]], dtype=np.uint16)
    np.testing.assert_array_equal(_to_rgb_uint8(pixel, "x.tif"), [[[255, 0, 128], [0, 0, 0]]])


def test_jpeg_loads_with_its_size(tmp_path):
    path = save_pillow(Image.new("RGB", (33, 17), (128, 128, 128)), tmp_path / "slice.jpg", quality=95)
    loaded = load_image(path)
    assert loaded.shape == (17, 33, 3)
    assert abs(int(loaded.mean()) - 128) <= 2


@pytest.mark.parametrize("array", [
    np.stack([gradient()] * 3, axis=-1),
    gradient(),
    (gradient().astype(np.uint16) * 257),
], ids=["rgb", "gray", "16-bit"])
def test_tiff_kinds(tmp_path, array):
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, array)
    loaded = load_image(path)
    assert loaded.shape == (20, 30, 3)
    # 16 bits are stretched to their brightest value (here 250 x 257), 8 bits kept as they are.
    expected = gradient() if array.dtype == np.uint8 else np.rint(gradient() * 255.0 / gradient().max())
    np.testing.assert_array_equal(loaded[..., 1], expected)


def tiff_bytes(data: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, **options)
    return buffer.getvalue()


def test_tiffs_that_store_other_than_grey_or_rgb_values_give_their_colours():
    grey = np.array([[0, 255], [128, 64]], np.uint8)
    # Stored 0 = white: turned round, for 8 and 16 bits.
    assert load_image(tiff_bytes(255 - grey, photometric="miniswhite"), name="white.tif")[..., 0].tolist() == \
        grey.tolist()
    deep = load_image(tiff_bytes(np.array([[0, 65535], [65535, 0]], np.uint16), photometric="miniswhite"), name="w16.tif")
    assert deep[..., 0].tolist() == [[255, 0], [0, 255]]
    # A palette: indices become the colours they stand for.
    colours = np.zeros((3, 256), np.uint16)
    colours[0, 1] = colours[1, 2] = 65535
    indexed = load_image(tiff_bytes(np.array([[0, 1], [2, 1]], np.uint8), photometric="palette", colormap=colours),
                         name="palette.tif")
    assert indexed.reshape(-1, 3).tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [255, 0, 0]]
    # CMYK with no ink is white, not a black image with an alpha channel.
    assert (load_image(tiff_bytes(np.zeros((2, 2, 4), np.uint8), photometric="separated"), name="cmyk.tif") == 255).all()


def test_planar_tiff_moves_channels_last():
    planes = np.stack([gradient(), 255 - gradient(), gradient() // 2])
    loaded = load_image(tiff_bytes(planes, planarconfig="separate", photometric="rgb"), name="planar.tif")
    np.testing.assert_array_equal(loaded, np.moveaxis(planes, 0, -1))


def test_exif_rotated_jpeg_has_the_rotated_size(tmp_path):
    # Stored 40 wide and 20 high with a white block at the top left; EXIF
    # orientation 6 means "rotate 90 degrees clockwise to view", so the
    # viewed image is 20 wide and 40 high with the block at the top right.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save_pillow(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.shape == (40, 20, 3)
    assert loaded[:8, -8:].mean() > 200
    assert loaded[:8, :8].mean() < 50


def test_bytes_are_read_like_a_file():
    buffer = io.BytesIO()
    Image.fromarray(gradient(), mode="L").save(buffer, format="PNG")
    assert load_image(buffer.getvalue(), name="upload.png").shape == (20, 30, 3)


def png_bytes(width: int = 30, height: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient(height, width)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    (png_bytes()[:60], "truncated"),
    (b"patient,slice\nTCGA_CS_4941,1\n", "not an image"),
], ids=["zero-bytes", "truncated", "not-an-image"])
def test_bad_files_raise_an_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "broken_slice.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=words) as caught:
        load_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_truncated_jpeg_raises(tmp_path):
    path = save_pillow(Image.fromarray(np.stack([gradient(64, 64)] * 3, -1)), tmp_path / "cut.jpg")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(path)


def test_missing_file_raises_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "absent.png")


def test_images_beyond_the_pixel_limit_are_refused(tmp_path):
    # 7000 x 6000 = 42 million pixels > MAX_PIXELS = 40 million; a 1-bit
    # image keeps the file small, and the limit is checked before decoding.
    path = save_pillow(Image.new("1", (7000, 6000)), tmp_path / "huge.png")
    with pytest.raises(ImageLoadError, match="huge.png.*42,000,000 pixels"):
        load_image(path)


def test_pixel_limit_applies_to_tiff(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "MAX_PIXELS", 100)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, gradient())
    with pytest.raises(ImageLoadError, match="big.tif.*600 pixels"):
        load_image(path)


def test_segment_returns_a_binary_mask_at_the_input_size(tiny_model):
    image = np.stack([gradient(50, 70)] * 3, axis=-1)
    result = segment(tiny_model, image, threshold=0.5)
    assert result.mask.shape == (50, 70) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1}
    assert result.probabilities.shape == (50, 70) and result.probabilities.dtype == np.float32
    assert result.overlay.shape == (50, 70, 3) and result.overlay.dtype == np.uint8
    assert result.tumour_pixels == int(result.mask.sum())
    assert 0.0 <= result.max_probability <= 1.0


def test_segment_thresholds_at_the_extremes(tiny_model):
    # A sigmoid output is strictly between 0 and 1, so every pixel is above
    # threshold 0 and none above threshold 1.
    image = np.stack([gradient(40, 40)] * 3, axis=-1)
    assert segment(tiny_model, image, threshold=0.0).tumour_pixels == 40 * 40
    assert segment(tiny_model, image, threshold=1.0).tumour_pixels == 0


@pytest.mark.parametrize("side", [256, 512, 128])
def test_segment_counts_the_smallest_region_on_a_256_slice(tiny_model, monkeypatch, side):
    # Regions of 16 and 400 pixels at 256x256, drawn at the image's own size. The 20-pixel minimum,
    # chosen on 256x256 slices, means 80 pixels at 512x512 (where the small region has 64) and 5 at
    # 128x128 (where it has 4): the same region is dropped, or kept, at every size.
    scale = side / 256
    small, large = round(4 * scale) ** 2, round(20 * scale) ** 2
    probabilities = np.zeros((side, side), np.float32)
    probabilities[:round(4 * scale), :round(4 * scale)] = 0.9
    probabilities[100:100 + round(20 * scale), 100:100 + round(20 * scale)] = 0.9
    monkeypatch.setattr(inference.evaluation, "predict_probabilities", lambda model, images: probabilities[None])
    image = np.zeros((side, side, 3), np.uint8)
    assert segment(tiny_model, image, 0.5, 0).tumour_pixels == large + small
    assert segment(tiny_model, image, 0.5, 20).tumour_pixels == large
    assert segment(tiny_model, image, 0.5, 16).tumour_pixels == large + small


def test_segment_rejects_a_grayscale_array(tiny_model):
    with pytest.raises(ValueError, match="load_image"):
        segment(tiny_model, gradient())


def test_models_are_cached_by_path(tiny_model_path, tiny_model):
    assert inference.load_default_model(tiny_model_path) is tiny_model


def test_missing_model_names_the_path_and_the_remedy(tmp_path):
    missing = tmp_path / "none.keras"
    with pytest.raises(FileNotFoundError, match="--model") as caught:
        inference.load_default_model(missing)
    assert str(missing) in str(caught.value)
    assert "04" in str(caught.value)


def test_pick_test_slices_takes_test_patients_tumour_first(tmp_path):
    rows = [("P1", "C1", n, tumour) for n, tumour in enumerate([0, 5, 0, 9])] + \
           [("P2", "C2", n, tumour) for n, tumour in enumerate([3, 3, 0])]
    manifest = pd.DataFrame(rows, columns=["patient", "case", "slice", "tumour_pixels"])
    manifest["image_path"] = [str(tmp_path / "data" / case / f"{case}_{n}.tif") for _, case, n, _ in rows]
    for path in manifest["image_path"]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame({"patient": ["P1", "P2"], "split": ["test", "train"]}).to_csv(tmp_path / "split.csv", index=False)
    chosen = inference.pick_test_slices(tmp_path, count=3, seed=0)
    assert len(chosen) == 3
    assert all(p.parent.name == "C1" for p in chosen)
    assert {p.name for p in chosen[:2]} == {"C1_1.tif", "C1_3.tif"}
    # A model chosen on another split's validation patients: these "test" slices may be its training ones.
    model_path = tmp_path / "other.keras"
    model_path.with_suffix(".json").write_text(json.dumps({"val_patients": ["P9"]}))
    with pytest.warns(UserWarning, match=r"other\.json records validation patients other than this split's"):
        inference.pick_test_slices(tmp_path, count=3, seed=0, model_path=model_path)
    # No test patients: picked from all, and said.
    pd.DataFrame({"patient": ["P1", "P2"], "split": ["train", "val"]}).to_csv(tmp_path / "split.csv", index=False)
    with pytest.warns(UserWarning, match="no test patients.*training ones included"):
        assert len(inference.pick_test_slices(tmp_path, count=3, seed=0)) == 3


def test_pick_test_slices_names_the_missing_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.csv.*IMAGE_PATHS"):
        inference.pick_test_slices(tmp_path)


def test_find_images_skips_masks_and_other_suffixes(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "a_mask.png", "sub/b.TIFF", "sub/b_MASK.tiff", "notes.txt", "c.JPEG"):
        (tmp_path / name).write_bytes(b"x")
    images, masks = inference.find_images([tmp_path, tmp_path / "a.png"])
    assert sorted(p.name for p in images) == ["a.png", "b.TIFF", "c.JPEG"]
    assert sorted(p.name for p in masks) == ["a_mask.png", "b_MASK.tiff"]
    assert inference.ground_truth_for(tmp_path / "a.png") == tmp_path / "a_mask.png"
    assert inference.ground_truth_for(tmp_path / "c.JPEG") is None


def test_ground_truth_beside_an_image_adds_a_column_with_its_dice(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    Image.fromarray(image).save(tmp_path / "b.png")  # no ground truth
    Image.fromarray(image[:5, :5]).save(tmp_path / "c.png")
    Image.fromarray(mask[:6, :6]).save(tmp_path / "c_mask.png")  # not the image's size
    with pytest.warns(UserWarning, match="c_mask.png: its size differs"):
        truths = inference.ground_truths([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"])
    assert truths[0].sum() == 25 and truths[1] is None and truths[2] is None
    loaded = [inference.load_image(tmp_path / name) for name in ("a.png", "c.png")]
    with pytest.warns(UserWarning, match="c_mask.png: its size differs"):
        given = inference.ground_truths([tmp_path / "a.png", tmp_path / "c.png"], loaded)
    np.testing.assert_array_equal(given[0], truths[0])
    assert given[1] is None
    with pytest.raises(ValueError, match="1 images for 2 image paths"):
        inference.ground_truths([tmp_path / "a.png", tmp_path / "c.png"], loaded[:1])

    images = [image, image]
    results = [inference.segment(tiny_model, im) for im in images]
    figure = inference.segmentation_figure(images, results, ["a", "b"], truths[:2])
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 8
    assert titles[3] == f"against ground truth: Dice {metrics.dice_score(truths[0], results[0].mask):.2f}"
    assert titles[7] == ""  # b has none
    assert len(inference.segmentation_figure(images, results, ["a", "b"]).axes) == 6


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG of an (H, W, C) uint16 array in RGB(A) order, written by OpenCV (which stores blue first)."""
    import cv2

    order = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(array, order))
    assert ok
    return encoded.tobytes()


def test_16_bit_colour_png_keeps_its_low_bits():
    # 12-bit values in a 16-bit RGB PNG: Pillow alone would keep only the high byte (at most 15).
    pixels = np.zeros((2, 3, 3), np.uint16)
    pixels[0, 0] = (4095, 2048, 0)
    pixels[1, 2] = (0, 1024, 4095)
    content = png_bytes(pixels)
    assert content[24] == 16 and content[25] == 2  # bit depth and colour type in the header
    loaded = load_image(content, name="deep.png")
    np.testing.assert_array_equal(loaded[0, 0], (255, 128, 0))
    np.testing.assert_array_equal(loaded[1, 2], (0, 64, 255))
    # With alpha: transparent pixels become background, the colour keeps its low bits.
    with_alpha = np.concatenate([pixels, np.full((2, 3, 1), 65535, np.uint16)], axis=2)
    with_alpha[1, 2, 3] = 0
    loaded = load_image(png_bytes(with_alpha), name="deep_alpha.png")
    np.testing.assert_array_equal(loaded[0, 0], (255, 128, 0))
    np.testing.assert_array_equal(loaded[1, 2], (0, 0, 0))


def test_negative_values_of_float_and_signed_images_are_background():
    # A float slice whose background rings slightly below 0, and a signed export padded with -32768:
    # their background must stay 0, as the model's head mask expects.
    ringing = np.zeros((4, 4), np.float32)
    ringing[1, 1], ringing[2, 2] = 0.8, -0.1
    loaded = load_image(tiff_bytes(ringing), name="float.tif")[..., 0]
    assert loaded[1, 1] == 255 and loaded[0, 0] == 0 and loaded[2, 2] == 0
    padded = np.full((4, 4), -32768, np.int16)
    padded[1:3, 1:3] = [[0, 1000], [2000, 500]]
    loaded = load_image(tiff_bytes(padded), name="signed.tif")[..., 0]
    assert loaded[0, 0] == 0 and loaded[1, 1] == 0 and loaded[2, 1] == 255 and loaded[1, 2] == 128


def test_float_tiff_stored_white_is_black_is_turned_round():
    stored = np.array([[1.0, 0.0], [0.5, 1.0]], np.float32)  # 1.0 = black
    loaded = load_image(tiff_bytes(stored, photometric="miniswhite"), name="white_float.tif")[..., 0]
    assert loaded.tolist() == [[0, 255], [128, 0]]


def test_a_tiff_of_several_pages_is_refused_naming_the_file():
    volume = np.stack([gradient()] * 5)  # five slices of a volume
    with pytest.raises(ImageLoadError, match="volume.tif: a TIFF of 5 pages.*its own file"):
        load_image(tiff_bytes(volume, photometric="minisblack"), name="volume.tif")


def test_the_pixel_limit_counts_the_square_an_image_is_padded_to(tmp_path):
    # 20000 x 2000 = 40 million pixels, within MAX_PIXELS, but padded to a square of 400 million.
    path = save_pillow(Image.new("1", (20000, 2000)), tmp_path / "long.png")
    with pytest.raises(ImageLoadError, match="long.png.*20000x20000 = 400,000,000 once padded to a square"):
        load_image(path)
