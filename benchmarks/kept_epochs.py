"""Does a run's kept checkpoint stand on a lone peak of its validation curve?

Training keeps the epoch with the highest validation per-patient Dice
(``helpers.plots.kept_epoch``). Over ten validation patients that score is
noisy, so the highest of many epochs can stand well above the epochs around
it, and then overstates the network it keeps. For each run this script
compares the kept epoch's score with the mean over it and its two neighbours
(``helpers.plots.three_epoch_mean``, the dashed line of the learning curves)
and writes, under ``--out``, ``kept_epochs.json``.

    python benchmarks/kept_epochs.py artifacts/quality22 artifacts/quality19 --out artifacts/kept_epochs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from helpers import plots, training


def read_history(run: Path) -> tuple[Path, pd.DataFrame]:
    """A run's training history: the CSV itself, or the one in a run folder."""
    candidates = [run] if run.suffix == ".csv" else [run / "run" / "history.csv", run / "training" / "history.csv",
                                                       run / "history.csv"]
    for path in candidates:
        if path.is_file():
            return path, pd.read_csv(path)
    raise SystemExit(f"{run}: no history.csv in it (looked for {', '.join(str(path) for path in candidates)}); "
                     "give a folder written by benchmarks/quality.py, notebook 04's artifacts folder, or the CSV.")


def kept_epoch_report(history: pd.DataFrame) -> dict:
    """The kept epoch's score against the mean of it and its two neighbours.

    Args:
        history: One row per epoch, as logged by Keras.

    Returns:
        ``score`` (the monitored column), ``epochs``, ``kept_epoch`` (1-based),
        ``kept_score``, ``mean_of_3`` and ``above_mean_of_3`` (their
        difference), and ``best_mean_of_3`` with its epoch.

    Raises:
        ValueError: When the history holds no validation Dice.
    """
    kept = plots.kept_epoch(history)
    if kept is None:
        raise ValueError("the history has no val_patient_dice or val_dice to choose a checkpoint by")
    column, index = kept
    score = float(history[column].iloc[index])
    smooth = plots.three_epoch_mean(history[column])
    return {
        "score": column,
        "epochs": int(len(history)),
        "kept_epoch": index + 1,
        "kept_score": score,
        "mean_of_3": float(smooth.iloc[index]),
        "above_mean_of_3": score - float(smooth.iloc[index]),
        "best_mean_of_3": float(smooth.max()),
        "best_mean_of_3_epoch": int(smooth.to_numpy().argmax()) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="quality-run folders, notebook 04 artifacts folders, or history.csv files")
    parser.add_argument("--out", type=Path, default=Path("artifacts/kept_epochs"),
                        help="output folder (default: %(default)s)")
    args = parser.parse_args()

    rows = []
    for run in args.runs:
        path, history = read_history(run)
        try:
            rows.append({"run": str(run), **kept_epoch_report(history)})
        except ValueError as error:
            raise SystemExit(f"{path}: {error}.") from None
    report = {"command": training.command_line("benchmarks/kept_epochs.py", args, positional=("runs",)),
              "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kept_epochs.json").write_text(json.dumps(report, indent=2))
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
