"""Tests of the other ways into the data: the Kaggle website zip, kagglehub's cache and mounts,
any folder of image/mask pairs, and the record of which copy was read."""

from __future__ import annotations

import json
import os
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import data
from helpers.data import (
    DatasetError,
    build_manifest,
    build_manifest_from_pattern,
    describe_source,
    read_image,
    read_mask,
    resolve_data_dir,
    save_manifest,
    validate_manifest,
)
from helpers.synthetic import make_synthetic_dataset

# --- The zip from Kaggle's website ---------------------------------------------------------


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    """Zip every file under ``folder``, names relative to it under ``prefix``, plus ``extra`` members."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(folder).as_posix())
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return zip_path


@pytest.fixture
def download_zip(tmp_path) -> tuple[Path, int]:
    """``downloads/archive.zip`` laid out like Kaggle's: both copies at the top. Returns (zip, slices)."""
    n_patients, n_slices = 2, 3
    source = make_synthetic_dataset(tmp_path / "unzipped", n_patients=n_patients,
                                    slices_per_patient=n_slices, size=16, duplicate_copy=True)
    (tmp_path / "downloads").mkdir()
    return _zip_folder(source, tmp_path / "downloads" / "archive.zip"), n_patients * n_slices


def test_zip_is_extracted_once_into_the_cache_and_reused(download_zip, tmp_path, monkeypatch):
    zip_path, n_rows = download_zip
    cache = tmp_path / "cache"
    case_root = resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)

    # One folder named after the zip; the top-level copy is read, not the duplicate.
    (extracted,) = list(cache.iterdir())
    assert extracted.name.startswith("archive-")
    assert case_root == (extracted / "kaggle_3m").resolve()
    assert (extracted / "lgg-mri-segmentation" / "kaggle_3m").is_dir()
    manifest = build_manifest(case_root, show_progress=False)
    assert len(manifest) == n_rows
    assert manifest["death01"].notna().all()  # data.csv came through the zip too
    # The folder holding the zip is only read.
    assert [p.name for p in zip_path.parent.iterdir()] == ["archive.zip"]

    some_slice = Path(manifest["image_path"].iloc[0])
    written_at = some_slice.stat().st_mtime_ns

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again although the cache holds this zip")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extraction)
    monkeypatch.setenv("LGG_DATA_DIR", str(zip_path))
    assert resolve_data_dir(cache_dir=cache, show_progress=False) == case_root
    assert some_slice.stat().st_mtime_ns == written_at
    assert len(list(cache.iterdir())) == 1


def test_a_new_download_of_the_zip_gets_a_new_folder(download_zip, tmp_path):
    zip_path, _ = download_zip
    cache = tmp_path / "cache"
    first = resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)
    stat = zip_path.stat()
    os.utime(zip_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)
    assert second != first
    assert len(list(cache.iterdir())) == 2


def test_zip_holding_kaggle_3m_deeper_or_only_the_nested_copy(tmp_path):
    source = make_synthetic_dataset(tmp_path / "unzipped", n_patients=1, slices_per_patient=2, size=16)
    cache = tmp_path / "cache"

    deeper = _zip_folder(source, tmp_path / "my_copy.zip", prefix="backup/lgg/")
    case_root = resolve_data_dir(deeper, cache_dir=cache, show_progress=False)
    assert case_root.parts[-3:] == ("backup", "lgg", "kaggle_3m")

    nested_only = _zip_folder(source, tmp_path / "nested.zip", prefix="lgg-mri-segmentation/")
    case_root = resolve_data_dir(nested_only, cache_dir=cache, show_progress=False)
    assert case_root.parts[-2:] == ("lgg-mri-segmentation", "kaggle_3m")
    assert describe_source(case_root)["copy"] == "lgg-mri-segmentation/kaggle_3m"


