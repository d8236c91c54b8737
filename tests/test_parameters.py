"""Tests of the parameter check and of `make run` around papermill (a stand-in papermill, no notebook runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import parameters

ROOT = Path(__file__).resolve().parent.parent
SERIES = [ROOT / "notebooks" / f"{name}.ipynb" for name in
          ("01_data_download", "02_preprocessing", "03_resunet_model", "04_training", "05_evaluation")]


def test_names_are_read_from_every_kind_of_papermill_option(tmp_path):
    file = tmp_path / "extra.yaml"
    file.write_text("RESUME: false\n")
    options = ["-p", "EPOCHS", "5", "--log-output", "-r", "SEED", "3", "-y", "CHANNELS: [1]", "-f", str(file),
               "-b", "QkFUQ0hfU0laRTogOA=="]  # base64 of "BATCH_SIZE: 8"
    assert parameters.given_names(options) == ["EPOCHS", "SEED", "CHANNELS", "RESUME", "BATCH_SIZE"]
    assert parameters.given_names(["--parameters_yaml=EPOCSH: 2", "-y", "1: a"]) == ["EPOCSH", "1"]
    with pytest.raises(ValueError, match="-p needs a parameter name and a value"):
        parameters.given_names(["-p", "EPOCHS"])
    with pytest.raises(ValueError, match="give a mapping"):
        parameters.given_names(["-y", "just text"])


def test_a_misspelt_parameter_is_refused_and_the_real_ones_pass(capsys):
    assert parameters.main([*map(str, SERIES), "--", "-p", "EPOCHS", "2", "-y", "CHANNELS: [1]"]) == 0
    assert parameters.main([*map(str, SERIES), "--", "-p", "EPOCSH", "2"]) == 2
    err = capsys.readouterr().err
    assert "EPOCSH" in err and "check the spelling" in err and "EPOCHS" in err


@pytest.fixture
def fake_venv(tmp_path):
    """A virtual environment whose papermill writes its output notebook, some noise and a line, then exits
    with $FAKE_STATUS; make's install step is skipped because its stamp is newer than the requirements."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # this interpreter, with its packages (a symlink would lose its venv)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / "bin" / "activate").write_text("")
    papermill = venv / "bin" / "papermill"
    papermill.write_text(
        "#!/bin/sh\n"
        "echo 'E0000 00:00:1 cuda_executor.cc: failed call to cuInit' >&2\n"
        "echo 'E0000 00:00:2 cuda_dnn.cc: Loaded runtime CuDNN library but source was compiled with another' >&2\n"
        "echo 'I0000 00:00:1 cpu_feature_guard.cc: This TensorFlow binary is optimized' >&2\n"
        "echo \"notebook ran: $2\" >&2\n"
        "cp \"$2\" \"$3\"\n"
        "exit ${FAKE_STATUS:-0}\n")
    papermill.chmod(0o755)
    (venv / ".installed").touch()  # newer than requirements.txt and pyproject.toml
    return venv


def make_run(venv: Path, tmp_path: Path, extra: str, status: int = 0) -> subprocess.CompletedProcess:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "metrics.json").write_text(json.dumps({
        "patients": 2, "dice_per_patient_mean": 0.9, "dice_per_patient_median": 0.91, "dice_per_patient_min": 0.85,
        "iou_per_patient_mean": 0.82, "chosen_on_validation": {"threshold": 0.5}}))
    return subprocess.run(
        ["make", "--no-print-directory", "run", f"VENV={venv}", f"ARTIFACTS_DIR={artifacts}",
         f"RUN_DIR={tmp_path / 'runs'}", f"EXTRA={extra}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FAKE_STATUS": str(status)}, timeout=120)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_checks_names_filters_noise_and_stops_on_a_failure(fake_venv, tmp_path):
    typo = make_run(fake_venv, tmp_path, "-p EPOCSH 2")
    assert typo.returncode != 0 and "EPOCSH" in typo.stderr
    assert not (tmp_path / "runs").exists()  # refused before any notebook ran

    good = make_run(fake_venv, tmp_path, "-p EPOCHS 2")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "notebook ran: notebooks/05_evaluation.ipynb" in good.stdout  # papermill's log reaches stdout
    assert "cuInit" not in good.stdout + good.stderr and "I0000" not in good.stdout + good.stderr
    assert "Loaded runtime CuDNN library" in good.stdout  # a real error is not filtered
    assert "Test patients: 2; mean per-patient Dice 0.900 (median 0.910, lowest 0.850)" in good.stdout

    failed = make_run(fake_venv, tmp_path, "-p EPOCHS 2", status=1)
    assert failed.returncode != 0
    assert "01_data_download failed (papermill exit status 1)" in failed.stdout
    assert "notebook ran: notebooks/01_data_download.ipynb" in failed.stdout  # the failing notebook's log shows
    assert "02_preprocessing" not in failed.stdout
