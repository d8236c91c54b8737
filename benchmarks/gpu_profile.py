"""Train the GPU profile on a GPU machine that has Keras and JAX but no TensorFlow.

On Colab, notebook 04 trains the GPU profile with TensorFlow. The GPU machine
this project could borrow has JAX, no TensorFlow, no network, and takes at
most 64 MiB of files with it, so the measurement runs in three steps:

1. Here: pack the training and validation patients' slices (the split of
   ``quality.py``, seed 42) into one file. The images travel as JPEG at
   ``--jpeg-quality`` (the lossless slices would not fit); the masks
   losslessly. The mean absolute change of the pixels is printed and stored.

       python benchmarks/gpu_profile.py pack --data-dir ../shared/lgg --out .gpu/slices.npz --jpeg-quality 95

2. On the GPU machine, with the Keras wheel carried there: train the GPU
   profile (input 256, width 32, batch 16, 60 epochs, mixed precision,
   tumour oversampling 0.5) within ``--minutes`` (6 by default: the machine
   is lent for minutes) with ``helpers.training.train`` under Keras' JAX
   backend, fed by the same augmentation as the tf.data pipeline
   (``augment_stacked``, ``split_stacked``) through a
   ``keras.utils.PyDataset``. Writes
   ``best.keras`` (float32, no optimizer; split into ``best.keras.part*``
   when larger than ``--part-mib``), ``history.csv``, ``training_time.json``
   and ``device.json`` under ``--out``. ``--input-size``, ``--width`` and
   ``--channels`` train another shape (the packed slices are resized),
   ``--policy`` another precision.

       KERAS_BACKEND=jax python benchmarks/gpu_profile.py train --pack .gpu/slices.npz --out $OUT/run

3. Here, with TensorFlow, on the original lossless slices: join the parts,
   choose the post-processing on the validation patients and score the test
   patients, whom the model never saw.

       cat run/best.keras.part?? > artifacts/gpu/run/best.keras   # with the other files of run/
       python benchmarks/quality.py --out artifacts/gpu --input-size 256 --width 32 --evaluate-only  # the size and width trained
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np


def pack(args: argparse.Namespace) -> None:
    """Write the training and validation slices, as JPEG, with masks, patients and sides."""
    import cv2

    from helpers import data, preprocessing

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir))
    report = data.validate_manifest(manifest)
    if not report.ok:
        raise SystemExit(str(report))
    split = preprocessing.split_patients(manifest, seed=args.seed)
    arrays = preprocessing.arrays_by_split(manifest, split, 256, cache_dir=args.cache_dir, show_progress=False)
    encoded, sides, patients, masks, errors = [], [], [], [], []
    for side in ("train", "val"):
        images, side_masks, rows = arrays[side]
        for image in images:
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality,
                                                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode a slice of {side} as JPEG.")
            encoded.append(buffer.ravel())
            errors.append(np.abs(cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED).astype(np.int16) - image).mean())
        masks.append(np.packbits(side_masks.astype(bool), axis=-1))
        sides += [side] * len(images)
        patients += rows["patient"].tolist()
    offsets = np.cumsum([0] + [len(b) for b in encoded])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, jpeg=np.concatenate(encoded), offsets=offsets, masks=np.concatenate(masks),
                        side=np.array(sides), patient=np.array(patients),
                        jpeg_quality=args.jpeg_quality, mean_abs_error=np.mean(errors))
    print(f"{out}: {len(encoded)} slices ({sides.count('train')} train, {sides.count('val')} val), "
          f"{out.stat().st_size / 2**20:.1f} MiB; JPEG quality {args.jpeg_quality} changes a pixel by "
          f"{np.mean(errors):.2f} grey levels on average.")


def unpack(path: str | Path) -> dict:
    """Decode a pack written by ``pack``.

    Args:
        path: the ``.npz`` pack.

    Returns:
        ``{"train": (stacks, patients), "val": (stacks, patients), "mean_abs_error": float,
        "jpeg_quality": int}``: uint8 stacks (N, 256, 256, 4), image channels
        0-255 then the mask 0/1, and the patient of each slice (N,).
    """
    import cv2

    packed = np.load(path)
    offsets, jpeg = packed["offsets"], packed["jpeg"]
    masks = np.unpackbits(packed["masks"], axis=-1)
    stacks = np.empty((len(offsets) - 1, 256, 256, 4), np.uint8)
    for k in range(len(stacks)):
        stacks[k, ..., :3] = cv2.imdecode(jpeg[offsets[k]:offsets[k + 1]], cv2.IMREAD_UNCHANGED)
    stacks[..., 3] = masks
    return {side: (stacks[packed["side"] == side], packed["patient"][packed["side"] == side])
            for side in ("train", "val")} | {"mean_abs_error": float(packed["mean_abs_error"]),
                                             "jpeg_quality": int(packed["jpeg_quality"])}


def resize_stacks(stacks: np.ndarray, size: int) -> np.ndarray:
    """Resize packed slices as ``load_arrays`` does (``helpers.data.resize_slice``).

    Args:
        stacks: uint8 (N, H, W, C + 1), image channels 0-255 then the mask 0/1.
        size: output height and width.

    Returns:
        uint8 (N, size, size, C + 1); the input itself when it already has that size.
    """
    from helpers.data import resize_slice

    if stacks.shape[1:3] == (size, size):
        return stacks
    out = np.empty((len(stacks), size, size, stacks.shape[-1]), np.uint8)
    for k, stack in enumerate(stacks):
        out[k, ..., :-1], out[k, ..., -1] = resize_slice(stack[..., :-1], stack[..., -1], size)
    return out


def make_batches(stacks: np.ndarray, batch_size: int, training: bool, seed: int, workers: int,
                 oversample_tumour: float = 0.0):
    """A ``keras.utils.PyDataset`` of (images, masks) batches, for a machine without tf.data.

    Training batches are shuffled each epoch, augmented by ``augment_stacked``
    (seeded by the seed, the epoch and the batch) and complete (the last
    partial batch is dropped, so the compiled step keeps one shape). As in
    ``make_dataset``, ``oversample_tumour`` adds that share of the tumour
    slices again, drawn afresh each epoch from the seed and the epoch.

    Args:
        stacks: uint8 (N, H, W, C + 1), image channels 0-255 then the mask 0/1.
        batch_size: slices per batch.
        training: shuffle, oversample and augment (else every slice, in order).
        seed: seed of the shuffling, the oversampling and the augmentation.
        workers: threads preparing batches.
        oversample_tumour: extra share of tumour slices per epoch (training only).

    Returns:
        A PyDataset whose items are float32 images (B, H, W, C) in [0, 1] and
        float32 masks (B, H, W, 1) in {0, 1}.
    """
    import keras

    from helpers.preprocessing import augment_stacked, split_stacked

    indices = np.arange(len(stacks))
    tumour, extra = indices[:0], 0
    if training and oversample_tumour > 0:
        tumour = indices[stacks[..., 3].reshape(len(stacks), -1).max(axis=1) > 0]
        extra = int(round(len(tumour) * oversample_tumour))

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4 * workers)
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            if not training:
                return indices
            rng = np.random.default_rng([seed, self.epoch])
            return rng.permutation(np.concatenate([indices, rng.choice(tumour, size=extra)]))

        def __len__(self):
            count = (len(indices) + extra) / batch_size
            return int(count) if training else math.ceil(count)

        def __getitem__(self, index):
            rows = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            batch = stacks[rows]
            if training:
                batch = augment_stacked(batch, (seed, self.epoch * 100_003 + index))
            return split_stacked(batch)

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Batches()


def _loss_scale_logger():
    """A callback logging the dynamic loss scale of mixed float16 (it halves at each step whose gradients overflow)."""
    import keras

    class LogLossScale(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scale = getattr(self.model.optimizer, "dynamic_scale", None)
            if logs is not None and scale is not None:
                logs["loss_scale"] = float(keras.ops.convert_to_numpy(scale))

    return LogLossScale()


def train_profile(args: argparse.Namespace) -> None:
    """Train the GPU profile with ``helpers.training.train`` and write what ``quality.py`` reads."""
    import keras

    import helpers
    from helpers import training
    from helpers.model import build_resunet

    started = time.monotonic()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: a run there would resume from its backup. Choose a new --out.")
    profile = dict(training.GPU_PROFILE, device=training.describe_device(), time_budget_minutes=args.minutes)
    profile["epochs"] = args.epochs or profile["epochs"]
    profile["input_size"] = args.input_size or profile["input_size"]
    profile["base_filters"] = args.width or profile["base_filters"]
    profile["channels"] = args.channels
    print(f"Keras {keras.__version__} on {keras.backend.backend()}; {profile['device']}")
    print(json.dumps(profile, indent=2))
    arrays = unpack(args.pack)
    train_stacks, _ = arrays["train"]
    val_stacks, val_patients = arrays["val"]
    train_stacks = resize_stacks(train_stacks, profile["input_size"])
    val_stacks = resize_stacks(val_stacks, profile["input_size"])
    print(f"Decoded {len(train_stacks)} training and {len(val_stacks)} validation slices "
          f"in {time.monotonic() - started:.0f} s.")
    keras.utils.set_random_seed(args.seed)
    policy = args.policy or ("mixed_float16" if profile["mixed_precision"] else "float32")
    profile["policy"] = policy
    profile["mixed_precision"] = policy != "float32"
    keras.mixed_precision.set_global_policy(policy)
    size, width = profile["input_size"], profile["base_filters"]
    model = training.compile_model(build_resunet((size, size, 3), width, channels=args.channels))
    train_batches = make_batches(train_stacks, profile["batch_size"], True, args.seed, args.workers,
                                 profile["oversample_tumour"])
    val_batches = make_batches(val_stacks, profile["batch_size"], False, args.seed, args.workers)
    history = training.train(
        model, train_batches, val_batches, out, epochs=profile["epochs"], extra_callbacks=[_loss_scale_logger()],
        time_budget_minutes=args.minutes, patience=args.patience,
        val_patient_arrays=(val_stacks[..., :3], val_stacks[..., 3], val_patients),
    )
    seconds = json.loads((out / "training_time.json").read_text())["seconds"]

    # float32 and without the optimizer, so that it loads and predicts anywhere, CPUs included.
    keras.mixed_precision.set_global_policy("float32")
    best = keras.models.load_model(out / "best.keras", compile=False)
    clean = build_resunet((size, size, 3), width, channels=args.channels)
    clean.set_weights(best.get_weights())
    clean.save(out / "best.keras")
    size_bytes = (out / "best.keras").stat().st_size
    part = int(args.part_mib * 2**20)
    if size_bytes > part:
        content = (out / "best.keras").read_bytes()
        for k in range(math.ceil(size_bytes / part)):
            (out / f"best.keras.part{k:02d}").write_bytes(content[k * part:(k + 1) * part])
        (out / "best.keras").unlink()
    (out / "device.json").write_text(json.dumps({
        "device": profile["device"],
        "backend": f"Keras {keras.__version__} on {keras.backend.backend()}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "versions": _versions(),
        "helpers": helpers.__version__,
        "profile": profile,
        "jpeg_quality": arrays["jpeg_quality"], "jpeg_mean_abs_error": arrays["mean_abs_error"],
        "train_slices": len(train_stacks), "val_slices": len(val_stacks),
        "epochs_run": len(history), "training_seconds": seconds,
        "training_slices_per_second": len(history) * len(train_batches) * profile["batch_size"] / seconds,
        "model_bytes": size_bytes,
        "command": training.command_line("benchmarks/gpu_profile.py train", args, skip=("step",), prefix="KERAS_BACKEND=jax"),
    }, indent=2))
    print((out / "device.json").read_text())


def _versions() -> dict:
    """Versions of the backend's libraries and OpenCV, for the record."""
    from importlib import metadata

    import cv2

    found = {"opencv": cv2.__version__, "numpy": np.__version__}
    for name in ("jax", "jaxlib", "torch", "tensorflow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    packing = steps.add_parser("pack", help="pack the training and validation slices (here)")
    packing.add_argument("--data-dir", default=None,
                         help="folder holding kaggle_3m/ (default: $LGG_DATA_DIR, else the kagglehub download)")
    packing.add_argument("--out", default=".gpu/slices.npz", help="the pack to write (default: %(default)s)")
    packing.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the images (default: %(default)s)")
    packing.add_argument("--seed", type=int, default=42, help="seed of the split (default: %(default)s)")
    packing.add_argument("--cache-dir", default="artifacts/cache", help="decoded-slice cache (default: %(default)s)")
    fitting = steps.add_parser("train", help="train the GPU profile (on the GPU machine)")
    fitting.add_argument("--pack", default=".gpu/slices.npz", help="the pack to read (default: %(default)s)")
    fitting.add_argument("--out", default="artifacts/gpu/run", help="output folder (default: %(default)s)")
    fitting.add_argument("--epochs", type=int, default=None, help="most epochs (default: the profile's)")
    fitting.add_argument("--input-size", type=int, default=None,
                         help="input size; the packed 256x256 slices are resized to it (default: the profile's)")
    fitting.add_argument("--width", type=int, default=None, help="base filters (default: the profile's)")
    fitting.add_argument("--channels", type=int, nargs="+", default=None,
                         help="input channels the network reads, e.g. 1 for FLAIR alone (default: all three)")
    fitting.add_argument("--minutes", type=float, default=6.0, help="training budget (default: %(default)s)")
    fitting.add_argument("--patience", type=int, default=20, help="early-stopping patience (default: %(default)s)")
    fitting.add_argument("--workers", type=int, default=12, help="threads preparing batches (default: %(default)s)")
    fitting.add_argument("--part-mib", type=float, default=15.0,
                         help="split the saved model into parts of this size (default: %(default)s)")
    fitting.add_argument("--seed", type=int, default=42, help="seed of shuffling and init (default: %(default)s)")
    fitting.add_argument("--policy", choices=("float32", "mixed_float16", "mixed_bfloat16"), default=None,
                         help="Keras dtype policy (default: mixed_float16, as the profile's mixed precision)")
    args = parser.parse_args()
    pack(args) if args.step == "pack" else train_profile(args)


if __name__ == "__main__":
    main()