def test_zip_with_unsafe_member_names_is_rejected_before_writing(tmp_path):
    source = make_synthetic_dataset(tmp_path / "unzipped", n_patients=1, slices_per_patient=1, size=16)
    bad_names = ["../escaped.txt", "/tmp/absolute.txt", "kaggle_3m\\..\\..\\windows.txt"]
    zip_path = _zip_folder(source, tmp_path / "archive.zip", extra={name: b"x" for name in bad_names})
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DatasetError) as raised:
        resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)
    message = str(raised.value)
    for name in bad_names:
        assert repr(name) in message
    assert "archive.zip" in message
    assert not cache.exists()
    assert not (tmp_path / "deep" / "escaped.txt").exists()


def test_interrupted_extraction_is_never_reused(download_zip, tmp_path, monkeypatch):
    zip_path, n_rows = download_zip
    cache = tmp_path / "cache"
    original_extract = zipfile.ZipFile.extract
    calls = []

    def failing_extract(self, member, path=None, pwd=None):
        calls.append(member.filename)
        if len(calls) == 4:
            raise OSError("No space left on device")
        return original_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", failing_extract)
    with pytest.raises(DatasetError) as raised:
        resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)
    assert repr(calls[3]) in str(raised.value)
    assert list(cache.iterdir()) == []  # the partial folder was removed, no final one was made

    # A folder left by a killed process (no chance to clean up) is never taken for the copy.
    stale = cache / ".archive-0123456789.partial-abc" / "kaggle_3m" / "TCGA_CS_A000_20000115"
    stale.mkdir(parents=True)
    monkeypatch.setattr(zipfile.ZipFile, "extract", original_extract)
    case_root = resolve_data_dir(zip_path, cache_dir=cache, show_progress=False)
    assert ".partial" not in str(case_root)
    assert len(build_manifest(case_root, show_progress=False)) == n_rows


def test_zip_errors_name_the_file_and_say_what_to_do(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="missing.zip.*Download"):
        resolve_data_dir(tmp_path / "missing.zip", cache_dir=cache)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(b"PK\x03\x04 only the first bytes")
    with pytest.raises(DatasetError, match="truncated.zip: not a zip archive"):
        resolve_data_dir(truncated, cache_dir=cache)
    unrelated = tmp_path / "photos.zip"
    with zipfile.ZipFile(unrelated, "w") as archive:
        archive.writestr("holiday/beach.jpg", b"not a scan")
    with pytest.raises(DatasetError, match=r"photos.zip: holds no kaggle_3m/.*'holiday/beach.jpg'"):
        resolve_data_dir(unrelated, cache_dir=cache)
    assert not cache.exists()


# --- kagglehub ---------------------------------------------------------------------------


def test_kagglehub_mount_layout_reads_the_top_level_copy(tmp_path, monkeypatch):
    import kagglehub

    # What kagglehub returns in Colab and Kaggle notebooks: a mount holding both copies.
    mount = make_synthetic_dataset(tmp_path / "kaggle" / "input" / "lgg-mri-segmentation",
                                   n_patients=2, slices_per_patient=2, size=16, duplicate_copy=True)
    requested = []

    def fake_download(handle, *args, **kwargs):
        requested.append(handle)
        return str(mount)

    monkeypatch.delenv("LGG_DATA_DIR", raising=False)
    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    case_root = resolve_data_dir()
    assert requested == ["mateuszbuda/lgg-mri-segmentation/versions/2"]
    assert case_root == (mount / "kaggle_3m").resolve()
    facts = describe_source(case_root)
    assert facts["copy"] == "kaggle_3m"
    assert facts["duplicate_ignored"] is True


