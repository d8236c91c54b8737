"""What does training at a smaller input cost? The best Dice a model could reach at each size.

The CPU profile trains and predicts at 128x128 and its masks are scored at
the slices' own 256x256. Even a perfect network loses what the smaller grid
cannot draw. This script measures that loss on the ground truth alone, with
no model: each mask is resized to the input size as every training cache
resizes it (``helpers.data.resize_slice``: area averaging, thresholded at
one half; the first models here trained on nearest neighbour), taken as a
perfect prediction of 0/1 probabilities, resized back to the slice's size
as ``helpers.evaluation.predict_probabilities`` resizes probabilities
(bilinear), thresholded at 0.5, and scored against the original mask.
It does so twice: with hard masks (0/1), what training uses by default,
and with soft ones (each pixel the share of it the
tumour covers, area averaging: ``quality.py --soft-masks``), what a network
trained on soft targets would predict at best.

Writes ``resolution.json`` under ``--out``: for each size and each side of
the quality benchmark's split (seed 42) and each form of target, the mean
per-patient Dice of that perfect prediction and its lowest patient. No model is trained or chosen
here; the figures bound what any model at that size can score.

    python benchmarks/resolution.py --data-dir ../shared/lgg --out artifacts/resolution
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from helpers import data, evaluation, metrics, preprocessing, training


def round_trip(masks: np.ndarray, size: int, soft: bool = False, batch_size: int = 256) -> np.ndarray:
    """Masks drawn on a ``size`` grid and brought back to their own size.

    Args:
        masks: uint8 (N, H, W), values 0/1.
        size: the model's input height and width.
        soft: keep the area-averaged fractions, as the soft training
            targets are, instead of thresholding them at one half (0/1).
        batch_size: slices resized at once.

    Returns:
        uint8 (N, H, W), values 0/1: what a perfect model at ``size`` would give.
    """
    height, width = masks.shape[1:]
    out = np.empty_like(masks)
    for start in range(0, len(masks), batch_size):
        batch = masks[start:start + batch_size]
        # resize_slice, the caches' own resizing, takes an image with each mask; only the mask is kept.
        small = np.stack([data.resize_slice(np.zeros((height, width, 1), np.uint8), m, size, soft_mask=soft)[1]
                          for m in batch]).astype(np.float32)
        if soft:
            small /= data.SOFT_MASK_LEVELS
        back = tf.image.resize(small[..., None], (height, width), method="bilinear")
        out[start:start + batch_size] = evaluation.binarize(np.asarray(back)[..., 0], threshold=0.5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/resolution", help="output folder (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160, 192],
                        help="input sizes to measure (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default: %(default)s)")
    args = parser.parse_args()

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir), show_progress=False)
    split = preprocessing.split_patients(manifest, seed=args.seed).set_index("patient")["split"]
    masks = np.stack([data.read_mask(path) for path in tqdm(manifest["mask_path"], desc="Reading masks")])
    patients = manifest["patient"].to_numpy()
    sides = {side: np.isin(patients, split.index[split == side]) for side in ("train", "val", "test")}
    sides["all"] = np.ones(len(patients), dtype=bool)

    rows = []
    for size, targets in tqdm([(size, targets) for size in args.sizes for targets in ("hard", "soft")],
                              desc="Sizes and targets"):
        perfect = round_trip(masks, size, soft=targets == "soft")
        for side, keep in sides.items():
            per_patient = pd.Series({
                patient: metrics.dice_score(masks[patients == patient], perfect[patients == patient])
                for patient in np.unique(patients[keep])
            })
            rows.append({"size": size, "targets": targets, "split": side, "patients": len(per_patient),
                         "mean_patient_dice": round(float(per_patient.mean()), 4),
                         "lowest_patient_dice": round(float(per_patient.min()), 4),
                         "lowest_patient": per_patient.idxmin()})
    report = {
        "command": training.command_line("benchmarks/resolution.py", args),
        "machine": f"{platform.machine()}, {training.describe_device()}",
        "what": "Dice of the ground truth against itself after a round trip through the input size "
                "(area averaging down, thresholded at one half (hard) or not (soft), bilinear up, threshold 0.5): "
                "the most a model at that size, trained on such targets, can score",
        "slices": int(len(masks)),
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolution.json").write_text(json.dumps(report, indent=2))
    table = pd.DataFrame(rows).pivot(index=["size", "targets"], columns="split", values="mean_patient_dice")
    print(table[["train", "val", "test", "all"]].to_string())


if __name__ == "__main__":
    main()
