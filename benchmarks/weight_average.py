"""One network from the epochs a run kept: their weights averaged, or the epoch whose neighbours agree.

A run trained with ``quality.py --keep-epochs`` saves every epoch's weights
under ``RUN/run/epochs/``. Its usual checkpoint is the epoch with the highest
validation per-patient Dice, a score over ten patients that jumps by several
hundredths from one epoch to the next (``kept_epochs.py``). This script makes
one of two other choices and exports it, in float32, as ``OUT/model.keras``,
ready for ``quality.py --model``:

- ``--choose mean`` (default): the mean of the weights of the epochs from
  ``--first`` to ``--last`` (stochastic weight averaging, Izmailov et al.,
  2018; a uniform "model soup", Wortsman et al., 2022);
- ``--choose mean-of-3``: the single epoch with the highest mean of its score
  and its two neighbours' (``helpers.plots.three_epoch_mean``).

With ``--recompute-batch-norm``, the batch-normalisation statistics are then
computed afresh over one pass of the run's training slices, unaugmented
(``helpers.training.recompute_batch_norm``), as stochastic weight averaging
does; otherwise they are averaged like the other weights. It writes
``OUT/weight_average.json`` with the epochs used. ``--continued-by`` adds
the epochs of runs that went on from RUN's last epoch, numbered on after
RUN's, so that one average spans a run and its continuations.

    python benchmarks/weight_average.py artifacts/quality24 --out artifacts/quality24W
    python benchmarks/weight_average.py artifacts/quality24 --choose mean-of-3 --out artifacts/quality24M
    python benchmarks/weight_average.py artifacts/quality24 --recompute-batch-norm --data-dir ../shared/lgg \
        --out artifacts/quality24WB
    python benchmarks/weight_average.py artifacts/quality24 --continued-by artifacts/quality26 \
        --recompute-batch-norm --data-dir ../shared/lgg --out artifacts/quality2426WB
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import helpers  # noqa: F401  (registers the layers the saved models use)
from helpers import data, plots, preprocessing, training

CACHE_DIR = "artifacts/cache"


def epoch_files(run: Path) -> tuple[pd.DataFrame, dict[int, Path]]:
    """A quality run's history and its kept weights by 1-based epoch."""
    history_path, folder = run / "run" / "history.csv", run / "run" / "epochs"
    if not history_path.is_file():
        raise SystemExit(f"{history_path}: no training history; give a folder written by benchmarks/quality.py.")
    files = training.kept_weight_files(run / "run")
    if not files:
        raise SystemExit(f"{folder}: no epoch weights; train the run with benchmarks/quality.py --keep-epochs.")
    history = pd.read_csv(history_path)
    if len(history) != max(files):
        raise SystemExit(f"{history_path}: {len(history)} epochs of history against {max(files)} kept in {folder}; "
                         "the scores would not line up with the weights.")
    return history, files


