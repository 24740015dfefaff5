"""LinearSVC's primal problem by Newton's method with a line search: the fast engine for cached features.

`NewtonSVC` follows liblinear's TRON: a trust region, so a rejected step throws away its whole
conjugate-gradient solve. Since liblinear 2.40 its primal solvers use a line search instead (Hsia, Lee and
Lin 2020), and for the squared hinge a line search costs almost nothing: one product z = [X, 1] s over
the rows gives f(w + a s) for every step length a from the float64 margins m + a z. This module does the
same for all one-vs-rest classes at once, on the caller's float32 array, and spends its products where
they count:

- only rows inside a class's margin count (`SupportRows`); products read X a cache-sized block at a
  time, so X is read once per product, and the blocks are split over as many threads as BLAS would use;
- a class whose support has become small takes an exact Newton step from its Gram matrix
  (`newton_steps.direct_step`): one compute-bound product instead of tens of memory-bound ones;
- the other classes take their steps by conjugate gradients batched into matrix products, over a copy
  of just their support rows, preconditioned by the Hessian's mean-row part and diagonal;
- both solve more accurately as the gradient shrinks (forcing term min(0.1, sqrt(|g| / |g(0)|))), so the
  last steps are nearly Newton's own and the fit lands close to the minimum, not just inside `tol`.

The problem, the stopping rule (`tol`), `max_iter` and the honest verdict are `NewtonSVC`'s; only the
method differs. A Gram matrix, and later the copy of the support rows, each stay within MEMORY_SHARE of
X's own memory, and X is never converted to float64 (the final float64 check reads it a block at a time).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from tlsweep.stages.probe.newton_svc import (CONVERGED, MAX_ITER, NOT_FINITE, PRECISION, STALLED, NewtonSVC,
                                             float64_gradient_norms)
from tlsweep.stages.probe.newton_steps import batched_cg, direct_bytes, direct_cost, direct_step
from tlsweep.stages.probe.support_rows import RowShares, SupportRows, step_margins

ARMIJO = 0.01  # sufficient decrease: f(w + a s) <= f(w) + ARMIJO * a * g.s, as liblinear's line search
HALVINGS = 20  # step lengths tried: 1, 1/2, ..., 2^-19 (liblinear's max_num_linesearch)
FORCING = 0.1  # a step's solve stops at |r| <= min(FORCING, sqrt(|g| / |g(0)|)) |g|, in the M^-1 norm
BETA = 30  # flops of a Gram matrix product that cost as much time as reading one value in a CG product
THREADED_BYTES = 32 << 20  # features smaller than this are fitted on one thread (see `_solve`)
MEMORY_SHARE = 0.5  # of X's bytes, for a Gram matrix or the row copy (never both at once): the allocator's
# slack and the threads' buffers come on top, and the whole should stay under the size of X


class NewtonLineSearchSVC(NewtonSVC):
    """Squared-hinge linear SVM (one-vs-rest) by line-search Newton-CG over the support rows, warm-startable.

    The drop-in for `LinearSVC(loss="squared_hinge", dual=False)` on cached float32 features: the same
    objective (penalised bias, as `intercept_scaling=1`), the same `C`, and `tol` with liblinear's meaning.
    Beyond X, a fit holds at most MEMORY_SHARE of X's size in copied rows or a Gram matrix, and never a
    float64 copy of X. `max_iter` bounds the Newton iterations of each class. See `NewtonSVC` for the
    verdict on convergence and `warm_start`.
    """

    _method = "line-search Newton"

    def _solve(self, X, Y, *, W, eps):
        """On as many threads as BLAS would use (OPENBLAS_NUM_THREADS=1: one), each running BLAS on one core.

        Features under THREADED_BYTES take one thread: each thread costs megabytes of its own (BLAS's work
        buffer, a malloc arena), a large share of a small X's memory, for a fit that takes a second anyway.
        """
        controller = ThreadpoolController()
        threads = max([info["num_threads"] for info in controller.info() if info["user_api"] == "blas"] or [1])
        threads = threads if X.nbytes >= THREADED_BYTES else 1
        with controller.limit(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            return newton_line_search(X, Y, C=float(self.C), W=W, eps=eps, max_iter=self.max_iter,
                                      shares=RowShares(pool, threads))


def newton_line_search(X: np.ndarray, Y: np.ndarray, *, C: float, W: np.ndarray | None, eps: np.ndarray,
                       max_iter: int, shares: RowShares | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise the squared-hinge objective of every column of Y by Newton's method with a line search.

    Returns W (n_features + 1, k; float64, bias last), the Newton iterations of each class, and why each
    class stopped, as `trust_region_newton` does: `CONVERGED` (gradient norm at most `eps` times its norm at
    w = 0, confirmed in float64 for float32 X, else `PRECISION`), `MAX_ITER`, `STALLED` (no step length
    decreases the objective enough) or `NOT_FINITE`.
    """
    n_features, k = X.shape[1], Y.shape[1]
    W = np.zeros((n_features + 1, k)) if W is None else W.copy()
    labels = Y.astype(np.float64)
    gnorm0 = _gradient_norms_at_zero(X, Y, C)
    margins = step_margins(X, W, shares)  # float64, moved by each step's own product from here on
    stops = np.full(k, "", dtype=object)
    iters = np.zeros(k, dtype=int)
    cg_rounds = np.full(k, 5)  # CG iterations each class needed at its last CG step (a guess before that)
    budget = MEMORY_SHARE * X.nbytes  # for a Gram matrix, then for the copied rows: never both at once
    while True:
        columns = np.flatnonzero(stops == "")
        if not len(columns):
            break
        rows = SupportRows(X, labels, margins, columns, C, shares=shares)
        g, statistics = rows.gradient_and_statistics(W)
        gnorm = np.linalg.norm(g, axis=0)
        overflow = ~np.isfinite(gnorm) | ~np.isfinite(statistics[2]).all(axis=0)  # the Hessian's diagonal too
        going = np.ones(len(columns), dtype=bool)
        for reason, stop in ((NOT_FINITE, overflow), (CONVERGED, gnorm <= eps[columns] * gnorm0[columns]),
                             (MAX_ITER, iters[columns] >= max_iter)):
            stops[columns[going & stop]] = reason
            going &= ~stop
        if not going.any():
            continue
        which, columns, g = np.flatnonzero(going), columns[going], g[:, going]
        forcing = np.minimum(FORCING, np.sqrt(gnorm[going] / gnorm0[columns]))
        s = np.zeros_like(g)
        union = np.count_nonzero(rows.mask[:, which].any(axis=1))
        solo = _direct(rows.counts[which], union, len(X), n_features, cg_rounds[columns], budget)
        for i, step in _direct_steps(X, rows.mask[:, which], g, C, forcing, solo, budget, shares):
            if step is None:  # rounding left the float32 Gram matrix indefinite: CG instead
                solo[i] = False
            else:
                s[:, i] = step
        if not solo.all():
            rows.keep(which[~solo], budget)
            s[:, ~solo], rounds = batched_cg(rows, g[:, ~solo], rows.preconditioner(statistics), which[~solo],
                                             forcing[~solo])
            cg_rounds[columns[~solo]] = rounds
        rows = None  # the copy goes before the next iteration's Gram matrices
        z = step_margins(X, s, shares)
        alpha, decreased = _line_search(W[:, columns], margins[:, columns], labels[:, columns], g, s, z, C)
        iters[columns] += 1
        W[:, columns] += alpha * s
        margins[:, columns] += alpha * z
        stops[columns[~np.isfinite(alpha) | ~np.isfinite(s).all(axis=0)]] = NOT_FINITE
        stops[columns[~decreased & (stops[columns] == "")]] = STALLED
    if X.dtype != np.float64:  # the verdict in float64: float32 rounding must not pass for convergence
        gnorm, gnorm0 = float64_gradient_norms(X, Y, W, C)
        stops[(stops == CONVERGED) & ~(gnorm <= eps * gnorm0)] = PRECISION
    return W, iters, stops


