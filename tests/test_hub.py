"""Keras-Hub backbones (`model=hub`): tiny random-init ViT, DINOv2 and CLIP saved as local preset folders, cut at
every block from the model's own forward pass; the token poolings; what validation refuses; the layers table;
one pass for every cut; the weights fingerprint; a whole sweep whose served model predicts what its best run did;
and a CNN and a transformer on one depth profile."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tlsweep import layers
from tlsweep.config import FeaturesConfig
from tlsweep.errors import ConfigError, FetchError
from tlsweep.stages.backbone import hub, models
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data import datasets
from tlsweep.stages.features import extraction, pooling
from tlsweep.tracking.names import Artifact, Metric, Param, Status, Tag
from tlsweep.validate import validate

keras_hub = pytest.importorskip("keras_hub")

BLOCKS = {"tiny_vit": 3, "tiny_dinov2": 2, "tiny_clip": 2}
PREFIX = {"tiny_vit": 1, "tiny_dinov2": 3, "tiny_clip": 1}  # the class token, and DINOv2's two registers
PATCHES = 16  # 32x32 images in 8x8 patches


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def _own_call(encoder, images):
    """The encoder's output as Keras-Hub runs it, on its own input structure."""
    return encoder.predict_on_batch({"images": images} if isinstance(encoder.input, dict) else images)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_every_block_is_a_cut_of_the_models_own_forward_pass(hub_presets, name):
    encoder = hub.load_encoder(str(hub_presets[name]), weights="preset", input_size=32, seed=0)
    model = hub.cut_model(encoder)
    cuts = [f"block{k}" for k in range(BLOCKS[name])] + ["output"]
    assert models.cut_layer_names(model) == cuts
    assert models.cut_shapes(model) == {cut: (PREFIX[name] + PATCHES, 32) for cut in cuts}
    assert models.cut_prefix_tokens(model) == {cut: PREFIX[name] for cut in cuts}
    images = _images()
    *block_outputs, output = model.predict_on_batch(images)
    np.testing.assert_array_equal(output, _own_call(encoder, images))  # the same pass, to the last bit
    assert not np.allclose(block_outputs[-1], output)  # the output is the last block's, normalised
    if name == "tiny_dinov2":  # Keras-Hub's own intermediate outputs: the blocks, as DINOv2 exposes them
        import keras

        stages = keras.Model(encoder.inputs, [encoder.pyramid_outputs[f"stage{k + 1}"] for k in range(2)])
        for ours, theirs in zip(block_outputs, stages.predict_on_batch({"images": images})):
            np.testing.assert_array_equal(ours, theirs)


def test_each_token_pooling_of_a_known_sequence():
    tokens = np.arange(2 * 7 * 4, dtype=np.float32).reshape(2, 7, 4)  # a class token, 2 registers, 4 patches
    found = {}
    for name in pooling.for_kind(pooling.TOKENS):
        settings = FeaturesConfig(pooling=name)
        found[name] = pooling.pool(tokens.reshape(2, -1), map_shape=(7, 4), settings=settings, prefix_tokens=3)
        assert found[name].shape == (2, pooling.pooled_dim((7, 4), settings)) and found[name].dtype == np.float32
    assert list(found) == ["flatten", "cls", "mean", "cls_mean"]
    np.testing.assert_array_equal(found["cls"], tokens[:, 0])
    np.testing.assert_allclose(found["mean"], tokens[:, 3:].mean(axis=1))  # registers and class token left out
    np.testing.assert_allclose(found["cls_mean"], np.concatenate([tokens[:, 0], tokens[:, 3:].mean(axis=1)], 1))
    np.testing.assert_array_equal(found["flatten"], tokens.reshape(2, -1))
    assert pooling.for_kind(pooling.MAP) == ["flatten", "avg", "max", "grid", "avgmax"]


def _hub(preset: Path, *overrides: str) -> list[str]:
    return ["model=hub", f"model.preset={preset}", "data=digits", *overrides]


