"""LinearSVC's squared-hinge problem, solved by trust-region Newton with warm starts: the C search's solver.

liblinear's primal solver (TRON, behind `LinearSVC(dual=False)`) is a trust-region Newton-CG method
(Lin, Weng and Keerthi 2008). It fits one class after another on a float64 copy of X and always starts
from w = 0, so each fit of a C search costs about as much as the fit at the chosen C. This module runs
the same method on the caller's float32 array for every one-vs-rest class at once: the objective

    0.5 * ||[w, b]||^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2      (bias penalised, as liblinear's)

is a sum over classes, so each class keeps its own trust region and conjugate-gradient scalars, while
every Hessian-vector product is one pair of matrix products over X for all classes together. A fit can
start from the last one's solution (`warm_start`), which along a C path saves most of the iterations.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.validation import check_X_y

from tlsweep.stages.lbfgs_svc import OneVsRestLinear

# liblinear's tron.cpp constants: step acceptance (eta), trust-region updates (sigma), CG's relative tolerance
ETA0, ETA1, ETA2 = 1e-4, 0.25, 0.75
SIGMA1, SIGMA2, SIGMA3 = 0.25, 0.5, 4.0
CG_TOL = 0.1


class NewtonSVC(OneVsRestLinear):
    """Squared-hinge linear SVM (one-vs-rest), liblinear's primal problem and stopping rule, warm-startable.

    `tol` means what it means for `LinearSVC(dual=False)`: class c stops once its gradient norm has fallen
    to `tol * min(n_pos, n_neg) / n` of its value at w = 0. `max_iter` counts Newton iterations.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, warm_start: bool = False):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start

    def fit(self, X, y):
        X, y = check_X_y(X, y, dtype=[np.float32, np.float64], copy=False)
        binarizer = LabelBinarizer(neg_label=-1, pos_label=1)
        Y = binarizer.fit_transform(y).astype(X.dtype)  # (n, k); k == 1 for two classes, as LinearSVC
        classes = binarizer.classes_
        start = None  # from w = 0, unless warm: from the last solution, if it was for these classes and features
        if self.warm_start and getattr(self, "coef_", None) is not None \
                and self.coef_.shape == (Y.shape[1], X.shape[1]) and np.array_equal(self.classes_, classes):
            start = np.vstack([self.coef_.T, self.intercept_[None, :]]).astype(np.float64)
        positives = (Y > 0).sum(axis=0)
        eps = self.tol * np.maximum(np.minimum(positives, len(y) - positives), 1) / len(y)
        W, n_iter, converged = trust_region_newton(X, Y, C=float(self.C), W=start, eps=eps, max_iter=self.max_iter)
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.coef_ = W[:-1].T.astype(X.dtype)
        self.intercept_ = W[-1].astype(X.dtype)
        self.n_iter_ = np.array([n_iter])
        if not converged:
            warnings.warn(f"trust-region Newton did not converge in {n_iter} iterations; increase classifier.max_iter",
                          ConvergenceWarning)
        return self


def squared_hinge_objective(X: np.ndarray, Y: np.ndarray, W: np.ndarray, C: float) -> np.ndarray:
    """The objective of each class (column of W, shape (n_features + 1, k), bias last), in float64."""
    slack = np.maximum(0.0, 1.0 - Y * _margins(X, W))
    return 0.5 * np.sum(W * W, axis=0) + C * np.sum(np.square(slack, dtype=np.float64), axis=0)