def _direct(support, union, n_rows, n_features, cg_rounds, budget):
    """Which classes take a direct step: those whose Gram solve costs less than their conjugate gradients.

    A CG product reads the union of the supports once (`union` rows); a direct step multiplies the class's
    own support (m rows) into its Gram matrix, compute-bound, so each of its flops costs about 1/BETA of
    a value read. Its Gram matrix must also fit in `budget` bytes.
    """
    m = support.astype(float)
    cheaper = direct_cost(m, n_features) <= BETA * cg_rounds * union * (n_features + 1)
    small = direct_bytes(m, n_features, n_rows) <= budget
    return cheaper & small & (m > 0)


def _direct_steps(X, mask, g, C, forcing, solo, budget, shares):
    """(i, step) for each class i in `solo`, from X's rows inside its margin; None where the factorisation
    failed. Classes run side by side on the threads when the largest Gram matrices, one per thread, fit in
    `budget` together (the steps are compute-bound, so each thread keeps a core busy), else one at a time."""
    chosen = np.flatnonzero(solo)
    sizes = np.sort(direct_bytes(mask[:, chosen].sum(axis=0), X.shape[1], len(X)))

    def step(i):
        try:
            return i, direct_step(X, np.flatnonzero(mask[:, i]), g[:, i], C, forcing[i])
        except np.linalg.LinAlgError:
            return i, None

    if shares is not None and shares.threads > 1 and len(chosen) > 1 and sizes[-shares.threads:].sum() <= budget:
        return list(shares.pool.map(step, chosen))
    return [step(i) for i in chosen]


