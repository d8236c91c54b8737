"""How sure are the quality benchmark's numbers? Bootstrap intervals over patients.

Each quality run writes ``per_patient.csv`` for its test patients. With ten
patients, the mean per-patient Dice moves by several points depending on
which patients happen to be in the test set. This script reads the tables of
one or more runs and writes, under ``--out``, ``patient_ci.json`` with:

* for each run, the mean per-patient Dice and its 95% percentile-bootstrap
  interval over patients (``helpers.metrics.mean_confidence_interval``);
* for each later run, the paired difference from the first run on the
  patients both scored, and its interval: an interval that holds 0 means
  these patients cannot tell the two runs apart.

The interval is over patients, not over training runs: the spread between
two runs of one configuration with different seeds is not in it.

    python benchmarks/patient_ci.py artifacts/ship5 artifacts/quality45c1 --out artifacts/patient_ci
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from helpers import metrics, training


def read_table(run: Path) -> pd.DataFrame:
    """A run's per-patient table, indexed by patient."""
    path = run if run.suffix == ".csv" else run / "per_patient.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no per-patient table; give a folder written by benchmarks/quality.py "
                         "(or notebook 05's artifacts folder), or the CSV itself.")
    table = pd.read_csv(path)
    if not {"patient", "dice"} <= set(table.columns):
        raise SystemExit(f"{path}: needs the columns 'patient' and 'dice', as benchmarks/quality.py writes them.")
    return table.set_index("patient")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quality-run folders (or per_patient.csv files); the first is the reference")
    parser.add_argument("--out", type=Path, default=Path("artifacts/patient_ci"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--level", type=float, default=0.95,
                        help="coverage of the bootstrap intervals (default: %(default)s)")
    args = parser.parse_args()

    tables = [read_table(run) for run in args.runs]
    reference = tables[0]["dice"]
    rows = []
    for run, table in zip(args.runs, tables):
        low, high = metrics.mean_confidence_interval(table["dice"], level=args.level)
        row = {"run": str(run), "patients": int(len(table)), "dice_per_patient_mean": float(table["dice"].mean()),
               "ci_low": low, "ci_high": high}
        if run != args.runs[0]:
            common = reference.index.intersection(table.index)
            difference = table.loc[common, "dice"] - reference.loc[common]
            row["paired_patients"] = int(len(common))
            row["difference_from_first"] = float(difference.mean())
            row["difference_ci_low"], row["difference_ci_high"] = metrics.mean_confidence_interval(difference, level=args.level)
        rows.append(row)
    report = {
        "command": training.command_line("benchmarks/patient_ci.py", args, positional=("runs",)),
        "interval": f"{args.level:.0%} percentile bootstrap over patients, 10,000 resamples, seed 0",
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "patient_ci.json").write_text(json.dumps(report, indent=2))
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
