"""Inference benchmark: milliseconds per 256x256 PNG, end to end, after warm-up.

End to end is what a user waits for: read and decode the PNG, predict with
the shipped model (resizing to its input and back), threshold and drop small
regions with the settings recorded beside the model (as the command line,
the app and notebook 06 do), and draw the overlay. Writes
``inference.json`` under ``--out``.

    python benchmarks/inference.py --out artifacts/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import inference, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="model file (default: %(default)s)")
    parser.add_argument("--out", default="artifacts/bench", help="output folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed images (default: %(default)s)")
    args = parser.parse_args()

    model = inference.load_default_model(args.model)
    settings = inference.recommended_settings(args.model)
    rng = np.random.default_rng(0)
    timings = []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(5):
            path = Path(folder) / f"slice_{index}.png"
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        for index in range(5 + args.repeats):
            start = time.perf_counter()
            result = inference.segment(model, inference.load_image(paths[index % len(paths)]),
                                       settings["threshold"], settings["min_component_pixels"])
            elapsed = time.perf_counter() - start
            assert result.mask.shape == (256, 256)
            if index >= 5:
                timings.append(elapsed * 1000)
    summary = {
        "command": training.command_line("benchmarks/inference.py", args),
        "machine": f"{platform.machine()}, {training.describe_device()}",
        "model": args.model,
        "settings": settings,
        "model_input": list(model.input_shape[1:]),
        "image": "256x256 RGB PNG",
        "milliseconds_median": float(np.median(timings)),
        "milliseconds_p90": float(np.percentile(timings, 90)),
        "repeats": args.repeats,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
