"""Find, download, validate and index the LGG MRI Segmentation dataset.

The dataset (Kaggle ``mateuszbuda/lgg-mri-segmentation``, version 2) holds one
folder per patient visit, ``TCGA_<institution>_<patient>_<date>``, with slices
``<case>_<n>.tif`` (256x256, 3 channels: pre-contrast, FLAIR, post-contrast)
and masks ``<case>_<n>_mask.tif`` (0 and 255). The Kaggle download holds the
same slices twice (``kaggle_3m/`` and ``lgg-mri-segmentation/kaggle_3m/``);
this module always reads one copy.

Other ways in: the zip that Kaggle's website gives (``archive.zip``), which
``resolve_data_dir`` extracts once into a cache folder, and any folder of
image/mask pairs (PNG, JPEG or TIFF), indexed by
``build_manifest_from_pattern``.

Data folders are only read. Everything derived goes under the artifacts
folder that the caller names.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile
from tqdm.auto import tqdm

KAGGLE_HANDLE = "mateuszbuda/lgg-mri-segmentation/versions/2"
DATA_DIR_VARIABLE = "LGG_DATA_DIR"
DATA_DIR_HELP = (f"folder holding kaggle_3m/, or its zip (default: ${DATA_DIR_VARIABLE}, "
                 f"else the download of {KAGGLE_HANDLE} through kagglehub)")
"""Help of the benchmarks' ``--data-dir``: the order ``resolve_data_dir`` follows."""
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


# Where the zip from Kaggle's website is extracted, relative to the working folder; never the
# data folder, which may be read-only.
DEFAULT_CACHE_DIR = Path("artifacts") / "data_cache"
TIFF_SUFFIXES = (".tif", ".tiff")
# Suffixes tried, after the image's own, when looking for the mask of an image.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DUPLICATE_FOLDER = "lgg-mri-segmentation"


class DatasetError(RuntimeError):
    """Raised when the dataset cannot be found or fails validation."""