def _gradient_norms_at_zero(X, Y, C):
    """|g(0)| per class: g(0) = -2C [X, 1]^T y, one product over X."""
    Yx = Y.astype(X.dtype)
    at_zero = np.empty((X.shape[1] + 1, Y.shape[1]))
    at_zero[:-1] = (Yx.T @ X).T
    at_zero[-1] = Yx.sum(axis=0, dtype=np.float64)
    return 2.0 * C * np.linalg.norm(at_zero, axis=0)


def _line_search(W, margins, labels, g, s, z, C):
    """The first of 1, 1/2, 1/4, ... with enough decrease, per class, and whether each found one.

    f(w + a s) = 0.5 |w + a s|^2 + C sum max(0, 1 - y (m + a z))^2 needs no product over X: the margins
    m and the step's own z = [X, 1] s are at hand, in float64. A step that is no descent direction, or whose
    decrease is lost in f's rounding (below 1e-12 f, as liblinear's "actred and prered too small"), is no
    step: the class has stalled.
    """
    ww, ws, ss, gs = (np.sum(a * b, axis=0) for a, b in ((W, W), (W, s), (s, s), (g, s)))
    f = 0.5 * ww + C * np.sum(np.square(np.maximum(0.0, 1.0 - labels * margins)), axis=0)
    alpha = np.ones(W.shape[1])
    found, decrease = np.zeros(W.shape[1], dtype=bool), np.zeros(W.shape[1])
    searching = gs < 0
    for _ in range(HALVINGS):
        if not searching.any():
            break
        a = alpha[searching]
        slack = np.maximum(0.0, 1.0 - labels[:, searching] * (margins[:, searching] + a * z[:, searching]))
        value = 0.5 * (ww[searching] + 2 * a * ws[searching] + a * a * ss[searching]) \
            + C * np.sum(np.square(slack), axis=0)
        enough = value <= f[searching] + ARMIJO * a * gs[searching]
        index = np.flatnonzero(searching)
        found[index[enough]], decrease[index[enough]] = True, (f[searching] - value)[enough]
        searching[index[enough]] = False
        alpha[searching] /= 2
    found &= decrease > 1e-12 * np.abs(f)
    return np.where(found, alpha, 0.0), found
