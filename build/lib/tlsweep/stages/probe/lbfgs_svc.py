"""LinearSVC's squared-hinge problem, solved by L-BFGS on the float32 features in place.

liblinear (behind `sklearn.svm.LinearSVC`) copies dense float32 input into float64 and then into its
own sparse node list, about 16 bytes per feature value. For wide cuts on all of CIFAR-10 those copies
decide whether a layer fits in memory. This estimator minimises the same primal objective, one-vs-rest,

    0.5 * ||[w, b]||^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2

(liblinear's `intercept_scaling=1` also penalises the bias), with matrix products on the caller's
float32 array: only the (n_samples, n_classes) margins are allocated.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data


class OneVsRestLinear(ClassifierMixin, BaseEstimator):
    """Prediction of a fitted one-vs-rest linear model: `coef_` (k, n_features), `intercept_` (k,), `classes_`.

    Also the settings its squared-hinge solvers share, checked by `_validate_params` at the start of `fit`
    (a bad value raises a ValueError that quotes it and the allowed range, as scikit-learn's own do).
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0.0, None, closed="neither")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="neither")],
        "warm_start": ["boolean"],
    }

    def decision_function(self, X) -> np.ndarray:
        """Signed distance to each one-vs-rest hyperplane; one column (raveled) for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        indices = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[indices]


class LbfgsSVC(OneVsRestLinear):
    """Squared-hinge linear SVM (one-vs-rest) fitted by L-BFGS without copying X."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, warm_start: bool = False):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start  # start from the last fit's solution (a C path), as LogisticRegression does

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        binarizer = LabelBinarizer(neg_label=-1, pos_label=1)
        Y = binarizer.fit_transform(y).astype(X.dtype)  # (n, k); k == 1 for two classes
        self.classes_ = binarizer.classes_
        n_features, k = X.shape[1], Y.shape[1]

        def objective(flat: np.ndarray):
            W = flat.reshape(n_features + 1, k).astype(X.dtype)
            slack = np.maximum(0.0, 1.0 - Y * (X @ W[:-1] + W[-1]))
            loss = 0.5 * float(np.sum(flat * flat)) + self.C * float(np.sum(slack * slack, dtype=np.float64))
            G = -2.0 * self.C * (Y * slack)
            grad = np.vstack([X.T @ G, G.sum(axis=0, keepdims=True)]).astype(np.float64) + flat.reshape(-1, k)
            return loss, grad.ravel()

        zero = np.zeros((n_features + 1) * k)
        # liblinear's rule: stop when the gradient has shrunk by `tol` relative to its value at w = 0. An
        # absolute tolerance sits below float32 noise on large X, where the line search then fails.
        gtol = self.tol * float(np.max(np.abs(objective(zero)[1])))
        start = zero
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == (k, n_features) \
                and np.array_equal(getattr(self, "_fitted_classes", ()), self.classes_):
            start = np.vstack([self.coef_.T, self.intercept_[None, :]]).astype(np.float64).ravel()
        result = minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": gtol, "ftol": 1e-12},
        )
        W = result.x.reshape(n_features + 1, k)
        self.coef_ = W[:-1].T.astype(X.dtype)
        self.intercept_ = W[-1].astype(X.dtype)
        self.n_iter_ = np.array([result.nit])
        self._fitted_classes = self.classes_
        if not result.success:
            warnings.warn(
                f"L-BFGS did not converge in {result.nit} iterations ({result.message}); "
                "increase classifier.max_iter",
                ConvergenceWarning,
            )
        return self