def resolve_data_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    show_progress: bool = True,
) -> Path:
    """Find the folder that holds the slices, downloading them if needed.

    Order: the ``data_dir`` argument, then the ``LGG_DATA_DIR`` environment
    variable, then kagglehub with the pinned handle ``KAGGLE_HANDLE``.

    A zip file (``archive.zip`` from the dataset's Kaggle page) is extracted
    once into ``cache_dir`` and the extracted copy is reused by later calls
    (see ``extract_dataset_zip``).

    kagglehub (1.0.3) reuses its own cache without a network call: for a
    versioned handle such as ``KAGGLE_HANDLE`` it returns the cached folder
    (``~/.cache/kagglehub/datasets/mateuszbuda/lgg-mri-segmentation/versions/2``,
    or under ``$KAGGLEHUB_CACHE``) as soon as the download's completion marker
    is there, so no offline argument is needed. An interrupted download has no
    marker and is fetched again. In Colab and in Kaggle notebooks kagglehub
    instead mounts the dataset, at ``/kaggle/input/lgg-mri-segmentation``,
    which holds both copies; the top-level ``kaggle_3m/`` is used.

    Args:
        data_dir: a folder holding ``kaggle_3m/``, ``kaggle_3m/`` itself, a
            folder of patient folders, or a ``.zip`` holding ``kaggle_3m/`` at
            some level. ``None`` to use the variable or the download.
        cache_dir: where a zip is extracted (created if missing), one folder
            per zip. Only used for a zip.
        show_progress: show a progress bar while a zip is extracted.

    Returns:
        The absolute path of the folder that holds the patient folders.

    Raises:
        DatasetError: if the named folder or zip holds no patient folders, the
            zip is damaged or unsafe, or the download failed; the message says
            what was tried and how to point at a local copy.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
        source = f"${DATA_DIR_VARIABLE}" if data_dir else None
    else:
        source = "DATA_DIR"
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if folder.suffix.lower() == ".zip" or folder.is_file():
            source = f"{source}, extracted from {folder.name}"
            folder = extract_dataset_zip(folder, cache_dir, show_progress=show_progress)
        return find_case_root(folder, source=source)
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
            "the notebook parameter DATA_DIR (--data-dir for the benchmarks). For a demo without the real data, "
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


def describe_source(case_root: str | os.PathLike) -> dict:
    """Say which copy of the dataset a case root is, for ``dataset.json``.

    The Kaggle download holds every slice twice: ``kaggle_3m/`` and
    ``lgg-mri-segmentation/kaggle_3m/``. This names the copy that is read and
    whether the other one exists beside it (and so was ignored). The copy is
    told by which other copy sits beside it; where there is only one, by its
    parent folder's name.

    Args:
        case_root: the folder holding the patient folders, as returned by
            ``resolve_data_dir`` or ``find_case_root``.

    Returns:
        A dict, ready for ``json.dumps``:
        ``case_root`` (str, the absolute path),
        ``copy`` (``"kaggle_3m"`` for the top-level copy,
        ``"lgg-mri-segmentation/kaggle_3m"`` for the duplicate, ``"folder"``
        for any other folder of patient folders),
        ``duplicate_copy`` (str absolute path of the other copy when it holds
        patient folders, else ``None``),
        ``duplicate_ignored`` (bool, True when that other copy exists and was
        not read).

    Raises:
        DatasetError: if ``case_root`` is not a folder.
    """
    case_root = Path(case_root).expanduser().resolve()
    if not case_root.is_dir():
        raise DatasetError(
            f"{case_root} is not a folder: pass the folder that resolve_data_dir returned."
        )
    nested_sibling = case_root.parent / DUPLICATE_FOLDER / "kaggle_3m"
    top_level_sibling = case_root.parent.parent / "kaggle_3m"
    duplicate = None
    if case_root.name != "kaggle_3m":
        copy = "folder"
    elif _holds_cases(nested_sibling):
        # Checked first: the Colab and Kaggle mount is itself named lgg-mri-segmentation.
        copy, duplicate = "kaggle_3m", nested_sibling
    elif case_root.parent.name == DUPLICATE_FOLDER and _holds_cases(top_level_sibling):
        copy, duplicate = f"{DUPLICATE_FOLDER}/kaggle_3m", top_level_sibling
    elif case_root.parent.name == DUPLICATE_FOLDER:
        copy = f"{DUPLICATE_FOLDER}/kaggle_3m"
    else:
        copy = "kaggle_3m"
    return {
        "case_root": str(case_root),
        "copy": copy,
        "duplicate_copy": str(duplicate) if duplicate is not None else None,
        "duplicate_ignored": duplicate is not None,
    }


def _holds_cases(folder: Path) -> bool:
    return folder.is_dir() and any(_is_case_dir(p) for p in folder.iterdir())


def extract_dataset_zip(
    zip_path: str | os.PathLike,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    show_progress: bool = True,
) -> Path:
    """Extract the dataset's zip once into a cache folder, and reuse it after.

    The zip is extracted to ``cache_dir/<zip stem>-<hash>/``, where the hash
    is of the zip's size and modification time, so a new download gets a new
    folder. Extraction goes into a hidden temporary folder that is renamed
    only once every member is written: a killed extraction leaves a
    ``.<name>.partial-*`` folder that is never read (delete it at leisure),
    and the next call extracts again. Every member name is checked before
    anything is written.

    Args:
        zip_path: a zip holding ``kaggle_3m/`` at some level (the
            ``archive.zip`` of the dataset's Kaggle page holds it at the top,
            with the duplicate ``lgg-mri-segmentation/kaggle_3m/``), or
            holding ``TCGA_*`` patient folders.
        cache_dir: the folder for extracted copies (created if missing);
            never the data folder, which may be read-only.
        show_progress: show a progress bar over the members.

    Returns:
        The absolute path of the extracted folder that holds ``kaggle_3m/``
        (or the patient folders); pass it to ``find_case_root``.

    Raises:
        DatasetError: if the zip is missing, not a zip, holds a member whose
            name is absolute or contains ``..`` (all such members are named),
            holds no ``kaggle_3m/`` or patient folders, is damaged, or the
            cache folder cannot be written or lacks space.
    """
    zip_path = Path(zip_path).expanduser().resolve()
    if not zip_path.is_file():
        raise DatasetError(
            f"{zip_path}: no such zip file. Download archive.zip from the dataset's Kaggle page "
            f"(https://www.kaggle.com/datasets/{KAGGLE_HANDLE.split('/versions')[0]}) and "
            "point DATA_DIR at it, or at the folder it was unzipped into."
        )
    if not zipfile.is_zipfile(zip_path):
        raise DatasetError(
            f"{zip_path}: not a zip archive (is the download incomplete?). Download it again."
        )
    cache_dir = Path(cache_dir).expanduser().resolve()
    stat = zip_path.stat()
    stamp = hashlib.sha1(f"{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_dir / f"{zip_path.stem}-{stamp}"
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{zip_path}: cannot be opened as a zip ({error}). Download it again.") from error
    with archive:
        members = archive.infolist()
        unsafe = [member.filename for member in members if _is_unsafe_member(member.filename)]
        if unsafe:
            shown = ", ".join(repr(name) for name in unsafe[:10])
            more = f" and {len(unsafe) - 10} more" if len(unsafe) > 10 else ""
            raise DatasetError(
                f"{zip_path}: {len(unsafe)} member(s) with an absolute name or '..' would be "
                f"written outside the extraction folder: {shown}{more}. Nothing was extracted; "
                "use the archive from the dataset's Kaggle page."
            )
        inner = _zip_data_root([member.filename for member in members])
        if inner is None:
            shown = ", ".join(repr(member.filename) for member in members[:5])
            raise DatasetError(
                f"{zip_path}: holds no kaggle_3m/ folder and no TCGA_<institution>_<patient>_<date>/ "
                f"patient folders (first entries: {shown or 'none'}). Is it the LGG MRI "
                "Segmentation archive from Kaggle?"
            )
        if target.is_dir():
            return target.joinpath(*inner.parts)
        _extract_members(archive, members, zip_path, target, show_progress)
    return target.joinpath(*inner.parts)


def _is_unsafe_member(name: str) -> bool:
    # Zips made on Windows may use backslashes or drive letters; judge those too.
    normal = name.replace("\\", "/")
    return (
        PurePosixPath(normal).is_absolute()
        or ".." in PurePosixPath(normal).parts
        or re.match(r"^[A-Za-z]:", normal) is not None
    )


def _zip_data_root(names: list[str]) -> PurePosixPath | None:
    """The folder inside a zip that holds ``kaggle_3m/`` or patient folders (shallowest wins)."""
    best: PurePosixPath | None = None
    for wanted in (lambda part: part == "kaggle_3m", lambda part: CASE_PATTERN.match(part)):
        for name in names:
            parts = PurePosixPath(name.replace("\\", "/")).parts
            folders = parts if name.endswith("/") else parts[:-1]
            for depth, part in enumerate(folders):
                if wanted(part):
                    if best is None or depth < len(best.parts):
                        best = PurePosixPath(*folders[:depth])
                    break
        if best is not None:
            return best
    return None


def _extract_members(
    archive: zipfile.ZipFile,
    members: list[zipfile.ZipInfo],
    zip_path: Path,
    target: Path,
    show_progress: bool,
) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as error:
        raise DatasetError(
            f"Cannot write the extraction folder in {target.parent} ({error}): pass a writable "
            "cache_dir to resolve_data_dir."
        ) from error
    try:
        needed = sum(member.file_size for member in members)
        free = shutil.disk_usage(temporary).free
        if needed > free:
            raise DatasetError(
                f"{zip_path}: extracting needs {needed / 2**20:.0f} MiB but {target.parent} has "
                f"{free / 2**20:.0f} MiB free. Free some space or pass another cache_dir."
            )
        progress = tqdm(
            members, desc=f"Extracting {zip_path.name}", unit="file",
            disable=not show_progress, leave=False,
        )
        for member in progress:
            try:
                archive.extract(member, temporary)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
                raise DatasetError(
                    f"{zip_path}: member {member.filename!r} cannot be extracted "
                    f"({type(error).__name__}: {error}). Download the zip again, or check that "
                    f"{target.parent} has space."
                ) from error
        try:
            temporary.rename(target)
        except OSError:
            # Another process finished the same extraction first: use its copy.
            if not target.is_dir():
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        # Interrupted or failed: never leave a half-written folder under the final name.
        shutil.rmtree(temporary, ignore_errors=True)
        raise


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
    manifest["tumour_pixels"] = count_tumour_pixels(manifest["mask_path"], show_progress)
    clinical_path = case_root / "data.csv"
    if clinical_path.exists():
        clinical = read_clinical_table(clinical_path)
        manifest = manifest.merge(clinical, on="patient", how="left")
    return manifest


def build_manifest_from_pattern(
    root: str | os.PathLike,
    image_pattern: str | re.Pattern,
    mask_suffix: str = "_mask",
    patient_pattern: str | re.Pattern | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Index any folder of image/mask pairs: one row per image, like ``build_manifest``.

    Images are the files under ``root`` matched by ``image_pattern``, less
    those whose name ends with ``mask_suffix`` before the extension: those
    are masks. The mask of ``img_001.png`` is ``img_001_mask.png`` beside it
    (the same extension first, then ``.png``, ``.jpg``, ``.jpeg``, ``.tif``,
    ``.tiff``, ``.bmp``). Hidden files and folders (names starting with ``.``)
    are skipped. PNG, JPEG, BMP and TIFF are read (see ``read_image``),
    turned as their EXIF orientation says; slices that are not square are
    padded to a square before they are resized (``resize_slice``).

    Args:
        root: the folder to index.
        image_pattern: a glob relative to ``root`` given as a string
            (``"**/*.png"``), or a compiled regular expression
            (``re.compile(r"\\.png$")``) searched in each file's path relative to
            ``root``, written with ``/``.
        mask_suffix: the end of a mask's file name before its extension.
        patient_pattern: a regular expression searched in each image's path
            relative to ``root`` (with ``/``); its first group is the patient
            and an optional second group the institution
            (``r"^(case\\d+)/"``), or groups named ``patient`` and
            ``institution`` (``r"^site_(?P<institution>\\w+)/(?P<patient>[^/]+)/"``).
            ``None``: each folder of images is one patient, named by its path
            relative to ``root`` (``root``'s own name for files directly in it).

    Returns:
        A DataFrame with the columns of ``MANIFEST_COLUMNS``, sorted by
        patient (numbers in names compared as numbers) then slice:
        ``patient`` (str), ``case`` (str, the image's folder relative to
        ``root``, ``"."`` for ``root`` itself), ``institution`` (str, from
        ``patient_pattern``'s institution group, else ``"NA"``), ``slice``
        (int64: the last integer in the file name when every file of the
        patient has one and they differ, else the 1-based order of the names
        within the patient), ``image_path`` and ``mask_path`` (str, ``""``
        where missing), ``tumour_pixels`` (int64, non-zero mask pixels, -1
        where the mask is missing or unreadable).

    Raises:
        ValueError: if ``mask_suffix`` is empty or ``patient_pattern`` has no
            group.
        DatasetError: if ``root`` is not a folder, no image matches, or some
            images do not match ``patient_pattern`` (all of them listed).

    A matched mask without any image of its name gets a row with an empty
    ``image_path``, so that ``validate_manifest`` reports it.
    """
    if not mask_suffix:
        raise ValueError("mask_suffix must not be empty: it is how masks are told from images.")
    patient_regex = re.compile(patient_pattern) if patient_pattern is not None else None
    if patient_regex is not None and patient_regex.groups < 1:
        raise ValueError(
            f"patient_pattern {patient_regex.pattern!r} has no group: put the patient id in "
            r"parentheses, e.g. r'^(case\d+)/'."
        )
    patient_group: int | str = 1
    institution_group: int | str | None = None
    if patient_regex is not None:
        named = patient_regex.groupindex
        if "patient" in named:
            patient_group = "patient"
            institution_group = "institution" if "institution" in named else None
        elif patient_regex.groups >= 2:
            institution_group = 2
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: point root at the folder of images and masks.")
    if isinstance(image_pattern, re.Pattern):
        candidates = (p for p in root.rglob("*") if image_pattern.search(p.relative_to(root).as_posix()))
    else:
        candidates = root.glob(image_pattern)
    files = [
        p for p in candidates
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    images = [p for p in files if not p.stem.endswith(mask_suffix)]
    matched_masks = {p for p in files if p.stem.endswith(mask_suffix)}
    if not images:
        shown = image_pattern.pattern if isinstance(image_pattern, re.Pattern) else image_pattern
        raise DatasetError(
            f"No images matching {shown!r} under {root} (files ending with {mask_suffix!r} are "
            "masks, not images). Check image_pattern and mask_suffix."
        )

    listings: dict[Path, set[str]] = {}

    def find_partner(folder: Path, stem: str, own_suffix: str) -> Path | None:
        if folder not in listings:
            listings[folder] = {p.name for p in folder.iterdir()}
        suffixes = [own_suffix] + [s for s in IMAGE_SUFFIXES if s != own_suffix.lower()]
        for suffix in suffixes:
            if f"{stem}{suffix}" in listings[folder]:
                return folder / f"{stem}{suffix}"
        return None

    pairs: list[tuple[Path | None, Path | None]] = []
    for image in images:
        mask = find_partner(image.parent, f"{image.stem}{mask_suffix}", image.suffix)
        matched_masks.discard(mask)
        pairs.append((image, mask))
    # A matched mask whose image exists but was left out by the pattern (a PNG mask of a JPEG
    # slice under "**/*.png") is left out too; one with no image at all is kept, so that
    # validation reports it.
    for mask in sorted(matched_masks):
        if find_partner(mask.parent, mask.stem[: -len(mask_suffix)], mask.suffix) is None:
            pairs.append((None, mask))

    rows, unmatched = [], []
    for image, mask in pairs:
        anchor = image if image is not None else mask
        relative = anchor.relative_to(root).as_posix()
        folder = anchor.parent.relative_to(root).as_posix()
        institution = "NA"
        if patient_regex is None:
            patient = root.name if folder == "." else folder
        else:
            match = patient_regex.search(relative)
            if match is None or not match.group(patient_group):
                unmatched.append(relative)
                continue
            patient = match.group(patient_group)
            if institution_group is not None and match.group(institution_group):
                institution = match.group(institution_group)
        stem = image.stem if image is not None else mask.stem[: -len(mask_suffix)]
        numbers = re.findall(r"\d+", stem)
        rows.append({
            "patient": patient,
            "case": folder,
            "institution": institution,
            "number": int(numbers[-1]) if numbers else None,
            "order_key": _natural_key(relative),
            "image_path": str(image) if image is not None else "",
            "mask_path": str(mask) if mask is not None else "",
        })
    if unmatched:
        shown = "\n  ".join(unmatched[:10])
        more = f"\n  ... and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise DatasetError(
            f"{len(unmatched)} file(s) under {root} do not match patient_pattern "
            f"{patient_regex.pattern!r}:\n  {shown}{more}\nChange the pattern so that its first "
            "group captures the patient of every file, or narrow image_pattern."
        )

    by_patient: dict[str, list[dict]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(row)
    ordered = []
    for patient in sorted(by_patient, key=_natural_key):
        group = sorted(by_patient[patient], key=lambda row: row["order_key"])
        numbers = [row["number"] for row in group]
        # File numbers are slice numbers only when every file has one and no two are equal.
        if None in numbers or len(set(numbers)) != len(numbers):
            numbers = list(range(1, len(group) + 1))
        for row, number in sorted(zip(group, numbers), key=lambda pair: pair[1]):
            ordered.append({**row, "slice": number})

    manifest = pd.DataFrame(ordered, columns=MANIFEST_COLUMNS[:-1])
    manifest["slice"] = manifest["slice"].astype(np.int64)
    manifest["tumour_pixels"] = count_tumour_pixels(manifest["mask_path"], show_progress)
    return manifest


def _natural_key(text: str) -> list:
    """Sort key comparing runs of digits as numbers: ``img_2`` before ``img_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def count_tumour_pixels(mask_paths, show_progress: bool = True) -> np.ndarray:
    """Tumour pixels of each mask file: -1 where the mask is missing or unreadable.

    Args:
        mask_paths: mask file paths; an empty string marks a missing mask.
        show_progress: show a progress bar.

    Returns:
        int64 array, one count per path.
    """
    counts = []
    for mask_path in tqdm(mask_paths, desc="Reading masks", disable=not show_progress, leave=False):
        try:
            counts.append(int(np.count_nonzero(read_mask(mask_path))) if mask_path else -1)
        except DatasetError:
            counts.append(-1)
    return np.asarray(counts, dtype=np.int64)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one MRI slice.

    Args:
        path: a slice: a ``.tif``/``.tiff`` with 3 channels (compressed or
            not), or a PNG, JPEG or BMP with 3 channels or one (a grayscale
            image is repeated into 3 channels).

    Returns:
        uint8 array (H, W, 3), values 0-255; for the LGG dataset the channels
        are pre-contrast, FLAIR, post-contrast.

    Raises:
        DatasetError: naming the file, if it cannot be read or is not a
            3-channel (or, except TIFF, grayscale) uint8 image.
    """
    array = _as_three_channels(_read_any(path), path)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected a uint8 image of shape (H, W, 3), got {array.dtype} "
            f"{array.shape}. Replace the file with the one from the dataset."
        )
    return array


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read one mask and make it binary.

    Args:
        path: a one-channel mask file (TIFF, PNG, JPEG or BMP) with values
            {0, 255} (or {0, 1}); every non-zero pixel counts as tumour.

    Returns:
        uint8 array (H, W), values 0 and 1.

    Raises:
        DatasetError: naming the file, if it cannot be read or is not a
            one-channel image.
    """
    array = _read_any(path, as_mask=True)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(
            f"{path}: expected a one-channel mask of shape (H, W), got {array.shape}."
        )
    return (array > 0).astype(np.uint8)


SOFT_MASK_LEVELS = 255
"""Value of a fully covered pixel in a soft mask (``resize_slice(soft_mask=True)``)."""


def square_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """Rows and columns of black that centre a ``height`` x ``width`` image in a square.

    Returns:
        (top, bottom, left, right), in pixels; all 0 for a square image.
    """
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return top, side - height - top, left, side - width - left


def resize_slice(image: np.ndarray, mask: np.ndarray, size: int,
                 soft_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Resize one slice and its mask to ``size`` x ``size``, as every cache of this project does.

    Args:
        image: uint8 (H, W, C), 0-255.
        mask: uint8 (H, W), 0/1.
        size: output height and width.
        soft_mask: keep the share of each new pixel the tumour covers (0
            to ``SOFT_MASK_LEVELS``) instead of thresholding it at one half
            (0/1). A network trained on such
            targets learns that share, and its probabilities, resized back
            to full size and thresholded, can draw an edge between the
            pixels of its grid (``benchmarks/resolution.py`` measures what
            each form loses).

    A slice that is not square is first padded with black to a square,
    centred, as ``helpers.evaluation.predict_probabilities`` pads what it
    predicts, so that anatomy is not stretched in training either.

    Returns:
        The image resized by area averaging, uint8 (size, size, C), and the
        mask resized by area averaging too, so that it stays registered with
        the image: uint8 (size, size), 0/1 (pixels at least half tumour), or
        0-``SOFT_MASK_LEVELS`` with ``soft_mask``. (Nearest neighbour, which
        the first models here trained on, takes one corner pixel of each
        block: halving 256 to 128, it moved every mask half an original
        pixel down and right of its image.)
    """
    import cv2

    if image.shape[0] != image.shape[1]:
        top, bottom, left, right = square_padding(*image.shape[:2])
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
        mask = np.pad(mask, ((top, bottom), (left, right)))
    share = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    if soft_mask:
        resized_mask = np.rint(share * SOFT_MASK_LEVELS).astype(np.uint8)
    else:
        resized_mask = (share >= 0.5).astype(np.uint8)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), resized_mask


