"""Cut sizes at 32x32, one forward pass for every sweep layer, and the per-class feature cache."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_cifar
from tlsweep import data, features, models

SEED_CUTS = {"block3_pool": 4096, "block4_pool": 2048, "block5_pool": 512}


@pytest.fixture(scope="module")
def vgg16():
    return models.build_backbone(name="vgg16", weights=None, input_size=32, seed=0)


@pytest.fixture
def dataset(tmp_path):
    return data.load_dataset(name="cifar10", path=str(write_cifar(tmp_path / "d", train_per_class_per_batch=1)))


def _extract(dataset, cache_root, layer, classes, model, sweep_layers=(), image_set="train"):
    return features.extract_features(
        dataset=dataset, image_set=image_set, layer=layer, classes=classes, backbone="vgg16", weights=None,
        seed=0, input_size=32, batch_size=8, cache_root=cache_root, sweep_layers=sweep_layers, model=model,
    )


def test_seed_cuts_flatten_to_4096_2048_512(dataset, tmp_path, vgg16):
    for layer, dim in SEED_CUTS.items():
        result = _extract(dataset, tmp_path / "c", layer, [4, 5], vgg16)
        assert result.X.shape == (10, dim) and result.X.dtype == np.float32
        assert result.y.tolist() == [4] * 5 + [5] * 5


def test_one_pass_fills_every_sweep_layer_and_later_runs_skip_the_cnn(dataset, tmp_path, vgg16):
    cache_root = tmp_path / "c"
    first = _extract(dataset, cache_root, "block3_pool", [4, 5, 6], vgg16, sweep_layers=list(SEED_CUTS))
    assert first.cnn_images == 15 and first.layers_computed == list(SEED_CUTS)
    for layer in SEED_CUTS:
        again = _extract(dataset, cache_root, layer, [4, 5, 6], None)  # no model: a miss would fail
        assert again.cnn_images == 0
    subset = _extract(dataset, cache_root, "block4_pool", [6, 4], None)
    assert subset.cnn_images == 0 and subset.y.tolist() == [6] * 5 + [4] * 5


def test_cached_features_equal_a_direct_forward_pass(dataset, tmp_path, vgg16):
    result = _extract(dataset, tmp_path / "c", "block5_pool", [7, 8], vgg16)
    rows = np.concatenate([dataset.train.indices_of(7), dataset.train.indices_of(8)])
    extractor = models.multi_output_model(vgg16, ["block5_pool"])
    x = models.preprocess_fn("vgg16")(dataset.train.images[rows].astype("float32"))
    direct = np.asarray(extractor.predict_on_batch(x)).reshape(len(rows), -1)
    np.testing.assert_allclose(result.X, direct, rtol=1e-4, atol=1e-4)


def test_new_classes_only_run_the_cnn_on_their_own_images(dataset, tmp_path, vgg16):
    cache_root = tmp_path / "c"
    _extract(dataset, cache_root, "block5_pool", [4, 5], vgg16)
    more = _extract(dataset, cache_root, "block5_pool", [4, 5, 9], vgg16)
    assert more.cnn_images == 5 and more.X.shape == (15, 512)


def test_unknown_layer_lists_the_valid_names(dataset, tmp_path, vgg16):
    with pytest.raises(ValueError, match=r"received layer='block9_pool'") as err:
        _extract(dataset, tmp_path / "c", "block9_pool", [4, 5], vgg16)
    assert "block3_pool" in str(err.value) and "block5_conv3" in str(err.value)


@pytest.mark.parametrize("name, layer", [("vgg19", "block4_pool"), ("resnet50", "conv4_block6_out"),
                                         ("mobilenet_v2", "out_relu")])
def test_other_backbones_build_and_cut(dataset, tmp_path, name, layer):
    model = models.build_backbone(name=name, weights=None, input_size=32, seed=0)
    result = features.extract_features(
        dataset=dataset, image_set="test", layer=layer, classes=[0, 1], backbone=name, weights=None, seed=0,
        input_size=32, batch_size=8, cache_root=tmp_path / "c", model=model,
    )
    assert result.X.shape[0] == 8 and result.X.shape[1] > 0 and np.isfinite(result.X).all()
