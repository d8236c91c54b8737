"""Find, download, validate and index the LGG MRI Segmentation dataset.

The dataset (Kaggle ``mateuszbuda/lgg-mri-segmentation``, version 2) holds one
folder per patient visit, ``TCGA_<institution>_<patient>_<date>``, with slices
``<case>_<n>.tif`` (256x256, 3 channels: pre-contrast, FLAIR, post-contrast)
and masks ``<case>_<n>_mask.tif`` (0 and 255). The Kaggle download holds the
same slices twice (``kaggle_3m/`` and ``lgg-mri-segmentation/kaggle_3m/``);
this module always reads one copy.

Data folders are only read. Everything derived goes under the artifacts
folder that the caller names.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from tqdm.auto import tqdm

KAGGLE_HANDLE = "mateuszbuda/lgg-mri-segmentation/versions/2"
DATA_DIR_VARIABLE = "LGG_DATA_DIR"
CASE_PATTERN = re.compile(r"^TCGA_([A-Z0-9]{2})_([A-Z0-9]{4})_(\d{8})$")
SLICE_PATTERN = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)(?P<mask>_mask)?\.tif$")
MANIFEST_COLUMNS = [
    "patient",
    "case",
    "institution",
    "slice",
    "image_path",
    "mask_path",
    "tumour_pixels",
]


class DatasetError(RuntimeError):
    """Raised when the dataset cannot be found or fails validation."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the folder that holds the slices, downloading them if needed.

    Order: the ``data_dir`` argument, then the ``LGG_DATA_DIR`` environment
    variable, then kagglehub with the pinned handle ``KAGGLE_HANDLE`` (a
    complete kagglehub cache is reused without a network call).

    Args:
        data_dir: a folder holding ``kaggle_3m/``, ``kaggle_3m/`` itself, or
            a folder of patient folders. ``None`` to use the variable or the
            download.

    Returns:
        The absolute path of the folder that holds the patient folders.

    Raises:
        DatasetError: if the named folder holds no patient folders, or the
            download failed; the message says what was tried and how to point
            at a local copy.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
        source = f"${DATA_DIR_VARIABLE}" if data_dir else None
    else:
        source = "DATA_DIR"
    if data_dir is not None:
        return find_case_root(Path(data_dir).expanduser(), source=source)
    try:
        import kagglehub

        downloaded = kagglehub.dataset_download(KAGGLE_HANDLE)
    except Exception as error:  # kagglehub raises many kinds; report them all alike.
        raise DatasetError(
            f"Could not download the dataset with kagglehub ({KAGGLE_HANDLE}): "
            f"{type(error).__name__}: {error}. No DATA_DIR parameter and no "
            f"${DATA_DIR_VARIABLE} variable were set. Either give kagglehub "
            "network access and Kaggle credentials, or download the dataset "
            "yourself and point at it: `export LGG_DATA_DIR=/path/to/lgg` or "
            "the notebook parameter DATA_DIR. For a demo without the real data, "
            "run `make demo` (synthetic data)."
        ) from error
    return find_case_root(Path(downloaded), source="kagglehub")


def find_case_root(folder: Path, source: str | None = None) -> Path:
    """Return the folder holding the patient folders, among the known layouts.

    Accepts the download root (holding ``kaggle_3m/`` and perhaps the
    duplicate ``lgg-mri-segmentation/kaggle_3m/``), ``kaggle_3m/`` itself, or
    any folder of ``TCGA_*`` patient folders. When both copies exist, the
    top-level ``kaggle_3m/`` is used and the duplicate is ignored.

    Args:
        folder: the folder to search.
        source: where the folder came from, for the error message.

    Returns:
        The absolute path of the folder holding the patient folders.

    Raises:
        DatasetError: if no patient folders are found.
    """
    folder = folder.resolve()
    candidates = [
        folder,
        folder / "kaggle_3m",
        folder / "lgg-mri-segmentation" / "kaggle_3m",
    ]
    for candidate in candidates:
        if candidate.is_dir() and any(_is_case_dir(p) for p in candidate.iterdir()):
            return candidate
    origin = f" (from {source})" if source else ""
    raise DatasetError(
        f"No patient folders (TCGA_<institution>_<patient>_<date>/) found in "
        f"{folder}{origin}, nor in its kaggle_3m/ or "
        "lgg-mri-segmentation/kaggle_3m/ subfolders. Point DATA_DIR or "
        f"${DATA_DIR_VARIABLE} at the folder that holds kaggle_3m/."
    )


