"""Every notebook executed headless by papermill, in order, asserting on what it wrote.

The series runs on a synthetic dataset with small parameters (given with
``-p``, never by editing the notebooks). When ``LGG_DATA_DIR`` is set, a
test marked ``real_data`` runs notebooks 01 and 02 over the real data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from nbclient.exceptions import CellTimeoutError

import helpers  # noqa: F401  (registers the custom objects for load_model)
from helpers.model import build_resunet, count_residual_additions

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_NAMES = [
    "01_data_download.ipynb",
    "02_preprocessing.ipynb",
    "03_resunet_model.ipynb",
    "04_training.ipynb",
    "05_evaluation.ipynb",
    "06_inference_app.ipynb",
]
SHARED = {"SEED": 7}
SMALL = {
    "01_data_download.ipynb": {"SYNTHETIC": True, "SYNTHETIC_PATIENTS": 10, "SYNTHETIC_SLICES": 8},
    "02_preprocessing.ipynb": {"INPUT_SIZE": 64, "BENCHMARK_BATCHES": 3},
    # Width 16: on CPUs with AVX-512 BF16, oneDNN in TensorFlow 2.21 crashes when
    # training convolutions narrower than 16 channels (see the README).
    "03_resunet_model.ipynb": {"INPUT_SIZE": 64, "BASE_FILTERS": 16},
    "04_training.ipynb": {"INPUT_SIZE": 64, "BASE_FILTERS": 16, "EPOCHS": 4, "BATCH_SIZE": 8,
                          "TIME_BUDGET_MINUTES": 0},
    "05_evaluation.ipynb": {"SLIDER": False, "MIN_VOLUMES": 0},  # one candidate, as `-p MIN_VOLUMES 0` passes it
    "06_inference_app.ipynb": {},
}


CELL_TIMEOUT_SECONDS = 300  # a cell that hangs fails the test instead of blocking the run


def execute(name: str, output_dir: Path, parameters: dict) -> nbformat.NotebookNode:
    """Run one notebook; on failure, fail naming the notebook and the cell's error."""
    output = output_dir / name
    try:
        for attempt in (1, 2):
            try:
                papermill.execute_notebook(
                    str(NOTEBOOKS / name), str(output), parameters=parameters,
                    cwd=str(output_dir), progress_bar=False, kernel_name="python3",
                    execution_timeout=CELL_TIMEOUT_SECONDS,
                )
                break
            except CellTimeoutError:
                # Seen once in many runs: the kernel finished a cell but its reply never reached
                # the client. Run the notebook once more; a second timeout is a real failure.
                if attempt == 2:
                    raise
    except papermill.PapermillExecutionError as error:
        pytest.fail(f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}", pytrace=False)
    return nbformat.read(output, as_version=4)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The whole series, 01 to 06, on synthetic data; returns the artifacts folder."""
    work = tmp_path_factory.mktemp("series")
    artifacts = work / "artifacts"
    for name in NOTEBOOK_NAMES:
        execute(name, work, {"ARTIFACTS_DIR": str(artifacts), **SHARED, **SMALL[name]})
    return artifacts


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_opening_follows_the_house_style(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert f"colab.research.google.com/github/lgg-resunet/lgg-resunet/blob/main/notebooks/{name}" in cells[1].source
    assert cells[2].cell_type == "markdown"
    assert cells[3].cell_type == "code" and "google.colab" in cells[3].source
    assert cells[4].cell_type == "code" and "import helpers" in cells[4].source
    assert "parameters" in cells[5].metadata.get("tags", [])
    for shared in ("DATA_DIR", "ARTIFACTS_DIR", "SEED"):
        assert f"{shared} = " in cells[5].source, f"{name}: parameter {shared} missing"
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_opening_cell_moves_a_local_jupyter_kernel_to_the_repository_root(name, tmp_path):
    # Jupyter starts a kernel in the notebook's folder; the series reads and writes artifacts/ from the root.
    from IPython.core.inputtransformer2 import TransformerManager

    opening = nbformat.read(NOTEBOOKS / name, as_version=4).cells[3].source
    script = tmp_path / "opening.py"
    script.write_text(TransformerManager().transform_cell(opening) + "\nprint(os.getcwd())\n")
    for where, expected in ((NOTEBOOKS, NOTEBOOKS.parent), (tmp_path, tmp_path)):
        completed = subprocess.run([sys.executable, str(script)], cwd=where, capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0, completed.stderr
        assert Path(completed.stdout.strip()) == expected.resolve()


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name} has outputs: strip them"


def test_series_writes_the_manifest(series):
    manifest = pd.read_csv(series / "manifest.csv")
    assert len(manifest) == 10 * 8
    assert {"patient", "case", "slice", "image_path", "mask_path", "tumour_pixels"} <= set(manifest.columns)
    assert manifest.groupby("patient")["slice"].apply(lambda s: list(s) == sorted(s)).all()
    facts = json.loads((series / "dataset.json").read_text())
    assert facts["source"] == "synthetic" and facts["patients"] == 10 and facts["slices"] == 80


def test_series_writes_a_leak_free_split(series):
    split = pd.read_csv(series / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    assert split["patient"].is_unique and len(split) == 10
    assert json.loads((series / "pipeline.json").read_text())["slices_per_second"] > 0


def test_series_shows_the_model_that_notebook_03_builds(series):
    notebook = nbformat.read(series.parent / "03_resunet_model.ipynb", as_version=4)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    model = build_resunet((64, 64, 3), base_filters=16, depth=4)
    assert f"{model.count_params():,} parameters, {count_residual_additions(model)} residual additions" in text
    assert "-> output (4, 64, 64, 1)" in text
    # The architecture diagram and the untrained predictions are drawn.
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 2


def test_series_saves_a_model_that_loads_and_predicts(series):
    model = keras.models.load_model(series / "model.keras")
    output = model.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    assert output.shape == (2, 64, 64, 1)
    assert np.all((output >= 0) & (output <= 1))
    history = pd.read_csv(series / "training" / "history.csv")
    assert len(history) == 4 and history["loss"].iloc[-1] < history["loss"].iloc[0]
    # The run records the split it trained on, which notebook 05 checked before scoring.
    from helpers.preprocessing import split_fingerprint

    recorded = json.loads((series / "training" / "settings.json").read_text())["split"]
    assert recorded == split_fingerprint(pd.read_csv(series / "split.csv"))


def test_series_writes_metrics_in_range(series):
    metrics = json.loads((series / "metrics.json").read_text())
    for key in ("dice_per_patient_mean", "iou_per_patient_mean", "pooled_dice", "dice_per_slice_mean_all",
                "accuracy_per_slice_mean", "precision_per_patient_mean", "recall_per_patient_mean"):
        assert 0.0 <= metrics[key] <= 1.0, key
    split = pd.read_csv(series / "split.csv")
    per_patient = pd.read_csv(series / "per_patient.csv")
    assert set(per_patient["patient"]) == set(split.loc[split["split"] == "test", "patient"])
    assert metrics["patients"] == len(per_patient)
    # The summary agrees with the tables it was computed from.
    per_slice = pd.read_csv(series / "per_slice.csv")
    assert len(per_slice) == per_patient["slices"].sum()
    assert metrics["dice_per_patient_mean"] == pytest.approx(per_patient["dice"].mean())
    assert metrics["iou_per_patient_mean"] == pytest.approx(per_patient["iou"].mean())
    tp, fp, fn = (per_slice[column].sum() for column in ("tp", "fp", "fn"))
    assert metrics["pooled_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # Settings for single slices, chosen on validation, beside the model for notebook 06.
    single = json.loads((series / "model.json").read_text())["single_slice"]
    assert 0.0 < single["threshold"] < 1.0 and single["min_component_pixels"] >= 0
    assert set(json.loads((series / "model.json").read_text())["val_patients"]) == set(
        split.loc[split["split"] == "val", "patient"])


def test_series_segments_the_chosen_slices_through_the_command_line(series):
    table = pd.read_csv(series / "predictions" / "predictions.csv")
    assert len(table) > 0 and table["file"].is_unique
    # Ground-truth masks beside the slices are not segmented themselves, and they give a Dice column.
    assert not table["file"].str.contains("_mask").any()
    assert table["dice"].between(0, 1).all()
    for name in table["file"].map(lambda file: Path(file).stem):
        assert (series / "predictions" / f"{name}_mask.png").exists()
        assert (series / "predictions" / f"{name}_overlay.png").exists()


def test_training_run_again_keeps_an_ended_run_and_refuses_other_settings(series, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(series, artifacts)
    history_before = pd.read_csv(artifacts / "training" / "history.csv")
    parameters = {"ARTIFACTS_DIR": str(artifacts), **SHARED, **SMALL["04_training.ipynb"]}
    executed = execute("04_training.ipynb", tmp_path, parameters)
    printed = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "ended earlier: it is kept, not trained again" in printed
    kept = int(history_before["val_patient_dice"].idxmax())
    assert (f"checkpoint kept at epoch {kept + 1}: val_patient_dice "
            f"{history_before['val_patient_dice'][kept]:.3f}, mean of it and its neighbours") in printed
    pd.testing.assert_frame_equal(pd.read_csv(artifacts / "training" / "history.csv"), history_before)
    # The model is this run's, as are the settings notebook 05 chose for it: both stay, nothing is moved aside.
    assert "already this run's best epoch: kept as it is, with its settings" in printed
    assert (artifacts / "model.json").read_bytes() == (series / "model.json").read_bytes()
    assert (artifacts / "model.keras").read_bytes() == (series / "model.keras").read_bytes()
    assert not (artifacts / "model.previous.json").exists() and not (artifacts / "model.previous.keras").exists()

    with pytest.raises(pytest.fail.Exception, match=r"ValueError.*base_filters: 16 there, 32 now"):
        execute("04_training.ipynb", tmp_path, {**parameters, "BASE_FILTERS": 32})

    # Trained on from its own model.keras, as notebook 04 tells a reader to: the weights carry over, so its
    # first epoch's loss starts below the first run's, and the starting point is recorded with the run.
    continued = {**parameters, "INIT_MODEL": str(artifacts / "model.keras"), "RESUME": False, "EPOCHS": 1,
                 "SCHEDULE": "constant", "LEARNING_RATE": 1e-4}
    printed = "".join(output.get("text", "") for cell in execute("04_training.ipynb", tmp_path, continued).cells
                      for output in cell.get("outputs", []))
    assert f"Starting from the weights of {artifacts / 'model.keras'}" in printed
    settings = json.loads((artifacts / "training" / "settings.json").read_text())
    assert settings["init_model"] == str((artifacts / "model.keras").resolve())
    assert pd.read_csv(artifacts / "training" / "history.csv")["loss"][0] < history_before["loss"][0]



def test_training_on_flair_alone_saves_a_model_that_reads_flair_alone(series, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(series, artifacts)
    parameters = {"ARTIFACTS_DIR": str(artifacts), **SHARED, **SMALL["04_training.ipynb"], "EPOCHS": 2,
                  "CHANNELS": [1], "RESUME": False, "KEEP_EPOCHS": True, "AVERAGE_FROM_EPOCH": 1, "USE_AVERAGED": True}
    executed = execute("04_training.ipynb", tmp_path, parameters)
    assert json.loads((artifacts / "training" / "settings.json").read_text())["channels"] == [1]
    model = keras.models.load_model(artifacts / "model.previous.keras")  # the best epoch; model.keras is averaged
    assert model.get_layer("select_channels").channels == (1,)
    assert model.get_layer("enc0_conv1").kernel.shape[2] == 1
    # Both epochs kept, then averaged into training/averaged.keras beside model.keras.
    printed = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "Epochs 1 to 2 averaged, batch norm recomputed over" in printed and "for the best epoch" in printed
    averaged = keras.models.load_model(artifacts / "training" / "averaged.keras")
    # USE_AVERAGED: the averaged network is now model.keras, the one notebooks 05 and 06 use.
    published = keras.models.load_model(artifacts / "model.keras")
    for mine, theirs in zip(published.get_weights(), averaged.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    epochs = []
    for epoch in (1, 2):
        model.load_weights(artifacts / "training" / "epochs" / f"epoch_{epoch:03d}.weights.h5")
        epochs.append(model.get_layer("enc0_conv1").kernel.numpy())
    np.testing.assert_allclose(averaged.get_layer("enc0_conv1").kernel.numpy(), (epochs[0] + epochs[1]) / 2,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(epochs[0], epochs[1])

def test_notebook_with_missing_inputs_names_the_notebook_to_run_first(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="01_data_download"):
        execute("02_preprocessing.ipynb", tmp_path, {"ARTIFACTS_DIR": str(tmp_path / "empty")})


def test_notebook_06_alone_runs_to_the_end_and_says_how_to_give_images(tmp_path):
    # A researcher opening 06 first, with no dataset: the shipped model, no images yet, the widget still offered.
    executed = execute("06_inference_app.ipynb", tmp_path, {"ARTIFACTS_DIR": str(tmp_path / "empty")})
    printed = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "models/resunet_lgg.keras" in printed
    assert "No images to segment here" in printed and "IMAGE_PATHS" in printed
    assert not (tmp_path / "empty" / "predictions").exists()


def test_notebook_06_stops_on_an_image_path_that_does_not_exist(tmp_path):
    # A path the user gave is not swallowed as "no images": the run fails, naming it.
    missing = tmp_path / "my_slices" / "absent.png"
    with pytest.raises(pytest.fail.Exception, match=f"FileNotFoundError: No such file or folder: {missing}"):
        execute("06_inference_app.ipynb", tmp_path, {"ARTIFACTS_DIR": str(tmp_path / "empty"),
                                                      "IMAGE_PATHS": str(missing)})


def test_notebook_06_segments_a_folder_given_in_image_paths(tmp_path):
    # A folder, as -p passes one path: every image under it is segmented, its ground truth set aside.
    from PIL import Image

    folder = tmp_path / "my_slices"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "slice_a.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "slice_a_mask.png")
    artifacts = tmp_path / "empty"
    execute("06_inference_app.ipynb", tmp_path, {"ARTIFACTS_DIR": str(artifacts), "IMAGE_PATHS": str(folder)})
    table = pd.read_csv(artifacts / "predictions" / "predictions.csv")
    assert list(table["mask"]) == ["slice_a_mask.png"] and "dice" in table  # its ground truth was found, not segmented


@pytest.mark.real_data
@pytest.mark.skipif(not os.environ.get("LGG_DATA_DIR"), reason="LGG_DATA_DIR is not set: no real data to read")
def test_notebooks_01_and_02_on_the_real_data(tmp_path):
    artifacts = tmp_path / "artifacts"
    execute("01_data_download.ipynb", tmp_path, {"ARTIFACTS_DIR": str(artifacts)})
    execute("02_preprocessing.ipynb", tmp_path, {"ARTIFACTS_DIR": str(artifacts), "INPUT_SIZE": 128,
                                                 "BENCHMARK_BATCHES": 5})
    manifest = pd.read_csv(artifacts / "manifest.csv")
    assert manifest["patient"].nunique() >= 10
    # Real patients have slices with and without tumour.
    assert (manifest["tumour_pixels"] > 0).any() and (manifest["tumour_pixels"] == 0).any()
    split = pd.read_csv(artifacts / "split.csv")
    assert set(split["patient"]) == set(manifest["patient"])
    assert set(split["split"]) == {"train", "val", "test"}
