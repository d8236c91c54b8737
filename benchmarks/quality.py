"""Quality benchmark: train the CPU profile on real data within a wall-clock budget.

Splits the patients of the data folder (``--data-dir``, else
``$LGG_DATA_DIR``, else the kagglehub download) into train, validation and
test; trains the ResUNet with the training pipeline of
notebook 04; chooses the checkpoint, threshold, component filter and flip
test-time augmentation on validation patients only; then scores the test
patients, which the model never saw. Writes ``quality.json``,
``learning_curve.png``, ``per_patient.csv``, ``per_slice.csv`` and the
trained ``model.keras`` under ``--out``.

    python benchmarks/quality.py --data-dir ../shared/lgg --minutes 85

``--model PATH`` scores a model already trained (the shipped one, say) the
same way, without training: post-processing chosen on the validation
patients of this split, then the test patients. Its training facts are then
null in ``quality.json``. With ``--flair-only-members``, slices whose three
channels are all FLAIR go to the members named alone (the shipped model
routes them to its FLAIR-alone member).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import keras
import pandas as pd

import helpers
from helpers import data, evaluation, plots, preprocessing, training
from helpers.model import average_models, build_resunet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help=data.DATA_DIR_HELP)
    parser.add_argument("--out", default="artifacts/quality", help="output folder (default: %(default)s)")
    parser.add_argument("--cache-dir", default="artifacts/cache",
                        help="decoded-slice cache, shared between runs (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=85, help="training budget in minutes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=60, help="most epochs (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=128, help="model input size (default: %(default)s)")
    parser.add_argument("--width", type=int, default=16, help="base filters (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam's first rate, before cosine decay (default: %(default)s)")
    parser.add_argument("--dice-weight", type=float, default=1.0, help="weight of the Dice loss (default: %(default)s)")
    parser.add_argument("--bce-weight", type=float, default=1.0,
                        help="weight of the cross-entropy loss (default: %(default)s)")
    parser.add_argument("--miss-weight", type=float, default=0.5,
                        help="weight of missed tumour pixels in the overlap term: 0.5 is Dice, above it a Tversky "
                             "loss that favours recall (default: %(default)s)")
    parser.add_argument("--oversample", type=float, default=0.5, help="extra share of tumour slices (default: %(default)s)")
    parser.add_argument("--plain", action="store_true", help="plain U-Net blocks instead of residual units")
    parser.add_argument("--soft-masks", action="store_true",
                        help="train on masks resized by area averaging and kept as fractions, not thresholded at one half; "
                             "validation masks, which choose the checkpoint, stay 0/1 (the history's training "
                             "'dice' is then against fractions and cannot reach 1)")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="input channels the network reads, e.g. 1 for FLAIR alone (default: all three)")
    parser.add_argument("--no-standardize", action="store_true",
                        help="feed 0-1 intensities without the per-slice z-score layer")
    parser.add_argument("--flair-only", type=float, default=preprocessing.FLAIR_ONLY_PROBABILITY,
                        help="share of training slices shown as FLAIR only (default: %(default)s)")
    parser.add_argument("--gamma", type=float, default=preprocessing.GAMMA_PROBABILITY,
                        help="share of training slices given a random gamma per channel (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=20,
                        help="epochs without a better validation Dice before stopping (default: %(default)s)")
    parser.add_argument("--ema", type=float, default=None,
                        help="momentum of an exponential moving average of the weights (Polyak averaging), "
                             "e.g. 0.995; validated and saved in place of the raw weights (default: none)")
    parser.add_argument("--seed", type=int, default=42, help="seed of split, shuffling, init (default: %(default)s)")
    parser.add_argument("--init-seed", type=int, default=None,
                        help="seed of shuffling, augmentation and initial weights only, keeping --seed's split: "
                             "a second run of one configuration on the same patients (default: --seed)")
    parser.add_argument("--policy", choices=("float32", "mixed_bfloat16"), default="float32",
                        help="Keras dtype policy for training: mixed_bfloat16 computes in bfloat16 (faster only "
                             "on CPUs with AVX-512 BF16 or AMX, slower elsewhere); the checkpoint is chosen on "
                             "validation scores computed in that policy, then saved and scored in float32 "
                             "(default: %(default)s)")
    parser.add_argument("--init-model", type=Path, default=None,
                        help="start from the weights of this saved network (same width, input and channels) "
                             "instead of random ones: a finished run continued with a fresh schedule from "
                             "--learning-rate (default: random initial weights)")
    parser.add_argument("--keep-epochs", action="store_true",
                        help="save every epoch's weights under OUT/run/epochs/, for benchmarks/weight_average.py")
    parser.add_argument("--schedule", choices=("cosine", "plateau", "constant"), default="cosine",
                        help="learning-rate schedule (default: %(default)s)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training: evaluate the run already in --out/run (its time is read from there); "
                             "give the command that trained it plus this flag: its training options (--init-model, "
                             "--policy, ...) are checked against the run's settings.json and recorded in "
                             "quality.json, not applied")
    parser.add_argument("--model", type=Path, nargs="+", default=None,
                        help="skip training: score this saved model (e.g. models/resunet_lgg.keras) on this split; "
                             "several: score the mean of their probabilities, saved as one model in --out")
    parser.add_argument("--flair-only-members", type=int, nargs="+", default=None,
                        help="with several --model: indices of those (from 0) whose mean alone answers for slices "
                             "that are FLAIR copied into every channel, e.g. 1 for a member reading FLAIR alone "
                             "(default: every slice gets the mean of all)")
    args = parser.parse_args()
    if args.flair_only_members is not None:
        if len(args.model or []) < 2:
            raise SystemExit("--flair-only-members routes FLAIR-only slices between models: give two or more "
                             "with --model.")
        if not set(args.flair_only_members) <= set(range(len(args.model))):
            raise SystemExit(f"--flair-only-members {args.flair_only_members}: give indices of --model, "
                             f"0 to {len(args.model) - 1}.")
    for option, given in (("--soft-masks", args.soft_masks), ("--policy", args.policy != "float32"),
                          ("--init-model", args.init_model is not None)):
        if given and args.model is not None:
            raise SystemExit(f"{option} sets how the network trains: it has no meaning with --model, which trains "
                             "nothing.")
    for path in ([args.init_model] if args.init_model is not None else []) + (args.model or []):
        if not path.is_file():
            raise SystemExit(f"{path}: no such model; give a .keras file saved by notebook 04 or this script.")

    out = Path(args.out)
    run_dir = out / "run"
    if args.evaluate_only and args.model is None and not (run_dir / "history.csv").is_file():
        raise SystemExit(f"{run_dir / 'history.csv'}: no training run to evaluate; train first "
                         "(the same command without --evaluate-only).")

    not_training = {"data_dir", "out", "cache_dir", "evaluate_only", "model", "flair_only_members", "minutes"}
    settings = {key: value for key, value in vars(args).items() if key not in not_training}
    settings["time_budget_minutes"] = args.minutes  # may change on resumption, as in notebook 04
    settings = json.loads(json.dumps(settings, default=str))
    recorded = run_dir / "settings.json"
    if args.evaluate_only and args.model is None and recorded.is_file():
        # quality.json records the command given: it must be the one that trained the run.
        listed = training.changed_settings(json.loads(recorded.read_text()), settings)
        if listed:
            raise SystemExit(f"{run_dir} was trained with other settings ({listed}; see {recorded}): give "
                             "--evaluate-only the command that trained it.")
    if args.model is None and not args.evaluate_only:
        # Never train a finished run again, nor continue one trained otherwise: only a run that was
        # stopped (killed, a lost session) resumes, at its last finished epoch.
        try:
            state = training.prepare_run(run_dir, settings,
                                         what_to_do="Give the options it was trained with to continue it, "
                                                    "or choose another --out.")
        except ValueError as error:
            raise SystemExit(str(error)) from None
        if state == "finished":
            raise SystemExit(f"{run_dir} holds a finished run: score it again with the same command and "
                             "--evaluate-only, or choose another --out to train anew.")
        if state == "resume":
            print(f"Resuming the run in {run_dir} at its last finished epoch.")

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    init_seed = args.seed if args.init_seed is None else args.init_seed
    keras.utils.set_random_seed(init_seed)
    case_root = data.resolve_data_dir(args.data_dir)
    print(f"Reading the slices from {case_root}")
    manifest = data.build_manifest(case_root)
    report = data.validate_manifest(manifest)
    if not report.ok:
        raise SystemExit(str(report))
    split = preprocessing.split_patients(manifest, seed=args.seed)
    split.to_csv(out / "split.csv", index=False)
    cache = Path(args.cache_dir)
    small = preprocessing.arrays_by_split(manifest, split, args.input_size, cache_dir=cache)
    full = preprocessing.arrays_by_split(manifest, split, 256, cache_dir=cache)

    if args.model is not None:
        history, train_seconds = None, None
    elif args.evaluate_only:
        history = pd.read_csv(run_dir / "history.csv")
        train_seconds = json.loads((run_dir / "training_time.json").read_text())["seconds"]
    else:
        keras.mixed_precision.set_global_policy(args.policy)
        model = build_resunet((args.input_size, args.input_size, 3), args.width, residual=not args.plain,
                              standardize=not args.no_standardize, channels=args.channels)
        if args.init_model is not None:
            try:
                training.load_initial_weights(model, args.init_model)
            except ValueError as error:
                raise SystemExit(str(error)) from None
        training.compile_model(model, learning_rate=args.learning_rate, dice_weight=args.dice_weight,
                               bce_weight=args.bce_weight, ema_momentum=args.ema, miss_weight=args.miss_weight)
        train_images, train_masks, train_rows = small["train"]
        mask_levels = 1
        if args.soft_masks:
            train_masks = data.load_arrays(train_rows, size=args.input_size, cache_dir=cache,
                                           soft_masks=True)[1]
            mask_levels = data.SOFT_MASK_LEVELS
        val_images, val_masks, val_rows = small["val"]
        # The standardisation layer takes 0-255 bytes as they are (make_dataset's image_dtype).
        image_dtype = "float32" if args.no_standardize else "uint8"
        train_ds = preprocessing.make_dataset(train_images, train_masks, args.batch_size, training=True,
                                              seed=init_seed, oversample_tumour=args.oversample,
                                              flair_only_probability=args.flair_only,
                                              gamma_probability=args.gamma, image_dtype=image_dtype,
                                              mask_levels=mask_levels)
        val_ds = preprocessing.make_dataset(val_images, val_masks, args.batch_size, image_dtype=image_dtype)
        train_started = time.monotonic()
        history = training.train(
            model, train_ds, val_ds, run_dir, epochs=args.epochs,
            time_budget_minutes=args.minutes, patience=args.patience,
            val_patient_arrays=(val_images, val_masks, val_rows["patient"].to_numpy()),
            schedule=args.schedule, keep_epochs=args.keep_epochs,
        )
        train_seconds = time.monotonic() - train_started
        keras.mixed_precision.set_global_policy("float32")
    if history is not None:
        plots.learning_curves(history).savefig(out / "learning_curve.png", dpi=100, bbox_inches="tight")

    # Several models are scored as one: the mean of their probabilities, saved in --out.
    members = [str(path) for path in args.model] if args.model is not None and len(args.model) > 1 else None
    if members:
        average_models([evaluation.load_model(path) for path in members],
                       flair_only_members=args.flair_only_members).save(out / "model.keras")
        model_path = out / "model.keras"
    elif args.model is None:
        # The trained network in float32 whatever it trained in: what the app and the notebooks load.
        model_path = training.export_model(run_dir / "best.keras", out / "model.keras", dtype="float32")
    else:
        model_path = args.model[0]
    best = evaluation.load_model(model_path)
    val_full_images, val_full_masks, val_full_rows = full["val"]
    test_images, test_masks, test_rows = full["test"]
    post, table = evaluation.choose_on_validation(
        best, val_full_images, val_full_masks, val_full_rows["patient"].to_numpy(),
        min_components=(0, 30, 100), min_volumes=(0, 100, 300, 1000, 3000),
        slice_numbers=val_full_rows["slice"].to_numpy())
    table.to_csv(out / "postprocessing_validation.csv", index=False)
    use_tta = post.pop("flip_tta")
    val_best = post.pop("val_dice_per_patient")

    results = {}
    plain = {"threshold": 0.5, "min_component_pixels": 0, "min_volume_pixels": 0}
    for name, tta, chosen in (("plain_0.5", False, plain), ("chosen_on_val", use_tta, post)):
        probabilities = evaluation.predict_probabilities(best, test_images, flip_tta=tta)
        prediction = evaluation.postprocess(probabilities, test_rows["patient"].to_numpy(), **chosen,
                                            slice_numbers=test_rows["slice"].to_numpy())
        summary, slice_table, patient_table = evaluation.evaluate(test_masks, prediction, test_rows)
        results[name] = summary
        if name == "chosen_on_val":
            slice_table.to_csv(out / "per_slice.csv", index=False)
            patient_table.to_csv(out / "per_patient.csv", index=False)

    # Settings for single slices (no flips, no patient stack), for the app and the command line.
    single, _ = evaluation.choose_on_validation(
        best, val_full_images, val_full_masks, val_full_rows["patient"].to_numpy(),
        flip_options=(False,), min_components=(0, 10, 30, 60, 100, 200))
    evaluation.write_model_settings(out / "model.json", single, split.loc[split.split == "val", "patient"],
                                    input_size=int(best.input_shape[1]),
                                    base_filters=None if args.model is not None else args.width,
                                    **({"members": members} if members else {}),
                                    **({"flair_only_members": args.flair_only_members}
                                       if args.flair_only_members else {}))
    report = {
        "command": training.command_line("benchmarks/quality.py", args),
        "machine": f"{platform.node()} {platform.machine()}, {training.describe_device()}",
        "keras": keras.__version__, "helpers": helpers.__version__,
        "data_folder": str(case_root),
        "patients": split["split"].value_counts().to_dict(),
        "test_patients": sorted(split.loc[split.split == "test", "patient"]),
        "val_patients": sorted(split.loc[split.split == "val", "patient"]),
        "model": str(model_path),
        "members": members,
        "flair_only_members": args.flair_only_members,
        "epochs_run": None if history is None else int(len(history)),
        "best_epoch": None if history is None else int(history["val_patient_dice"].idxmax()) + 1,
        "val_patient_dice_best_epoch": None if history is None else float(history["val_patient_dice"].max()),
        "training_seconds": train_seconds,
        "total_seconds": time.monotonic() - started + (train_seconds if args.evaluate_only and train_seconds else 0.0),
        "postprocessing_chosen_on_val": {**post, "flip_tta": bool(use_tta), "val_dice_per_patient": float(val_best)},
        "test": results,
        "dice_per_patient_mean": results["chosen_on_val"]["dice_per_patient_mean"],
        "dice_per_patient_ci95": [results["chosen_on_val"]["dice_per_patient_ci95_low"],
                                  results["chosen_on_val"]["dice_per_patient_ci95_high"]],
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