def check_continues(previous: Path, run: Path) -> None:
    """Refuse ``run`` unless it trained on from the last epoch ``previous`` kept (its ``--init-model``)."""
    settings_path = run / "run" / "settings.json"
    start = json.loads(settings_path.read_text()).get("init_model") if settings_path.is_file() else None
    kept = training.kept_weight_files(previous / "run")
    remedy = (f"--continued-by takes runs trained from the last epoch of the run before them: make it with "
              f"`python benchmarks/weight_average.py {previous} --first {max(kept)} --last {max(kept)} --out DIR` "
              "and train with --init-model DIR/model.keras.")
    if not start or not Path(start).is_file():
        raise SystemExit(f"{settings_path}: no --init-model file to check ({start}); {remedy}")
    last = keras.models.load_model(previous / "run" / "best.keras", compile=False)
    training.average_weights(last, [kept[max(kept)]])
    began = keras.models.load_model(start, compile=False).get_weights()
    if len(began) != len(last.get_weights()) or not all(
            np.array_equal(one, other) for one, other in zip(began, last.get_weights())):
        raise SystemExit(f"{settings_path}: its --init-model, {start}, is not epoch {max(kept)} of {previous}, "
                         f"the last it kept; {remedy}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a folder written by benchmarks/quality.py --keep-epochs")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--continued-by", type=Path, nargs="+", default=[], metavar="RUN",
                        help="folders of runs trained on from RUN's last epoch (quality.py --init-model), in order; "
                             "their kept epochs are numbered on after RUN's, so that one average spans them all")
    parser.add_argument("--choose", choices=("mean", "mean-of-3"), default="mean",
                        help="average the epochs' weights, or keep the epoch whose neighbours score best "
                             "(default: %(default)s)")
    parser.add_argument("--first", type=int, default=1, help="first epoch averaged, from 1 (default: %(default)s)")
    parser.add_argument("--last", type=int, default=None, help="last epoch averaged (default: the run's last)")
    parser.add_argument("--recompute-batch-norm", action="store_true",
                        help="recompute the batch-norm statistics over the run's training slices")
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--cache-dir", default=None,
                        help="decoded-slice cache, as quality.py's (default with --recompute-batch-norm: "
                             f"{CACHE_DIR})")
    args = parser.parse_args()
    if args.recompute_batch_norm:
        args.cache_dir = args.cache_dir or CACHE_DIR
    elif args.data_dir is not None or args.cache_dir is not None:
        parser.error("--data-dir and --cache-dir are read only with --recompute-batch-norm; "
                     "add it, or leave them out.")

    history = pd.concat([epoch_files(run)[0] for run in (args.run, *args.continued_by)], ignore_index=True)
    split_path = args.run / "split.csv"
    if args.recompute_batch_norm and not split_path.is_file():
        raise SystemExit(f"{split_path}: no split; give a folder written by benchmarks/quality.py.")
    for previous, run in zip((args.run, *args.continued_by), args.continued_by):
        if split_path.is_file() and (run / "split.csv").is_file() and not pd.read_csv(run / "split.csv").equals(
                pd.read_csv(split_path)):
            raise SystemExit(f"{run / 'split.csv'}: not the split of {split_path}; a continued run keeps its "
                             "patients.")
        check_continues(previous, run)  # after the split: it loads two networks
    if args.choose == "mean-of-3":
        kept = plots.kept_epoch(history)
        if kept is None:
            raise SystemExit(f"{args.run / 'run' / 'history.csv'}: no val_patient_dice or val_dice to choose by.")
        smooth = plots.three_epoch_mean(history[kept[0]])
        first = last = int(smooth.to_numpy().argmax()) + 1
    else:
        first, last = args.first, args.last
    try:
        model, epochs = training.average_kept_epochs(args.run / "run", first, last,
                                                     continued_by=[run / "run" for run in args.continued_by])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    recomputed_on = None
    if args.recompute_batch_norm:
        manifest = data.build_manifest(data.resolve_data_dir(args.data_dir))
        arrays = preprocessing.arrays_by_split(manifest, pd.read_csv(split_path), int(model.input_shape[1]),
                                               cache_dir=args.cache_dir)
        training.recompute_batch_norm(model, arrays["train"][0])
        recomputed_on = int(len(arrays["train"][0]))
    # Written last, so that a failure above leaves no model that looks finished.
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    column = plots.kept_epoch(history)
    scores = history[column[0]].iloc[[epoch - 1 for epoch in epochs]] if column else None
    report = {
        "command": training.command_line("benchmarks/weight_average.py", args, positional=("run",),
                                         skip=("first", "last") if args.choose == "mean-of-3" else ()),
        "run": str(args.run),
        "continued_by": [str(run) for run in args.continued_by],
        "choose": args.choose,
        "epochs": epochs,
        "score": column[0] if column else None,
        "scores_of_those_epochs": None if scores is None else [float(score) for score in scores],
        "batch_norm_recomputed_on_slices": recomputed_on,
        "model": str(args.out / "model.keras"),
    }
    (args.out / "weight_average.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
