"""Small squared-hinge problems and the yardsticks the linear SVM tests judge solvers by.

A fit that stops at a tolerance is not unique: its coefficients depend on the solver's path and on the
CPU's arithmetic. What is defined is the objective's minimum, and how far above it a fit meeting a
stopping rule can be; the tests compare objective values within that bound, and predictions.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.svm import LinearSVC

from tlsweep.stages.probe.newton_svc import squared_hinge_objective


def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16).astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def two_digits():
    X_train, X_test, y_train, y_test = digits()
    return X_train[y_train < 2], X_test[y_test < 2], y_train[y_train < 2], y_test[y_test < 2]


def relu_features(n=800, d=150, classes=4, seed=0):
    """Wide, half-zero float32 features like a ReLU cut, with a weak class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    X[:, :classes] += 0.8 * np.eye(classes, dtype=np.float32)[y]
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


PROBLEMS = {"digits": digits, "two_digits": two_digits, "relu_features": relu_features}


def objective(estimator, X, y, C) -> float:
    """The squared-hinge objective (penalised bias) of a fitted one-vs-rest probe, in float64."""
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    W = np.vstack([estimator.coef_.T, estimator.intercept_]).astype(np.float64)
    return float(squared_hinge_objective(X.astype(np.float64), Y, W, C).sum())


def minimum(X, y, C) -> float:
    """The objective's minimum, to float64 precision: liblinear's primal solver in float64 at tol=1e-12."""
    best = LinearSVC(C=C, dual=False, tol=1e-12, max_iter=100_000).fit(X.astype(np.float64), y)
    return objective(best, X, y, C)


def gradients(X, y, C, coef=None, intercept=None) -> np.ndarray:
    """The objective's gradient per class (columns), in float64, at (coef, intercept) or at w = 0."""
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    X1 = np.hstack([X.astype(np.float64), np.ones((len(X), 1))])
    W = np.zeros((X1.shape[1], Y.shape[1])) if coef is None else np.vstack([coef.T, intercept]).astype(np.float64)
    return W - X1.T @ (2.0 * C * Y * np.maximum(0.0, 1.0 - Y * (X1 @ W)))


def liblinear_eps(y, tol=1e-4) -> np.ndarray:
    """liblinear's gradient tolerance per class, relative to the gradient at w = 0: tol * min(n_pos, n_neg) / n."""
    Y = LabelBinarizer().fit_transform(y)
    positives = Y.sum(axis=0)
    return tol * np.maximum(np.minimum(positives, len(y) - positives), 1) / len(y)


def liblinear_bound(X, y, C, tol=1e-4) -> float:
    """How far above its minimum a fit meeting liblinear's stopping rule can be.

    The objective is 1-strongly convex (its Hessian is at least the identity), so f(w) - f* <= |g(w)|^2 / 2,
    and the rule stops class c once |g_c| <= eps_c |g_c(0)|.
    """
    return float(np.sum(0.5 * (liblinear_eps(y, tol) * np.linalg.norm(gradients(X, y, C), axis=0)) ** 2))


def lbfgs_bound(X, y, C, tol=1e-4) -> float:
    """The same for LbfgsSVC's rule: every gradient entry within tol * max |g(0)|, over all p parameters."""
    at_zero = gradients(X, y, C)
    return float(0.5 * at_zero.size * (tol * np.abs(at_zero).max()) ** 2)


def assert_honest(estimator, X, y, caught):
    """No ConvergenceWarning only if every class's float64 gradient met liblinear's rule."""
    warned = any(issubclass(item.category, ConvergenceWarning) for item in caught)
    at_zero = np.linalg.norm(gradients(X, y, estimator.C), axis=0)
    norms = np.linalg.norm(gradients(X, y, estimator.C, estimator.coef_, estimator.intercept_), axis=0)
    assert warned or np.all(norms <= liblinear_eps(y, estimator.tol) * at_zero), norms / at_zero
    assert estimator.n_iter_[0] <= estimator.max_iter
