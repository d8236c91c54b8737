"""Data benchmark: manifest build and validation time, and training-pipeline throughput.

Measures on the real data (``--data-dir``, else ``$LGG_DATA_DIR``, else the kagglehub download):

* seconds to build the manifest of every slice and to validate every file;
* slices per second the training pipeline delivers at 256x256 with
  augmentation (every slice flipped at random, rotated and zoomed, 10%
  shown as FLAIR only, 30% given a random gamma per channel): from a
  cold start (decoding the TIFFs, no cache), from the decoded slices cached
  in memory, and streamed from the memory-mapped cache on disk (the path
  taken when the slices do not fit in memory).

The batches are those notebook 04 trains on: uint8 images (0-255), which the
ResUNet standardises itself (``make_dataset(image_dtype="uint8")``). The
in-memory figure is also measured with images scaled to float32 in the
pipeline, for comparison.

Writes ``pipeline.json`` under ``--out``.

    python benchmarks/pipeline.py --data-dir ../shared/lgg --out artifacts/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from helpers import data, preprocessing, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=300, help="batches timed from the cache (default: %(default)s)")
    args = parser.parse_args()

    case_root = data.resolve_data_dir(args.data_dir)
    start = time.perf_counter()
    manifest = data.build_manifest(case_root, show_progress=False)
    manifest_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = data.validate_manifest(manifest, show_progress=False)
    validate_seconds = time.perf_counter() - start

    # Cold start: decode every TIFF (no cache), then build the pipeline and draw one epoch.
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        images, masks = data.load_arrays(manifest, size=args.size, cache_dir=cache, show_progress=False)
        dataset = preprocessing.make_dataset(images, masks, args.batch_size, training=True, image_dtype="uint8")
        delivered = sum(int(batch[0].shape[0]) for batch in dataset)
        cold_seconds = time.perf_counter() - start
        start = time.perf_counter()
        data.load_arrays(manifest, size=args.size, cache_dir=cache, show_progress=False)
        cache_read_seconds = time.perf_counter() - start
        warm = preprocessing.measure_throughput(dataset, args.batches)
        warm_float = preprocessing.measure_throughput(
            preprocessing.make_dataset(images, masks, args.batch_size, training=True, image_dtype="float32"),
            args.batches)
        mapped_images, mapped_masks = data.load_arrays(manifest, size=args.size, cache_dir=cache,
                                                       show_progress=False, in_memory=False)
        streamed = preprocessing.measure_throughput(
            preprocessing.make_dataset(mapped_images, mapped_masks, args.batch_size, training=True,
                                       image_dtype="uint8"), args.batches)
        del mapped_images, mapped_masks
    result = {
        "command": training.command_line("benchmarks/pipeline.py", args),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}",
        "slices": len(manifest),
        "patients": int(manifest["patient"].nunique()),
        "validation_problems": len(report.problems),
        "manifest_seconds": manifest_seconds,
        "validate_seconds": validate_seconds,
        "manifest_and_validate_seconds": manifest_seconds + validate_seconds,
        "input_size": args.size,
        "batch_size": args.batch_size,
        "image_dtype": "uint8",
        "cold_start_first_epoch_slices_per_second": delivered / cold_seconds,
        "disk_cache_read_seconds": cache_read_seconds,
        "rotate_zoom_probability": preprocessing.ROTATE_ZOOM_PROBABILITY,
        "flair_only_probability": preprocessing.FLAIR_ONLY_PROBABILITY,
        "gamma_probability": preprocessing.GAMMA_PROBABILITY,
        "cached_slices_per_second_with_augmentation": warm["slices_per_second"],
        "cached_float32_slices_per_second_with_augmentation": warm_float["slices_per_second"],
        "streamed_from_disk_slices_per_second_with_augmentation": streamed["slices_per_second"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
