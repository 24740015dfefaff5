"""The poolings, one registry entry each: what each does to a known map, that its declared size is what it makes,
and that every pooling is computed from the one cached pass of the CNN."""

from __future__ import annotations

import numpy as np
import pytest

from tlsweep.config import FeaturesConfig
from tlsweep.stages.features import extraction, pooling

MAPS = np.arange(2 * 5 * 4 * 3, dtype=np.float32).reshape(2, 5, 4, 3)


def _pooled(name: str, **settings) -> np.ndarray:
    return pooling.pool(MAPS.reshape(2, -1), map_shape=(5, 4, 3), settings=FeaturesConfig(pooling=name, **settings))


def test_each_pooling_of_a_known_map():
    np.testing.assert_array_equal(_pooled("flatten"), MAPS.reshape(2, -1))
    np.testing.assert_allclose(_pooled("avg"), MAPS.mean(axis=(1, 2)))
    np.testing.assert_array_equal(_pooled("max"), MAPS.max(axis=(1, 2)))
    # adaptive bins over 5 rows: [0, 3) and [2, 5); over 4 columns: [0, 2) and [2, 4)
    expected = np.stack([MAPS[:, 0:3, 0:2].mean(axis=(1, 2)), MAPS[:, 0:3, 2:4].mean(axis=(1, 2)),
                         MAPS[:, 2:5, 0:2].mean(axis=(1, 2)), MAPS[:, 2:5, 2:4].mean(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(_pooled("grid", grid_size=2), expected.reshape(2, -1))
    np.testing.assert_allclose(_pooled("avgmax"), np.concatenate([MAPS.mean(axis=(1, 2)), MAPS.max(axis=(1, 2))], 1))


@pytest.mark.parametrize("name", pooling.for_kind(pooling.MAP))  # a transformer's: tests/test_hub.py
@pytest.mark.parametrize("grid_size", [1, 2, 3])
def test_every_pooling_makes_the_size_it_declares_and_float32(name, grid_size):
    settings = FeaturesConfig(pooling=name, grid_size=grid_size)
    values = pooling.pool(MAPS.reshape(2, -1), map_shape=(5, 4, 3), settings=settings)
    assert values.shape == (2, pooling.pooled_dim((5, 4, 3), settings)) and values.dtype == np.float32
    assert pooling.POOLINGS[name].about  # the help page and the docs show it


def test_a_cut_that_is_not_a_map_is_taken_as_it_is_by_every_pooling():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    for name in pooling.POOLINGS:
        settings = FeaturesConfig(pooling=name)
        np.testing.assert_array_equal(pooling.pool(vectors, map_shape=(3,), settings=settings), vectors)
        assert pooling.pooled_dim((3,), settings) == 3


def test_every_pooling_comes_from_one_cnn_pass(isolated, cifar_dir):
    from tlsweep.stages.data import datasets

    dataset = datasets.load_dataset(name="cifar10", path=str(cifar_dir))
    kwargs = dict(dataset=dataset, image_set="train", layer="block3_pool", classes=[4, 5], backbone="vgg16",
                  weights=None, seed=0, input_size=32, batch_size=16, cache_root=isolated / "cache")
    flat = extraction.extract_features(**kwargs)
    assert flat.cnn_images == 20 and flat.dim == 4 * 4 * 256
    dims = {"avg": 256, "max": 256, "grid": 2 * 2 * 256, "avgmax": 2 * 256}
    assert set(dims) | {"flatten"} == set(pooling.for_kind(pooling.MAP))
    for name, dim in dims.items():
        settings = FeaturesConfig(pooling=name, grid_size=2)
        pooled = extraction.extract_features(settings=settings, **kwargs)
        assert pooled.cnn_images == 0 and pooled.dim == dim and pooled.X.shape == (20, dim)
        np.testing.assert_array_equal(pooled.X, pooling.pool(flat.X, map_shape=(4, 4, 256), settings=settings))
