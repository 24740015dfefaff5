"""Linear CKA: the matrix's shape and symmetry, the invariances that define it, both computation routes,
and the seeded subsample it is computed on."""

from __future__ import annotations

import numpy as np
import pytest

from tlsweep.stages import cka


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s eq. (5), written out: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred data."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.fixture
def layers() -> list[np.ndarray]:
    """Three related layers and one unrelated, on 60 images, as a CNN's float32 features."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 20))
    return [base.astype(np.float32),
            np.maximum(base @ rng.normal(size=(20, 300)), 0).astype(np.float32),  # wider than n: Gram route
            (base[:, :10] + 0.5 * rng.normal(size=(60, 10))).astype(np.float32),
            rng.normal(size=(60, 8)).astype(np.float32)]


def test_the_matrix_is_symmetric_with_ones_on_the_diagonal(layers):
    matrix = cka.cka_matrix(layers)
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert ((matrix > 0) & (matrix <= 1 + 1e-12)).all()
    assert matrix[0, 2] > matrix[0, 3]  # a noisy half of the base resembles it more than noise does


def test_the_matrix_between_two_sets_holds_each_pair(layers):
    matrix = cka.cka_matrix(layers[:2], layers[1:])
    assert matrix.shape == (2, 3)
    for i, x in enumerate(layers[:2]):
        for j, y in enumerate(layers[1:]):
            assert matrix[i, j] == pytest.approx(cka.linear_cka(x, y), rel=1e-9)
    assert matrix[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("width", [5, 200], ids=["feature-route", "gram-route"])
def test_it_equals_the_feature_space_formula_on_centred_data(width):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, width)) + 3.0  # an offset, which centring removes
    y = x[:, :3] @ rng.normal(size=(3, 7)) + rng.normal(size=(40, 7))
    assert cka.linear_cka(x, y) == pytest.approx(feature_space_cka(x, y), rel=1e-10)
    assert cka.linear_cka(x, y) == pytest.approx(cka.linear_cka(y, x), rel=1e-12)


@pytest.mark.parametrize("width", [6, 120], ids=["feature-route", "gram-route"])
def test_it_is_invariant_to_an_orthogonal_transform_and_an_isotropic_scale(width):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, width))
    y = np.tanh(x @ rng.normal(size=(width, 9)))
    rotation, _ = np.linalg.qr(rng.normal(size=(width, width)))
    before = cka.linear_cka(x, y)
    assert cka.linear_cka(x @ rotation, y) == pytest.approx(before, rel=1e-9)
    assert cka.linear_cka(7.5 * x, 0.01 * y) == pytest.approx(before, rel=1e-9)
    assert cka.linear_cka(x @ rotation * 3.0, x) == pytest.approx(1.0, rel=1e-9)
    assert cka.linear_cka(x, x + rng.normal(size=x.shape)) < 0.9  # not invariant to noise: it measures something


def test_independent_features_score_near_zero_with_many_rows():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5000, 16)), rng.normal(size=(5000, 16))
    assert cka.linear_cka(x, y) < 0.01
    small = cka.linear_cka(x[:40], y[:40])
    assert small > cka.linear_cka(x, y)  # few rows: chance correlation, which is why a subsample has a floor


def test_a_feature_map_is_flattened_and_a_constant_layer_gives_nan():
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(12, 3, 3, 4)).astype(np.float32)
    assert cka.linear_cka(maps, maps.reshape(12, -1)) == pytest.approx(1.0)
    constant = np.ones((12, 5), dtype=np.float32)
    assert np.isnan(cka.linear_cka(maps, constant))
    matrix = cka.cka_matrix([maps, constant])
    assert np.isnan(matrix[1, 1]) and np.isnan(matrix[0, 1]) and matrix[0, 0] == 1.0


def test_float32_features_are_summed_in_float64():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(30, 400)) + 1e4).astype(np.float32)  # a large mean, as after a ReLU stack
    exact = feature_space_cka(x.astype(np.float64), x[:, :200].astype(np.float64))
    assert cka.linear_cka(x, x[:, :200]) == pytest.approx(exact, rel=1e-9)


def test_bad_input_names_what_it_received():
    with pytest.raises(ValueError, match=r"received 10 rows in x and 9 in y"):
        cka.linear_cka(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match=r"received an array of shape \(10,\)"):
        cka.linear_cka(np.zeros(10), np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"row counts \[9, 10\]"):
        cka.cka_matrix([np.zeros((10, 2))], [np.zeros((9, 2))])
    with pytest.raises(ValueError, match="received 0 in a"):
        cka.cka_matrix([])


def test_the_subsample_is_seeded_sorted_distinct_and_bounded():
    first = cka.subsample_rows(10_000, max_rows=500, seed=7)
    assert len(first) == 500 and len(set(first.tolist())) == 500
    assert (np.diff(first) > 0).all() and first.min() >= 0 and first.max() < 10_000
    np.testing.assert_array_equal(first, cka.subsample_rows(10_000, max_rows=500, seed=7))
    assert not np.array_equal(first, cka.subsample_rows(10_000, max_rows=500, seed=8))
    np.testing.assert_array_equal(cka.subsample_rows(300, max_rows=500, seed=7), np.arange(300))
    with pytest.raises(ValueError, match="max_rows=0"):
        cka.subsample_rows(10, max_rows=0, seed=0)