@pytest.fixture
def no_network(monkeypatch):
    """Make any socket connection or name lookup fail, and hide Colab, Kaggle and credentials."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("TBE_RUNTIME_ADDR", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME",
                 "KAGGLE_KEY", "LGG_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_kagglehub_reuses_a_complete_cache_without_network(tmp_path, monkeypatch, no_network):
    # kagglehub 1.0.3 keeps a versioned dataset at <cache>/datasets/<owner>/<name>/versions/<n>
    # and marks it complete with <cache>/datasets/<owner>/<name>/<n>.complete. This test fails
    # if a kagglehub upgrade stops reusing such a cache offline.
    cache = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no_credentials"))
    dataset = cache / "datasets" / "mateuszbuda" / "lgg-mri-segmentation"
    make_synthetic_dataset(dataset / "versions" / "2", n_patients=1, slices_per_patient=2, size=16,
                           duplicate_copy=True)

    # Without the completion marker (an interrupted download) kagglehub goes to the network.
    with pytest.raises(DatasetError, match="network blocked by the test"):
        resolve_data_dir()

    (dataset / "2.complete").touch()
    assert resolve_data_dir() == (dataset / "versions" / "2" / "kaggle_3m").resolve()


# --- Where the data came from --------------------------------------------------------------


def test_describe_source_on_the_download_layout(tmp_path):
    root = make_synthetic_dataset(tmp_path / "download", n_patients=1, slices_per_patient=2, size=16,
                                  duplicate_copy=True)
    top, nested = root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m"

    facts = describe_source(resolve_data_dir(root))
    assert facts == {
        "case_root": str(top.resolve()),
        "copy": "kaggle_3m",
        "duplicate_copy": str(nested.resolve()),
        "duplicate_ignored": True,
    }
    facts = describe_source(nested)
    assert facts["copy"] == "lgg-mri-segmentation/kaggle_3m"
    assert facts["duplicate_copy"] == str(top.resolve())
    assert facts["duplicate_ignored"] is True

    # It goes into dataset.json beside the counts.
    manifest = build_manifest(top, show_progress=False)
    save_manifest(manifest, tmp_path / "artifacts", {"source": "DATA_DIR", **describe_source(top)})
    written = json.loads((tmp_path / "artifacts" / "dataset.json").read_text())
    assert written["copy"] == "kaggle_3m" and written["duplicate_ignored"] is True
    assert written["slices"] == 2


def test_describe_source_without_a_duplicate(synthetic_root, tmp_path):
    facts = describe_source(synthetic_root / "kaggle_3m")
    assert facts["copy"] == "kaggle_3m"
    assert facts["duplicate_copy"] is None and facts["duplicate_ignored"] is False

    folder = tmp_path / "my_patients"
    (folder / "TCGA_CS_A000_20000115").mkdir(parents=True)
    assert describe_source(folder)["copy"] == "folder"
    with pytest.raises(DatasetError, match="not_there"):
        describe_source(tmp_path / "not_there")


# --- Any folder of image/mask pairs --------------------------------------------------------

SIZE = 16


def _square_mask(pixels: int) -> np.ndarray:
    """A mask of exactly ``pixels`` pixels at 255 (the first ``pixels`` in raster order)."""
    mask = np.zeros(SIZE * SIZE, dtype=np.uint8)
    mask[:pixels] = 255
    return mask.reshape(SIZE, SIZE)


@pytest.fixture
def png_root(tmp_path) -> Path:
    """Another layout: site_<X>/case<NN>/ with PNG and JPEG slices and ``_mask.png`` masks.

    - site_A/case01: RGB ``img_1.png`` ... ``img_11.png`` (not zero-padded); slice n has n tumour pixels.
    - site_A/case02: grayscale ``a.png``, ``b.png``, ``c.png`` (no numbers); no tumour.
    - site_B/case10: RGB ``scan_0007.jpg`` and ``scan_0003.jpg``, PNG masks, 5 tumour pixels each.
    - a macOS ``._img_1.png`` resource file, which is not an image and must be skipped.
    """
    root = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    case01 = root / "site_A" / "case01"
    case01.mkdir(parents=True)
    for number in range(1, 12):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(case01 / f"img_{number}.png")
        Image.fromarray(_square_mask(number)).save(case01 / f"img_{number}_mask.png")
    (case01 / "._img_1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    case02 = root / "site_A" / "case02"
    case02.mkdir()
    for letter in "cab":
        Image.fromarray(np.full((SIZE, SIZE), ord(letter), dtype=np.uint8)).save(case02 / f"{letter}.png")
        Image.fromarray(_square_mask(0)).save(case02 / f"{letter}_mask.png")
    case10 = root / "site_B" / "case10"
    case10.mkdir(parents=True)
    for number in (7, 3):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            case10 / f"scan_{number:04d}.jpg", quality=95)
        Image.fromarray(_square_mask(5)).save(case10 / f"scan_{number:04d}_mask.png")
    return root


PNG_PATTERN = re.compile(r"\.(png|jpg)$")
SITE_CASE = r"^site_(?P<institution>\w+)/(?P<patient>case\d+)/"


def test_pattern_manifest_rows_pairing_and_patients(png_root):
    manifest = build_manifest_from_pattern(png_root, PNG_PATTERN, patient_pattern=SITE_CASE,
                                           show_progress=False)
    assert list(manifest.columns) == data.MANIFEST_COLUMNS
    assert len(manifest) == 11 + 3 + 2
    # Patients sorted with numbers as numbers: case02 before case10.
    assert manifest["patient"].unique().tolist() == ["case01", "case02", "case10"]
    assert manifest.groupby("patient")["institution"].first().to_dict() == {
        "case01": "A", "case02": "A", "case10": "B"}
    assert set(manifest["case"]) == {"site_A/case01", "site_A/case02", "site_B/case10"}
    for row in manifest.itertuples():
        image, mask = Path(row.image_path), Path(row.mask_path)
        assert mask.parent == image.parent
        assert mask.name == f"{image.stem}_mask.png"  # the JPEG slices have PNG masks
    assert not manifest["image_path"].str.contains("_mask").any()
    assert not manifest["image_path"].str.contains("._img").any()

    # case01: file numbers are slice numbers, in numeric order (img_10 after img_9).
    case01 = manifest[manifest["patient"] == "case01"]
    assert case01["slice"].tolist() == list(range(1, 12))
    assert [Path(p).name for p in case01["image_path"]] == [f"img_{n}.png" for n in range(1, 12)]
    assert case01["tumour_pixels"].tolist() == list(range(1, 12))
    # case02: no numbers in the names, so slices follow the names.
    case02 = manifest[manifest["patient"] == "case02"]
    assert case02["slice"].tolist() == [1, 2, 3]
    assert [Path(p).name for p in case02["image_path"]] == ["a.png", "b.png", "c.png"]
    assert case02["tumour_pixels"].tolist() == [0, 0, 0]
    # case10: the last integer of the name, zero padding read as a number.
    case10 = manifest[manifest["patient"] == "case10"]
    assert case10["slice"].tolist() == [3, 7]
    assert case10["tumour_pixels"].tolist() == [5, 5]


def test_pattern_manifest_with_a_glob_and_folders_as_patients(png_root):
    manifest = build_manifest_from_pattern(png_root, "**/*.png", show_progress=False)
    assert len(manifest) == 11 + 3  # the glob leaves out the JPEG slices
    assert manifest["patient"].unique().tolist() == ["site_A/case01", "site_A/case02"]
    assert set(manifest["institution"]) == {"NA"}
    positional = build_manifest_from_pattern(png_root, "**/*.png", patient_pattern=r"/(case\d+)/",
                                             show_progress=False)
    assert positional["patient"].unique().tolist() == ["case01", "case02"]


def test_validation_passes_on_pngs_and_flags_a_mask_of_128(png_root):
    manifest = build_manifest_from_pattern(png_root, PNG_PATTERN, patient_pattern=SITE_CASE,
                                           show_progress=False)
    report = validate_manifest(manifest, expected_size=(SIZE, SIZE), show_progress=False)
    assert report.ok, str(report)

    bad_mask = png_root / "site_A" / "case01" / "img_4_mask.png"
    values = np.zeros((SIZE, SIZE), dtype=np.uint8)
    values[:2] = 128
    Image.fromarray(values).save(bad_mask)
    report = validate_manifest(manifest, expected_size=(SIZE, SIZE), show_progress=False)
    assert len(report.problems) == 1
    file, message = report.problems[0]
    assert file == str(bad_mask) and "128" in message
    assert report.bad_rows == set(manifest.index[manifest["mask_path"] == str(bad_mask)])


def test_pattern_manifest_keeps_unpaired_files_for_validation(png_root):
    (png_root / "site_A" / "case01" / "img_2_mask.png").unlink()
    (png_root / "site_A" / "case01" / "img_5.png").unlink()
    manifest = build_manifest_from_pattern(png_root, "**/*.png", patient_pattern=SITE_CASE,
                                           show_progress=False)
    by_slice = manifest[manifest["patient"] == "case01"].set_index("slice")
    assert by_slice.loc[2, "mask_path"] == "" and by_slice.loc[2, "tumour_pixels"] == -1
    assert by_slice.loc[5, "image_path"] == "" and by_slice.loc[5, "tumour_pixels"] == 5
    report = validate_manifest(manifest, expected_size=(SIZE, SIZE), show_progress=False)
    problems = {Path(file).name: message for file, message in report.problems}
    assert problems == {"img_2.png": "image without mask", "img_5_mask.png": "mask without image"}


def test_png_and_jpeg_readers(png_root, tmp_path):
    grey = read_image(png_root / "site_A" / "case02" / "b.png")
    assert grey.shape == (SIZE, SIZE, 3) and grey.dtype == np.uint8
    assert (grey == ord("b")).all()  # the one channel repeated into all three
    colour_jpeg = read_image(png_root / "site_B" / "case10" / "scan_0003.jpg")
    assert colour_jpeg.shape == (SIZE, SIZE, 3) and colour_jpeg.dtype == np.uint8
    mask = read_mask(png_root / "site_A" / "case01" / "img_3_mask.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1} and mask.sum() == 3
    images, masks = data.load_arrays(
        build_manifest_from_pattern(png_root, PNG_PATTERN, show_progress=False), size=8,
        show_progress=False)
    assert images.shape == (16, 8, 8, 3) and masks.shape == (16, 8, 8)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty.png: cannot be read.*zero bytes"):
        read_image(empty)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text\n")
    with pytest.raises(DatasetError, match="notes.jpg"):
        read_mask(not_an_image)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 4), dtype=np.uint8)).save(rgba)
    with pytest.raises(DatasetError, match=r"rgba.png: expected a uint8 image of shape \(H, W, 3\)"):
        read_image(rgba)


def test_pattern_manifest_input_errors(png_root, tmp_path):
    # Every file the pattern misses is listed, not just the first.
    with pytest.raises(DatasetError) as raised:
        build_manifest_from_pattern(png_root, PNG_PATTERN, patient_pattern=r"^site_A/(case\d+)/",
                                    show_progress=False)
    message = str(raised.value)
    assert "2 file(s)" in message
    assert "site_B/case10/scan_0003.jpg" in message and "site_B/case10/scan_0007.jpg" in message
    with pytest.raises(DatasetError, match=r"No images matching '\*\*/\*.tif'"):
        build_manifest_from_pattern(png_root, "**/*.tif", show_progress=False)
    with pytest.raises(DatasetError, match="not_there"):
        build_manifest_from_pattern(tmp_path / "not_there", "*.png", show_progress=False)
    with pytest.raises(ValueError, match="no group"):
        build_manifest_from_pattern(png_root, "**/*.png", patient_pattern=r"case\d+")
    with pytest.raises(ValueError, match="mask_suffix"):
        build_manifest_from_pattern(png_root, "**/*.png", mask_suffix="")
