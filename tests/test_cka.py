"""Linear CKA, plain and debiased: the matrix's shape and symmetry, the invariances that define it, both
computation routes, the published values, and the seeded subsample it is computed on."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tlsweep.stages.analysis import cka


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s eq. (5), written out: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred data."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012, JMLR 13, eq. 5), written out: with K~ and L~ the kernels with zero diagonals,
    [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))."""
    n = len(k)
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def debiased_cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased CKA from raw (uncentred) linear kernels: the unbiased HSIC needs no centring."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    k, l = x @ x.T, y @ y.T
    return song_unbiased_hsic(k, l) / np.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l, l))


@pytest.fixture
def layers() -> list[np.ndarray]:
    """Three related layers and one unrelated, on 60 images, as a CNN's float32 features."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 20))
    return [base.astype(np.float32),
            np.maximum(base @ rng.normal(size=(20, 300)), 0).astype(np.float32),  # wider than n: Gram route
            (base[:, :10] + 0.5 * rng.normal(size=(60, 10))).astype(np.float32),
            rng.normal(size=(60, 8)).astype(np.float32)]


@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "plain"])
def test_the_matrix_is_symmetric_with_ones_on_the_diagonal(layers, debiased):
    matrix = cka.cka_matrix(layers, debiased=debiased)
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    lowest = -1.0 if debiased else 0.0  # the unbiased HSIC of unrelated layers can fall below 0
    assert ((matrix > lowest) & (matrix <= 1 + 1e-12)).all()
    assert matrix[0, 2] > matrix[0, 3]  # a noisy half of the base resembles it more than noise does


@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "plain"])
def test_the_matrix_between_two_sets_holds_each_pair(layers, debiased):
    matrix = cka.cka_matrix(layers[:2], layers[1:], debiased=debiased)
    assert matrix.shape == (2, 3)
    for i, x in enumerate(layers[:2]):
        for j, y in enumerate(layers[1:]):
            assert matrix[i, j] == pytest.approx(cka.linear_cka(x, y, debiased=debiased), rel=1e-9)
    assert matrix[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("width", [5, 200], ids=["feature-route", "gram-route"])
def test_it_equals_the_feature_space_formula_on_centred_data(width):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, width)) + 3.0  # an offset, which centring removes
    y = x[:, :3] @ rng.normal(size=(3, 7)) + rng.normal(size=(40, 7))
    assert cka.linear_cka(x, y, debiased=False) == pytest.approx(feature_space_cka(x, y), rel=1e-10)
    assert cka.linear_cka(x, y, debiased=False) == pytest.approx(cka.linear_cka(y, x, debiased=False), rel=1e-12)


@pytest.mark.parametrize("width", [5, 200], ids=["feature-route", "gram-route"])
def test_debiased_it_equals_song_et_al_unbiased_hsic_on_either_route(width):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, width)) + 3.0  # an offset: the unbiased HSIC ignores it
    y = x[:, :3] @ rng.normal(size=(3, 7)) + rng.normal(size=(40, 7))
    reference = debiased_cka_reference(x, y)
    assert cka.linear_cka(x, y) == pytest.approx(reference, rel=1e-10)
    assert cka.linear_cka(y, x) == pytest.approx(reference, rel=1e-10)
    assert cka.cka_matrix([x], [y])[0, 0] == pytest.approx(reference, rel=1e-10)  # the matrix: Gram route
    assert reference < cka.linear_cka(x, y, debiased=False)  # the plain estimate is pulled up


def test_both_routes_reproduce_the_published_demo_values():
    """Kornblith et al.'s representation_similarity demo prints 0.55761 (plain) and 0.51346 (debiased) for
    these arrays, from both its Gram and its feature formulation."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    for debiased, published in ((False, 0.55761), (True, 0.51346)):
        assert cka.linear_cka(x, y, debiased=debiased) == pytest.approx(published, abs=5e-6)  # feature route
        assert cka.cka_matrix([x], [y], debiased=debiased)[0, 0] == pytest.approx(published, abs=5e-6)  # Gram


