"""Reliability in-process: every bad input is one line naming key, value and what is allowed, leaves no
RUNNING run and an intact cache; corrupt cache entries are found and recomputed; parallel SQLite logging.

The same paths through the real command line (exit code, no traceback), failing and killed sweeps,
resume and concurrent jobs are in test_reliability_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlsweep.errors import TlsweepError
from tlsweep.job import run
from tlsweep.stages.data import datasets
from tlsweep.stages.features import cache, extraction
from tlsweep.tracking.names import Artifact, Status, Tag


def _snapshot(root: Path) -> dict[str, str]:
    """Every cache file and its sha256; lock files are empty coordination files and are left out."""
    return {str(p.relative_to(root)): cache.file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, cifar_writer, cifar_archive_writer, free_port, tiny, compose):
    """Broken inputs of every kind, a shared tracking store, and a cache warmed by one good run."""
    root = tmp_path_factory.mktemp("bad")
    ns = SimpleNamespace(root=root, cache=root / "cache", uri=f"sqlite:///{root / 'mlflow.db'}")
    ns.data = cifar_writer(root / "good")
    archive = cifar_archive_writer(root / "arch")
    blob = archive.read_bytes()
    ns.truncated = root / "truncated.tar.gz"
    ns.truncated.write_bytes(blob[: len(blob) // 3])
    flipped = bytearray(blob)
    middle = len(flipped) // 2
    flipped[middle : middle + 64] = bytes(b ^ 0x5A for b in flipped[middle : middle + 64])
    ns.flipped = root / "flipped.tar.gz"
    ns.flipped.write_bytes(bytes(flipped))
    ns.text = root / "notes.txt"
    ns.text.write_text("not an archive\n")
    ns.other_tar = root / "other.tar.gz"
    with tarfile.open(ns.other_tar, "w:gz") as tar:
        tar.add(ns.text, arcname="notes.txt")
    ns.empty = root / "empty"
    ns.empty.mkdir()
    torn = cifar_writer(root / "torn")
    (torn / "data_batch_3").write_bytes((torn / "data_batch_3").read_bytes()[:5000])
    ns.torn = torn.parent

    import keras

    small = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, name="block1_conv1")])
    ns.other_weights = root / "small.weights.h5"
    small.save_weights(ns.other_weights)
    ns.truncated_weights = root / "truncated.weights.h5"
    ns.truncated_weights.write_bytes(ns.other_weights.read_bytes()[:4000])
    ns.file = root / "a-file"
    ns.file.write_text("a regular file, so nothing can be created under it\n")
    ns.port = free_port()

    ns.base = [*tiny, f"data.path={ns.data}", f"cache_dir={ns.cache}", f"tracking.uri={ns.uri}"]
    run(compose([*ns.base, "layer=block5_pool", "tracking.experiment=warm"]))
    assert any(name.endswith(".npy") for name in _snapshot(ns.cache))
    return ns


# (overrides, text the one line must hold: the key=value received and what is allowed)
CASES = {
    "unknown-layer": (["layer=not_a_layer"], ["received layer='not_a_layer'", "python -m tlsweep.layers model=vgg16"]),
    "mistyped-layer": (["layer=block3_pol"], ["received layer='block3_pol'", "did you mean 'block3_pool'",
                                              "python -m tlsweep.layers model=vgg16"]),
    "class-out-of-range": (["data.classes=[4,12]"], ["received data.classes=[4, 12]", "0..9"]),
    "class-negative": (["data.classes=[-1,3]"], ["received data.classes=[-1, 3]", "0..9"]),
    "class-duplicates": (["data.classes=[4,4,5]"], ["received data.classes=[4, 4, 5]", "not repeat"]),
    "one-class": (["data.classes=[4]"], ["received data.classes=[4]", "at least two"]),
    "C-zero": (["classifier.C=0"], ["received classifier.C=0.0", "positive number"]),
    "C-negative": (["classifier.C=-1"], ["received classifier.C=-1.0", "positive number"]),
    "C-nan": (["classifier.C=nan"], ["received classifier.C=nan", "positive number"]),
    "max-iter-zero": (["classifier.max_iter=0"], ["received classifier.max_iter=0", ">= 1"]),
    "val-fraction-zero": (["data.val_fraction=0"], ["received data.val_fraction=0.0", "(0, 1)"]),
    "val-fraction-one": (["data.val_fraction=1"], ["received data.val_fraction=1.0", "(0, 1)"]),
    "val-fraction-above-one": (["data.val_fraction=1.5"], ["received data.val_fraction=1.5", "(0, 1)"]),
    # 10 training images per class: 0.05 gives a class no val image, 0.95 no train image
    "val-fraction-empties-val": (["data.val_fraction=0.05"], ["received data.val_fraction=0.05", "[0.1, 0.9]"]),
    "val-fraction-empties-train": (["data.val_fraction=0.95"], ["received data.val_fraction=0.95", "[0.1, 0.9]"]),
    "data-missing": (["data.path={root}/nowhere"], ["data.path=", "nowhere", "does not exist",
                                                    "cifar-10-python.tar.gz"]),
    "data-text-file": (["data.path={text}"], ["data.path=", "notes.txt", "cifar-10-python.tar.gz"]),
    "data-other-archive": (["data.path={other_tar}"], ["data.path=", "missing", "cifar-10-python.tar.gz"]),
    "data-empty-folder": (["data.path={empty}"], ["data.path=", "missing", "cifar-10-batches-py"]),
    "data-truncated-archive": (["data.path={truncated}"], ["data.path=", "truncated or corrupt"]),
    "data-corrupt-archive": (["data.path={flipped}"], ["data.path=", "truncated or corrupt"]),
    "data-corrupt-batch": (["data.path={torn}"], ["data.path=", "data_batch_3", "truncated or corrupt"]),
    "weights-missing": (["model.weights={root}/none.h5"], ["received model.weights=", "none.h5", "'imagenet', null"]),
    "weights-not-a-weights-file": (["model.weights={text}"], ["received model.weights=", "'imagenet', null"]),
    "weights-of-another-model": (["model.weights={other_weights}"], ["received model.weights=", "small.weights.h5",
                                                                     "weights file of vgg16"]),
    "weights-truncated": (["model.weights={truncated_weights}"], ["received model.weights=", "does not load"]),
    "tracking-server-unreachable": (["tracking.uri=http://127.0.0.1:{port}"], ["tracking.uri='http://127.0.0.1:",
                                                                               "unreachable", "start the server"]),
    "tracking-sqlite-under-a-file": (["tracking.uri=sqlite:///{file}/sub/mlflow.db"], ["tracking.uri='sqlite:///",
                                                                                      "cannot be used"]),
    "cache-under-a-file": (["cache_dir={file}/sub"], ["received cache_dir=", "a-file/sub", "writable folder"]),
    # beyond the list: where users trip next
    "batch-size-zero": (["model.batch_size=0"], ["received model.batch_size=0", ">= 1"]),
    "precision-unknown": (["model.precision=fp16"], ["received model.precision='fp16'", "'float32', 'bfloat16'"]),
    "seed-negative": (["seed=-1"], ["received seed=-1", "2**32 - 1"]),
    "image-size-too-small": (["data.image_size=8"], ["received data.image_size=8", "at least 32x32"]),
    "image-size-zero": (["data.image_size=0"], ["received data.image_size=0", "positive size"]),
    "unknown-data-name": (["data.name=imagenet"], ["received data.name='imagenet'", "cifar10", "digits"]),
    # the probing protocols
    "C-text": (["classifier.C=big"], ["received classifier.C='big'", "positive number or 'auto'"]),
    "C-grid-empty": (["classifier.C=auto", "classifier.C_grid=[]"], ["received classifier.C_grid=[]", "non-empty"]),
    "C-grid-negative": (["classifier.C=auto", "classifier.C_grid=[0.1,-1]"], ["received classifier.C_grid=[0.1, -1.0]",
                                                                              "positive numbers"]),
    "pooling-unknown": (["features.pooling=mean"], ["received features.pooling='mean'", "'avg'", "'grid'"]),
    "grid-size-zero": (["features.grid_size=0"], ["received features.grid_size=0", ">= 1"]),
    "normalize-unknown": (["features.normalize=zscore"], ["received features.normalize='zscore'", "'standardize'"]),
    "train-per-class-zero": (["data.train_per_class=0"], ["received data.train_per_class=0", ">= 1"]),
    "train-per-class-above-the-data": (["data.train_per_class=9"], ["received data.train_per_class=9", "at most 7"]),
    "loss-of-another-classifier": (["classifier=logreg", "classifier.loss=hinge"], ["received classifier.loss='hinge'",
                                                                                  "'log_loss'"]),
}


# what only the data, the weights file or the cache can tell fails inside the job's run, which is then FAILED
FAIL_INSIDE_THE_RUN = ("val-fraction-empties-", "data-", "weights-", "cache-under-a-file",
                       "train-per-class-above-the-data")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(bad, compose, experiment_runs, case):
    overrides, expected = CASES[case]
    overrides = [item.format(**vars(bad)) for item in overrides]
    experiment = f"bad-{case}"
    before = _snapshot(bad.cache)

    cfg = compose([*bad.base, f"tracking.experiment={experiment}", *overrides])
    with pytest.raises(TlsweepError) as caught:  # the CLI prints these alone and exits 1
        run(cfg)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700, message
    for text in expected:
        assert text in message, (text, message)

    assert _snapshot(bad.cache) == before
    client = MlflowClient(bad.uri)
    runs = experiment_runs(client, experiment)
    assert not [r for r in runs if r.info.status == Status.RUNNING]
    if not case.startswith(FAIL_INSIDE_THE_RUN):
        assert runs == []  # config checks and tracking faults come before any run is opened
    else:
        (failed,) = runs
        assert failed.info.status == Status.FAILED
        assert failed.data.tags[Tag.ERROR] == f"{type(caught.value).__name__}: {message}"
        error_txt = Path(client.download_artifacts(failed.info.run_id, Artifact.ERROR, str(bad.root)))
        assert message in error_txt.read_text()


def test_schema_type_error_fails_at_composition_naming_the_key(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as caught:
        compose(["classifier.max_iter=many"])
    assert "classifier.max_iter=many" in str(caught.value)


# --- the feature cache ------------------------------------------------------------------------------

def _damage_truncate(npy: Path) -> None:
    npy.write_bytes(npy.read_bytes()[:-100])


def _damage_flip(npy: Path) -> None:
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0xFF  # a value changes, the header and size do not: only the checksum can tell
    npy.write_bytes(bytes(raw))


def _damage_sidecar(npy: Path) -> None:
    meta = npy.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"float32"', '"float64"'))


def _damage_remove_data(npy: Path) -> None:
    npy.unlink()


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_flip, _damage_sidecar, _damage_remove_data],
                         ids=["truncated", "flipped-byte", "sidecar-disagrees", "data-file-gone"])
def test_corrupt_cache_entry_is_detected_logged_and_recomputed(tmp_path, cifar_writer, extract, damage, caplog):
    dataset = datasets.load_dataset(name="cifar10", path=str(cifar_writer(tmp_path / "d")))
    first = extract(dataset, tmp_path / "c")
    (npy,) = (tmp_path / "c").glob("*/train-block5_pool-class5.npy")
    damage(npy)

    with caplog.at_level("WARNING", logger="tlsweep.cache"):
        again = extract(dataset, tmp_path / "c")
    assert any("train-block5_pool-class5" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert again.cnn_images == 10  # only class 5 went through the CNN again
    np.testing.assert_array_equal(again.X, first.X)
    assert cache.load_entry(npy.parent, "train-block5_pool-class5") is not None
    assert extract(dataset, tmp_path / "c").cnn_images == 0  # sound again: no model needed


def test_interrupted_write_leaves_no_entry_and_no_temporary_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with cache.new_entry(tmp_path, "train-block5_pool-class4", (3, 2)) as out:
            out[0] = 1.0
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with cache.new_entry(tmp_path, "train-block5_pool-class4", (3, 2)) as out:
        out[:] = 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-block5_pool-class4.json",
                                                          "train-block5_pool-class4.npy"]
    np.testing.assert_array_equal(cache.load_entry(tmp_path, "train-block5_pool-class4"), np.full((3, 2), 2.0))


def test_temporary_files_of_a_killed_extraction_are_cleared_by_the_next(tmp_path, cifar_writer, extract):
    dataset = datasets.load_dataset(name="cifar10", path=str(cifar_writer(tmp_path / "d")))
    folder = extraction.FeatureKey("vgg16", "random-seed0", dataset.fingerprint, 32).cache(tmp_path / "c").folder
    folder.mkdir(parents=True)
    stale = folder / ".train-block5_pool-class4.x1y2.npy.tmp"  # what SIGKILL mid-pass leaves
    stale.write_bytes(b"\x93NUMPY half")
    result = extract(dataset, tmp_path / "c")
    assert result.cnn_images == 30 and not stale.exists()
    assert not list(folder.glob(".*.tmp"))


# --- parallel logging to the default SQLite store ---------------------------------------------------

WORKER = textwrap.dedent("""
    import sys
    import time
    from tlsweep.tracking import runs
    from tlsweep.tracking.payload import Payload
    uri, worker, n_runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store, experiment_id = runs.connect(uri, "parallel")  # the first one creates the schema, under a lock
    for i in range(n_runs):
        payload = Payload(params={f"p{k}": k for k in range(120)}, metrics={f"m{k}": k for k in range(50)},
                          tags={"worker": worker}, files={"reports/report.txt": "report\\n"})
        runs.log_job(store, experiment_id=experiment_id, run_name=f"worker{worker}-{i}", payload=payload,
                     started=time.time())
""")


def test_parallel_jobs_logging_to_one_new_sqlite_store_lose_no_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # no schema yet: every worker races to create it
    workers, n_runs = 4, 5
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(w), str(n_runs)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for w in range(workers)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
        assert "database is locked" not in output and "Traceback" not in output, output[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id], max_results=1000)
    assert len(runs) == workers * n_runs
    assert all(r.info.status == Status.FINISHED for r in runs)
    assert all(len(r.data.params) == 120 and len(r.data.metrics) == 50 for r in runs)
    assert sorted(r.info.run_name for r in runs) == sorted(f"worker{w}-{i}" for w in range(workers)
                                                             for i in range(n_runs))
