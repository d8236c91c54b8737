"""Command line: segment MRI images and write masks, overlays and a table.

    python -m helpers.predict INPUT... --out DIR [--model PATH] [--threshold T]
        [--min-component-pixels N] [--overwrite]

Threshold and smallest region default to the values recorded beside the
model (``helpers.inference.recommended_settings``).

For each input ``NAME.ext`` it writes ``DIR/NAME_mask.png`` (0 and 255, at
the input's height and width) and ``DIR/NAME_overlay.png``, and one row of
``DIR/predictions.csv``, which also records how the image was read (three
sequences or FLAIR alone) and the settings and model that made the mask.
A thin wrapper over ``helpers.inference``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from helpers import inference, metrics

TABLE_NAME = "predictions.csv"
INTERRUPTED = "not segmented: interrupted (Ctrl-C); run the same command again to segment it"
TABLE_COLUMNS = ["file", "mask", "tumour_pixels", "tumour_present", "max_probability", "read_as", "threshold",
                 "min_component_pixels", "model", "model_sha256", "dice"]
# What made a mask: a kept mask made otherwise is named. The model's file is replaced in place when a new
# one is shipped, so its content is recorded too.
SETTING_COLUMNS = ["threshold", "min_component_pixels", "model", "model_sha256"]
DISCLAIMER = (
    "For research and teaching only, not for diagnosis: the model was trained on "
    "brain MRI slices of lower-grade glioma patients in one public dataset and has not been validated "
    "for clinical use."
)


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` shows every default."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.predict",
        description=(
            "Segment brain tumours (lower-grade glioma) in MRI slices with the ResUNet. "
            "Inputs are PNG, JPEG or TIFF files, or folders searched recursively for them; "
            "files named NAME_mask.ext are ground truth, not inputs, and give a Dice column "
            "when they sit beside NAME.ext. " + inference.CHANNELS_NOTE + " " + DISCLAIMER
        ),
        epilog=(
            "Writes DIR/NAME_mask.png (0 and 255), DIR/NAME_overlay.png and DIR/predictions.csv "
            "(one row per mask: the input's path, tumour pixels, how it was read, the threshold, smallest region "
            "and model used, and Dice when ground truth is beside it). "
            "Exit status: 0 all images segmented (or kept), 1 some failed, 2 usage error."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--model", type=Path, default=inference.DEFAULT_MODEL, help="saved .keras model")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", default=argparse.SUPPRESS,
                        help="output folder (created if missing); required")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="a pixel is tumour when its probability is above this (0-1); None: the value "
                             "chosen on validation patients and recorded beside the model (MODEL.json), else 0.5")
    parser.add_argument("--min-component-pixels", type=_non_negative, default=None,
                        help="drop predicted regions smaller than this many pixels of a 256x256 slice "
                             "(scaled by area for other sizes), 0 keeps all; None: the value recorded beside "
                             "the model, else 0")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs instead of keeping them")
    return parser


def _report(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _dice_with_truth(image_path: Path, mask: np.ndarray) -> float:
    """Dice against ``NAME_mask.ext`` beside the image, NaN when there is none."""
    truth, problem = inference.read_ground_truth(image_path, mask.shape)
    if truth is None:
        if problem:
            _report(f"warning: no Dice for {image_path}: {problem}")
        return float("nan")
    return metrics.dice_score(truth, mask)


def predict_files(
    images: list[Path], out: Path, model, threshold: float = 0.5, min_component_pixels: int = 0,
    overwrite: bool = False, model_path: str | Path = "", earlier: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Path], list[tuple[Path, str]]]:
    """Segment files one by one, writing a mask and an overlay for each.

    Args:
        images: image files.
        out: output folder (must exist).
        model: the Keras model.
        threshold: probability threshold, 0-1.
        min_component_pixels: smallest predicted region kept.
        overwrite: replace existing outputs; otherwise an input whose
            outputs exist is skipped.
        model_path: the model's file, recorded in each row.
        earlier: the table an earlier run wrote in ``out``, if any; a kept
            output made with other settings or another model is named.

    Returns:
        (one table row per segmented image, inputs skipped because their
        outputs exist, (input, message naming the input) of each failure).
        Interrupted (Ctrl-C), it returns what was done; each image not
        segmented is a failure whose message ends with ``INTERRUPTED``.
    """
    rows, kept, failed = [], [], []
    used_names: dict[str, Path] = {}
    now = {"threshold": threshold, "min_component_pixels": min_component_pixels, "model": str(model_path),
           "model_sha256": file_digest(model_path)}
    made_with = _rows_by_mask(earlier)
    try:
        for path in tqdm(images, desc="Segmenting", unit="image"):
            _predict_one(path, out, model, threshold, min_component_pixels, overwrite, now, made_with,
                         used_names, rows, kept, failed)
    except KeyboardInterrupt:
        # Ctrl-C: what was done is returned, so that the table records it, and the rest is named. Each
        # image adds one entry to rows, kept or failed; the one cut short leaves no output without its row.
        remaining = images[len(rows) + len(kept) + len(failed):]
        if remaining:
            name = Path(remaining[0].name).stem
            for partial in (out / f"{name}_mask.png", out / f"{name}_overlay.png"):
                partial.unlink(missing_ok=True)
        failed += [(path, f"{path}: {INTERRUPTED}") for path in remaining]
        _report(f"interrupted: {len(remaining)} image(s) not segmented")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table, kept, failed


def _predict_one(path: Path, out: Path, model, threshold: float, min_component_pixels: int, overwrite: bool,
                 now: dict, made_with: dict, used_names: dict, rows: list, kept: list, failed: list) -> None:
    """``predict_files``' work for one image: its outputs written and its row, kept entry or failure added."""
    # Only the base name reaches the output folder, so no input can write elsewhere.
    name = Path(path.name).stem
    if name in used_names:
        reason = (f"{path}: output name {name} is already used by {used_names[name]}; rename "
                  "one of them or segment them into different folders")
        failed.append((path, reason))
        _report(f"error: {reason}")
        return
    used_names[name] = path
    mask_file, overlay_file = out / f"{name}_mask.png", out / f"{name}_overlay.png"
    if not overwrite and (mask_file.exists() or overlay_file.exists()):
        kept.append(path)
        _report(_kept_message(path, mask_file.name, made_with.get(mask_file.name, {}), now))
        return
    try:
        image = inference.load_image(path)
        result = inference.segment(model, image, threshold, min_component_pixels)
        dice = _dice_with_truth(path, result.mask)  # before writing anything
        Image.fromarray(result.mask * np.uint8(255)).save(mask_file)
        Image.fromarray(result.overlay).save(overlay_file)
    except (inference.ImageLoadError, OSError, ValueError) as error:
        # An ImageLoadError names the file already; other errors do not.
        reason = str(error) if isinstance(error, inference.ImageLoadError) else f"{path}: {error}"
        failed.append((path, reason))
        _report(f"error: {reason}")
        return
    rows.append({
        "file": str(Path(path).resolve()),  # the same file however it was named on the command line
        "mask": mask_file.name,  # one row per mask: outputs are named by the input's base name
        "tumour_pixels": result.tumour_pixels,
        "tumour_present": result.tumour_present,
        "max_probability": round(result.max_probability, 6),
        "read_as": result.read_as,
        **now,
        "dice": dice,
    })


