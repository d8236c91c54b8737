"""Training speed: slices per second of the ResUNet's training step on this machine.

How many epochs a wall-clock budget buys depends on the machine: before
choosing ``TIME_BUDGET_MINUTES`` or ``quality.py --minutes``, measure it.
Trains the CPU profile's network (or the one given) on random slices, in
batches like notebook 04's (uint8 images, which the model standardises
itself), after a warm-up; no data is needed. Writes
``training_speed.json`` under ``--out`` with the rate for each policy, and
which vector instructions the processor reports (bfloat16 is fast only
with AVX-512 BF16 or AMX; elsewhere it is emulated, and slower than float32).

    python benchmarks/training_speed.py --out artifacts/bench
    python benchmarks/training_speed.py --policy float32 mixed_bfloat16 --out artifacts/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np

from helpers import training
from helpers.model import build_resunet

# Flags of /proc/cpuinfo that decide how fast the convolutions can run.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def processor() -> tuple[str, list[str]]:
    """The processor's model name and which of ``VECTOR_FLAGS`` it reports (Linux only; else unknown, none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown processor", []
    name, flags = "unknown processor", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return name, [flag for flag in VECTOR_FLAGS if flag in flags]


def slices_per_second(input_size: int, width: int, batch_size: int, batches: int, policy: str,
                      seed: int = 0) -> float:
    """Training slices per second over ``batches`` timed batches, after one warm-up epoch.

    Args:
        input_size: the model's input side, pixels.
        width: its base filters.
        batch_size: slices per batch.
        batches: batches timed.
        policy: a Keras dtype policy, ``"float32"`` or ``"mixed_bfloat16"``.
        seed: seed of the random slices and initial weights.

    Returns:
        Slices per second, training step only (no validation).
    """
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = build_resunet((input_size, input_size, 3), width)
        training.compile_model(model)
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (batch_size * batches, input_size, input_size, 3), dtype=np.uint8)
        masks = (rng.random((batch_size * batches, input_size, input_size, 1)) > 0.9).astype(np.float32)
        model.fit(images[:batch_size * 2], masks[:batch_size * 2], batch_size=batch_size, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(images, masks, batch_size=batch_size, epochs=1, verbose=0)
        return len(images) / (time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="artifacts/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=training.CPU_PROFILE["input_size"],
                        help="model input size (default: %(default)s, the CPU profile's)")
    parser.add_argument("--width", type=int, default=training.CPU_PROFILE["base_filters"],
                        help="base filters (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=training.CPU_PROFILE["batch_size"],
                        help="batch size (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches (default: %(default)s)")
    parser.add_argument("--policy", nargs="+", choices=("float32", "mixed_bfloat16"), default=["float32"],
                        help="dtype policies to time (default: %(default)s)")
    args = parser.parse_args()
    if args.batches < 1 or args.batch_size < 1:
        raise SystemExit("--batches and --batch-size take whole numbers from 1.")

    rates = {policy: slices_per_second(args.input_size, args.width, args.batch_size, args.batches, policy)
             for policy in args.policy}
    name, flags = processor()
    summary = {
        "command": training.command_line("benchmarks/training_speed.py", args),
        "machine": f"{platform.machine()}, {name}, {training.describe_device()}",
        "cpu_flags": flags,
        "input_size": args.input_size, "width": args.width, "batch_size": args.batch_size,
        "timed_slices": args.batch_size * args.batches,
        "slices_per_second": rates,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_speed.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
