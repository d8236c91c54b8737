"""Augmentation benchmark: one batch per core at once, or one at a time.

Builds the training pipeline over the decoded real slices at 256x256 (from
the cache under ``artifacts/cache``, decoded first if absent) both ways,
``make_dataset(parallel_augmentation=True)`` (each OpenCV warp on one thread,
one batch per core) and ``False`` (one batch at a time, OpenCV's own threads),
and measures each in turn, ``--rounds`` times, in one process, so that both
meet the same machine. Writes ``augment_threads.json`` under ``--out``.

    python benchmarks/augment_threads.py --data-dir ../shared/lgg --out artifacts/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import cv2

from helpers import data, preprocessing, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=150, help="batches timed per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="measurements of each way (default: %(default)s)")
    parser.add_argument("--cache-dir", default="artifacts/cache",
                        help="decoded-slice cache, shared between runs (default: %(default)s)")
    args = parser.parse_args()

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir), show_progress=False)
    images, masks = data.load_arrays(manifest, size=256, cache_dir=args.cache_dir, show_progress=False)
    opencv_threads = cv2.getNumThreads()
    runs = {"parallel": [], "one_at_a_time": []}
    for _ in range(args.rounds):
        for name, parallel in (("parallel", True), ("one_at_a_time", False)):
            cv2.setNumThreads(opencv_threads)  # make_dataset(parallel_augmentation=True) lowers it to 1
            dataset = preprocessing.make_dataset(images, masks, 16, training=True, parallel_augmentation=parallel)
            runs[name].append(preprocessing.measure_throughput(dataset, args.batches)["slices_per_second"])
            print(name, round(runs[name][-1]), "slices/s", flush=True)
    result = {
        "command": training.command_line("benchmarks/augment_threads.py", args),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "input_size": 256, "batch_size": 16, "batches_per_measurement": args.batches,
        "slices_per_second": runs,
        "median_slices_per_second": {name: statistics.median(values) for name, values in runs.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "augment_threads.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median_slices_per_second"], indent=2))


if __name__ == "__main__":
    main()