def test_a_pooling_or_a_size_the_cut_does_not_take_is_one_line_at_validation(compose, hub_presets, tmp_path):
    vit = hub_presets["tiny_vit"]
    config = validate(compose(_hub(vit, "features.pooling=cls_mean")))
    assert (config.model.name, config.layer, config.model.stages) == ("tiny_vit", "output",
                                                                      ["block0", "block1", "block2"])
    refusals = {
        ("features.pooling=avg",): "features.pooling should be one of ['flatten', 'cls', 'mean', 'cls_mean'] for "
                                   "layer=output of tiny_vit, a token sequence, T x D (17x32); received "
                                   "features.pooling='avg', which applies to feature maps",
        ("data.image_size=36",): "data.image_size should be 32 or another size model.preset=",
        ("data.image_size=48",): "with its weights, learnt at 32x32 (its position embeddings fit one size); "
                                 "received data.image_size=48",
        ("layer=block9",): "layer should be a layer of tiny_vit; received layer='block9'; did you mean",
    }
    for overrides, line in refusals.items():
        with pytest.raises(ConfigError) as err:
            validate(compose(_hub(vit, *overrides)))
        assert line in str(err.value) and "\n" not in str(err.value)
    assert validate(compose(_hub(vit, "data.image_size=48", "model.weights=null"))).model.weights is None
    with pytest.raises(ConfigError, match="built for 32x32 images; received data.image_size=48"):
        validate(compose(_hub(hub_presets["tiny_clip"], "data.image_size=48")))
    with pytest.raises(ConfigError, match=r"features.pooling should be one of \['flatten', 'avg', 'max', 'grid', "
                                          r"'avgmax'\] for layer=block5_pool of vgg16, a feature map"):
        validate(compose(["data=digits", "features.pooling=cls"]))
    with pytest.raises(ConfigError, match=r"received layer='block4_pool\+block5_pool', whose parts of vgg16 give "
                                          r"2x2x512 and 1x1x512"):
        validate(compose(["data=digits", "layer=block4_pool+block5_pool"]))
    with pytest.raises(ConfigError, match=r"^model.preset should be a Keras-Hub preset name .* for model=hub; "
                                          r"received none \(add model.preset=...\)$"):
        validate(compose(["model=hub", "data=digits"]))
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                 mlp_dim=64, use_class_token=False).save_to_preset(str(tmp_path / "no_class"))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 255).save_to_preset(str(tmp_path / "no_class"))
    with pytest.raises(ConfigError, match=r"a token sequence without a class token; received features.pooling='cls'"):
        validate(compose(_hub(tmp_path / "no_class", "features.pooling=cls")))


def test_layers_lists_the_blocks_with_their_tokens_width_and_depth(capsys, hub_presets):
    assert layers.main(_hub(hub_presets["tiny_vit"])) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line.split() for line in lines if line[:1].isdigit()}
    assert list(rows) == ["block0", "block1", "block2", "output"]
    header = next(line.split() for line in lines if line.startswith("#"))
    assert header[3:7] == ["flatten", "cls", "mean", "cls_mean"]  # the token poolings, no map pooling
    assert rows["block1"][2:7] == ["17x32", "544", "32", "32", "64"]
    marks = [line.split()[-1] for line in lines if line.startswith("    ^ stage")]
    assert marks == ["0.33", "0.67", "1.00"]  # block k of 3: (k + 1) / 3
    assert any(line.startswith("T x D: 17 tokens of width D, 1 before the patches") for line in lines)


