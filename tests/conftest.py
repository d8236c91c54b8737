"""Shared fixtures: a small synthetic dataset in the Kaggle layout, written once per session.

Session fixtures are read-only by convention: a test that needs to damage or
change files copies the dataset into its own ``tmp_path`` first.
"""

from __future__ import annotations

import os

# Under pytest-xdist (make test runs TEST_WORKERS processes), one thread each for TensorFlow's ops keeps the
# workers from fighting over the cores; the notebook kernels and scripts the tests start inherit it. Set
# before anything imports TensorFlow, which reads it when it starts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import socket  # noqa: E402
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.data import build_manifest, load_arrays
from helpers.synthetic import make_synthetic_dataset

SYNTHETIC_PATIENTS = 6
SYNTHETIC_SLICES = 12
SYNTHETIC_SIZE = 32


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A download-like root holding ``kaggle_3m/``: 6 patients x 12 slices of 32x32."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, n_patients=SYNTHETIC_PATIENTS, slices_per_patient=SYNTHETIC_SLICES,
        size=SYNTHETIC_SIZE, seed=0,
    )


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_root) -> pd.DataFrame:
    """The manifest of ``synthetic_root`` (72 rows)."""
    return build_manifest(synthetic_root / "kaggle_3m", show_progress=False)


@pytest.fixture(scope="session")
def synthetic_arrays(synthetic_manifest) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images uint8 (72, 32, 32, 3) and masks uint8 (72, 32, 32), 0/1."""
    return load_arrays(synthetic_manifest, size=SYNTHETIC_SIZE, show_progress=False)



def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """An untrained ResUNet (32x32 input, width 4, depth 2) saved as .keras, for inference tests."""
    from helpers.model import build_resunet

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.keras"
    build_resunet((32, 32, 3), base_filters=4, depth=2).save(path)
    return path


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port on 127.0.0.1 that nothing listens on now."""
    return _free_port
