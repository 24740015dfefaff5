"""LinearSVC's squared-hinge problem, solved by trust-region Newton with warm starts: the C search's solver.

liblinear's primal solver (TRON, behind `LinearSVC(dual=False)`) is a trust-region Newton-CG method
(Lin, Weng and Keerthi 2008). It fits one class after another on a float64 copy of X and always starts
from w = 0, so each fit of a C search costs about as much as the fit at the chosen C. This module runs
the same method on the caller's float32 array for every one-vs-rest class at once: the objective

    0.5 * ||[w, b]||^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2      (bias penalised, as liblinear's)

is a sum over classes, so each class keeps its own trust region and conjugate-gradient scalars, while
every Hessian-vector product is one pair of matrix products over X for all classes together. A fit can
start from the last one's solution (`warm_start`), which along a C path saves most of the iterations.
Every fit ends within `max_iter` trust-region iterations per class, and one that stops short of `tol`
for any reason says so with a ConvergenceWarning.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.validation import validate_data

from tlsweep.stages.probe.lbfgs_svc import OneVsRestLinear

# liblinear's tron.cpp constants: step acceptance (eta), trust-region updates (sigma), CG's relative tolerance
ETA0, ETA1, ETA2 = 1e-4, 0.25, 0.75
SIGMA1, SIGMA2, SIGMA3 = 0.25, 0.5, 4.0
CG_TOL = 0.1
# why a class's fit ended; only the first is convergence. Each other one comes with the advice it is given
CONVERGED = "converged"
MAX_ITER = "max_iter"
STALLED = "stalled"
NOT_FINITE = "not_finite"
NO_RADIUS = "no_radius"
PRECISION = "precision"
ADVICE = {
    MAX_ITER: "reached max_iter; increase classifier.max_iter",
    STALLED: "steps no longer change the objective at this precision while the gradient is still above tol; "
             "scale the features (features.normalize) or raise classifier.tol",
    NOT_FINITE: "a value overflowed or became NaN; scale the features (features.normalize)",
    NO_RADIUS: "the trust region shrank to nothing; scale the features (features.normalize)",
    PRECISION: "the gradient met tol in float32 products but not in float64; float32 features cannot meet "
               "a tol this small: raise classifier.tol",
}


class NewtonSVC(OneVsRestLinear):
    """Squared-hinge linear SVM (one-vs-rest), liblinear's primal problem and stopping rule, warm-startable.

    `tol` means what it means for `LinearSVC(dual=False)`: class c stops once its gradient norm has fallen
    to `tol * min(n_pos, n_neg) / n` of its value at w = 0. `max_iter` bounds the trust-region iterations
    of each class, accepted or rejected, so every fit ends.

    A ConvergenceWarning says which classes stopped short of `tol`, and why: `max_iter`, a value that
    overflowed, or steps that no longer change the objective. liblinear ends quietly in that last case
    ("actred and prered too small"); here it counts as converged only if the gradient criterion holds too.
    Float32 features set a floor under `tol`: products of float32 values carry rounding of about 1e-7 of
    their size, so the gradient of a float32 fit cannot be resolved much below that. The verdict is
    therefore taken on the gradient recomputed in float64 at the end (one pass over X, a block at a time).
    At the default tol=1e-4 the floor is far away; below about tol=1e-6 a float32 fit may warn where a
    float64 one would not.
    """

    _method = "trust-region Newton"

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, warm_start: bool = False):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        binarizer = LabelBinarizer(neg_label=-1, pos_label=1)
        Y = binarizer.fit_transform(y).astype(X.dtype)  # (n, k); k == 1 for two classes, as LinearSVC
        classes = binarizer.classes_
        start = None  # from w = 0, unless warm: from the last solution, if it was for these classes and features
        if self.warm_start and getattr(self, "coef_", None) is not None \
                and self.coef_.shape == (Y.shape[1], X.shape[1]) and np.array_equal(self.classes_, classes):
            start = np.vstack([self.coef_.T, self.intercept_[None, :]]).astype(np.float64)
        positives = (Y > 0).sum(axis=0)
        eps = self.tol * np.maximum(np.minimum(positives, len(y) - positives), 1) / len(y)
        W, iters, stops = self._solve(X, Y, W=start, eps=eps)
        self.classes_ = classes
        self.coef_ = W[:-1].T.astype(X.dtype)
        self.intercept_ = W[-1].astype(X.dtype)
        self.n_iter_ = np.array([iters.max()])
        if np.any(stops != CONVERGED):
            warnings.warn(_not_converged(self._method, stops, iters, classes if len(classes) > 2 else classes[1:]),
                          ConvergenceWarning)
        return self

    def _solve(self, X, Y, *, W, eps):
        """W, the iterations and the stop reason of each class, from the start W (None: w = 0)."""
        return trust_region_newton(X, Y, C=float(self.C), W=W, eps=eps, max_iter=self.max_iter)


def _not_converged(method: str, stops: np.ndarray, iters: np.ndarray, classes: np.ndarray) -> str:
    """One line: which classes stopped short of tol after how many iterations, why, and what to do."""
    parts = []
    for reason, advice in ADVICE.items():
        which = np.flatnonzero(stops == reason)
        if len(which):
            named = ", ".join(f"{classes[i]} ({iters[i]} iterations)" for i in which[:5])
            parts.append(f"class {named}{' and others' if len(which) > 5 else ''}: {advice}")
    return f"{method} did not converge for {np.sum(stops != CONVERGED)} of {len(stops)} " \
           f"one-vs-rest problems; " + "; ".join(parts)


def squared_hinge_objective(X: np.ndarray, Y: np.ndarray, W: np.ndarray, C: float) -> np.ndarray:
    """The objective of each class (column of W, shape (n_features + 1, k), bias last), in float64."""
    slack = np.maximum(0.0, 1.0 - Y * _margins(X, W))
    return 0.5 * np.sum(W * W, axis=0) + C * np.sum(np.square(slack, dtype=np.float64), axis=0)


def trust_region_newton(X: np.ndarray, Y: np.ndarray, *, C: float, W: np.ndarray | None, eps: np.ndarray,
                        max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise the squared-hinge objective of every column of Y, as liblinear's `TRON::tron` does for one.

    Returns W (n_features + 1, k; float64, bias last), the trust-region iterations of each class (accepted
    or rejected: at most `max_iter`), and why each class stopped: `CONVERGED` once its gradient norm is at
    most `eps` times its norm at w = 0, else `MAX_ITER`, `STALLED` (the model predicts no decrease, or steps
    no longer change the objective), `NOT_FINITE` or `NO_RADIUS`. Each of those ends that class at once,
    so every fit ends within `max_iter` iterations. On float32 X a class counts as `CONVERGED` only if its
    gradient, recomputed in float64 at the end, meets `eps` too; else it is `PRECISION`.
    """
    n_features, k = X.shape[1], Y.shape[1]
    W = np.zeros((n_features + 1, k)) if W is None else W.copy()

    def gradient(W, slack):
        return W + _transpose_product(X, -2.0 * C * (Y * slack))

    def objective(W, slack):
        return 0.5 * np.sum(W * W, axis=0) + C * np.sum(np.square(slack), axis=0)

    gnorm0 = np.linalg.norm(_transpose_product(X, -2.0 * C * Y), axis=0)  # the gradient at w = 0
    # margins are kept in float64 and moved by each step's own product, X s: computed afresh in float32,
    # f(w + s) - f(w) would drown in the rounding of X (w + s) once steps are small, and steps near the
    # solution would be rejected at random
    margins = _margins(X, W)
    slack = np.maximum(0.0, 1.0 - Y * margins)
    f, g = objective(W, slack), gradient(W, slack)
    gnorm = np.linalg.norm(g, axis=0)
    delta = gnorm.copy()
    stops = np.full(k, "", dtype=object)  # why each class stopped
    stops[gnorm <= eps * gnorm0] = CONVERGED
    stops[~(np.isfinite(f) & np.isfinite(gnorm))] = NOT_FINITE
    iters = np.zeros(k, dtype=int)  # trust-region iterations, accepted or not, per class
    taken = np.zeros(k, dtype=int)  # accepted steps
    active = (stops == "") & (max_iter > 0)
    stops[(stops == "") & ~active] = MAX_ITER
    while active.any():
        s, r, boundary = _steihaug_cg(X, slack > 0, C, g, delta, active)
        gs, sr = np.sum(g * s, axis=0), np.sum(s * r, axis=0)
        prered = -0.5 * (gs - sr)
        W_new, margins_new = W + s, margins + _margins(X, s)
        slack_new = np.maximum(0.0, 1.0 - Y * margins_new)
        f_new = objective(W_new, slack_new)
        actred = f - f_new
        snorm = np.linalg.norm(s, axis=0)
        delta = np.where(active & (taken == 0), np.minimum(delta, snorm), delta)  # until a first step is taken
        curvature = f_new - f - gs
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            alpha = np.where(curvature <= 0, SIGMA3, np.maximum(SIGMA1, -0.5 * gs / curvature))
            delta = np.where(~active, delta, np.select(
                [actred < ETA0 * prered, actred < ETA1 * prered, actred < ETA2 * prered, boundary],
                [np.minimum(alpha * snorm, SIGMA2 * delta),
                 np.maximum(SIGMA1 * delta, np.minimum(alpha * snorm, SIGMA2 * delta)),
                 np.maximum(SIGMA1 * delta, np.minimum(alpha * snorm, SIGMA3 * delta)),
                 SIGMA3 * delta],
                np.maximum(delta, np.minimum(alpha * snorm, SIGMA3 * delta))))
        iters += active
        finite = np.isfinite(f_new) & np.isfinite(prered) & np.isfinite(delta)
        accept = active & finite & (actred > ETA0 * prered)
        if accept.any():
            taken += accept
            W[:, accept], f[accept] = W_new[:, accept], f_new[accept]
            margins[:, accept], slack[:, accept] = margins_new[:, accept], slack_new[:, accept]
            g = gradient(W, slack)  # the classes not accepted keep W and slack, so their gradient too
            gnorm = np.linalg.norm(g, axis=0)
            finite &= np.isfinite(gnorm)
        # as tron.cpp, a class also stops when its model predicts no decrease or its steps no longer change f;
        # unlike tron.cpp, that is not convergence unless the gradient criterion holds there too
        stalled = (prered <= 0) | ((np.abs(actred) <= 1e-12 * np.abs(f)) & (np.abs(prered) <= 1e-12 * np.abs(f)))
        for reason, stop in ((CONVERGED, gnorm <= eps * gnorm0), (NOT_FINITE, ~finite), (NO_RADIUS, delta <= 0),
                             (STALLED, stalled), (MAX_ITER, iters >= max_iter)):
            stops[active & stop] = reason
            active &= ~stop
    if X.dtype != np.float64:  # the verdict in float64: float32 rounding must not pass for convergence
        gnorm, gnorm0 = float64_gradient_norms(X, Y, W, C)
        stops[(stops == CONVERGED) & ~(gnorm <= eps * gnorm0)] = PRECISION
    return W, iters, stops