def test_one_pass_fills_every_cut_and_each_token_pooling_reads_it(isolated, hub_presets):
    preset = str(hub_presets["tiny_dinov2"])
    dataset = datasets.load_dataset(name="digits", path=None)
    kwargs = dict(dataset=dataset, image_set="train", classes=[0, 1], backbone="tiny_dinov2", weights="preset",
                  seed=0, input_size=32, batch_size=16, cache_root=isolated / "cache", preset=preset)
    joined = "block0+block1"
    first = extraction.extract_features(layer="block0", sweep_layers=["block1", "output", joined], **kwargs)
    n = len(first.y)
    assert first.cnn_images == n and first.map_shape == (19, 32) and first.prefix_tokens == 3
    found = {layer: extraction.extract_features(layer=layer, **kwargs) for layer in ("block1", "output", joined)}
    assert [features.cnn_images for features in found.values()] == [0, 0, 0]  # all from the one pass
    assert found[joined].map_shape == (19, 64) and found[joined].layer_index == found["block1"].layer_index == 1
    np.testing.assert_array_equal(found[joined].X.reshape(n, 19, 64),
                                  np.concatenate([first.X.reshape(n, 19, 32), found["block1"].X.reshape(n, 19, 32)],
                                                 axis=-1))
    for name in ("cls", "mean", "cls_mean"):
        pooled = extraction.extract_features(layer="block1", settings=FeaturesConfig(pooling=name), **kwargs)
        assert pooled.cnn_images == 0
        np.testing.assert_array_equal(pooled.X, pooling.pool(found["block1"].X, map_shape=(19, 32),
                                                             settings=FeaturesConfig(pooling=name), prefix_tokens=3))
    # the cached features are the preset's converter, then the encoder, on the images as the data set holds them
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    encoder = hub.load_encoder(preset, weights="preset", input_size=32, seed=0)
    rows = dataset.train.indices_of(0)[:2]
    expected = hub.cut_model(encoder).predict_on_batch(
        np.asarray(converter(dataset.train.images[rows].astype("float32"))))[0]
    np.testing.assert_allclose(first.X[:2], expected.reshape(2, -1), rtol=1e-4, atol=1e-5)


def test_the_weights_fingerprint_is_the_presets_content(hub_presets, tmp_path):
    original = hub_presets["tiny_vit"]
    copy = Path(shutil.copytree(original, tmp_path / "elsewhere"))
    source = BackboneSource("tiny_vit", "preset", str(original))
    same = BackboneSource("tiny_vit", "preset", str(copy))
    assert source.fingerprint(0).startswith("preset-") and source.fingerprint(0) == same.fingerprint(0)
    random = BackboneSource("tiny_vit", None, str(original)).fingerprint(3)
    assert random.startswith("random-seed3-") and random == BackboneSource("tiny_vit", None, str(copy)).fingerprint(3)
    weights = copy / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert same.fingerprint(0) != source.fingerprint(0)  # a changed weights file is other weights
    assert BackboneSource("tiny_vit", None, str(copy)).fingerprint(3) == random  # the architecture is not


def test_a_preset_that_cannot_be_fetched_is_one_line_naming_a_local_folder(compose, monkeypatch):
    import requests
    from keras_hub.src.utils import preset_utils

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(preset_utils.kagglehub, "model_download", offline)
    with pytest.raises(FetchError) as err:
        validate(compose(["model=dinov2_small", "data=digits", "data.image_size=224"]))
    assert str(err.value).startswith("could not download the Keras-Hub preset dinov2_small (Failed to resolve")
    assert "pass a local copy with model.preset=/path/to/<preset folder>" in str(err.value)


def test_the_named_configs_need_no_download_to_compose(compose):
    for name, preset in (("dinov2_small", "dinov2_small"), ("dinov2_base", "dinov2_base"),
                         ("vit_base_patch16", "vit_base_patch16_224_imagenet"),
                         ("clip_vit_base_patch16", "clip_vit_base_patch16")):
        cfg = compose([f"model={name}"])
        assert (cfg.model.preset, cfg.model.weights, cfg.layer) == (preset, "preset", "output")
        assert cfg.model.name == preset and list(cfg.model.stages) == [f"block{k}" for k in range(12)]


