"""A small synthetic dataset in exactly the Kaggle layout, for tests and demos.

Each synthetic patient is a stack of slices of an elliptical "brain" with
texture, and a bright blob in the FLAIR channel (channel 1) on some slices;
the mask is the blob. A model learns it in a few epochs, so the whole
notebook series runs end to end in minutes without network access.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")


def make_synthetic_dataset(
    root: str | Path,
    n_patients: int = 10,
    slices_per_patient: int = 12,
    size: int = 256,
    seed: int = 0,
    duplicate_copy: bool = False,
    semicolon_csv: bool = False,
) -> Path:
    """Write a synthetic dataset laid out like the Kaggle download.

    Layout: ``root/kaggle_3m/TCGA_<inst>_<code>_<date>/<case>_<n>.tif`` with
    ``<case>_<n>_mask.tif`` beside each slice, and ``root/kaggle_3m/data.csv``.
    Roughly the middle half of each patient's slices hold a tumour.

    A ``synthetic.json`` in ``root`` records the arguments: called again
    with the same ones, the dataset already there is kept as it is (its
    files' times too, which the slice cache is keyed on); with other ones,
    the copies it wrote are removed and written anew, so no patient of the
    old dataset lingers.

    Args:
        root: folder to write into (created if missing).
        n_patients: number of patient folders.
        slices_per_patient: slices per patient, numbered from 1.
        size: height and width of each slice.
        seed: random seed; the same seed writes the same pixels.
        duplicate_copy: also write the duplicate
            ``lgg-mri-segmentation/kaggle_3m/`` copy that the real download has.
        semicolon_csv: write ``data.csv`` with semicolons (the duplicate copy
            always uses semicolons, as on Kaggle).

    Returns:
        The ``root`` path.
    """
    root = Path(root)
    record = root / "synthetic.json"
    arguments = {"n_patients": n_patients, "slices_per_patient": slices_per_patient, "size": size, "seed": seed,
                 "duplicate_copy": duplicate_copy, "semicolon_csv": semicolon_csv}
    copies = [root / "kaggle_3m"]
    if duplicate_copy:
        copies.append(root / "lgg-mri-segmentation" / "kaggle_3m")
    if record.is_file():
        if json.loads(record.read_text()) == arguments and all(
                len(list(copy.glob("*/*_mask.tif"))) == n_patients * slices_per_patient for copy in copies):
            print(f"Kept the synthetic dataset at {root} (written earlier with the same parameters)")
            return root
        record.unlink()  # a half-removed dataset is never taken as complete
        for folder in (root / "kaggle_3m", root / "lgg-mri-segmentation"):
            shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    clinical = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for index in range(n_patients):
        institution = INSTITUTIONS[index % len(INSTITUTIONS)]
        code = f"A{index:03d}"
        case = f"TCGA_{institution}_{code}_2000{(index % 12) + 1:02d}15"
        clinical.append({"Patient": f"TCGA_{institution}_{code}", "death01": index % 2,
                         "age_at_initial_pathologic": 30 + index})
        centre = rng.uniform(0.35, 0.65, size=2)
        radius = rng.uniform(0.06, 0.14)
        first, last = slices_per_patient // 4, 3 * slices_per_patient // 4
        for number in range(1, slices_per_patient + 1):
            brain = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1.0
            texture = rng.normal(0.0, 12.0, size=(size, size, 3))
            image = np.where(brain[..., None], 90.0 + texture, 0.0)
            mask = np.zeros((size, size), dtype=np.uint8)
            if first <= number <= last:
                scale = 1.0 - abs(number - (first + last) / 2) / slices_per_patient
                blob = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) < (radius * scale) ** 2
                blob &= brain
                image[blob, 1] += 90.0
                mask[blob] = 255
            image = np.clip(image, 0, 255).astype(np.uint8)
            for copy in copies:
                folder = copy / case
                folder.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(folder / f"{case}_{number}.tif", image)
                tifffile.imwrite(folder / f"{case}_{number}_mask.tif", mask)
    table = pd.DataFrame(clinical)
    table.to_csv(copies[0] / "data.csv", index=False, sep=";" if semicolon_csv else ",")
    if duplicate_copy:
        table.to_csv(copies[1] / "data.csv", index=False, sep=";")
    record.write_text(json.dumps(arguments, indent=2) + "\n")
    print(f"Wrote a synthetic dataset of {n_patients} patients x {slices_per_patient} slices at {root}")
    return root
