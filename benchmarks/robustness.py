"""Robustness on validation: score saved models on the validation slices as given and as they vary.

The dataset's slices come in three kinds that a model must all handle:

* ``as_given``: the validation slices as they are (three channels on black);
* ``flair_only``: FLAIR repeated in all three channels, as for the patients
  who lack the pre- and post-contrast scans (TCGA_FG_A60K among them);
* ``grey_background``: the first (pre-contrast) channel lifted to a grey
  level outside the head, as in some institutions' PNGs (about 103 of 255 in
  TCGA_FG_7637, 61 in TCGA_FG_A4MU). Background here is where every channel
  is below 8 of 255; it is set to ``--grey-level`` in channel 0.

Every score is the mean per-patient Dice at threshold 0.5, at the model's
input size, on the validation patients of the quality benchmark's split
(seed 42): the test patients stay untouched. Writes ``robustness.json``
under ``--out``.

    python benchmarks/robustness.py --models artifacts/quality2/model.keras artifacts/quality3/model.keras
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import helpers  # noqa: F401  (registers the custom layers for load_model)
from helpers import data, preprocessing, training


def variants(images: np.ndarray, grey_level: int) -> dict[str, np.ndarray]:
    """The three kinds of input, from uint8 (N, H, W, 3) slices."""
    grey = np.repeat(images[..., 1:2], 3, axis=-1)
    lifted = images.copy()
    background = images.max(axis=-1) < 8
    lifted[..., 0][background] = grey_level
    return {"as_given": images, "flair_only": grey, "grey_background": lifted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="saved .keras models to score")
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/robustness", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default="artifacts/cache",
                        help="decoded-slice cache, shared between runs (default: %(default)s)")
    parser.add_argument("--grey-level", type=int, default=103,
                        help="channel-0 value outside the head in grey_background (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default: %(default)s)")
    args = parser.parse_args()

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir), show_progress=False)
    split = preprocessing.split_patients(manifest, seed=args.seed)
    rows = []
    for path in args.models:
        if not path.is_file():
            raise SystemExit(f"{path}: no such model; train one with benchmarks/quality.py first.")
        model = keras.models.load_model(path)
        size = model.input_shape[1]
        images, masks, val_rows = preprocessing.arrays_by_split(manifest, split, size,
                                                                cache_dir=Path(args.cache_dir))["val"]
        patients = val_rows["patient"].to_numpy()
        row = {"model": str(path)}
        for name, inputs in variants(images, args.grey_level).items():
            row[name] = round(training.patient_dice(model, inputs, masks, patients), 4)
        rows.append(row)
        print(row, flush=True)
        keras.backend.clear_session()
    report = {
        "command": training.command_line("benchmarks/robustness.py", args),
        "machine": f"{platform.machine()}, {training.describe_device()}",
        "scored_on": "validation patients (threshold 0.5, model input size), never the test patients",
        "val_patients": sorted(split.loc[split.split == "val", "patient"]),
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(report, indent=2))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