@pytest.fixture(scope="module")
def hub_sweep(tmp_path_factory, hub_presets, image_folder_writer, cli, sweep_runs):
    """`-m model=hub layer=stages,block0+block1 features.pooling=cls_mean` on a folder: (client, parent, children,
    image folder)."""
    work = tmp_path_factory.mktemp("hub")
    root = image_folder_writer(work / "images", per_class=10)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", "model=hub", f"model.preset={hub_presets['tiny_dinov2']}", "layer=stages,block0+block1",
                 "features.pooling=cls_mean", "data=folder", f"data.path={root}", "model.batch_size=16",
                 "data.val_fraction=0.25", cwd=work,
                 env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]
    client, parent, children = sweep_runs(uri)
    return client, parent, children, root


def test_a_sweep_over_the_blocks_from_one_pass_with_their_depths(hub_sweep):
    _, _, children, _ = hub_sweep
    assert [run.data.params[Param.LAYER] for run in children] == ["block0", "block1", "block0+block1"]
    assert all(run.info.status == Status.FINISHED for run in children)
    assert [run.data.metrics[Metric.CNN_FORWARD_IMAGES] for run in children][1:] == [0, 0]
    assert [run.data.metrics[Metric.LAYER_DEPTH] for run in children] == [0.5, 1.0, 1.0]
    assert [int(run.data.params[Param.FEATURE_DIM]) for run in children] == [64, 64, 128]  # cls_mean: 2 x D
    assert {run.data.tags[Tag.WEIGHTS_FINGERPRINT][:7] for run in children} == {"preset-"}
    assert {run.data.params[Param.MODEL] for run in children} == {"tiny_dinov2"}


def test_the_served_model_applies_the_converter_and_predicts_what_the_best_run_did(hub_sweep, monkeypatch):
    import mlflow.pyfunc
    from PIL import Image

    client, parent, _, root = hub_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    best = parent.data.tags[Tag.BEST_RUN_ID]
    logged = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
        best, Artifact.predictions("test"))).read_text())))
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    images = np.stack([np.asarray(Image.open(root / row["id"]).convert("RGB")) for row in logged])
    assert list(model.predict(images)) == [row["predicted"] for row in logged]
    requirements = Path(client.download_artifacts(parent.info.run_id, "model/requirements.txt")).read_text()
    assert "keras-hub==" in requirements


@pytest.mark.slow
def test_a_cnn_and_a_transformer_on_one_depth_profile_and_one_cka_matrix(tmp_path, hub_presets,
                                                                         image_folder_writer, cli):
    root = image_folder_writer(tmp_path / "images", per_class=10)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    named = tmp_path / "conf" / "model" / "tiny_vit.yaml"  # a preset of one's own as a named config, as docs say
    named.parent.mkdir(parents=True)
    named.write_text(f"defaults:\n  - hub\n  - _self_\n\npreset: {hub_presets['tiny_vit']}\n")
    result = cli("-m", "model=vgg16,tiny_vit", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model.weights=null",
                 "layer=stages", "data=folder", f"data.path={root}", "model.batch_size=16", "data.val_fraction=0.25",
                 cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                   "tags.`tlsweep.kind` = 'sweep'")
    run_id = parent.info.run_id
    artifacts = {item.path for item in client.list_artifacts(run_id, "summary")}
    assert any(path.startswith(Artifact.summary(f"{Artifact.DEPTH_PROFILE}-")) for path in artifacts)
    matrix = pd.read_csv(io.StringIO(Path(client.download_artifacts(run_id, Artifact.summary(
        f"{Artifact.CKA}.csv"))).read_text()), index_col=0)
    assert [label for label in matrix.index if label.startswith("tiny_vit/")] == [
        "tiny_vit/block0", "tiny_vit/block1", "tiny_vit/block2"]
    assert len([label for label in matrix.index if label.startswith("vgg16/")]) == 5
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0, atol=1e-9)
