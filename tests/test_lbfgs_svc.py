"""`classifier.name=lbfgs_svc` solves LinearSVC's problem: same accuracy, float32 in place, honest convergence."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from tlsweep.stages.classify import fit_classifier, make_classifier
from tlsweep.stages.lbfgs_svc import LbfgsSVC


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16).astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def _relu_features(n=800, d=150, classes=4, seed=0):
    """Wide, half-zero float32 features like a ReLU cut, with a weak class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    X[:, :classes] += 0.8 * np.eye(classes, dtype=np.float32)[y]
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


@pytest.mark.parametrize("data", [_digits, _relu_features], ids=["digits", "relu_features"])
@pytest.mark.parametrize("C", [0.01, 0.1, 1.0])
def test_same_accuracy_as_linear_svc_within_half_a_point(data, C):
    X_train, X_test, y_train, y_test = data()
    reference = LinearSVC(C=C, random_state=0).fit(X_train, y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it must converge on these, not just score well
        ours = LbfgsSVC(C=C).fit(X_train, y_train)
    gap = abs(ours.score(X_test, y_test) - reference.score(X_test, y_test))
    assert gap <= 0.005, f"test accuracy differs by {100 * gap:.2f} points at C={C}"
    assert abs(ours.score(X_train, y_train) - reference.score(X_train, y_train)) <= 0.005
    # the same problem, so the same solution, not just a similar score
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=0.02 * np.abs(reference.coef_).max())


def test_two_classes_give_one_hyperplane_like_linear_svc():
    X_train, X_test, y_train, y_test = _digits()
    keep, keep_test = y_train < 2, y_test < 2
    ours = LbfgsSVC(C=0.1).fit(X_train[keep], y_train[keep])
    reference = LinearSVC(C=0.1, random_state=0).fit(X_train[keep], y_train[keep])
    assert ours.coef_.shape == reference.coef_.shape == (1, 64)
    assert list(ours.classes_) == [0, 1]
    assert ours.score(X_test[keep_test], y_test[keep_test]) >= reference.score(X_test[keep_test], y_test[keep_test]) - 0.005


def test_fits_float32_without_copying_the_features():
    X_train, _, y_train, _ = _relu_features(n=3000, d=1000)
    tracemalloc.start()
    with pytest.warns(ConvergenceWarning):  # 5 iterations are not enough; memory is what this test checks
        estimator = LbfgsSVC(C=0.1, max_iter=5).fit(X_train, y_train)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert estimator.coef_.dtype == np.float32
    assert peak < 0.25 * X_train.nbytes, f"fit allocated {peak} bytes for {X_train.nbytes} bytes of features"


def test_unconverged_fit_is_reported_through_tlsweep():
    X_train, _, y_train, _ = _relu_features()
    estimator = make_classifier(name="lbfgs_svc", C=1.0, loss="squared_hinge", max_iter=2, tol=1e-4,
                                dual="auto", seed=0)
    with pytest.warns(ConvergenceWarning, match="increase classifier.max_iter"):
        result = fit_classifier(estimator=estimator, X=X_train, y=y_train)
    assert result.converged is False and result.n_iter == 2