def test_debiased_independent_wide_layers_score_near_zero_without_a_float64_copy():
    """2000 images x 50000 features, two independent layers: plain CKA is about d / (d + n) = 0.96, debiased
    about 0 with a standard deviation near sqrt(2) / n = 7e-4, so 0.005 is seven of them. The Gram route
    converts a chunk of columns at a time: a float64 copy of one layer alone would take 800 MB."""
    rng = np.random.default_rng(12)
    n, d = 2000, 50_000
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32)
    tracemalloc.start()
    try:
        debiased = cka.linear_cka(x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(debiased) < 0.005
    assert peak < 300e6  # n x n float64 Gram matrices (32 MB each) and 64 MB chunks; not n x d x 8 = 800 MB
    plain = cka.cka_matrix([x[:, :20_000]], [y[:, :20_000]], debiased=False)[0, 0]
    assert plain > 0.85  # 20000 / 22000 = 0.91 expected
    assert cka.linear_cka(x[:500, :3000], x[:500, :3000]) == pytest.approx(1.0)


@pytest.mark.parametrize("width", [6, 120], ids=["feature-route", "gram-route"])
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "plain"])
def test_it_is_invariant_to_an_orthogonal_transform_and_an_isotropic_scale(width, debiased):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, width))
    y = np.tanh(x @ rng.normal(size=(width, 9)))
    rotation, _ = np.linalg.qr(rng.normal(size=(width, width)))
    before = cka.linear_cka(x, y, debiased=debiased)
    assert cka.linear_cka(x @ rotation, y, debiased=debiased) == pytest.approx(before, rel=1e-9)
    assert cka.linear_cka(7.5 * x, 0.01 * y, debiased=debiased) == pytest.approx(before, rel=1e-9)
    assert cka.linear_cka(x + 4.0, y - 2.0, debiased=debiased) == pytest.approx(before, rel=1e-9)
    assert cka.linear_cka(x @ rotation * 3.0, x, debiased=debiased) == pytest.approx(1.0, rel=1e-9)
    # not invariant to noise: it measures something
    assert cka.linear_cka(x, x + rng.normal(size=x.shape), debiased=debiased) < 0.9


def test_independent_features_score_near_zero_with_many_rows():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5000, 16)), rng.normal(size=(5000, 16))
    assert cka.linear_cka(x, y, debiased=False) < 0.01
    small = cka.linear_cka(x[:40], y[:40], debiased=False)
    # few rows: chance correlation, which is why a plain subsample has a floor
    assert small > cka.linear_cka(x, y, debiased=False)
    assert abs(cka.linear_cka(x, y)) < 0.01
    assert abs(cka.linear_cka(x[:40], y[:40])) < small  # the debiased estimate removes most of that floor


def test_a_feature_map_is_flattened_and_a_constant_layer_gives_nan():
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(12, 3, 3, 4)).astype(np.float32)
    assert cka.linear_cka(maps, maps.reshape(12, -1)) == pytest.approx(1.0)
    constant = np.ones((12, 5), dtype=np.float32)
    assert np.isnan(cka.linear_cka(maps, constant))
    assert np.isnan(cka.linear_cka(maps, constant, debiased=False))
    matrix = cka.cka_matrix([maps, constant])
    assert np.isnan(matrix[1, 1]) and np.isnan(matrix[0, 1]) and matrix[0, 0] == 1.0


def test_float32_features_are_summed_in_float64():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(30, 400)) + 1e4).astype(np.float32)  # a large mean, as after a ReLU stack
    exact = feature_space_cka(x.astype(np.float64), x[:, :200].astype(np.float64))
    assert cka.linear_cka(x, x[:, :200], debiased=False) == pytest.approx(exact, rel=1e-9)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)  # a raw kernel would lose it to 1e8
    exact = debiased_cka_reference(centred, centred[:, :200])
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
    with pytest.raises(ValueError, match=r"at least 4 images .* received n=3"):
        cka.linear_cka(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match=r"at least 4 images .* received n=3"):
        cka.cka_matrix([np.eye(3)])
    assert cka.linear_cka(np.eye(3), np.eye(3), debiased=False) == pytest.approx(1.0)


def test_the_subsample_is_seeded_sorted_distinct_and_bounded():
    first = cka.subsample_rows(10_000, max_rows=500, seed=7)
    assert len(first) == 500 and len(set(first.tolist())) == 500
    assert (np.diff(first) > 0).all() and first.min() >= 0 and first.max() < 10_000
    np.testing.assert_array_equal(first, cka.subsample_rows(10_000, max_rows=500, seed=7))
    assert not np.array_equal(first, cka.subsample_rows(10_000, max_rows=500, seed=8))
    np.testing.assert_array_equal(cka.subsample_rows(300, max_rows=500, seed=7), np.arange(300))
    with pytest.raises(ValueError, match="max_rows=0"):
        cka.subsample_rows(10, max_rows=0, seed=0)
