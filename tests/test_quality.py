"""Tests of the quality benchmark's scoring path (``quality.py --model``), ``patient_ci.py``, ``kept_epochs.py`` and ``resolution.py``.

Training within a budget is what notebook 04's tests cover; here a saved
untrained model is scored on a small synthetic dataset, as the shipped model
is scored on the real one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import helpers  # noqa: F401  (registers the layers the saved models use)
from helpers.data import build_manifest, resolve_data_dir
from helpers.model import build_resunet
from helpers.preprocessing import split_patients
from helpers.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *arguments: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **variables}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *arguments], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=600)


def script_refusal(name: str, monkeypatch, *arguments: str) -> SystemExit:
    """The ``SystemExit`` a script under ``benchmarks/`` ends with, its ``main`` run in this process.

    Spares the few seconds a new interpreter takes to import TensorFlow, for
    calls expected to be refused before any work.
    """
    spec = importlib.util.spec_from_file_location(Path(name).stem, REPO / "benchmarks" / name)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", [name, *arguments])
    with pytest.raises(SystemExit) as exited:
        script.main()
    return exited.value


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_path):
    """``quality.py --model`` run once on 20 synthetic patients; returns its output folder."""
    work = tmp_path_factory.mktemp("quality")
    root = make_synthetic_dataset(work / "data", n_patients=20, slices_per_patient=3, size=256, seed=2)
    result = run_script("quality.py", "--data-dir", str(root), "--out", "out", "--model", str(tiny_model_path),
                        "--input-size", "32", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "out"


def test_quality_scores_a_saved_model_on_test_patients_only(scored):
    report = json.loads((scored / "quality.json").read_text())
    split = pd.read_csv(scored / "split.csv")
    test_patients = sorted(split.loc[split.split == "test", "patient"])
    assert report["test_patients"] == test_patients and len(test_patients) >= 3
    assert not set(report["test_patients"]) & set(report["val_patients"])
    assert report["epochs_run"] is None and report["training_seconds"] is None
    assert report["data_folder"] == str(resolve_data_dir(scored.parent / "data"))
    per_patient = pd.read_csv(scored / "per_patient.csv")
    assert sorted(per_patient["patient"]) == test_patients
    assert report["dice_per_patient_mean"] == pytest.approx(per_patient["dice"].mean())
    low, high = report["dice_per_patient_ci95"]
    assert low <= report["dice_per_patient_mean"] <= high
    assert not (scored / "model.keras").exists()  # the scored model is not copied
    assert json.loads((scored / "model.json").read_text())["input_size"] == 32


def test_quality_scores_the_mean_of_several_models_as_one_saved_model(scored, monkeypatch):
    # Two different networks: the saved model must answer with the mean of their probabilities.
    # The other initialisation seed must not move the split.
    work = scored.parent
    model = json.loads((scored / "quality.json").read_text())["model"]
    keras.utils.set_random_seed(11)
    other = str(work / "other.keras")
    build_resunet((32, 32, 3), base_filters=4, depth=2).save(other)
    result = run_script("quality.py", "--data-dir", "data", "--out", "pair",
                        "--model", model, other, "--input-size", "32", "--init-seed", "7", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    pair = work / "pair"
    pd.testing.assert_frame_equal(pd.read_csv(pair / "split.csv"), pd.read_csv(scored / "split.csv"))
    report = json.loads((pair / "quality.json").read_text())
    assert report["members"] == [model, other]
    assert report["model"] == "pair/model.keras" and (pair / "model.keras").is_file()
    once = json.loads((scored / "quality.json").read_text())
    assert "members" not in once or once["members"] is None
    assert json.loads((pair / "model.json").read_text())["members"] == [model, other]
    members = [keras.models.load_model(path) for path in (model, other)]
    x = np.random.default_rng(3).random((4, 32, 32, 3)).astype("float32")
    answers = [member.predict(x, verbose=0) for member in members]
    assert not np.allclose(answers[0], answers[1], atol=1e-3)
    saved = keras.models.load_model(pair / "model.keras")
    np.testing.assert_allclose(saved.predict(x, verbose=0), (answers[0] + answers[1]) / 2, atol=1e-6)
    # Routed: slices that are FLAIR in every channel go to member 1 alone; the others get the mean.
    result = run_script("quality.py", "--data-dir", "data", "--out", "routed", "--model", model, other,
                        "--flair-only-members", "1", "--input-size", "32", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    routed = json.loads((work / "routed" / "quality.json").read_text())
    assert routed["flair_only_members"] == [1] and " --flair-only-members 1" in routed["command"]
    assert json.loads((work / "routed" / "model.json").read_text())["flair_only_members"] == [1]
    routed_model = keras.models.load_model(work / "routed" / "model.keras")
    assert "route_flair_only" in [layer.name for layer in routed_model.layers]
    grey = np.repeat(x[..., 1:2], 3, axis=-1)
    np.testing.assert_allclose(routed_model.predict(grey, verbose=0), members[1].predict(grey, verbose=0), atol=1e-6)
    np.testing.assert_allclose(routed_model.predict(x, verbose=0), (answers[0] + answers[1]) / 2, atol=1e-6)
    monkeypatch.chdir(work)
    alone = str(script_refusal("quality.py", monkeypatch, "--out", "alone", "--model", model, "--flair-only-members", "0"))
    assert "give two or more" in alone
    beyond = str(script_refusal("quality.py", monkeypatch, "--out", "beyond", "--model", model, model,
                                "--flair-only-members", "2"))
    assert "give indices of --model, 0 to 1" in beyond


def test_quality_refuses_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = str(script_refusal("quality.py", monkeypatch, "--out", "out", "--model", "nowhere.keras"))
    assert "nowhere.keras: no such model" in result
    start = str(script_refusal("quality.py", monkeypatch, "--out", "out", "--init-model", "nowhere.keras"))
    assert "nowhere.keras: no such model" in start
    both = str(script_refusal("quality.py", monkeypatch, "--out", "out", "--model", "nowhere.keras",
                              "--init-model", "nowhere.keras"))
    assert "--init-model sets how the network trains" in both
    assert not (tmp_path / "out").exists()


def test_quality_trains_on_soft_targets_and_records_how(scored, tmp_path, monkeypatch):
    """The training path with --soft-masks, in bfloat16: one short epoch, then scored as any run, and rerunnable."""
    work = scored.parent
    result = run_script("quality.py", "--data-dir", "data", "--out", "soft", "--input-size", "32",
                        "--epochs", "1", "--batch-size", "8", "--soft-masks", "--cache-dir", str(tmp_path / "cache"),
                        "--policy", "mixed_bfloat16", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "soft" / "quality.json").read_text())
    assert report["epochs_run"] == 1 and report["training_seconds"] > 0
    assert " --soft-masks" in report["command"] and " --epochs 1 " in report["command"]
    assert (work / "soft" / "model.keras").is_file() and 0.0 <= report["dice_per_patient_mean"] <= 1.0
    # Trained in bfloat16, saved and scored in float32: the checkpoint keeps the training policy.
    assert " --policy mixed_bfloat16" in report["command"]
    checkpoint = keras.models.load_model(work / "soft" / "run" / "best.keras")
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in checkpoint.layers}
    exported = keras.models.load_model(work / "soft" / "model.keras")
    assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}
    assert "bfloat16" not in json.dumps(exported.get_config())
    # The training side was decoded a second time, with soft masks, into a cache of its own.
    assert len(list((tmp_path / "cache").glob("slices_*"))) == 3  # 32 hard, 32 soft (training side), 256
    # The same command again does not train the finished run a second time; other settings are named.
    soft_command = ["--data-dir", "data", "--out", "soft", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                    "--soft-masks", "--cache-dir", str(tmp_path / "cache"), "--policy", "mixed_bfloat16"]
    # The refusals come before any work: run in this process, they spare a new interpreter each.
    monkeypatch.chdir(work)
    twice = str(script_refusal("quality.py", monkeypatch, *soft_command))
    assert "holds a finished run" in twice and "--evaluate-only" in twice
    wider = str(script_refusal("quality.py", monkeypatch, *soft_command, "--width", "8"))
    assert "width: 16 there, 8 now" in wider and "another --out" in wider
    assert json.loads((work / "soft" / "quality.json").read_text()) == report  # nothing overwritten
    # Scored again, it must be given the command that trained it, which quality.json then records.
    other = str(script_refusal("quality.py", monkeypatch, *soft_command, "--init-seed", "3", "--evaluate-only"))
    assert "init_seed: None there, 3 now" in other and "the command that trained it" in other
    assert json.loads((work / "soft" / "quality.json").read_text()) == report
    refused = str(script_refusal("quality.py", monkeypatch, "--out", "out", "--model", report["model"], "--soft-masks"))
    assert "--soft-masks sets how the network trains" in refused
    # A finished run continued from its weights (a warm restart); a network of another width is refused.
    continued = run_script("quality.py", "--data-dir", "data", "--out", "continued", "--input-size", "32",
                           "--epochs", "1", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"),
                           "--init-model", str(work / "soft" / "model.keras"), "--learning-rate", "3e-4", cwd=work)
    assert continued.returncode == 0, continued.stderr[-3000:]
    again = json.loads((work / "continued" / "quality.json").read_text())
    assert again["epochs_run"] == 1 and " --init-model " in again["command"]
    misfit = str(script_refusal("quality.py", monkeypatch, "--data-dir", "data", "--out", "misfit", "--input-size",
                                "32", "--width", "8", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                                "--init-model", str(work / "soft" / "model.keras")))
    assert "model.keras: its weights do not fit this model" in misfit
    # Said before any data is read: this data folder does not exist.
    missing = str(script_refusal("quality.py", monkeypatch, "--data-dir", "nowhere", "--out", "untrained",
                                 "--evaluate-only"))
    assert "no training run to evaluate" in missing


def test_patient_ci_pairs_runs_on_their_common_patients(scored, tmp_path):
    table = pd.read_csv(scored / "per_patient.csv")
    better = table.assign(dice=table["dice"] + 0.1)
    better.to_csv(tmp_path / "better.csv", index=False)
    better.iloc[1:].to_csv(tmp_path / "fewer.csv", index=False)
    result = run_script("patient_ci.py", str(scored), str(tmp_path / "better.csv"), str(tmp_path / "fewer.csv"),
                        "--out", "ci", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "ci" / "patient_ci.json").read_text())["results"]
    assert rows[0]["dice_per_patient_mean"] == pytest.approx(table["dice"].mean())
    assert "difference_from_first" not in rows[0]
    for row, patients in zip(rows[1:], (len(table), len(table) - 1)):
        assert row["paired_patients"] == patients
        # every patient gains exactly 0.1: the paired interval is the single point 0.1
        assert row["difference_from_first"] == pytest.approx(0.1)
        assert row["difference_ci_low"] == pytest.approx(0.1) and row["difference_ci_high"] == pytest.approx(0.1)
    assert rows[0]["ci_low"] <= rows[0]["dice_per_patient_mean"] <= rows[0]["ci_high"]


def test_patient_ci_names_a_missing_table(tmp_path, monkeypatch):
    refused = str(script_refusal("patient_ci.py", monkeypatch, str(tmp_path / "nothing")))
    assert "nothing/per_patient.csv: no per-patient table" in refused


def test_kept_epochs_measures_how_far_the_kept_epoch_stands_above_its_neighbours(tmp_path):
    history = pd.DataFrame({"loss": [0.9, 0.7, 0.6, 0.5], "val_dice": [0.5, 0.6, 0.9, 0.7],
                            "val_patient_dice": [0.4, 0.5, 0.8, 0.5]})
    (tmp_path / "quality" / "run").mkdir(parents=True)
    history.to_csv(tmp_path / "quality" / "run" / "history.csv", index=False)
    history.drop(columns="val_patient_dice").to_csv(tmp_path / "slices.csv", index=False)
    result = run_script("kept_epochs.py", "quality", "slices.csv", "--out", "kept", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    patient, slices = json.loads((tmp_path / "kept" / "kept_epochs.json").read_text())["results"]
    assert patient["score"] == "val_patient_dice" and patient["kept_epoch"] == 3 and patient["epochs"] == 4
    assert patient["kept_score"] == pytest.approx(0.8)
    assert patient["mean_of_3"] == pytest.approx(0.6) and patient["above_mean_of_3"] == pytest.approx(0.2)
    # Epoch 4's mean is over epochs 3 and 4 alone: (0.8 + 0.5) / 2.
    assert patient["best_mean_of_3"] == pytest.approx(0.65) and patient["best_mean_of_3_epoch"] == 4
    assert slices["score"] == "val_dice" and slices["kept_epoch"] == 3
    assert slices["mean_of_3"] == pytest.approx(0.7333333)


def test_kept_epochs_names_a_run_without_history_or_validation_scores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = str(script_refusal("kept_epochs.py", monkeypatch, "nothing"))
    assert "nothing: no history.csv in it" in missing
    pd.DataFrame({"loss": [0.9, 0.7]}).to_csv(tmp_path / "train_only.csv", index=False)
    unscored = str(script_refusal("kept_epochs.py", monkeypatch, "train_only.csv"))
    assert "train_only.csv: the history has no val_patient_dice" in unscored


def test_resolution_bounds_each_input_size_by_the_ground_truth_alone(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_patients=20, slices_per_patient=3, size=256, seed=2)
    # Without --data-dir the benchmarks read $LGG_DATA_DIR, as the notebooks do.
    result = run_script("resolution.py", "--out", "out", "--sizes", "16", "256", cwd=tmp_path,
                        LGG_DATA_DIR=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "resolution.json").read_text())
    rows = pd.DataFrame(report["results"]).set_index(["size", "targets", "split"])
    assert set(rows.index.get_level_values("split")) == {"train", "val", "test", "all"}
    assert set(rows.index.get_level_values("targets")) == {"hard", "soft"}
    assert rows.loc[(256, "hard", "all"), "patients"] == 20 and report["slices"] == 60
    # at the slices' own size nothing is lost; on a 16-pixel grid the synthetic tumours' edges are,
    # less of them when each small pixel keeps the share of it the tumour covers
    assert rows.loc[(256, "hard", "all"), "mean_patient_dice"] == rows.loc[(256, "soft", "all"), "mean_patient_dice"] == 1.0
    hard, soft = (rows.loc[(16, targets, "all"), "mean_patient_dice"] for targets in ("hard", "soft"))
    assert 0.0 < hard < soft < 0.99
    assert (rows.loc[16, "lowest_patient_dice"] <= rows.loc[16, "mean_patient_dice"]).all()


def test_weight_average_exports_the_mean_of_the_epochs_or_the_epoch_its_neighbours_back(tmp_path, monkeypatch,
                                                                                       capsys):
    run = tmp_path / "quality" / "run"
    (run / "epochs").mkdir(parents=True)
    keras.utils.set_random_seed(5)
    model = build_resunet((32, 32, 3), base_filters=4, depth=2)
    model.save(run / "best.keras")
    start = model.get_weights()
    for epoch in (1, 2, 3, 4):
        model.set_weights([weight + epoch for weight in start])
        model.save_weights(run / "epochs" / f"epoch_{epoch:03d}.weights.h5")
    # Epoch 2 is the highest alone; epoch 3 has the best mean with its neighbours.
    pd.DataFrame({"loss": [0.9, 0.8, 0.7, 0.6], "val_patient_dice": [0.5, 0.9, 0.7, 0.85]}).to_csv(
        run / "history.csv", index=False)

    mean = run_script("weight_average.py", "quality", "--out", "mean", "--first", "2", cwd=tmp_path)
    assert mean.returncode == 0, mean.stderr[-3000:]
    assert json.loads((tmp_path / "mean" / "weight_average.json").read_text())["epochs"] == [2, 3, 4]
    averaged = keras.models.load_model(tmp_path / "mean" / "model.keras")
    for got, want in zip(averaged.get_weights(), start, strict=True):
        np.testing.assert_allclose(got, want + 3, rtol=1e-6, atol=1e-6)

    middle = run_script("weight_average.py", "quality", "--choose", "mean-of-3", "--out", "middle", cwd=tmp_path)
    assert middle.returncode == 0, middle.stderr[-3000:]
    report = json.loads((tmp_path / "middle" / "weight_average.json").read_text())
    assert report["epochs"] == [3] and report["scores_of_those_epochs"] == [0.7]
    assert "--first" not in report["command"] and "--choose mean-of-3" in report["command"]
    chosen = keras.models.load_model(tmp_path / "middle" / "model.keras")
    np.testing.assert_allclose(chosen.get_weights()[0], start[0] + 3, rtol=1e-6)

    # The refusals, run in this process to spare an interpreter start each.
    monkeypatch.chdir(tmp_path)

    def refusal(*arguments: str) -> SystemExit:
        return script_refusal("weight_average.py", monkeypatch, *arguments, "--out", "x")

    assert "no weights for epochs [5, 6] (it holds 1 to 4)" in str(refusal("quality", "--last", "6").code)
    (tmp_path / "bare" / "run").mkdir(parents=True)
    (run / "history.csv").replace(tmp_path / "bare" / "run" / "history.csv")
    assert "train the run with benchmarks/quality.py --keep-epochs" in str(refusal("bare").code)
    # The data options mean nothing without the batch-norm pass: refused, not silently ignored.
    assert refusal("quality", "--data-dir", "somewhere").code == 2
    assert "read only with --recompute-batch-norm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_weight_average_spans_a_run_and_the_run_that_went_on_from_it(tmp_path, monkeypatch):
    keras.utils.set_random_seed(8)
    model = build_resunet((32, 32, 3), base_filters=4, depth=2)
    start = model.get_weights()
    split = pd.DataFrame({"patient": ["A", "B"], "split": ["train", "val"]})
    for name, offsets in (("first", (1, 2)), ("then", (3, 4, 5))):
        run = tmp_path / name / "run"
        (run / "epochs").mkdir(parents=True)
        model.set_weights(start)
        model.save(run / "best.keras")
        for epoch, offset in enumerate(offsets, start=1):
            model.set_weights([weight + offset for weight in start])
            model.save_weights(run / "epochs" / f"epoch_{epoch:03d}.weights.h5")
        pd.DataFrame({"loss": [0.5] * len(offsets), "val_patient_dice": [offset / 10 for offset in offsets]}).to_csv(
            run / "history.csv", index=False)
        split.to_csv(tmp_path / name / "split.csv", index=False)
    # The second run trained on from the first one's last epoch, as quality.py --init-model records.
    model.set_weights([weight + 2 for weight in start])
    model.save(tmp_path / "first_last.keras")
    (tmp_path / "then" / "run" / "settings.json").write_text(json.dumps({"init_model": "first_last.keras"}))

    # The second run's three epochs count on as 3 to 5: epochs 2 to 5 average to start + 3.5.
    both = run_script("weight_average.py", "first", "--continued-by", "then", "--first", "2", "--out", "both",
                      cwd=tmp_path)
    assert both.returncode == 0, both.stderr[-3000:]
    report = json.loads((tmp_path / "both" / "weight_average.json").read_text())
    assert report["epochs"] == [2, 3, 4, 5] and report["continued_by"] == ["then"]
    assert report["scores_of_those_epochs"] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert "--continued-by then" in report["command"]
    averaged = keras.models.load_model(tmp_path / "both" / "model.keras")
    for got, want in zip(averaged.get_weights(), start, strict=True):
        np.testing.assert_allclose(got, want + 3.5, rtol=1e-6, atol=1e-6)
    # The refusals, run in this process to spare an interpreter start each.
    monkeypatch.chdir(tmp_path)

    def refusal(*arguments: str) -> str:
        return str(script_refusal("weight_average.py", monkeypatch, *arguments, "--out", "x").code)

    assert "no weights for epochs [6, 7] (they hold 1 to 5)" in refusal("first", "--continued-by", "then", "--last", "7")
    # A run on other patients did not go on from this one.
    split.assign(split=["val", "train"]).to_csv(tmp_path / "then" / "split.csv", index=False)
    assert "then/split.csv: not the split of first/split.csv" in refusal("first", "--continued-by", "then")
    split.to_csv(tmp_path / "then" / "split.csv", index=False)
    # Nor did a run that started from another epoch (here the first run's best, not its last).
    (tmp_path / "then" / "run" / "settings.json").write_text(json.dumps({"init_model": "first/run/best.keras"}))
    assert ("its --init-model, first/run/best.keras, is not epoch 2 of first"
            in refusal("first", "--continued-by", "then"))
    # A history that does not match the kept epochs would put the wrong score beside each epoch.
    pd.DataFrame({"loss": [0.5], "val_patient_dice": [0.1]}).to_csv(tmp_path / "first" / "run" / "history.csv",
                                                                    index=False)
    assert "1 epochs of history against 2 kept" in refusal("first")
    assert not (tmp_path / "x").exists()


def test_weight_average_recomputes_batch_norm_over_the_runs_training_slices(tmp_path):
    run = tmp_path / "quality"
    (run / "run" / "epochs").mkdir(parents=True)
    keras.utils.set_random_seed(6)
    model = build_resunet((32, 32, 3), base_filters=4, depth=2)
    model.save(run / "run" / "best.keras")
    model.save_weights(run / "run" / "epochs" / "epoch_001.weights.h5")
    pd.DataFrame({"loss": [0.9], "val_patient_dice": [0.5]}).to_csv(run / "run" / "history.csv", index=False)
    root = make_synthetic_dataset(tmp_path / "data", n_patients=20, slices_per_patient=3, size=256, seed=2)
    missing = run_script("weight_average.py", "quality", "--recompute-batch-norm", "--data-dir", str(root),
                         "--out", "x", cwd=tmp_path)
    assert missing.returncode != 0 and "quality/split.csv: no split" in missing.stderr
    assert not (tmp_path / "x").exists()
    split = split_patients(build_manifest(resolve_data_dir(str(root))), seed=42)
    split.to_csv(run / "split.csv", index=False)

    result = run_script("weight_average.py", "quality", "--recompute-batch-norm", "--data-dir", str(root),
                        "--cache-dir", "cache", "--out", "bn", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bn" / "weight_average.json").read_text())
    assert report["batch_norm_recomputed_on_slices"] == 3 * int((split["split"] == "train").sum())
    recomputed = keras.models.load_model(tmp_path / "bn" / "model.keras")
    norms = [layer for layer in recomputed.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    # A fresh network's statistics are 0 and 1; after the pass they are the slices' own.
    for layer in norms:
        fresh = model.get_layer(layer.name)
        np.testing.assert_array_equal(fresh.moving_mean.numpy(), 0.0)
        assert not np.allclose(layer.moving_mean.numpy(), 0.0) and not np.allclose(layer.moving_variance.numpy(), 1.0)
        np.testing.assert_array_equal(layer.gamma.numpy(), fresh.gamma.numpy())


def test_training_speed_writes_the_rate_of_each_policy_and_the_processor(tmp_path, monkeypatch):
    import keras

    spec = importlib.util.spec_from_file_location("training_speed", REPO / "benchmarks" / "training_speed.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["training_speed.py", "--out", str(tmp_path), "--input-size", "32",
                                      "--width", "16", "--batch-size", "2", "--batches", "2"])
    script.main()
    report = json.loads((tmp_path / "training_speed.json").read_text())
    assert set(report["slices_per_second"]) == {"float32"} and report["slices_per_second"]["float32"] > 0
    assert report["timed_slices"] == 4 and " --input-size 32 " in report["command"]
    assert set(report["cpu_flags"]) <= set(script.VECTOR_FLAGS)
    assert keras.mixed_precision.global_policy().name == "float32"  # left as it found it
    monkeypatch.setattr(sys, "argv", ["training_speed.py", "--out", str(tmp_path), "--batches", "0"])
    with pytest.raises(SystemExit, match="whole numbers from 1"):
        script.main()