def _is_case_dir(path: Path) -> bool:
    return path.is_dir() and CASE_PATTERN.match(path.name) is not None


def read_clinical_table(path: Path) -> pd.DataFrame:
    """Read ``data.csv``, comma- or semicolon-separated (both ship on Kaggle).

    Args:
        path: the ``data.csv`` file.

    Returns:
        One row per patient, with a ``patient`` column (``TCGA_CS_4941``).

    Raises:
        DatasetError: if the file has no ``Patient`` column.
    """
    with open(path, newline="") as handle:
        header = handle.readline()
    delimiter = csv.Sniffer().sniff(header, delimiters=",;").delimiter
    table = pd.read_csv(path, sep=delimiter)
    if "Patient" not in table.columns:
        raise DatasetError(
            f"{path} has no 'Patient' column (columns: {list(table.columns)[:5]}...): "
            "is it the data.csv of the LGG dataset?"
        )
    return table.rename(columns={"Patient": "patient"})


def build_manifest(case_root: Path, show_progress: bool = True) -> pd.DataFrame:
    """Index every slice: one row per image with its mask and tumour size.

    Slices are sorted by patient and by slice number as a number (slice 10
    follows slice 9). Clinical columns of ``data.csv`` are joined by patient
    when the file is present.

    Args:
        case_root: the folder holding the patient folders (see
            ``find_case_root``).
        show_progress: show a progress bar while masks are read.

    Returns:
        A DataFrame with the columns of ``MANIFEST_COLUMNS`` (``mask_path`` is
        empty where a mask is missing, ``tumour_pixels`` is -1 where it could
        not be read) plus the clinical columns.
    """
    rows = []
    for case_dir in sorted(p for p in case_root.iterdir() if _is_case_dir(p)):
        institution, patient_code, _ = CASE_PATTERN.match(case_dir.name).groups()
        images, masks = {}, {}
        for file in case_dir.iterdir():
            match = SLICE_PATTERN.match(file.name)
            if not match or match["case"] != case_dir.name:
                continue
            (masks if match["mask"] else images)[int(match["slice"])] = file
        for number in sorted(set(images) | set(masks)):
            rows.append(
                {
                    "patient": f"TCGA_{institution}_{patient_code}",
                    "case": case_dir.name,
                    "institution": institution,
                    "slice": number,
                    "image_path": str(images.get(number, "")),
                    "mask_path": str(masks.get(number, "")),
                }
            )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[:-1])
    tumour_pixels = []
    for mask_path in tqdm(
        manifest["mask_path"], desc="Reading masks", disable=not show_progress, leave=False
    ):
        try:
            tumour_pixels.append(int(np.count_nonzero(read_mask(mask_path))) if mask_path else -1)
        except DatasetError:
            tumour_pixels.append(-1)
    manifest["tumour_pixels"] = np.asarray(tumour_pixels, dtype=np.int64)
    clinical_path = case_root / "data.csv"
    if clinical_path.exists():
        clinical = read_clinical_table(clinical_path)
        manifest = manifest.merge(clinical, on="patient", how="left")
    return manifest


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one MRI slice.

    Args:
        path: a ``.tif`` slice (compressed or not).

    Returns:
        uint8 array (H, W, 3), values 0-255, channels pre-contrast, FLAIR,
        post-contrast.

    Raises:
        DatasetError: naming the file, if it cannot be read or is not a
            3-channel uint8 image.
    """
    array = _read_tiff(path)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected a uint8 image of shape (H, W, 3), got {array.dtype} "
            f"{array.shape}. Replace the file with the one from the dataset."
        )
    return array


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read one mask and make it binary.

    Args:
        path: a ``_mask.tif`` file with values {0, 255} (or {0, 1}).

    Returns:
        uint8 array (H, W), values 0 and 1.

    Raises:
        DatasetError: naming the file, if it cannot be read or is not a
            one-channel image.
    """
    array = _read_tiff(path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(
            f"{path}: expected a one-channel mask of shape (H, W), got {array.shape}."
        )
    return (array > 0).astype(np.uint8)


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except Exception as error:  # tifffile raises several types for bad files.
        size = os.path.getsize(path) if os.path.exists(path) else None
        detail = "missing" if size is None else ("zero bytes" if size == 0 else str(error))
        raise DatasetError(
            f"{path}: cannot be read as a TIFF image ({detail}). Download the "
            "dataset again, or drop this slice (DROP_INVALID=True)."
        ) from error


@dataclass
class ValidationReport:
    """Every problem found in a dataset, each naming its file.

    Attributes:
        problems: one (file, message) pair per problem.
        bad_rows: manifest row indices of the slices with a problem.
    """

    problems: list[tuple[str, str]] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, row: int | None, file: str, message: str) -> None:
        self.problems.append((file, message))
        if row is not None:
            self.bad_rows.add(row)

    def __str__(self) -> str:
        if self.ok:
            return "No problems found."
        lines = [f"{len(self.problems)} problem(s) in {len(self.bad_rows)} slice(s):"]
        lines += [f"  {file}: {message}" for file, message in self.problems]
        return "\n".join(lines)


