"""Design comparison: train variants of the CPU profile for equal time, score on validation.

Each variant trains from scratch on the training patients of the quality
benchmark's split (seed 42) for the same wall-clock budget, with the same
pipeline, schedule and seed; the only difference is the design choice named.
Each is scored on the validation patients only (mean per-patient Dice at
threshold 0.5, at the model's input size, best epoch and last epoch; and the
best epoch again on the validation slices shown as FLAIR in all three
channels, as for patients missing the other two scans): the test patients
stay untouched for the quality benchmark.

Variants:

* ``residual``: the ResUNet of the CPU profile (input 128, width 16).
* ``plain``: plain U-Net blocks of the same width (no shortcuts).
* ``no_standardize``: the ResUNet fed 0-1 intensities, without the
  per-slice z-score layer.
* ``no_flair_only``: the ResUNet without the FLAIR-only augmentation.
* ``width32``: the ResUNet at base width 32.
* ``rotate_zoom_half``: the ResUNet with only half of the training slices
  rotated and zoomed (all are still flipped at random).
* ``tversky07``: the ResUNet with a Tversky overlap term that weighs a
  missed tumour pixel 0.7 and a false alarm 0.3 (``miss_weight=0.7``).

Writes ``compare.json`` and one folder of training logs per variant under
``--out``. A variant whose folder holds a finished run is not trained again;
a folder left by an interrupted run is moved aside and the variant retrained.

    python benchmarks/compare.py --data-dir ../shared/lgg --minutes 12 --variants residual plain
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from helpers import data, preprocessing, training
from helpers.model import build_resunet

VARIANTS = {
    "residual": {},
    "plain": {"residual": False},
    "no_standardize": {"standardize": False},
    "no_flair_only": {"flair_only": 0.0},
    "width32": {"width": 32},
    "rotate_zoom_half": {"rotate_zoom": 0.5},
    "tversky07": {"miss_weight": 0.7},
}


def train_variant(name: str, arrays: dict, args, out: Path) -> dict:
    """Train one variant (or read its finished run) and summarise its validation scores."""
    options = VARIANTS[name]
    run_dir = out / name
    if run_dir.exists() and not (run_dir / "training_time.json").exists():
        aside = run_dir.with_name(f"{name}.interrupted-{int(time.time())}")
        print(f"{run_dir} holds an unfinished run: moved to {aside}, training again.")
        run_dir.rename(aside)
    if not (run_dir / "training_time.json").exists():
        keras.utils.set_random_seed(args.seed)
        model = build_resunet((args.input_size, args.input_size, 3), options.get("width", args.width),
                              residual=options.get("residual", True),
                              standardize=options.get("standardize", True))
        training.compile_model(model, miss_weight=options.get("miss_weight", 0.5))
        train_images, train_masks, _ = arrays["train"]
        val_images, val_masks, val_rows = arrays["val"]
        # The standardisation layer takes 0-255 bytes as they are (make_dataset's image_dtype).
        image_dtype = "uint8" if options.get("standardize", True) else "float32"
        train_ds = preprocessing.make_dataset(
            train_images, train_masks, args.batch_size, training=True, seed=args.seed,
            oversample_tumour=args.oversample,
            flair_only_probability=options.get("flair_only", preprocessing.FLAIR_ONLY_PROBABILITY),
            rotate_zoom_probability=options.get("rotate_zoom", preprocessing.ROTATE_ZOOM_PROBABILITY),
            image_dtype=image_dtype)
        val_ds = preprocessing.make_dataset(val_images, val_masks, args.batch_size, image_dtype=image_dtype)
        print(f"--- {name}: {model.count_params():,} parameters, {args.minutes} minutes")
        training.train(model, train_ds, val_ds, run_dir, epochs=200, time_budget_minutes=args.minutes,
                       patience=200, val_patient_arrays=(val_images, val_masks, val_rows["patient"].to_numpy()))
        keras.backend.clear_session()
    history = pd.read_csv(run_dir / "history.csv")
    seconds = json.loads((run_dir / "training_time.json").read_text())["seconds"]
    # Robustness to a missing modality: the validation slices shown as FLAIR in all three channels.
    val_images, val_masks, val_rows = arrays["val"]
    grey = np.repeat(val_images[..., 1:2], 3, axis=-1)
    best = keras.models.load_model(run_dir / "best.keras")
    grey_dice = training.patient_dice(best, grey, val_masks, val_rows["patient"].to_numpy())
    keras.backend.clear_session()
    return {
        "variant": name,
        "options": options,
        "epochs": int(len(history)),
        "training_seconds": round(seconds, 1),
        "val_patient_dice_best": round(float(history["val_patient_dice"].max()), 4),
        "best_epoch": int(history["val_patient_dice"].idxmax()) + 1,
        "val_patient_dice_last": round(float(history["val_patient_dice"].iloc[-1]), 4),
        "val_patient_dice_mean_last_3": round(float(history["val_patient_dice"].tail(3).mean()), 4),
        "val_patient_dice_best_epoch_flair_only_input": round(grey_dice, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/compare", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default="artifacts/cache",
                        help="decoded-slice cache, shared between runs (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=12, help="training budget per variant (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["residual", "plain"],
                        help="variants to train (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=128, help="model input size (default: %(default)s)")
    parser.add_argument("--width", type=int, default=16, help="base filters (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--oversample", type=float, default=0.5, help="extra share of tumour slices (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="seed of split, shuffling, init (default: %(default)s)")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir), show_progress=False)
    split = preprocessing.split_patients(manifest, seed=args.seed)
    arrays = preprocessing.arrays_by_split(manifest, split, args.input_size, cache_dir=Path(args.cache_dir))
    rows = [train_variant(name, arrays, args, out) for name in args.variants]
    report = {
        "command": training.command_line("benchmarks/compare.py", args),
        "machine": f"{platform.machine()}, {training.describe_device()}",
        "scored_on": "validation patients (threshold 0.5, input size), never the test patients",
        "val_patients": sorted(split.loc[split.split == "val", "patient"]),
        "results": rows,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    print(pd.DataFrame(rows).drop(columns="options").to_string(index=False))


if __name__ == "__main__":
    main()
