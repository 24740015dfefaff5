"""`classifier.name=lbfgs_svc` solves LinearSVC's problem: same accuracy, float32 in place, honest convergence.
So does `NewtonSVC`, the C search's solver: liblinear's objective value, reached faster from a warm start."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.svm import LinearSVC

from tlsweep.stages.classify import fit_classifier, make_classifier
from tlsweep.stages.lbfgs_svc import LbfgsSVC
from tlsweep.stages.newton_svc import NewtonSVC, squared_hinge_objective


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16).astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def _two_digits():
    X_train, X_test, y_train, y_test = _digits()
    return X_train[y_train < 2], X_test[y_test < 2], y_train[y_train < 2], y_test[y_test < 2]


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


def _objective(estimator, X, y, C) -> float:
    """The squared-hinge objective (penalised bias) of a fitted one-vs-rest probe, in float64."""
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    W = np.vstack([estimator.coef_.T, estimator.intercept_]).astype(np.float64)
    return float(squared_hinge_objective(X.astype(np.float64), Y, W, C).sum())


@pytest.mark.parametrize("data", [_digits, _two_digits, _relu_features],
                         ids=["digits", "two_digits", "relu_features"])
@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_newton_svc_reaches_liblinears_objective_value(data, C):
    X_train, X_test, y_train, y_test = data()
    reference = LinearSVC(C=C, dual=False, random_state=0).fit(X_train, y_train)  # liblinear's own TRON, tol 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = NewtonSVC(C=C).fit(X_train, y_train)  # float32 in place, every class at once
    assert ours.coef_.dtype == np.float32 and ours.coef_.shape == reference.coef_.shape
    # the same stopping rule: as low as liblinear's value, to float32's precision
    assert _objective(ours, X_train, y_train, C) <= _objective(reference, X_train, y_train, C) * (1 + 1e-6)
    assert np.mean(ours.predict(X_test) == reference.predict(X_test)) >= 0.99


def test_newton_svc_warm_start_starts_from_the_last_solution():
    X_train, _, y_train, _ = _digits()
    cold = NewtonSVC(C=1.0).fit(X_train, y_train)
    warm = NewtonSVC(C=0.5, warm_start=True).fit(X_train, y_train).set_params(C=1.0).fit(X_train, y_train)
    assert warm.n_iter_[0] < cold.n_iter_[0]
    assert _objective(warm, X_train, y_train, 1.0) <= _objective(cold, X_train, y_train, 1.0) * (1 + 1e-6)
    # a solution for other classes is no start: the fit is the cold one
    keep = y_train < 3
    np.testing.assert_array_equal(warm.fit(X_train[keep], y_train[keep]).coef_,
                                  NewtonSVC(C=1.0).fit(X_train[keep], y_train[keep]).coef_)


def test_newton_svc_reports_an_unconverged_fit():
    X_train, _, y_train, _ = _relu_features()
    with pytest.warns(ConvergenceWarning, match="increase classifier.max_iter"):
        estimator = NewtonSVC(C=10.0, max_iter=1).fit(X_train, y_train)
    assert estimator.n_iter_[0] == 1