def trust_region_newton(X: np.ndarray, Y: np.ndarray, *, C: float, W: np.ndarray | None, eps: np.ndarray,
                        max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Minimise the squared-hinge objective of every column of Y, as liblinear's `TRON::tron` does for one.

    Returns W (n_features + 1, k; float64, bias last), the Newton iterations of the slowest class, and
    whether every class met its gradient-norm tolerance `eps` (relative to the gradient at w = 0).
    """
    n_features, k = X.shape[1], Y.shape[1]
    W = np.zeros((n_features + 1, k)) if W is None else W.copy()

    def slack_of(W):
        return np.maximum(0.0, 1.0 - Y * _margins(X, W))

    def gradient(W, slack):
        return W + _transpose_product(X, -2.0 * C * (Y * slack))

    def objective(W, slack):
        return 0.5 * np.sum(W * W, axis=0) + C * np.sum(np.square(slack, dtype=np.float64), axis=0)

    gnorm0 = np.linalg.norm(_transpose_product(X, -2.0 * C * Y), axis=0)  # the gradient at w = 0
    slack = slack_of(W)
    f, g = objective(W, slack), gradient(W, slack)
    gnorm = np.linalg.norm(g, axis=0)
    delta = gnorm.copy()
    active = gnorm > eps * gnorm0  # classes still iterating
    reached = ~active
    iters = np.zeros(k, dtype=int)  # accepted steps, per class
    active &= iters < max_iter
    while active.any():
        s, r, boundary = _steihaug_cg(X, slack > 0, C, g, delta, active)
        gs, sr = np.sum(g * s, axis=0), np.sum(s * r, axis=0)
        prered = -0.5 * (gs - sr)
        W_new = W + s
        slack_new = slack_of(W_new)
        f_new = objective(W_new, slack_new)
        actred = f - f_new
        snorm = np.linalg.norm(s, axis=0)
        delta = np.where(active & (iters == 0), np.minimum(delta, snorm), delta)  # until a first step is taken
        curvature = f_new - f - gs
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(curvature <= 0, SIGMA3, np.maximum(SIGMA1, -0.5 * gs / curvature))
        delta = np.where(~active, delta, np.select(
            [actred < ETA0 * prered, actred < ETA1 * prered, actred < ETA2 * prered, boundary],
            [np.minimum(alpha * snorm, SIGMA2 * delta),
             np.maximum(SIGMA1 * delta, np.minimum(alpha * snorm, SIGMA2 * delta)),
             np.maximum(SIGMA1 * delta, np.minimum(alpha * snorm, SIGMA3 * delta)),
             SIGMA3 * delta],
            np.maximum(delta, np.minimum(alpha * snorm, SIGMA3 * delta))))
        accept = active & (actred > ETA0 * prered)
        if accept.any():
            iters += accept
            W[:, accept], f[accept], slack[:, accept] = W_new[:, accept], f_new[accept], slack_new[:, accept]
            g = gradient(W, slack)  # the classes not accepted keep W and slack, so their gradient too
            gnorm = np.linalg.norm(g, axis=0)
            reached |= accept & (gnorm <= eps * gnorm0)
        # as tron.cpp: stop a class whose model predicts no decrease, or whose steps no longer change f
        stalled = (prered <= 0) | ((np.abs(actred) <= 1e-12 * np.abs(f)) & (np.abs(prered) <= 1e-12 * np.abs(f)))
        reached |= active & stalled  # as far as the arithmetic goes: liblinear stops there too, without a warning
        active &= ~reached & (iters < max_iter)
    return W, int(iters.max()), bool(reached.all())


def _steihaug_cg(X, support, C, g, delta, active):
    """Approximately solve H s = -g within ||s|| <= delta, per class: conjugate gradients, batched products.

    Returns the step s, the residual r = -g - H s, and which classes' steps reached the trust-region boundary.
    """
    s = np.zeros_like(g)
    r = -g
    d = r.copy()
    rTr = np.sum(r * r, axis=0)
    cgtol = CG_TOL * np.linalg.norm(g, axis=0)
    going = active & (np.sqrt(rTr) > cgtol)
    boundary = np.zeros(g.shape[1], dtype=bool)
    for _ in range(g.shape[0]):  # CG ends in at most n_features + 1 steps in exact arithmetic
        if not going.any():
            break
        Hd = _hessian_product(X, support, C, d)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(going, rTr / np.sum(d * Hd, axis=0), 0.0)
        trial = s + alpha * d
        out = going & (np.linalg.norm(trial, axis=0) > delta)
        if out.any():  # step to the boundary along d instead: the positive root of ||s + a d|| = delta
            std, sts, dtd = np.sum(s * d, axis=0), np.sum(s * s, axis=0), np.sum(d * d, axis=0)
            rad = np.sqrt(np.maximum(std * std + dtd * (delta * delta - sts), 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                to_edge = np.where(std >= 0, (delta * delta - sts) / (std + rad), (rad - std) / dtd)
            alpha = np.where(out, to_edge, alpha)
            boundary |= out
        s += alpha * d
        r -= alpha * Hd
        going &= ~out
        rnew = np.sum(r * r, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(going, rnew / rTr, 0.0)
        d = np.where(going, r + beta * d, d)
        rTr = np.where(going, rnew, rTr)
        going &= np.sqrt(rnew) > cgtol
    return s, r, boundary


def _margins(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    return X @ W[:-1].astype(X.dtype) + W[-1].astype(X.dtype)


def _transpose_product(X: np.ndarray, G: np.ndarray) -> np.ndarray:
    """[X, 1]^T G in float64: the weights' rows, then the bias row."""
    G = G.astype(X.dtype, copy=False)
    return np.vstack([X.T @ G, G.sum(axis=0, keepdims=True)]).astype(np.float64)


def _hessian_product(X, support, C, V):
    """(I + 2C [X, 1]^T D [X, 1]) V, D the rows with positive slack, per class (liblinear's generalised Hessian)."""
    return V + 2.0 * C * _transpose_product(X, _margins(X, V) * support)