def _read_any(path: str | os.PathLike, as_mask: bool = False) -> np.ndarray:
    """Decode one image file: TIFF through tifffile, anything else through Pillow.

    Args:
        path: the file.
        as_mask: keep palette images as their indices (a palette PNG mask
            stores labels there); otherwise palette images become RGB.

    Returns:
        The pixels as stored: (H, W) or (H, W, C), dtype as stored (bilevel
        images become uint8 0/255).

    Raises:
        DatasetError: naming the file and why it cannot be read.
    """
    is_tiff = Path(path).suffix.lower() in TIFF_SUFFIXES
    try:
        if is_tiff:
            return tifffile.imread(path)
        from PIL import Image, ImageOps

        with Image.open(path) as image:
            # A JPEG from a camera or viewer may be stored on its side, with an EXIF tag saying how
            # to turn it; the mask must be turned the same way, so both are.
            image = ImageOps.exif_transpose(image)
            if image.mode == "1":
                image = image.convert("L")
            elif image.mode == "P" and not as_mask:
                image = image.convert("RGB")
            return np.array(image)
    except Exception as error:  # Both readers raise several types for bad files.
        size = os.path.getsize(path) if os.path.exists(path) else None
        detail = "missing" if size is None else ("zero bytes" if size == 0 else str(error))
        kind = "a TIFF image" if is_tiff else "an image (tried Pillow)"
        raise DatasetError(
            f"{path}: cannot be read as {kind} ({detail}). Download the "
            "dataset again, or drop this slice (DROP_INVALID=True)."
        ) from error