def _same(key: str, recorded, current) -> bool:
    """Whether a setting read back from the table equals the current one (numbers compared as numbers)."""
    if key in ("threshold", "min_component_pixels"):
        return float(recorded) == float(current)
    return str(recorded) == str(current)


def file_digest(path: str | Path) -> str:
    """The first 12 hex digits of a file's SHA-256 ("" when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _mask_names(table: pd.DataFrame) -> pd.Series:
    """Each row's mask file; tables written before the ``mask`` column get it from the input's base name."""
    derived = table["file"].map(lambda file: f"{Path(str(file)).stem}_mask.png")
    return table["mask"].fillna(derived) if "mask" in table else derived


def _rows_by_mask(earlier: pd.DataFrame | None) -> dict[str, dict]:
    """The rows of an earlier table by the mask each describes."""
    if earlier is None or earlier.empty:
        return {}
    return {mask: row.to_dict() for mask, (_, row) in zip(_mask_names(earlier), earlier.iterrows())}


def _kept_message(path: Path, mask_name: str, before: dict, now: dict) -> str:
    """What to say of an input whose mask is kept: made otherwise (another file, settings or model), or not."""
    made_otherwise = []
    if "model" in before and not pd.isna(before.get("file")) and before["file"] != str(Path(path).resolve()):
        made_otherwise.append(f"from {before['file']}")
    changed = [f"{key} {before[key]} (now {now[key]})" for key in SETTING_COLUMNS
               if key in before and not pd.isna(before[key]) and not _same(key, before[key], now[key])]
    if changed:
        made_otherwise.append("with " + ", ".join(changed))
    if made_otherwise:
        return f"kept: {path}: {mask_name} was made {' '.join(made_otherwise)}; pass --overwrite to segment it again"
    return f"kept: {path}: {mask_name} already exists (pass --overwrite to replace it)"


def read_earlier_table(table_path: Path) -> pd.DataFrame | None:
    """The table an earlier run of this command wrote, or None when there is none.

    Args:
        table_path: ``DIR/predictions.csv``.

    Returns:
        Its rows, or None when the file does not exist.

    Raises:
        ValueError: naming the file, when it cannot be read or was not
            written by this command; it is left as it is.
    """
    if not table_path.is_file():
        return None
    remedy = "move it, or choose another --out, so that it is not replaced"
    try:
        earlier = pd.read_csv(table_path, dtype={"file": str, "mask": str, "model": str, "model_sha256": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ValueError(f"{table_path} could not be read ({error}); {remedy}.") from None
    if not {"file", "tumour_pixels"} <= set(earlier.columns):
        raise ValueError(f"{table_path} was not written by this command (it has no file and tumour_pixels "
                         f"columns); {remedy}.")
    return earlier


def _merge_table(table: pd.DataFrame, earlier: pd.DataFrame | None) -> pd.DataFrame:
    """Add the rows of an earlier run for masks not made again in this one, in ``TABLE_COLUMNS`` order."""
    if earlier is not None and len(earlier):
        earlier = earlier.assign(mask=_mask_names(earlier))
        earlier = earlier[~earlier["mask"].isin(table["mask"])]
        table = pd.concat([earlier, table], ignore_index=True) if len(earlier) else table
    table = table[[c for c in TABLE_COLUMNS if c in table] + [c for c in table if c not in TABLE_COLUMNS]]
    if "dice" in table and table["dice"].isna().all():
        table = table.drop(columns="dice")
    return table


def _output_clash(inputs: list[str], images: list[Path], out: Path) -> str | None:
    """Why ``out`` may not take outputs for these inputs, or None when it may.

    Outputs named ``NAME_mask.png`` beside the inputs would be read as their
    ground truth (or, with ``--overwrite``, replace it), and outputs inside a
    searched folder would be segmented as inputs on the next run.
    """
    out = out.resolve()
    for folder in (Path(text).resolve() for text in inputs if Path(text).is_dir()):
        if out == folder or folder in out.parents:
            return f"--out {out} is inside the input folder {folder}"
    for image in images:
        if image.resolve().parent == out:
            return f"--out {out} holds the input {image}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (without the program name); ``None`` for ``sys.argv[1:]``.

    Returns:
        0 when every image was segmented or kept, 1 when any failed, 2 for a
        usage error (bad option, missing input or model, nothing to segment),
        130 when interrupted (Ctrl-C) after writing the table of what was done.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits; return its status so callers can test it.
        return int(stop.code or 0)
    # "~" is the shell's to expand; a quoted path or one from Python keeps it.
    args.model, args.out = args.model.expanduser().resolve(), args.out.expanduser()
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file, not a folder. Give a folder (it is made if missing).",
              file=sys.stderr)
        return 2
    try:
        images, masks = inference.find_images(args.inputs)
    except FileNotFoundError as error:
        parser.print_usage(sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 2
    if masks:
        print(f"Skipped {len(masks)} ground-truth file(s) named *_mask as inputs.", file=sys.stderr)
    if not images and masks:
        print(f"error: only files named like ground truth (NAME_mask.ext) in {', '.join(args.inputs)}: "
              f"{', '.join(str(m) for m in masks[:3])}{' ...' if len(masks) > 3 else ''}. "
              "To segment such an image, copy it under a name that does not end in _mask.", file=sys.stderr)
        return 2
    if not images:
        print(f"error: no image (.png, .jpg, .jpeg, .tif, .tiff) found in {', '.join(args.inputs)}.",
              file=sys.stderr)
        return 2
    clash = _output_clash(args.inputs, images, args.out)
    if clash:
        print(f"error: {clash}: its NAME_mask.png outputs would be taken for ground truth, or replace it. "
              "Choose an output folder outside the inputs.", file=sys.stderr)
        return 2
    table_path = args.out / TABLE_NAME
    try:
        earlier = read_earlier_table(table_path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        settings = inference.recommended_settings(args.model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        model = inference.load_default_model(args.model)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threshold is None:
        args.threshold = settings["threshold"]
    if args.min_component_pixels is None:
        args.min_component_pixels = settings["min_component_pixels"]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"Model: {args.model} (threshold {args.threshold}, smallest region "
          f"{args.min_component_pixels} px)\nOutput: {args.out.resolve()}", file=sys.stderr)
    table, kept, failed = predict_files(
        images, args.out, model, args.threshold, args.min_component_pixels, args.overwrite,
        model_path=args.model, earlier=earlier,
    )
    merged = _merge_table(table, earlier)
    if len(merged):
        merged.to_csv(table_path, index=False)
    print(f"Segmented {len(table)}, kept {len(kept)} existing, failed {len(failed)} of "
          f"{len(images)} image(s)." + (f" Table: {table_path}" if len(merged) else ""))
    interrupted = [path for path, reason in failed if reason.endswith(INTERRUPTED)]
    failed = [(path, reason) for path, reason in failed if not reason.endswith(INTERRUPTED)]
    if failed:
        print(f"{len(failed)} image(s) failed:", file=sys.stderr)
        for _, reason in failed:
            print(f"  {reason}", file=sys.stderr)
    if interrupted:
        print(f"Interrupted: {len(interrupted)} image(s) not segmented, from {interrupted[0]} on; the table holds "
              "those done. Run the same command again to segment the rest.", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
