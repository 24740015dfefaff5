"""Your own saved Keras model (`model=file`): a small CNN saved as `.keras` (and as a legacy `.h5`), cut at its
layers, its stages from the last layer at each resolution, its preprocessing by name, its identity by content,
what validation refuses, and a sweep at three layers whose served model predicts what its best run did."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from tlsweep import layers
from tlsweep.errors import ConfigError, DataError
from tlsweep.stages.backbone import file, models
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.tracking.names import Artifact, Metric, Param, Status, Tag
from tlsweep.validate import validate

LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "gap"]


def _save_cnn(folder: Path, *, input_size=None) -> Path:
    """A three-convolution CNN of any input size (or one), random init (seed 0), as folder/my_cnn.keras and .h5."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "my_cnn.keras")
    keras.saving.save_model(model, folder / "my_cnn.h5")  # the legacy format: Keras says so in a log line
    return folder / "my_cnn.keras"


def _file(path: Path, *overrides: str) -> list[str]:
    return ["model=file", f"model.path={path}", "model.preprocess=torch", "data=digits", *overrides]


def test_a_saved_model_is_cut_at_its_layers_with_stages_by_resolution(tmp_path, compose, capsys):
    path = _save_cnn(tmp_path)
    config = validate(compose(_file(path)))
    assert (config.model.name, config.layer, config.model.weights) == ("my_cnn", "gap", "file")
    assert config.model.stages == ["conv2", "conv3"]  # the last layer at 16x16 and at 8x8 (not the input's 32x32)
    source = BackboneSource.of(config.model)
    assert source.layer_names() == tuple(LAYERS)
    assert dict(source.shapes_at(32))["pool2"] == (8, 8, 16)
    legacy = BackboneSource("my_cnn", "file", path=str(path.with_suffix(".h5")), preprocess="none")
    assert legacy.layer_names() == tuple(LAYERS)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    ours = models.multi_output_model(source.build(input_size=32, seed=0), ["pool2"]).predict_on_batch(images)
    theirs = models.multi_output_model(legacy.build(input_size=32, seed=0), ["pool2"]).predict_on_batch(images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)  # the same weights, from either format
    assert layers.main(_file(path)) == 0
    marks = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("    ^ stage")]
    assert [mark[-1] for mark in marks] == ["0.60", "1.00"]  # conv2 is the 3rd of 5 cuts to conv3


def test_each_preprocess_mode_is_keras_own(tmp_path):
    from keras.applications import imagenet_utils

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for mode in ("caffe", "torch", "tf"):
        np.testing.assert_array_equal(file.preprocess_fn(mode)(pixels.copy()),
                                      imagenet_utils.preprocess_input(pixels.copy(), mode=mode))
    np.testing.assert_array_equal(file.preprocess_fn("none")(pixels), pixels)


def test_what_validation_refuses_about_a_file_is_one_line(tmp_path, compose):
    path = _save_cnn(tmp_path / "any")
    fixed = _save_cnn(tmp_path / "fixed", input_size=32)
    refusals = {
        ("model=file", "data=digits"): "model.path should be a saved Keras model (.keras, or a legacy .h5) whose "
                                       "input is an image for model=file; received none (add model.path=...)",
        tuple(_file(tmp_path / "missing.keras")): "received model.path=",
        tuple(_file(path, "model.preprocess=imagenet")): "model.preprocess should be one of ['caffe', 'torch', 'tf', "
                                                         "'none'] for model=file",
        tuple(_file(fixed, "data.image_size=64")): f"data.image_size should be a size model.path={fixed} takes; "
                                                   "received data.image_size=64 (its input is 32x32)",
        tuple(_file(path, "layer=pool9")): "layer should be a layer of my_cnn; received layer='pool9'; did you mean",
        tuple(_file(path, "model.weights=null")): "model.weights should be 'file' (the file's own) for model=file",
        tuple(_file(path, "features.pooling=cls", "layer=pool2")): "for layer=pool2 of my_cnn, a feature map",
    }
    for overrides, line in refusals.items():
        with pytest.raises((ConfigError, DataError)) as err:
            validate(compose(list(overrides)))
        assert line in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "not_a_model.keras").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"received model.path='.*not_a_model.keras', which does not load"):
        validate(compose(_file(tmp_path / "not_a_model.keras")))


def test_the_weights_fingerprint_is_the_files_content(tmp_path):
    path = _save_cnn(tmp_path)
    source = BackboneSource("my_cnn", "file", path=str(path), preprocess="none")
    assert source.fingerprint(0) == f"file-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    assert source.fingerprint(0) == source.fingerprint(7)  # no seed: the file is the weights


@pytest.fixture(scope="module")
def file_sweep(tmp_path_factory, image_folder_writer, cli, sweep_runs):
    """`-m model=file layer=pool1,pool2,gap` on a folder of images: (client, parent, children, images, file)."""
    work = tmp_path_factory.mktemp("file")
    path = _save_cnn(work / "model")
    root = image_folder_writer(work / "images", per_class=10)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", "model=file", f"model.path={path}", "model.preprocess=torch", "layer=pool1,pool2,gap",
                 "data=folder", f"data.path={root}", "model.batch_size=16", "data.val_fraction=0.25", cwd=work,
                 env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = sweep_runs(uri)
    return client, parent, children, root, path


def test_a_sweep_of_a_saved_model_at_three_layers_from_one_pass(file_sweep):
    _, _, children, _, path = file_sweep
    assert [run.data.params[Param.LAYER] for run in children] == ["pool1", "pool2", "gap"]
    assert all(run.info.status == Status.FINISHED for run in children)
    assert [run.data.metrics[Metric.CNN_FORWARD_IMAGES] for run in children][1:] == [0, 0]
    fingerprint = f"file-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    assert {run.data.tags[Tag.WEIGHTS_FINGERPRINT] for run in children} == {fingerprint}
    assert [run.data.metrics[Metric.LAYER_DEPTH] for run in children] == [0.4, 0.8, 1.2]  # over conv3, the 5th
    assert {run.data.params[Param.MODEL] for run in children} == {"my_cnn"}


def test_the_served_model_predicts_what_the_best_run_did(file_sweep, monkeypatch):
    import mlflow.pyfunc
    from PIL import Image

    client, parent, _, root, _ = file_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    logged = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
        parent.data.tags[Tag.BEST_RUN_ID], Artifact.predictions("test"))).read_text())))
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    images = np.stack([np.asarray(Image.open(root / row["id"]).convert("RGB")) for row in logged])
    assert list(model.predict(images)) == [row["predicted"] for row in logged]