def float64_gradient_norms(X: np.ndarray, Y: np.ndarray, W: np.ndarray, C: float,
                           values: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """The gradient norms at W and at w = 0 of every class, in float64.

    X is converted a block at a time: at most `values` values and a sixteenth of the rows, so the float64
    block stays under an eighth of a float32 X's memory.
    """
    step = max(1, min(values // max(X.shape[1], 1), -(-X.shape[0] // 16)))
    at_w, at_zero = W.copy(), np.zeros_like(W)
    for start in range(0, X.shape[0], step):
        block, labels = X[start:start + step].astype(np.float64), Y[start:start + step].astype(np.float64)
        for G, total in ((-2.0 * C * labels * np.maximum(0.0, 1.0 - labels * (block @ W[:-1] + W[-1])), at_w),
                         (-2.0 * C * labels, at_zero)):
            total[:-1] += block.T @ G
            total[-1] += G.sum(axis=0)
    return np.linalg.norm(at_w, axis=0), np.linalg.norm(at_zero, axis=0)


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
        Hd = np.zeros_like(d)  # only the classes still iterating: a stopped one may hold anything
        Hd[:, going] = _hessian_product(X, support[:, going], C, d[:, going])
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
    """[X, 1] W in float64, from a product in X's dtype."""
    return (X @ W[:-1].astype(X.dtype)).astype(np.float64) + W[-1]


def _transpose_product(X: np.ndarray, G: np.ndarray) -> np.ndarray:
    """[X, 1]^T G in float64: the weights' rows, then the bias row."""
    G = G.astype(X.dtype, copy=False)
    return np.vstack([X.T @ G, G.sum(axis=0, keepdims=True)]).astype(np.float64)


def _hessian_product(X, support, C, V):
    """(I + 2C [X, 1]^T D [X, 1]) V, D the rows with positive slack, per class (liblinear's generalised Hessian).

    The float32 products see each column of V scaled to unit norm: with features around 1e9 a CG direction
    can be as long as the gradient, ~1e17, and X^T X V would overflow float32 where X^T X (V / |V|) does not.
    """
    norms = np.linalg.norm(V, axis=0)
    norms[norms == 0] = 1.0
    return V + 2.0 * C * _transpose_product(X, _margins(X, V / norms) * support) * norms
