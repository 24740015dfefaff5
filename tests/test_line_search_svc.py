"""The fast engine's own parts: memory within the size of X, exact Newton steps from Gram matrices, support
rows that can be narrowed and split over threads without changing a product."""

from __future__ import annotations

import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelBinarizer
from sklearn.svm import LinearSVC

from svc_problems import liblinear_bound, minimum, objective, relu_features
from tlsweep.stages.probe import line_search_svc
from tlsweep.stages.probe.line_search_svc import NewtonLineSearchSVC
from tlsweep.stages.probe.newton_steps import direct_step
from tlsweep.stages.probe.support_rows import RowShares, SupportRows


def _separable(n, d, classes, seed=0):
    """Half-zero float32 features whose first `classes` columns carry a strong class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    X[:, :classes] += 2.0 * np.eye(classes, dtype=np.float32)[y]
    return X, y


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape, route", [((4000, 1500, 3), "copies"), ((5000, 1000, 12), "direct")])
def test_a_fit_allocates_less_than_the_features_and_no_float64_copy(order, shape, route, monkeypatch):
    X, y = _separable(*shape)
    X = np.asarray(X, order=order)
    # BETA prices a Gram matrix's flops against CG's reads: 0 keeps every class on CG (and its copies of
    # rows), a huge one takes a direct step whenever its memory allows
    monkeypatch.setattr(line_search_svc, "BETA", 0.0 if route == "copies" else 1e12)
    taken = {"copies": [], "direct": []}
    keep, step = SupportRows._keep, line_search_svc.direct_step
    monkeypatch.setattr(SupportRows, "_keep", lambda self, rows: taken["copies"].append(1) or keep(self, rows))
    monkeypatch.setattr(line_search_svc, "direct_step", lambda *args: taken["direct"].append(1) or step(*args))
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        estimator = NewtonLineSearchSVC(C=0.1).fit(X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert taken[route]  # the fit took that route, so its memory is in the peak
    assert peak <= X.nbytes, f"fit allocated {peak} bytes for {X.nbytes} bytes of features"
    assert estimator.coef_.dtype == np.float32


@pytest.mark.parametrize("route", ["conjugate_gradients", "direct"])
def test_either_kind_of_step_reaches_the_minimum(route, monkeypatch):
    # BETA prices a Gram matrix's flops against CG's reads: 0 keeps every class on CG, a huge one sends
    # every class whose Gram matrix fits in memory to a direct step
    monkeypatch.setattr(line_search_svc, "BETA", 0.0 if route == "conjugate_gradients" else 1e12)
    X_train, X_test, y_train, y_test = relu_features(n=1500, d=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = NewtonLineSearchSVC(C=1.0).fit(X_train, y_train)
    gap = objective(ours, X_train, y_train, 1.0) - minimum(X_train, y_train, 1.0)
    assert gap <= liblinear_bound(X_train, y_train, 1.0)
    reference = LinearSVC(C=1.0, dual=False).fit(X_train, y_train)
    assert np.mean(ours.predict(X_test) == reference.predict(X_test)) >= 0.99


@pytest.mark.parametrize("m", [40, 400], ids=["fewer_rows_than_features", "more_rows_than_features"])
def test_a_direct_step_solves_the_newton_system(m):
    rng = np.random.default_rng(0)
    d, C = 100, 0.5
    X = np.maximum(rng.standard_normal((2 * m, d), dtype=np.float32), 0)
    index = np.sort(rng.choice(2 * m, m, replace=False))
    g = rng.standard_normal(d + 1)
    s = direct_step(X, index, g, C, forcing=1e-3)
    R = np.hstack([X[index].astype(np.float64), np.ones((m, 1))])
    H = np.eye(d + 1) + 2 * C * R.T @ R
    np.testing.assert_allclose(s, np.linalg.solve(H, -g), rtol=1e-3, atol=1e-3 * np.abs(s).max())


def _rows(X, threads=1):
    """Support rows of a 3-class problem halfway to a fit, split over `threads` threads; class 1 has about
    15% of the rows inside its margin, class 2 30%."""
    rng = np.random.default_rng(1)
    labels = LabelBinarizer(neg_label=-1).fit_transform(rng.integers(0, 3, len(X))).astype(np.float64)
    margins = rng.standard_normal(labels.shape)
    margins[:, 1:] = labels[:, 1:] * np.where(rng.random((len(X), 2)) < [0.15, 0.3], 0.5, 2.0)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    return SupportRows(X, labels, margins, np.arange(3), 0.5, shares=RowShares(pool, threads))


def test_products_do_not_depend_on_the_rows_copied_or_dropped_or_the_threads():
    X = np.maximum(np.random.default_rng(0).standard_normal((2000, 70), dtype=np.float32), 0)
    V = np.random.default_rng(2).standard_normal((71, 1))
    expected = _rows(X).hessian_product(V, np.array([1]))  # over X in place
    np.testing.assert_allclose(_rows(X, threads=3).hessian_product(V, np.array([1])), expected, rtol=1e-5)
    rows = _rows(X)
    rows.keep(np.array([1, 2]), max_bytes=X.nbytes)  # the rows of classes 1 and 2, copied together
    assert rows.copied and len(rows.X) == np.count_nonzero(rows.mask[:, 1:].any(axis=1)) < len(X) // 2
    np.testing.assert_allclose(rows.hessian_product(V, np.array([1])), expected, rtol=1e-5)
    rows.narrow(np.array([1]))  # class 2 is done: keep class 1's rows, compacted in place
    assert len(rows.X) == rows.mask[:, 1].sum()
    np.testing.assert_allclose(rows.hessian_product(V, np.array([1])), expected, rtol=1e-5)
    small = _rows(X)
    small.keep(np.array([1]), max_bytes=0.1 * X.nbytes)  # too large for the memory allowed: X stays in place
    assert not small.copied


def test_the_preconditioner_inverts_the_hessians_mean_and_diagonal_part():
    X = np.maximum(np.random.default_rng(0).standard_normal((500, 20), dtype=np.float32), 0) + 3.0
    rows = _rows(X)
    _, statistics = rows.gradient_and_statistics(np.zeros((21, 3)))
    solve = rows.preconditioner(statistics)
    inside = rows.mask[:, 0]
    R = np.hstack([rows.X[inside].astype(np.float64), np.ones((inside.sum(), 1))])
    mean, count = R.mean(axis=0), inside.sum()
    scatter = np.diag(np.diag((R - mean).T @ (R - mean)))
    M = np.eye(21) + 2 * 0.5 * (scatter + count * np.outer(mean, mean))
    r = np.random.default_rng(3).standard_normal((21, 1))
    np.testing.assert_allclose(solve(r, np.array([0])), np.linalg.solve(M, r), rtol=1e-4)
