"""Shared fixtures: an isolated MLflow store and cache per test, tiny genuine-format CIFAR-10 files."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own SQLite tracking store, feature cache, Keras home and working folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TLSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("TLSWEEP_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("TLSWEEP_SWEEP_LAYERS", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def cifar_batch(n_per_class: int, rng: np.random.Generator, label_name: bytes) -> dict:
    """A batch in the CIFAR-10 python format: uint8 rows of 3072 (R, G, B planes), list labels.

    Each class gets its own mean colour, so a linear classifier has something to learn.
    """
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    base = (labels[:, None] * 23 % 256).astype(np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, size=(len(labels), 3072)), 0, 255).astype(np.uint8)
    return {
        b"batch_label": label_name,
        b"labels": labels.tolist(),
        b"data": pixels,
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }


def write_cifar(folder: Path, *, train_per_class_per_batch: int = 2, test_per_class: int = 4, seed: int = 0):
    """Write cifar-10-batches-py/ (5 train batches, 1 test batch, batches.meta); returns its path."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        entry = cifar_batch(train_per_class_per_batch, rng, f"training batch {i} of 5".encode())
        (batches / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    (batches / "test_batch").write_bytes(pickle.dumps(cifar_batch(test_per_class, rng, b"testing batch 1 of 1")))
    meta = {b"label_names": [name.encode() for name in (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta))
    return batches


def write_cifar_archive(folder: Path, **kwargs) -> Path:
    """cifar-10-python.tar.gz with the same layout as the official archive."""
    batches = write_cifar(folder / "extracted", **kwargs)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    return archive


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_cifar(tmp_path / "data")


@pytest.fixture
def cifar_archive(tmp_path) -> Path:
    return write_cifar_archive(tmp_path / "data")


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tlsweep ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tlsweep", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# the smallest useful runs: random-init weights, small batches, classes that the tiny files hold
TINY = ["model.weights=null", "model.batch_size=16", "data.val_fraction=0.25"]