def _as_three_channels(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    # Grayscale PNG/JPEG slices are common in other datasets: repeat them into 3 channels. A
    # one-channel TIFF is left as it is, so it is reported: every LGG slice has 3 channels,
    # and a one-channel TIFF there is a mask saved under a slice's name.
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        return array
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    return array


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
        manifest: the table of ``build_manifest`` or ``build_manifest_from_pattern``.
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
            image = _as_three_channels(_read_any(row.image_path), row.image_path)
        except DatasetError as error:
            report.add(row.Index, row.image_path, str(error).split(": ", 1)[1])
            continue
        try:
            mask = _read_any(row.mask_path, as_mask=True)
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
        raise DatasetError(f"Patients on more than one side of the split: {leaked}. The split file "
                           "(ARTIFACTS_DIR/split.csv) was edited or mixed with another: run notebook "
                           "02_preprocessing again to write a new one.")


def cache_key(paths: list[str], size: int, soft_masks: bool = False) -> str:
    """A short hash naming the cache of a set of slices at one size and mask form.

    Args:
        paths: the slice and mask files, in manifest order; each one's size
            and modification time count, so a corrected file gets a new key.
        size: the side the slices are resized to.
        soft_masks: masks kept as tumour shares (``resize_slice(soft_mask=True)``).

    Returns:
        16 hexadecimal characters.
    """
    digest = hashlib.sha1()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(str(size).encode())
    # The markers name how slices are decoded: hard masks area-averaged (nearest neighbour,
    # used before, misplaced them), slices that are not square padded (they were stretched),
    # Pillow images turned by their EXIF orientation. A cache written another way has
    # another key, so it is never read.
    digest.update(b"|soft" if soft_masks else b"|area")
    digest.update(b"|square|exif")
    return digest.hexdigest()[:16]


def available_memory_bytes() -> int:
    """Memory the system can still hand out, in bytes (Linux; else 8 GiB)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def fits_in_memory(slices: int, size: int, share: float = 0.5) -> bool:
    """Whether decoded slices fit in a share of the available memory.

    Args:
        slices: how many slices.
        size: their side once resized; each takes ``size * size * 4`` bytes
            (a uint8 image of 3 channels and a uint8 mask).
        share: the part of the available memory they may take, 0-1.

    Returns:
        True if they take less than ``share`` of what is available.
    """
    return slices * size * size * 4 < share * available_memory_bytes()


def load_arrays(
    manifest: pd.DataFrame,
    size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    in_memory: bool | None = None,
    workers: int | None = None,
    soft_masks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every slice of a manifest into two arrays, resized to ``size``.

    Images and masks are resized with area interpolation, masks then
    thresholded at one half so they stay binary and registered with their
    images (kept as shares with ``soft_masks``; see ``resize_slice``). Slices are decoded by several threads at once
    (OpenCV and tifffile release the interpreter lock). Decoded arrays are
    cached as two ``.npy`` files in a folder under ``cache_dir`` (never in the
    data folder), keyed by the image and mask files' paths, sizes and times,
    so a second call reads them back in about a second, and a file changed
    since is decoded anew.

    When the arrays do not fit in memory, they are written straight to the
    cache and returned memory-mapped: the training pipeline then streams
    them from disk (``helpers.preprocessing.make_dataset``).

    Args:
        manifest: rows with ``image_path`` and ``mask_path``.
        size: output height and width in pixels.
        cache_dir: folder for the cache, ``None`` for no cache.
        show_progress: show a progress bar while decoding.
        in_memory: ``True`` to load into memory, ``False`` to memory-map
            from the cache, ``None`` to decide by ``fits_in_memory``.
        workers: decoding threads; ``None`` for one per CPU core.
        soft_masks: resize masks by area averaging (``resize_slice``), for
            soft training targets; slices already at ``size`` keep 0/1
            masks, scaled to 0 and ``SOFT_MASK_LEVELS``.

    Returns:
        images: uint8 array (N, size, size, 3), values 0-255.
        masks: uint8 array (N, size, size), values 0 and 1; with
            ``soft_masks``, 0 to ``SOFT_MASK_LEVELS``.
        Both are ``np.memmap`` when not in memory.

    Raises:
        ValueError: if the arrays must be memory-mapped but there is no
            ``cache_dir`` to hold them.
    """
    from concurrent.futures import ThreadPoolExecutor

    if in_memory is None:
        in_memory = fits_in_memory(len(manifest), size)
    # Masks count too: a corrected mask must not be served from a cache of the old one.
    paths = [path for pair in zip(manifest["image_path"], manifest["mask_path"]) for path in pair]
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"slices_{cache_key(paths, size, soft_masks)}"
        if (folder / "masks.npy").exists():
            mode = None if in_memory else "r"
            return np.load(folder / "images.npy", mmap_mode=mode), np.load(folder / "masks.npy", mmap_mode=mode)
    elif not in_memory:
        raise ValueError(
            f"{len(manifest)} slices at {size}x{size} do not fit in memory: give a cache_dir "
            "(e.g. artifacts/cache) so they can be streamed from disk."
        )
    shapes = {"images": (len(manifest), size, size, 3), "masks": (len(manifest), size, size)}
    temporary = None
    if folder is not None:  # written under a temporary name, renamed when complete
        folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    if in_memory:
        images, masks = (np.empty(shape, dtype=np.uint8) for shape in shapes.values())
    else:
        images, masks = (np.lib.format.open_memmap(temporary / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
                         for name, shape in shapes.items())

    def decode(index_and_paths):
        index, image_path, mask_path = index_and_paths
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != (size, size):
            image, mask = resize_slice(image, mask, size, soft_mask=soft_masks)
        elif soft_masks:
            mask = mask * np.uint8(SOFT_MASK_LEVELS)
        images[index], masks[index] = image, mask

    jobs = zip(range(len(manifest)), manifest["image_path"], manifest["mask_path"])
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for _ in tqdm(pool.map(decode, jobs), total=len(manifest), desc="Decoding slices",
                          disable=not show_progress):
                pass
        if temporary is None:
            return images, masks
        if in_memory:
            np.save(temporary / "images.npy", images)
            np.save(temporary / "masks.npy", masks)
        else:
            images.flush()
            masks.flush()
    except BaseException:
        # An unreadable slice or an interrupt: a half-written cache (a full-size file when
        # streaming) would never be read again, so it goes.
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    try:
        temporary.replace(folder)
    except OSError:  # another process cached the same slices first
        shutil.rmtree(temporary, ignore_errors=True)
    if in_memory:
        return images, masks
    return np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "masks.npy", mmap_mode="r")


def require_artifact(path: str | os.PathLike, notebook: str) -> Path:
    """Return ``path`` if it exists, else say which notebook writes it.

    Args:
        path: a file a notebook hands over through the artifacts folder.
        notebook: the notebook that writes it, e.g. ``"01_data_download"``.

    Raises:
        FileNotFoundError: naming the file and the notebook to run first.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run notebooks/{notebook}.ipynb first (with the same ARTIFACTS_DIR)."
        )
    return path


def load_manifest(artifacts_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read ``ARTIFACTS_DIR/manifest.csv``, written by notebook 01, and find the slices it lists.

    When the slices are no longer where notebook 01 found them, the data is
    found again, as ``resolve_data_dir`` does (``data_dir``, then
    ``$LGG_DATA_DIR``, then kagglehub), and every path is moved onto it by
    patient folder and file name. This is what happens in Colab, where each
    notebook runs on a fresh machine: kagglehub mounts or fetches the dataset
    again there, and nothing has to be set.

    Args:
        artifacts_dir: the folder holding ``manifest.csv``.
        data_dir: where the data is now, if it moved; ``None`` to look as
            notebook 01 does.

    Returns:
        The manifest, one row per slice, its paths pointing at files that exist.

    Raises:
        FileNotFoundError: naming the file and the notebook to run first.
        DatasetError: if the slices are gone and cannot be found again; the
            message names the first missing slice and what to set.
    """
    path = require_artifact(Path(artifacts_dir) / "manifest.csv", "01_data_download")
    manifest = pd.read_csv(path, keep_default_na=False, na_values=[""])
    listed = manifest["image_path"].dropna()
    if listed.empty or Path(listed.iloc[0]).is_file():
        return manifest
    missing = listed.iloc[0]
    try:
        # As notebook 01 did: a zipped copy is extracted under the artifacts folder, not the working one.
        case_root = resolve_data_dir(data_dir, show_progress=False, cache_dir=Path(artifacts_dir) / "data_cache")
    except DatasetError as error:
        raise DatasetError(
            f"{path} lists slices that are no longer there (the first: {missing}), and the data could not be "
            f"found again: {error}"
        ) from error
    moved = manifest.copy()
    for column in {"image_path", "mask_path"} & set(moved.columns):
        moved[column] = [None if pd.isna(old) else str(case_root / case / Path(old).name)
                         for case, old in zip(moved["case"], moved[column], strict=True)]
    first = moved["image_path"].dropna().iloc[0]
    if not Path(first).is_file():
        raise DatasetError(
            f"{path} lists slices that are no longer there (the first: {missing}), and {case_root} does not hold "
            f"them either (no {first}). Point DATA_DIR at the copy notebook 01 indexed, or run notebook 01 again."
        )
    print(f"The slices moved: reading them from {case_root}")
    return moved


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
    """Patients, slices and share of tumour slices per institution, with a total row.

    Args:
        manifest: the output of ``build_manifest``.

    Returns:
        One row per institution and a row ``all``; columns ``patients``,
        ``slices``, ``tumour_slices`` and ``tumour_share`` (0-1).
    """
    tumour = manifest["tumour_pixels"] > 0
    table = manifest.assign(tumour=tumour).groupby("institution").agg(
        patients=("patient", "nunique"), slices=("slice", "size"), tumour_slices=("tumour", "sum")
    )
    table.loc["all"] = [manifest["patient"].nunique(), len(manifest), int(tumour.sum())]
    table["tumour_share"] = (table["tumour_slices"] / table["slices"]).round(3)
    return table


def pick_examples(manifest: pd.DataFrame, count: int = 8, seed: int = 42) -> pd.DataFrame:
    """Rows of tumour slices from different patients (the largest tumour of each).

    Args:
        manifest: the output of ``build_manifest``.
        count: how many patients, at most.
        seed: which patients are drawn.

    Returns:
        Manifest rows, one per drawn patient, sorted by patient.
    """
    tumour = manifest[manifest["tumour_pixels"] > 0]
    largest = tumour.loc[tumour.groupby("patient")["tumour_pixels"].idxmax()]
    return largest.sample(n=min(count, len(largest)), random_state=seed).sort_values("patient")
