"""Where the training pipeline's time goes: the same pipeline cut short at each stage.

Each line builds the tf.data pipeline of ``make_dataset`` (in-memory slices,
256x256, batches of 16, augmentation on one batch per core at once) up to one stage
and measures the slices per second it delivers. The per-slice work itself
(``augment_stacked`` and ``split_stacked``) is also timed outside TensorFlow, in
one Python thread and in two, to show how far two cores could take it.

Writes ``pipeline_stages.json`` under ``--out``.

    python benchmarks/pipeline_stages.py --data-dir ../shared/lgg --out artifacts/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from helpers import data, preprocessing, training


def threaded_rate(work, batches: list[np.ndarray], threads: int, rounds: int) -> float:
    """Slices per second of ``work`` over the batches, on ``threads`` Python threads."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, batches[:threads]))  # warm-up
        start = time.perf_counter()
        done = sum(pool.map(work, batches * rounds))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default="artifacts/cache", help="decoded-slice cache (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=200, help="batches timed per stage (default: %(default)s)")
    args = parser.parse_args()

    manifest = data.build_manifest(data.resolve_data_dir(args.data_dir), show_progress=False)
    images, masks = data.load_arrays(manifest, size=256, cache_dir=args.cache_dir, show_progress=False,
                                     in_memory=True)
    stacked = preprocessing.stack_with_masks(images, masks)
    batch_size = 16

    # The per-slice work alone, outside TensorFlow (OpenCV on one thread per call, as in make_dataset).
    cv2.setNumThreads(1)
    batches = [stacked[k * batch_size:(k + 1) * batch_size] for k in range(32)]
    work = {
        "augment_stacked": lambda b: len(preprocessing.augment_stacked(b, [7, len(b)])),
        "split_stacked to float32": lambda b: len(preprocessing.split_stacked(b)[0]),
        "augment_stacked then split_stacked to float32":
            lambda b: len(preprocessing.split_stacked(preprocessing.augment_stacked(b, [7, len(b)]))[0]),
        "augment_stacked then split_stacked, uint8":
            lambda b: len(preprocessing.split_stacked(preprocessing.augment_stacked(b, [7, len(b)]), False)[0]),
    }
    outside = {name: {f"{threads}_threads": threaded_rate(fn, batches, threads, rounds=4) for threads in (1, 2)}
               for name, fn in work.items()}

    # The pipeline, stage by stage.
    tensor = tf.constant(stacked)
    counter = tf.data.Dataset.random(seed=1).batch(2)

    def gathered():
        dataset = tf.data.Dataset.from_tensor_slices(np.arange(len(stacked))).shuffle(len(stacked), seed=1)
        return dataset.batch(batch_size).map(lambda rows: tf.gather(tensor, rows), num_parallel_calls=tf.data.AUTOTUNE)

    def through_numpy(function, out_types):
        @tf.autograph.experimental.do_not_convert
        def call(batch, seed):
            return tf.numpy_function(function, [batch, seed], out_types, stateful=False)
        return tf.data.Dataset.zip((gathered(), counter)).map(call, num_parallel_calls=os.cpu_count() or 2)

    def finish(dataset):
        options = tf.data.Options()
        options.threading.private_threadpool_size = os.cpu_count() or 2
        return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)

    stages = {
        "gather batches from the in-memory tensor": lambda: finish(gathered()),
        "and pass them through a NumPy function unchanged": lambda: finish(through_numpy(lambda b, s: b, [tf.uint8])),
        "and augment (stacked uint8 out)":
            lambda: finish(through_numpy(lambda b, s: preprocessing.augment_stacked(b, s), [tf.uint8])),
        "make_dataset, image_dtype='uint8' (augment, split, uint8 out)":
            lambda: preprocessing.make_dataset(images, masks, batch_size, training=True, image_dtype="uint8"),
        "make_dataset, image_dtype='float32' (augment, split, scale to float32)":
            lambda: preprocessing.make_dataset(images, masks, batch_size, training=True, image_dtype="float32"),
        "gather and split to float32, no augmentation":
            lambda: finish(through_numpy(lambda b, s: preprocessing.split_stacked(b), [tf.float32, tf.float32])),
    }
    inside = {name: preprocessing.measure_throughput(build(), args.batches)["slices_per_second"]
              for name, build in stages.items()}

    result = {
        "command": training.command_line("benchmarks/pipeline_stages.py", args),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}",
        "input_size": 256,
        "batch_size": batch_size,
        "outside_tensorflow_slices_per_second": outside,
        "pipeline_stage_slices_per_second": inside,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_stages.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
