"""Tests of helpers.data: finding the dataset, indexing, validation and decoding."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from helpers import data
from helpers.data import (
    DatasetError,
    build_manifest,
    check_split_leakage,
    find_case_root,
    load_arrays,
    resolve_data_dir,
    validate_manifest,
)
from helpers.synthetic import make_synthetic_dataset

# The shape of the session dataset written by conftest.synthetic_root.
SYNTHETIC_PATIENTS, SYNTHETIC_SLICES, SYNTHETIC_SIZE = 6, 12, 32

# --- Finding the folder of patient folders -----------------------------------------------


def test_find_case_root_from_download_root_and_from_kaggle_3m(synthetic_root):
    expected = (synthetic_root / "kaggle_3m").resolve()
    assert find_case_root(synthetic_root) == expected
    assert find_case_root(synthetic_root / "kaggle_3m") == expected
    assert resolve_data_dir(synthetic_root) == expected
    assert resolve_data_dir(str(synthetic_root / "kaggle_3m")) == expected


def test_find_case_root_in_the_nested_copy(tmp_path):
    # A root that holds only the nested copy, as when the top-level one was deleted.
    nested = tmp_path / "lgg-mri-segmentation" / "kaggle_3m"
    nested.mkdir(parents=True)
    (nested / "TCGA_CS_A000_20000115").mkdir()
    assert find_case_root(tmp_path) == nested.resolve()
    assert find_case_root(nested) == nested.resolve()


def test_download_layout_with_duplicate_copy_counts_each_slice_once(tmp_path):
    n_patients, n_slices = 3, 4
    make_synthetic_dataset(tmp_path, n_patients=n_patients, slices_per_patient=n_slices, size=16,
                           duplicate_copy=True, semicolon_csv=True)
    assert (tmp_path / "lgg-mri-segmentation" / "kaggle_3m").is_dir()
    case_root = resolve_data_dir(tmp_path)
    assert case_root == (tmp_path / "kaggle_3m").resolve()
    manifest = build_manifest(case_root, show_progress=False)
    assert len(manifest) == n_patients * n_slices
    assert not manifest.duplicated(["patient", "slice"]).any()
    assert manifest["image_path"].is_unique
    assert not manifest["image_path"].str.contains("lgg-mri-segmentation").any()
    # The semicolon data.csv was understood: clinical columns are joined, not one glued column.
    assert manifest["death01"].notna().all()


def test_empty_folder_raises_naming_it(tmp_path):
    empty = tmp_path / "nothing_here"
    (empty / "some_other_folder").mkdir(parents=True)
    with pytest.raises(DatasetError) as raised:
        resolve_data_dir(empty)
    assert str(empty.resolve()) in str(raised.value)


# --- resolve_data_dir: argument, then variable, then kagglehub ---------------------------


def _tiny_dataset(root: Path) -> Path:
    make_synthetic_dataset(root, n_patients=1, slices_per_patient=1, size=16)
    return (root / "kaggle_3m").resolve()


def test_resolve_prefers_argument_then_variable(tmp_path, monkeypatch):
    from_argument = _tiny_dataset(tmp_path / "argument")
    from_variable = _tiny_dataset(tmp_path / "variable")
    monkeypatch.setenv("LGG_DATA_DIR", str(tmp_path / "variable"))
    assert resolve_data_dir(tmp_path / "argument") == from_argument
    assert resolve_data_dir(None) == from_variable


def test_resolve_without_argument_or_variable_reports_failed_download(monkeypatch):
    import kagglehub

    import helpers.synthetic

    monkeypatch.delenv("LGG_DATA_DIR", raising=False)

    def no_network(*args, **kwargs):
        raise ConnectionError("no network in this test")

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("resolve_data_dir fell back to synthetic data")

    monkeypatch.setattr(kagglehub, "dataset_download", no_network)
    monkeypatch.setattr(helpers.synthetic, "make_synthetic_dataset", must_not_be_called)
    with pytest.raises(DatasetError) as raised:
        resolve_data_dir()
    message = str(raised.value)
    assert "LGG_DATA_DIR" in message
    assert "no network in this test" in message


# --- The manifest ------------------------------------------------------------------------


def test_load_manifest_finds_slices_that_moved(tmp_path, monkeypatch):
    make_synthetic_dataset(tmp_path / "first", n_patients=2, slices_per_patient=3, size=16)
    artifacts = tmp_path / "artifacts"
    data.save_manifest(build_manifest(tmp_path / "first" / "kaggle_3m", show_progress=False), artifacts, {})
    assert data.load_manifest(artifacts)["image_path"].map(os.path.isfile).all()

    # As on a fresh Colab machine: the slices are gone from where notebook 01 saw them.
    shutil.move(tmp_path / "first", tmp_path / "second")
    monkeypatch.setenv("LGG_DATA_DIR", str(tmp_path / "second"))
    moved = data.load_manifest(artifacts)
    for column in ("image_path", "mask_path"):
        assert moved[column].map(lambda p: p.startswith(str(tmp_path / "second"))).all()
        assert moved[column].map(os.path.isfile).all()
    assert moved.drop(columns=["image_path", "mask_path"]).equals(
        pd.read_csv(artifacts / "manifest.csv").drop(columns=["image_path", "mask_path"]))

    # Found nowhere: the message names the missing slice.
    monkeypatch.setenv("LGG_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"no longer there \(the first: .*first.*TCGA_"):
        data.load_manifest(artifacts)
    (tmp_path / "empty" / "TCGA_XX_0000_19990101").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"does not hold them either"):
        data.load_manifest(artifacts, data_dir=tmp_path / "empty")


def test_slices_sorted_as_numbers(synthetic_manifest):
    expected = list(range(1, SYNTHETIC_SLICES + 1))  # 1, 2, ..., 10, 11, 12
    for case, rows in synthetic_manifest.groupby("case", sort=False):
        assert rows["slice"].tolist() == expected
        names = [Path(p).name for p in rows["image_path"]]
        assert names == [f"{case}_{n}.tif" for n in expected]
        assert [Path(p).name for p in rows["mask_path"]] == [f"{case}_{n}_mask.tif" for n in expected]
    assert len(synthetic_manifest) == SYNTHETIC_PATIENTS * SYNTHETIC_SLICES


def test_manifest_identity_columns(synthetic_manifest):
    row = synthetic_manifest.iloc[0]
    # Case TCGA_CS_A000_20000115: patient drops the date, institution is the second field.
    assert row["case"] == "TCGA_CS_A000_20000115"
    assert row["patient"] == "TCGA_CS_A000"
    assert row["institution"] == "CS"


def test_tumour_pixels_counts_mask_pixels(synthetic_manifest):
    for row in synthetic_manifest.itertuples():
        mask = tifffile.imread(row.mask_path)
        assert row.tumour_pixels == int((mask == 255).sum())
    # The synthetic set puts tumour on the middle slices only: both kinds are present.
    assert (synthetic_manifest["tumour_pixels"] > 0).any()
    assert (synthetic_manifest["tumour_pixels"] == 0).any()


@pytest.mark.parametrize("semicolon", [False, True], ids=["comma", "semicolon"])
def test_clinical_columns_joined_for_both_csv_dialects(tmp_path, semicolon):
    make_synthetic_dataset(tmp_path, n_patients=3, slices_per_patient=2, size=16, semicolon_csv=semicolon)
    header = (tmp_path / "kaggle_3m" / "data.csv").read_text().splitlines()[0]
    assert (";" in header) == semicolon
    manifest = build_manifest(tmp_path / "kaggle_3m", show_progress=False)
    for row in manifest.itertuples():
        # The synthetic table gives patient A00k an age of 30 + k and death01 = k % 2.
        index = int(row.patient.split("_")[2][1:])
        assert row.age_at_initial_pathologic == 30 + index
        assert row.death01 == index % 2


def test_synthetic_dataset_is_kept_when_asked_again_and_replaced_whole_when_changed(tmp_path):
    root = make_synthetic_dataset(tmp_path, n_patients=3, slices_per_patient=2, size=16)
    before = {path: path.stat().st_mtime_ns for path in (root / "kaggle_3m").rglob("*.tif")}
    make_synthetic_dataset(tmp_path, n_patients=3, slices_per_patient=2, size=16)
    assert {path: path.stat().st_mtime_ns for path in (root / "kaggle_3m").rglob("*.tif")} == before
    # Fewer patients: the third one's folder is gone, not left beside the new dataset.
    make_synthetic_dataset(tmp_path, n_patients=2, slices_per_patient=2, size=16)
    assert len(list((root / "kaggle_3m").glob("TCGA_*"))) == 2
    assert len(build_manifest(root / "kaggle_3m", show_progress=False)) == 4
    # A slice lost since: the dataset is written again rather than kept incomplete.
    next((root / "kaggle_3m").rglob("*_1_mask.tif")).unlink()
    make_synthetic_dataset(tmp_path, n_patients=2, slices_per_patient=2, size=16)
    assert len(list((root / "kaggle_3m").rglob("*_mask.tif"))) == 4


def test_manifest_marks_missing_mask(tmp_path):
    make_synthetic_dataset(tmp_path, n_patients=1, slices_per_patient=3, size=16)
    case_dir = next((tmp_path / "kaggle_3m").glob("TCGA_*"))
    next(case_dir.glob("*_2_mask.tif")).unlink()
    manifest = build_manifest(tmp_path / "kaggle_3m", show_progress=False)
    row = manifest.set_index("slice").loc[2]
    assert row["mask_path"] == ""
    assert row["tumour_pixels"] == -1


# --- Validation ---------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array)


def test_validation_reports_every_bad_slice(tmp_path):
    size = 16
    root = make_synthetic_dataset(tmp_path / "copy", n_patients=2, slices_per_patient=12, size=size)
    case_root = root / "kaggle_3m"
    cases = sorted(p for p in case_root.iterdir() if p.is_dir())
    first, second = cases[0], cases[1]

    def image(case: Path, n: int) -> Path:
        return case / f"{case.name}_{n}.tif"

    def mask(case: Path, n: int) -> Path:
        return case / f"{case.name}_{n}_mask.tif"

    rng = np.random.default_rng(0)
    # One damage per slice; each maps (case, slice) to the file and a word of the message.
    expected: dict[tuple[str, int], tuple[Path, str]] = {}

    mask(first, 1).unlink()
    expected[(first.name, 1)] = (image(first, 1), "without mask")

    image(first, 2).unlink()
    expected[(first.name, 2)] = (mask(first, 2), "without image")

    image(first, 3).write_bytes(b"")
    expected[(first.name, 3)] = (image(first, 3), "zero bytes")

    whole = image(first, 4).read_bytes()
    image(first, 4).write_bytes(whole[: len(whole) // 2])
    expected[(first.name, 4)] = (image(first, 4), "cannot be read")

    mask(first, 5).write_text("this is a text file, not a TIFF\n")
    expected[(first.name, 5)] = (mask(first, 5), "cannot be read")

    _write(image(first, 6), rng.integers(0, 255, (size // 2, size // 2, 3), dtype=np.uint8))
    _write(mask(first, 6), np.zeros((size // 2, size // 2), dtype=np.uint8))
    expected[(first.name, 6)] = (image(first, 6), f"{size // 2}x{size // 2}")

    _write(image(first, 7), rng.integers(0, 255, (size, size, 4), dtype=np.uint8))
    expected[(first.name, 7)] = (image(first, 7), "4")

    _write(mask(first, 8), np.zeros((size // 2, size // 2), dtype=np.uint8))
    expected[(first.name, 8)] = (mask(first, 8), "differs")

    three_values = np.zeros((size, size), dtype=np.uint8)
    three_values[:4, :4], three_values[8:, 8:] = 128, 255
    _write(mask(first, 9), three_values)
    expected[(first.name, 9)] = (mask(first, 9), "128")

    shutil.copyfile(image(second, 3), image(second, 7))
    expected[(second.name, 7)] = (image(second, 7), image(second, 3).name)

    manifest = build_manifest(case_root, show_progress=False)
    report = validate_manifest(manifest, expected_size=(size, size), show_progress=False)

    assert not report.ok
    assert len(report.problems) == len(expected)
    problems = {Path(file).name: message for file, message in report.problems}
    for (case, number), (file, word) in expected.items():
        assert file.name in problems, f"{file.name} ({case} slice {number}) not reported"
        assert problems[file.name].strip(), f"{file.name} reported without a message"
        assert word in problems[file.name], problems[file.name]
        assert file.name in str(report)

    bad = {(r.case, r.slice) for r in manifest.loc[sorted(report.bad_rows)].itertuples()}
    assert bad == set(expected)
    # Every other slice is in the manifest and un-flagged.
    good = manifest.drop(index=list(report.bad_rows))
    assert len(good) == 2 * 12 - len(expected)
    assert len(manifest) == 2 * 12
    assert validate_manifest(good, expected_size=(size, size), show_progress=False).ok


def test_validation_of_clean_dataset_is_ok(synthetic_manifest):
    report = validate_manifest(
        synthetic_manifest, expected_size=(SYNTHETIC_SIZE, SYNTHETIC_SIZE), show_progress=False
    )
    assert report.ok, str(report)
    assert report.bad_rows == set()


def test_validation_flags_wrong_expected_size(synthetic_manifest):
    rows = synthetic_manifest.head(3)
    report = validate_manifest(rows, expected_size=(256, 256), show_progress=False)
    assert report.bad_rows == set(rows.index)


def test_check_split_leakage():
    clean = pd.DataFrame({"patient": ["A", "B", "C"], "split": ["train", "val", "test"]})
    check_split_leakage(clean)
    leaky = pd.DataFrame({"patient": ["A", "A", "B"], "split": ["train", "test", "val"]})
    with pytest.raises(DatasetError, match="'A'"):
        check_split_leakage(leaky)


# --- Decoding ----------------------------------------------------------------------------


def test_load_arrays_without_resize_is_exact(synthetic_manifest, synthetic_arrays):
    images, masks = synthetic_arrays
    n = len(synthetic_manifest)
    assert images.shape == (n, SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3) and images.dtype == np.uint8
    assert masks.shape == (n, SYNTHETIC_SIZE, SYNTHETIC_SIZE) and masks.dtype == np.uint8
    for index in (0, 5, n - 1):
        row = synthetic_manifest.iloc[index]
        np.testing.assert_array_equal(images[index], tifffile.imread(row["image_path"]))
        np.testing.assert_array_equal(masks[index], tifffile.imread(row["mask_path"]) // 255)
    assert masks.sum(axis=(1, 2)).tolist() == synthetic_manifest["tumour_pixels"].tolist()


def test_load_arrays_resizes_caches_and_keeps_masks_binary(synthetic_root, synthetic_manifest,
                                                           tmp_path, monkeypatch):
    rows = synthetic_manifest[synthetic_manifest["tumour_pixels"] > 0].head(6)
    before = sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*"))
    cache = tmp_path / "cache"
    images, masks = load_arrays(rows, size=16, cache_dir=cache, show_progress=False)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert masks.shape == (6, 16, 16) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1}
    # Area interpolation halving 32 -> 16 averages 2x2 blocks: check one image against that.
    original = tifffile.imread(rows.iloc[0]["image_path"]).astype(np.float64)
    block_mean = original.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(images[0] - block_mean).max() <= 1.0

    written = list(cache.iterdir())
    assert len(written) == 1 and sorted(f.name for f in written[0].iterdir()) == ["images.npy", "masks.npy"]
    assert sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*")) == before

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although a cache exists")

    monkeypatch.setattr(data, "read_image", no_decoding)
    images_again, masks_again = load_arrays(rows, size=16, cache_dir=cache, show_progress=False)
    np.testing.assert_array_equal(images_again, images)
    np.testing.assert_array_equal(masks_again, masks)


def test_a_resized_mask_stays_on_its_image():
    # Halving 256 -> 128, pixel k stands for original pixels 2k and 2k + 1 (centre 2k + 0.5). Over
    # tumours starting on even and odd rows and columns, the resized mask's centre of mass must fall
    # where the tumour's is, on average; nearest neighbour would put it half a pixel down and right.
    errors = []
    for top, left in ((100, 60), (101, 60), (100, 61), (101, 61)):
        mask = np.zeros((256, 256), np.uint8)
        mask[top:top + 39, left:left + 29] = 1
        image = np.repeat(mask[..., None] * 255, 3, axis=-1).astype(np.uint8)
        small_image, small_mask = data.resize_slice(image, mask, 128)
        # Where the area-averaged image is at least half bright, the mask is tumour: the same pixels.
        np.testing.assert_array_equal(small_mask, (small_image[..., 0] >= 127.5).astype(np.uint8))
        rows, columns = np.nonzero(small_mask)
        errors.append((rows.mean() * 2 + 0.5 - (top + 19), columns.mean() * 2 + 0.5 - (left + 14)))
    assert np.abs(np.mean(errors, axis=0)).max() < 0.05, errors


def test_soft_masks_keep_each_pixels_tumour_share_in_a_cache_of_their_own(synthetic_manifest, tmp_path):
    rows = synthetic_manifest[synthetic_manifest["tumour_pixels"] > 0].head(4)
    cache = tmp_path / "cache"
    _, hard = load_arrays(rows, size=16, cache_dir=cache, show_progress=False)
    _, soft = load_arrays(rows, size=16, cache_dir=cache, show_progress=False, soft_masks=True)
    assert len(list(cache.iterdir())) == 2  # neither form is served from the other's cache
    assert soft.dtype == np.uint8 and soft.max() == data.SOFT_MASK_LEVELS
    assert len(np.unique(soft)) > 2  # edge pixels hold fractions
    for index in range(len(rows)):
        full = tifffile.imread(rows.iloc[index]["mask_path"]) > 0
        # Halving 32 -> 16 by area: each pixel is the share of its 2x2 block the tumour covers.
        share = full.reshape(16, 2, 16, 2).mean(axis=(1, 3))
        np.testing.assert_allclose(soft[index] / data.SOFT_MASK_LEVELS, share, atol=0.5 / data.SOFT_MASK_LEVELS)
        # The hard mask is that share thresholded at one half: registered with the image, which is
        # averaged over the same 2x2 blocks (nearest neighbour would take each block's top-left pixel).
        np.testing.assert_array_equal(hard[index], (share >= 0.5).astype(np.uint8))
    # Slices already at the asked size keep their 0/1 masks, on the soft scale.
    _, same_size = load_arrays(rows, size=32, show_progress=False, soft_masks=True)
    for index in range(len(rows)):
        full = tifffile.imread(rows.iloc[index]["mask_path"]) > 0
        np.testing.assert_array_equal(same_size[index], full * data.SOFT_MASK_LEVELS)


def test_load_arrays_decodes_again_when_a_mask_is_corrected(synthetic_manifest, tmp_path):
    rows = synthetic_manifest[synthetic_manifest["tumour_pixels"] > 0].head(2).copy()
    (tmp_path / "slices").mkdir()
    for column in ("image_path", "mask_path"):
        rows[column] = [shutil.copy2(path, tmp_path / "slices") for path in rows[column]]
    cache = tmp_path / "cache"
    _, masks = load_arrays(rows, size=16, cache_dir=cache, show_progress=False)
    assert masks[0].any()
    corrected = rows.iloc[0]["mask_path"]
    tifffile.imwrite(corrected, np.zeros_like(tifffile.imread(corrected)))
    _, masks_again = load_arrays(rows, size=16, cache_dir=cache, show_progress=False)
    assert not masks_again[0].any()
    np.testing.assert_array_equal(masks_again[1], masks[1])
    assert len(list(cache.iterdir())) == 2


def test_load_arrays_streams_from_disk_when_asked(synthetic_manifest, synthetic_arrays, tmp_path):
    images, masks = synthetic_arrays
    mapped_images, mapped_masks = load_arrays(synthetic_manifest, size=images.shape[1], cache_dir=tmp_path,
                                              show_progress=False, in_memory=False)
    assert isinstance(mapped_images, np.memmap) and isinstance(mapped_masks, np.memmap)
    np.testing.assert_array_equal(mapped_images, images)
    np.testing.assert_array_equal(mapped_masks, masks)
    # A second call maps the same cache without decoding, and a call in memory reads it whole.
    again, _ = load_arrays(synthetic_manifest, size=images.shape[1], cache_dir=tmp_path,
                           show_progress=False, in_memory=False)
    assert isinstance(again, np.memmap) and len(list(tmp_path.iterdir())) == 1
    whole, _ = load_arrays(synthetic_manifest, size=images.shape[1], cache_dir=tmp_path, show_progress=False,
                           in_memory=True)
    assert not isinstance(whole, np.memmap)
    np.testing.assert_array_equal(whole, images)


@pytest.mark.parametrize("in_memory", [True, False])
def test_load_arrays_leaves_no_partial_cache_when_a_slice_cannot_be_read(synthetic_manifest, tmp_path, in_memory):
    rows = synthetic_manifest.head(3).copy()
    (tmp_path / "slices").mkdir()
    for column in ("image_path", "mask_path"):
        rows[column] = [shutil.copy2(path, tmp_path / "slices") for path in rows[column]]
    broken = Path(rows.iloc[1]["image_path"])
    broken.write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=re.escape(broken.name)):
        load_arrays(rows, size=16, cache_dir=cache, show_progress=False, in_memory=in_memory)
    assert list(cache.iterdir()) == []


def test_streaming_without_a_cache_folder_says_what_to_do(synthetic_manifest):
    with pytest.raises(ValueError, match="cache_dir"):
        load_arrays(synthetic_manifest, size=16, show_progress=False, in_memory=False)


def test_read_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.tif"):
        data.read_image(empty)
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match="grey.tif"):
        data.read_image(grey)
    assert os.path.exists(grey)


def test_a_slice_that_is_not_square_is_padded_not_stretched():
    # 40 rows by 80 columns, a 20x20 tumour in the middle: shrunk to 40x40, the slice is first padded
    # to 80x80 (20 black rows above and below), so the tumour stays square, 10x10, at the centre.
    image = np.full((40, 80, 3), 60, np.uint8)
    mask = np.zeros((40, 80), np.uint8)
    mask[10:30, 30:50] = 1
    image[mask == 1] = 200
    small_image, small_mask = data.resize_slice(image, mask, 40)
    assert small_image.shape == (40, 40, 3) and small_mask.shape == (40, 40)
    assert (small_image[:10] == 0).all() and (small_image[30:] == 0).all()
    assert (small_image[10:30, :15] == 60).all()  # the slice's own background, not stretched into the pad
    rows, columns = np.nonzero(small_mask)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (15, 24, 15, 24)
    assert data.square_padding(40, 80) == (20, 20, 0, 0) and data.square_padding(81, 80) == (0, 0, 0, 1)


def test_exif_orientation_turns_a_slice_and_its_mask_alike(tmp_path):
    # Stored 20 high and 40 wide with the tumour at the top left; orientation 6 means "turn 90
    # degrees clockwise to view": viewed, 40 high and 20 wide with the tumour at the top right.
    stored = np.zeros((20, 40), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "slice.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "slice_mask.png", exif=exif)
    image, mask = data.read_image(tmp_path / "slice.png"), data.read_mask(tmp_path / "slice_mask.png")
    assert image.shape == (40, 20, 3) and mask.shape == (40, 20)
    np.testing.assert_array_equal(mask, np.rot90(stored, k=-1) > 0)
    np.testing.assert_array_equal(image[..., 0], np.rot90(stored, k=-1))
