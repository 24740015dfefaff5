"""model.precision: what validation says of it, the config hash, the cache, bfloat16 features against float32's, the
served pipeline, and a job that records it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tlsweep import identity
from tlsweep.errors import ConfigError
from tlsweep.job import run
from tlsweep.stages.backbone import models, precision
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data import datasets
from tlsweep.stages.features import cache, extraction
from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline
from tlsweep.tracking.names import Status
from tlsweep.validate import validate

ORIGINAL_HASH = "ba0a6b6860eab86e"  # the original study's configuration, as its runs logged it


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _compute_dtypes(model) -> set[str]:
    return {layer.compute_dtype for layer in model._flatten_layers(include_self=False, recursive=True) if layer.weights}


def test_a_precision_that_is_not_one_is_one_line(compose):
    with pytest.raises(ConfigError) as caught:
        validate(compose(["model.precision=float16"]))
    assert str(caught.value) == ("model.precision should be one of ['float32', 'bfloat16']; received "
                                 "model.precision='float16'")


def test_bfloat16_without_the_hardware_for_it_is_one_warning(compose, monkeypatch, caplog):
    monkeypatch.setattr(precision, "_gpu_capability", lambda: None)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx2"})
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        validate(compose(["model.precision=bfloat16", "model.weights=null"]))
    (record,) = [r for r in caplog.records if r.name == precision.__name__]
    assert "model.precision=bfloat16" in record.getMessage() and "AVX512_BF16" in record.getMessage()
    assert "\n" not in record.getMessage()

    caplog.clear()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        validate(compose(["model.precision=bfloat16", "model.weights=null"]))
    assert [r for r in caplog.records if r.name == precision.__name__] == []


def test_a_gpu_below_ampere_is_named_in_the_warning(monkeypatch):
    monkeypatch.setattr(precision, "_gpu_capability", lambda: (7, 5))
    assert "compute capability 7.5" in precision.hardware_gap()
    monkeypatch.setattr(precision, "_gpu_capability", lambda: (9, 0))
    assert precision.hardware_gap() is None


def test_the_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert {"amx_bf16", "avx512f"} <= precision.cpu_flags(tmp_path / "x86")
    assert "bf16" in precision.cpu_flags(tmp_path / "arm")
    assert precision.cpu_flags(tmp_path / "none") is None


def test_the_hash_keeps_its_value_at_float32_and_changes_with_bfloat16(compose):
    def hashed(*overrides):
        return identity.config_hash(OmegaConf.to_container(compose(list(overrides)), resolve=True))

    assert hashed() == ORIGINAL_HASH
    assert hashed("model.precision=float32") == ORIGINAL_HASH
    assert hashed("model.precision=bfloat16") != ORIGINAL_HASH
    params = {"model.name": "vgg16", "layer": "block5_pool", "model.precision": "bfloat16"}
    assert identity.configuration(params, {})["model.precision"] == "bfloat16"
    assert "model.precision" not in identity.configuration({**params, "model.precision": "float32"}, {})


def test_the_backbone_computes_in_bfloat16_and_nothing_else_does():
    import keras

    model = BackboneSource("vgg16", None, precision="bfloat16").build(input_size=32, seed=0)
    assert _compute_dtypes(model) == {"bfloat16"}
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.layers.Dense(2).compute_dtype == "float32"
    assert _compute_dtypes(BackboneSource("vgg16", None).build(input_size=32, seed=0)) == {"float32"}


def test_bfloat16_features_are_float32_and_close_to_float32s():
    layers = ["block3_pool", "block5_pool"]
    found = {}
    for name in precision.POLICIES:
        source = BackboneSource("vgg16", None, precision=name)
        extractor = models.multi_output_model(source.build(input_size=32, seed=0), layers)
        found[name] = extraction.forward(extractor, source.preprocess_fn(32), _images(), 32, 8)
    for exact, low in zip(found["float32"], found["bfloat16"]):
        assert low.dtype == np.float32 and low.shape == exact.shape
        relative = np.linalg.norm(low - exact) / np.linalg.norm(exact)
        assert 0 < relative < 0.03, relative  # bfloat16 keeps 8 significant bits: close, never the same


def test_a_saved_model_is_rebuilt_in_bfloat16(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv", activation="relu")(inputs)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x)).save(tmp_path / "cnn.keras")
    source = BackboneSource("cnn", "file", path=str(tmp_path / "cnn.keras"), preprocess="torch", precision="bfloat16")
    model = source.build(input_size=32, seed=0)
    assert _compute_dtypes(model) == {"bfloat16"}
    exact = BackboneSource("cnn", "file", path=str(tmp_path / "cnn.keras"), preprocess="torch").build(input_size=32,
                                                                                                       seed=0)
    x = source.preprocess_fn(32)(_images(2).astype("float32"))
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x), np.float32), exact.predict_on_batch(x),
                               rtol=0.05, atol=1e-2)


def test_a_backbone_that_keeps_float32_is_refused_not_run():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, dtype="float32", name="conv")(inputs))
    with pytest.raises(ConfigError, match=r"model.precision should be float32 for model=file .* received "
                                          r"model.precision='bfloat16'"):
        precision.check_applied(model, "bfloat16", what="model=file model.path=x.keras")


def test_float32_and_bfloat16_features_never_share_a_cache_entry(tmp_path):
    dataset = datasets.load_dataset(name="digits", path=None)
    extracted = {}
    for name in ("float32", "bfloat16", "float32"):
        extracted.setdefault(name, []).append(extraction.extract_features(
            dataset=dataset, image_set="test", layer="block5_pool", classes=[0, 1], backbone="vgg16", weights=None,
            seed=0, input_size=32, batch_size=64, cache_root=tmp_path, precision=name))
    (f32, again), (bf16,) = extracted["float32"], extracted["bfloat16"]
    assert bf16.cnn_images == f32.cnn_images > 0  # bfloat16 found nothing to reuse in float32's entries
    assert again.cnn_images == 0 and np.array_equal(again.X, f32.X)  # and did not overwrite them
    assert bf16.cache_folder != f32.cache_folder
    assert not np.array_equal(bf16.X, f32.X) and np.allclose(bf16.X, f32.X, rtol=0.05, atol=0.02)
    assert json.loads((tmp_path / os.path.basename(bf16.cache_folder) / "key.json").read_text())["precision"] == \
        "bfloat16"
    # float32's key is the one written before model.precision existed: earlier caches are still found
    key = extraction.FeatureKey("vgg16", f32.weights_id, dataset.fingerprint, 32)
    before = cache.FeatureCache(tmp_path, {"backbone": "vgg16", "weights_id": f32.weights_id,
                                           "data_fingerprint": dataset.fingerprint, "input_size": 32}, label="vgg16")
    assert key.cache(tmp_path).folder == before.folder == tmp_path / os.path.basename(f32.cache_folder)


def test_the_served_pipeline_extracts_at_the_runs_precision(tmp_path):
    spec = PipelineSpec("vgg16", "block4_pool", 32, "keras", {"pooling": "avg"}, [0, 1], ["a", "b"], weights=None,
                        precision="bfloat16")
    built = ProbePipeline.build(spec=spec, probe=None)
    assert _compute_dtypes(built.extractor) == {"bfloat16"}
    features = built.features(_images(3))
    assert features.dtype == np.float32
    loaded = ProbePipeline.load(built.save(tmp_path / "pipeline"))
    assert loaded.spec.precision == "bfloat16" and _compute_dtypes(loaded.extractor) == {"bfloat16"}
    np.testing.assert_array_equal(loaded.features(_images(3)), features)
    exact = ProbePipeline.build(spec=dataclasses.replace(spec, precision="float32"), probe=None)
    assert not np.array_equal(exact.features(_images(3)), features)
    # a spec saved before model.precision existed is float32's
    assert PipelineSpec.from_dict({key: value for key, value in json.loads(spec.to_json()).items()
                                   if key != "precision"}).precision == "float32"


def test_a_job_at_bfloat16_logs_its_precision_and_serves_at_it(compose, tmp_path):
    import mlflow.pyfunc

    cfg = compose(["data=digits", "model.weights=null", "model.precision=bfloat16", "layer=block4_pool",
                   "data.classes=[0,1]", "model.batch_size=64", "scores=[]", "tracking.log_pipeline=true",
                   "features.pooling=avg"])
    run(cfg)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (job,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    assert job.info.status == Status.FINISHED
    assert job.data.params["model.precision"] == "bfloat16"
    served = mlflow.pyfunc.load_model(f"runs:/{job.info.run_id}/model").unwrap_python_model().pipeline
    assert served.spec.precision == "bfloat16" and _compute_dtypes(served.extractor) == {"bfloat16"}


def test_a_hub_preset_is_built_in_bfloat16_and_a_nested_encoder_is_refused(hub_presets):
    vit = BackboneSource("tiny_vit", "preset", preset=str(hub_presets["tiny_vit"]), precision="bfloat16")
    assert "bfloat16" in _compute_dtypes(vit.build(input_size=32, seed=0))
    clip = BackboneSource("tiny_clip", "preset", preset=str(hub_presets["tiny_clip"]), precision="bfloat16")
    with pytest.raises(ConfigError, match=r"model.precision should be float32 for model=hub model.preset=.*tiny_clip, "
                                          r"whose layers keep their own dtype"):
        clip.build(input_size=32, seed=0)
