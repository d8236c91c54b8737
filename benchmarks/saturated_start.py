"""Can training pull a ResUNet out of an all-background prediction? A check of the loss on any Keras backend.

The GPU profile's runs on an H200 under Keras' JAX backend collapsed to
predicting no tumour anywhere and never recovered. Under JAX (and PyTorch),
Keras computes binary cross-entropy from the sigmoid's probabilities clipped
to [1e-7, 1 - 1e-7], so a pixel whose probability fell below 1e-7 has no
gradient; under TensorFlow, Keras computes it from the logits behind the
sigmoid, and the gradient stays. ``helpers.losses`` now recovers the logits
on every backend.

This script starts a ResUNet (input 64, width 16) already saturated: its
output bias is lowered by 30, so every pixel of every slice is background
with a probability of tumour below 1e-9. It then trains it for a few epochs
(Adam, 1e-3, batch 16) on the training patients of the quality benchmark's
split (seed 42), and reports after each epoch how much of the validation
patients' tumour it finds. ``--loss keras`` uses Keras' own
``binary_crossentropy`` on the probabilities, as the project's loss did
before; ``--loss helpers`` uses ``helpers.losses.DiceBCELoss``.

    python benchmarks/saturated_start.py --loss keras
    KERAS_BACKEND=jax python benchmarks/saturated_start.py --loss keras

Writes ``<backend>_<loss>.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from helpers import data, preprocessing, training
from helpers.losses import DiceBCELoss, DiceScore, soft_dice
from helpers.model import build_resunet


class KerasProbabilityLoss(DiceBCELoss):
    """1 - soft Dice + Keras' ``binary_crossentropy`` of the probabilities (this project's loss before the fix)."""

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        dice = 1.0 - soft_dice(y_true, y_pred, self.smooth)
        return dice + ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))


def as_float(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) and 0/1 masks (N, H, W) as float32 0-1 arrays, masks (N, H, W, 1)."""
    return images.astype("float32") / 255.0, masks.astype("float32").reshape(*masks.shape[:3], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/saturated_start", help="output folder (default: %(default)s)")
    parser.add_argument("--loss", choices=("helpers", "keras"), default="helpers",
                        help="helpers: DiceBCELoss; keras: Keras' binary_crossentropy of the probabilities")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling (default: %(default)s)")
    args = parser.parse_args()

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir))
    split = preprocessing.split_patients(manifest, seed=42)
    arrays = preprocessing.arrays_by_split(manifest, split, 64, cache_dir="artifacts/cache", show_progress=False)
    x, y = as_float(*arrays["train"][:2])
    x_val, y_val = as_float(*arrays["val"][:2])

    keras.utils.set_random_seed(args.seed)
    model = build_resunet((64, 64, 3), 16)
    output = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    kernel, bias = output.get_weights()
    output.set_weights([kernel, bias - 30.0])
    loss = KerasProbabilityLoss() if args.loss == "keras" else DiceBCELoss()
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, metrics=[DiceScore()])

    epochs = []
    for epoch in range(args.epochs + 1):
        probabilities = model.predict(x_val, batch_size=64, verbose=0)
        row = {"epoch": epoch,
               "val_tumour_pixels_found": float((probabilities[y_val > 0] > 0.5).mean()),
               "val_pixels_called_tumour": float((probabilities > 0.5).mean()),
               "val_max_probability": float(probabilities.max())}
        if epoch < args.epochs:
            started = time.monotonic()
            history = model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0).history
            row |= {"next_epoch_train_loss": history["loss"][0], "next_epoch_train_dice": history["dice"][0],
                    "next_epoch_seconds": time.monotonic() - started}
        epochs.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "backend": keras.backend.backend(), "keras": keras.__version__, "loss": args.loss,
        "train_slices": len(x), "val_slices": len(x_val),
        "train_share_without_tumour": float((y.reshape(len(y), -1).max(axis=1) == 0).mean()),
        "epochs": epochs,
        "command": training.command_line("benchmarks/saturated_start.py", args,
                                         prefix=f"KERAS_BACKEND={keras.backend.backend()}"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['backend']}_{args.loss}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