def validate_manifest(
    manifest: pd.DataFrame,
    expected_size: tuple[int, int] | None = (256, 256),
    show_progress: bool = True,
) -> ValidationReport:
    """Check every slice of a manifest and report all problems at once.

    Checks: image without mask, mask without image, unreadable files
    (zero bytes, truncated, not an image), wrong height, width or channel
    count, image and mask of different sizes, mask values other than
    {0, 255} or {0, 1}, and identical pixels under two names.

    Args:
        manifest: the table of ``build_manifest``.
        expected_size: (height, width) every slice must have; ``None`` to
            accept any size.
        show_progress: show a progress bar.

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.
    """
    report = ValidationReport()
    seen: dict[str, str] = {}
    iterator = tqdm(
        manifest.itertuples(), total=len(manifest), desc="Validating",
        disable=not show_progress, leave=False,
    )
    for row in iterator:
        if not row.mask_path:
            report.add(row.Index, row.image_path, "image without mask")
            continue
        if not row.image_path:
            report.add(row.Index, row.mask_path, "mask without image")
            continue
        try:
            image = _read_tiff(row.image_path)
        except DatasetError as error:
            report.add(row.Index, row.image_path, str(error).split(": ", 1)[1])
            continue
        try:
            mask = _read_tiff(row.mask_path)
        except DatasetError as error:
            report.add(row.Index, row.mask_path, str(error).split(": ", 1)[1])
            continue
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            report.add(
                row.Index, row.image_path,
                f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}",
            )
            continue
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            report.add(row.Index, row.mask_path, f"expected one channel, got shape {mask.shape}")
            continue
        if expected_size is not None and image.shape[:2] != tuple(expected_size):
            report.add(
                row.Index, row.image_path,
                f"size {image.shape[0]}x{image.shape[1]}, expected "
                f"{expected_size[0]}x{expected_size[1]}",
            )
            continue
        if image.shape[:2] != mask.shape:
            report.add(
                row.Index, row.mask_path,
                f"mask size {mask.shape} differs from image size {image.shape[:2]}",
            )
            continue
        values = set(np.unique(mask).tolist())
        if not (values <= {0, 255} or values <= {0, 1}):
            shown = sorted(values)[:6]
            report.add(row.Index, row.mask_path, f"mask values {shown} are not {{0, 255}} or {{0, 1}}")
            continue
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        if digest in seen and image.any():
            report.add(row.Index, row.image_path, f"same pixels as {seen[digest]}")
            continue
        seen.setdefault(digest, row.image_path)
    return report


