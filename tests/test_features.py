"""Cut sizes at 32x32, one forward pass for every sweep layer, and the per-class feature cache."""

from __future__ import annotations

import numpy as np
import pytest

from tlsweep.stages.backbone import models
from tlsweep.stages.data import datasets
from tlsweep.stages.features import extraction

SEED_CUTS = {"block3_pool": 4096, "block4_pool": 2048, "block5_pool": 512}


@pytest.fixture
def dataset(tmp_path, cifar_writer):
    return datasets.load_dataset(name="cifar10", path=str(cifar_writer(tmp_path / "d", train_per_class_per_batch=1)))


def test_seed_cuts_flatten_to_4096_2048_512(dataset, tmp_path, extract):
    for layer, dim in SEED_CUTS.items():
        result = extract(dataset, tmp_path / "c", layer, [4, 5])
        assert result.X.shape == (10, dim) and result.X.dtype == np.float32
        assert result.y.tolist() == [4] * 5 + [5] * 5


def test_one_pass_fills_every_sweep_layer_and_later_runs_skip_the_cnn(dataset, tmp_path, extract):
    cache_root = tmp_path / "c"
    first = extract(dataset, cache_root, "block3_pool", [4, 5, 6], sweep_layers=list(SEED_CUTS))
    assert first.cnn_images == 15
    for layer in SEED_CUTS:
        again = extract(dataset, cache_root, layer, [4, 5, 6])  # every sweep layer came from that one pass
        assert again.cnn_images == 0
    subset = extract(dataset, cache_root, "block4_pool", [6, 4])
    assert subset.cnn_images == 0 and subset.y.tolist() == [6] * 5 + [4] * 5


def test_cached_features_equal_a_direct_forward_pass(dataset, tmp_path, extract):
    result = extract(dataset, tmp_path / "c", "block5_pool", [7, 8])
    rows = np.concatenate([dataset.train.indices_of(7), dataset.train.indices_of(8)])
    vgg16 = models.build_backbone(name="vgg16", weights=None, input_size=32, seed=0)
    extractor = models.multi_output_model(vgg16, ["block5_pool"])
    x = models.preprocess_fn("vgg16")(dataset.train.images[rows].astype("float32"))
    direct = np.asarray(extractor.predict_on_batch(x)).reshape(len(rows), -1)
    np.testing.assert_allclose(result.X, direct, rtol=1e-4, atol=1e-4)


def test_new_classes_only_run_the_cnn_on_their_own_images(dataset, tmp_path, extract):
    cache_root = tmp_path / "c"
    extract(dataset, cache_root, "block5_pool", [4, 5])
    more = extract(dataset, cache_root, "block5_pool", [4, 5, 9])
    assert more.cnn_images == 5 and more.X.shape == (15, 512)


def test_unknown_layer_names_the_closest_layers_and_the_command_that_lists_them(dataset, tmp_path, extract):
    with pytest.raises(ValueError, match=r"received layer='block9_pool'") as err:
        extract(dataset, tmp_path / "c", "block9_pool", [4, 5])
    assert "did you mean 'block1_pool'" in str(err.value) or "did you mean 'block5_pool'" in str(err.value)
    assert "python -m tlsweep.layers model=vgg16" in str(err.value) and "block5_conv3" not in str(err.value)


@pytest.mark.parametrize("name, layer", [("vgg19", "block4_pool"), ("resnet50", "conv4_block6_out"),
                                         ("mobilenet_v2", "out_relu")])
def test_other_backbones_build_and_cut(dataset, tmp_path, name, layer):
    result = extraction.extract_features(
        dataset=dataset, image_set="test", layer=layer, classes=[0, 1], backbone=name, weights=None, seed=0,
        input_size=32, batch_size=8, cache_root=tmp_path / "c",
    )
    assert result.X.shape[0] == 8 and result.X.shape[1] > 0 and np.isfinite(result.X).all()
