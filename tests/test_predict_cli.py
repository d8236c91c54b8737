"""Tests of the command line helpers.predict on a folder of good, bad and mask files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import predict
from helpers.model import build_resunet


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_resunet((32, 32, 3), base_filters=4, depth=2).save(path)
    return path


@pytest.fixture
def slices(tmp_path):
    """A folder with two good slices (one with its ground truth, in a subfolder too), and two bad files."""
    folder = tmp_path / "slices"
    (folder / "patient_b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(folder / "case_1.png")
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(folder / "case_1_mask.png")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(folder / "patient_b" / "case_2.TIF")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "readme.txt").write_text("not an input: wrong suffix")
    return folder


def run(capsys, *argv):
    status = predict.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_folder_with_good_bad_and_mask_files(tmp_path, slices, tiny_model_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(capsys, slices, "--model", tiny_model_path, "--out", out, "--threshold", "0.5")
    assert status == 1
    assert "empty.png" in err and "empty (0 bytes)" in err
    assert "notes.jpg" in err and "not an image" in err
    mask = np.asarray(Image.open(out / "case_1_mask.png"))
    assert mask.shape == (24, 40) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "case_2_mask.png")).shape == (30, 30)
    assert np.asarray(Image.open(out / "case_2_overlay.png")).shape == (30, 30, 3)
    assert not (out / "case_1_mask_mask.png").exists()
    assert not (out / "empty_mask.png").exists()
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == predict.TABLE_COLUMNS
    # case_2.TIF is grey-scale, so it is read as FLAIR alone; case_1.png's channels differ.
    read_as = table.set_index(table["file"].str.rsplit("/", n=1).str[-1])["read_as"]
    assert read_as.to_dict() == {"case_1.png": "three sequences", "case_2.TIF": "FLAIR alone"}
    assert (table["threshold"] == 0.5).all() and (table["model"] == str(tiny_model_path.resolve())).all()
    assert sorted(table["file"].map(lambda f: f.rsplit("/", 1)[-1])) == ["case_1.png", "case_2.TIF"]
    row = table.set_index(table["file"].str.rsplit("/", n=1).str[-1]).loc["case_1.png"]
    predicted = int((mask > 0).sum())
    assert row["tumour_pixels"] == predicted
    # The ground truth is empty: Dice is 1 when nothing is predicted, else 0.
    assert row["dice"] == (1.0 if predicted == 0 else 0.0)
    assert np.isnan(table.set_index(table["file"].str.rsplit("/", n=1).str[-1]).loc["case_2.TIF", "dice"])


def test_existing_outputs_are_kept_without_overwrite(tmp_path, slices, tiny_model_path, capsys):
    out = tmp_path / "out"
    good = [slices / "case_1.png", slices / "patient_b" / "case_2.TIF"]
    assert run(capsys, *good, "--model", tiny_model_path, "--out", out)[0] == 0
    marker = np.full((24, 40), 255, np.uint8)
    Image.fromarray(marker).save(out / "case_1_mask.png")
    status, _, err = run(capsys, *good, "--model", tiny_model_path, "--out", out)
    assert status == 0
    assert "kept" in err and "--overwrite" in err
    np.testing.assert_array_equal(np.asarray(Image.open(out / "case_1_mask.png")), marker)
    assert len(pd.read_csv(out / "predictions.csv")) == 2
    status, _, _ = run(capsys, *good, "--model", tiny_model_path, "--out", out, "--threshold", "1", "--overwrite")
    assert status == 0
    assert not np.asarray(Image.open(out / "case_1_mask.png")).any()


def test_without_ground_truth_there_is_no_dice_column(tmp_path, slices, tiny_model_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, slices / "patient_b", "--model", tiny_model_path, "--out", out)[0] == 0
    assert "dice" not in pd.read_csv(out / "predictions.csv").columns


@pytest.mark.parametrize(("argv", "says"), [
    (["--out", "x"], "the following arguments are required: INPUT"),
    (["missing_folder", "--out", "x"], "No such file or folder: "),
    (["IMAGE", "--out", "x", "--threshold", "1.5"], "1.5 is not between 0 and 1"),
    (["IMAGE", "--out", "x", "--model", "absent.keras"], "absent.keras. Train one with notebooks/04_training.ipynb"),
], ids=["no-input", "missing-input", "bad-threshold", "missing-model"])
def test_usage_errors_exit_with_2(tmp_path, slices, capsys, argv, says):
    argv = [str(slices / "case_1.png") if a == "IMAGE" else str(tmp_path / a) if a in ("x", "missing_folder", "absent.keras") else a
            for a in argv]
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert says in err, err


def test_help_says_not_for_diagnosis_and_shows_defaults(capsys):
    status, out, _ = run(capsys, "--help")
    text = " ".join(out.split())
    assert status == 0
    assert "research and teaching only, not for diagnosis" in text
    assert "(default: None)" in text and "else 0.5" in text
    assert "grey-scale image (or one whose three channels are equal) is read as FLAIR alone" in text


def test_a_file_that_is_not_a_model_is_named(tmp_path, slices, capsys):
    fake = tmp_path / "fake.keras"
    fake.write_bytes((slices / "case_1.png").read_bytes())  # an image renamed, not a zip archive
    status, _, err = run(capsys, slices / "case_1.png", "--out", tmp_path / "out", "--model", fake)
    assert status == 2
    assert f"{fake}: not a saved Keras model" in err, err
    assert not (tmp_path / "out").exists()


def test_recorded_settings_beside_the_model_are_the_defaults(tmp_path):
    import json

    from helpers import inference

    model_path = tmp_path / "m.keras"
    assert inference.recommended_settings(model_path) == {"threshold": 0.5, "min_component_pixels": 0}
    model_path.with_suffix(".json").write_text(json.dumps({"single_slice": {"threshold": 0.35, "min_component_pixels": 40}}))
    assert inference.recommended_settings(model_path) == {"threshold": 0.35, "min_component_pixels": 40}


@pytest.mark.parametrize("where", ["input folder", "inside it", "beside an input file"])
def test_outputs_never_land_among_the_inputs(tmp_path, slices, tiny_model_path, capsys, where):
    # case_1_mask.png beside case_1.png is ground truth: a prediction written there would replace it,
    # or be scored against itself; outputs inside a searched folder would be inputs next time.
    truth = np.asarray(Image.open(slices / "case_1_mask.png")).copy()
    argv = {"input folder": [slices, "--out", slices],
            "inside it": [slices, "--out", slices / "predictions"],
            "beside an input file": [slices / "case_1.png", "--out", slices]}[where]
    status, _, err = run(capsys, *argv, "--model", tiny_model_path, "--overwrite")
    assert status == 2
    assert "--out" in err and "ground truth" in err
    np.testing.assert_array_equal(np.asarray(Image.open(slices / "case_1_mask.png")), truth)
    assert not (slices / "case_1_overlay.png").exists() and not (slices / "predictions").exists()


def test_a_table_this_command_did_not_write_is_left_alone(tmp_path, slices, tiny_model_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    theirs = "patient,grade,notes\nA,2,keep me\n"
    (out / "predictions.csv").write_text(theirs)
    status, _, err = run(capsys, slices / "case_1.png", "--model", tiny_model_path, "--out", out, "--overwrite")
    assert status == 2
    assert f"{out / 'predictions.csv'} was not written by this command" in err and "--out" in err
    assert (out / "predictions.csv").read_text() == theirs
    assert not (out / "case_1_mask.png").exists()


def test_one_row_per_file_and_kept_outputs_made_otherwise_are_named(tmp_path, slices, tiny_model_path,
                                                                    capsys, monkeypatch):
    out = tmp_path / "out"
    assert run(capsys, slices / "case_1.png", "--model", tiny_model_path, "--out", out)[0] == 0
    monkeypatch.chdir(slices)  # the same file, named another way
    status, _, err = run(capsys, "case_1.png", "--model", tiny_model_path, "--out", out, "--threshold", "0.3")
    assert status == 0
    assert "case_1_mask.png was made with threshold 0.5 (now 0.3)" in err and "--overwrite" in err
    assert len(pd.read_csv(out / "predictions.csv")) == 1
    assert run(capsys, "case_1.png", "--model", tiny_model_path, "--out", out, "--threshold", "0.3",
               "--overwrite")[0] == 0
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 1 and table.loc[0, "threshold"] == 0.3


def test_only_ground_truth_files_are_named_with_what_to_do(tmp_path, slices, capsys):
    status, _, err = run(capsys, slices / "case_1_mask.png", "--out", tmp_path / "out")
    assert status == 2
    assert "named like ground truth" in err and "case_1_mask.png" in err and "does not end in _mask" in err


def test_no_table_when_every_image_failed(tmp_path, slices, tiny_model_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(capsys, slices / "notes.jpg", "--model", tiny_model_path, "--out", out)
    assert status == 1 and "notes.jpg" in err
    assert not (out / "predictions.csv").exists()


def test_rows_are_one_per_mask_and_a_kept_mask_made_from_another_file_is_named(tmp_path, slices, tiny_model_path,
                                                                              capsys):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    (other / "case_1.png").write_bytes((slices / "case_1.png").read_bytes())  # the same base name, elsewhere
    assert run(capsys, slices / "case_1.png", "--model", tiny_model_path, "--out", out)[0] == 0
    status, _, err = run(capsys, other / "case_1.png", "--model", tiny_model_path, "--out", out)
    assert status == 0 and f"case_1_mask.png was made from {(slices / 'case_1.png').resolve()}" in err
    assert run(capsys, other / "case_1.png", "--model", tiny_model_path, "--out", out, "--overwrite")[0] == 0
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 1 and table.loc[0, "file"] == str((other / "case_1.png").resolve())
    assert table.loc[0, "model_sha256"] == predict.file_digest(tiny_model_path) and len(table.loc[0, "model_sha256"]) == 12


def test_a_table_written_before_the_mask_column_is_merged_by_mask(tmp_path, slices, tiny_model_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    # The columns of the day before: paths as typed, no mask, settings or model.
    (out / "predictions.csv").write_text("file,tumour_pixels,tumour_present,max_probability,dice\n"
                                         "slices/case_1.png,5,True,0.9,0.5\nslices/gone.png,0,False,0.1,\n")
    assert run(capsys, "slices/case_1.png", "--model", tiny_model_path, "--out", out)[0] == 0
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["mask"]) == ["case_1_mask.png", "gone_mask.png"]  # the old case_1 row replaced, not doubled
    assert list(table.columns[:3]) == ["file", "mask", "tumour_pixels"] and table.columns[-1] == "dice"


def test_an_interrupted_batch_keeps_the_rows_of_what_it_did(tmp_path, slices, tiny_model_path, capsys, monkeypatch):
    # Ctrl-C on the second image: the first keeps its row, the second leaves no output without one.
    from helpers import inference

    segment, calls = inference.segment, []

    def interrupted_on_the_second(*arguments, **options):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return segment(*arguments, **options)

    monkeypatch.setattr(inference, "segment", interrupted_on_the_second)
    out = tmp_path / "out"
    good = [slices / "case_1.png", slices / "patient_b" / "case_2.TIF"]
    status, _, err = run(capsys, *good, "--model", tiny_model_path, "--out", out)
    assert status == 130 and "Interrupted: 1 image(s) not segmented" in err and "case_2.TIF" in err
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["mask"]) == ["case_1_mask.png"]
    assert (out / "case_1_mask.png").exists() and not (out / "case_2_mask.png").exists()
    # Run again, it keeps the first and segments the second: both rows are then in the table.
    monkeypatch.setattr(inference, "segment", segment)
    status, _, _ = run(capsys, *good, "--model", tiny_model_path, "--out", out)
    assert status == 0
    assert sorted(pd.read_csv(out / "predictions.csv")["mask"]) == ["case_1_mask.png", "case_2_mask.png"]


def test_settings_that_cannot_be_read_and_an_output_file_are_named_before_any_work(tmp_path, slices,
                                                                                   tiny_model_path, capsys):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(tiny_model_path, model)
    model.with_suffix(".json").write_text("{not json")
    status, _, err = run(capsys, slices / "case_1.png", "--model", model, "--out", tmp_path / "out")
    assert status == 2 and f"{model.with_suffix('.json')}: the settings beside the model cannot be read" in err
    assert not (tmp_path / "out").exists()
    taken = tmp_path / "taken.txt"
    taken.write_text("a file, not a folder")
    status, _, err = run(capsys, slices / "case_1.png", "--model", tiny_model_path, "--out", taken)
    assert status == 2 and f"--out {taken} is a file, not a folder" in err


def test_a_model_path_with_a_tilde_keeps_its_recorded_settings(tmp_path, slices, tiny_model_path, capsys,
                                                               monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(tiny_model_path, tmp_path / "m.keras")
    (tmp_path / "m.json").write_text(json.dumps({"single_slice": {"threshold": 0.35, "min_component_pixels": 7}}))
    status, _, _ = run(capsys, slices / "case_1.png", "--model", "~/m.keras", "--out", tmp_path / "out")
    assert status == 0
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[0]
    assert row["threshold"] == 0.35 and row["min_component_pixels"] == 7
    assert row["model"] == str((tmp_path / "m.keras").resolve()) and len(str(row["model_sha256"])) == 12