def check_split_leakage(split: pd.DataFrame) -> None:
    """Raise if any patient is assigned to more than one split.

    Args:
        split: a table with ``patient`` and ``split`` columns.

    Raises:
        DatasetError: listing the patients on two sides.
    """
    sides = split.groupby("patient")["split"].nunique()
    leaked = sorted(sides[sides > 1].index)
    if leaked:
        raise DatasetError(f"Patients on more than one side of the split: {leaked}")


def cache_key(paths: list[str], size: int) -> str:
    """A short hash naming the cache of a set of slices at one size."""
    digest = hashlib.sha1()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(str(size).encode())
    return digest.hexdigest()[:16]


def load_arrays(
    manifest: pd.DataFrame,
    size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every slice of a manifest into two arrays, resized to ``size``.

    Images are resized with area interpolation, masks with nearest neighbour,
    so masks stay binary. Decoded arrays are cached as ``.npy`` files under
    ``cache_dir`` (never in the data folder), keyed by the files' paths,
    sizes and times, so a second call reads them back in a second.

    Args:
        manifest: rows with ``image_path`` and ``mask_path``.
        size: output height and width in pixels.
        cache_dir: folder for the cache, ``None`` for no cache.
        show_progress: show a progress bar while decoding.

    Returns:
        images: uint8 array (N, size, size, 3), values 0-255.
        masks: uint8 array (N, size, size), values 0 and 1.
    """
    import cv2

    paths = manifest["image_path"].tolist()
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"slices_{cache_key(paths, size)}.npz"
        if cache_file.exists():
            with np.load(cache_file) as cached:
                return cached["images"], cached["masks"]
    images = np.empty((len(manifest), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(manifest), size, size), dtype=np.uint8)
    rows = zip(manifest["image_path"], manifest["mask_path"])
    for index, (image_path, mask_path) in enumerate(
        tqdm(rows, total=len(manifest), desc="Decoding slices", disable=not show_progress)
    ):
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        images[index], masks[index] = image, mask
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp.npz")
        np.savez(temporary, images=images, masks=masks)
        temporary.replace(cache_file)
    return images, masks


def load_manifest(artifacts_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``ARTIFACTS_DIR/manifest.csv``, written by notebook 01.

    Raises:
        FileNotFoundError: naming the file and the notebook to run first.
    """
    path = Path(artifacts_dir) / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run notebooks/01_data_download.ipynb first "
            "(with the same ARTIFACTS_DIR)."
        )
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def save_manifest(manifest: pd.DataFrame, artifacts_dir: str | os.PathLike, source: dict) -> Path:
    """Write ``manifest.csv`` and ``dataset.json`` (where the data came from, counts).

    Args:
        manifest: the table of ``build_manifest``.
        artifacts_dir: the artifacts folder (created if missing).
        source: facts about the copy used (``source``, ``case_root``,
            ``dropped_slices``...), stored in ``dataset.json``.

    Returns:
        The path of ``manifest.csv``.
    """
    import json

    folder = Path(artifacts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(folder / "manifest.csv", index=False)
    facts = {
        **source,
        "patients": int(manifest["patient"].nunique()),
        "slices": int(len(manifest)),
        "slices_with_tumour": int((manifest["tumour_pixels"] > 0).sum()),
    }
    (folder / "dataset.json").write_text(json.dumps(facts, indent=2, default=str))
    return folder / "manifest.csv"


def summary_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Patients, slices and share of tumour slices per institution, with a total row."""
    tumour = manifest["tumour_pixels"] > 0
    table = manifest.assign(tumour=tumour).groupby("institution").agg(
        patients=("patient", "nunique"), slices=("slice", "size"), tumour_slices=("tumour", "sum")
    )
    table.loc["all"] = [manifest["patient"].nunique(), len(manifest), int(tumour.sum())]
    table["tumour_share"] = (table["tumour_slices"] / table["slices"]).round(3)
    return table


def pick_examples(manifest: pd.DataFrame, count: int = 8, seed: int = 42) -> pd.DataFrame:
    """Rows of tumour slices from different patients (the largest tumour of each)."""
    tumour = manifest[manifest["tumour_pixels"] > 0]
    largest = tumour.loc[tumour.groupby("patient")["tumour_pixels"].idxmax()]
    return largest.sample(n=min(count, len(largest)), random_state=seed).sort_values("patient")
