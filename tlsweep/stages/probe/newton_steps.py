"""Newton steps for the squared hinge: conjugate gradients for all classes at once, or, for a class whose
support has become small, a direct solve with the support's Gram matrix.

The generalised Hessian of class c is H = I + 2C X_I^T X_I, with X_I the rows inside its margin and a
column of ones for the bias. Conjugate gradients need one product over the support rows per iteration,
and on CNN features they need tens of iterations per Newton step. Once a class's support I has shrunk
to a few hundred rows (after a few iterations of a one-vs-rest fit it is typically 5-15% of the rows)
H can be inverted outright: by Woodbury through the |I| x |I| Gram matrix X_I X_I^T when |I| <= d + 1,
else through the (d + 1)-square X_I^T X_I. One matrix product (compute-bound, so fast) and a Cholesky
factorisation then replace the tens of memory-bound products, and the step is Newton's own, so the
iterations converge quadratically near the solution. The float32 Gram matrix is not exact; the solve
serves as the preconditioner of a few conjugate-gradient iterations on the class's own rows.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from tlsweep.stages.probe.support_rows import BLOCK_VALUES

ROUNDS = 10  # refinement iterations of a direct step at most; one to three are the rule
GRAM_VALUES = 1 << 20  # values per row block of a (d + 1)-square Gram matrix product: 4 MB of float32 at
# most, and at most a sixteenth of X, whose memory bounds the fit's


def batched_cg(rows, g, solve, which, forcing):
    """Approximately solve H s = -g per class by preconditioned CG, batching the classes' products.

    `rows` gives the products (`SupportRows`), `solve` applies the preconditioner M^-1, `which` are the
    classes' positions among `rows.columns`. Class j stops once |r_j|_M^-1 <= forcing_j |g_j|_M^-1 (the
    norm its iterations minimise), or after n_features + 1 iterations, where exact arithmetic would have
    ended. As classes stop, `rows.narrow` drops the rows only they needed. Returns the steps and the
    iterations each class took.
    """
    s = np.zeros_like(g)
    r = -g
    z = solve(r, which)
    d = z.copy()
    rz = np.sum(r * z, axis=0)
    limit = forcing * np.sqrt(np.maximum(rz, 0.0))
    going = np.sqrt(np.maximum(rz, 0.0)) > limit
    rounds = np.zeros(g.shape[1], dtype=int)
    for _ in range(g.shape[0]):
        if not going.any():
            break
        j = np.flatnonzero(going)
        rounds[j] += 1
        Hd = rows.hessian_product(d[:, j], which[j])
        curvature = np.sum(d[:, j] * Hd, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = rz[j] / curvature
        ok = np.isfinite(alpha) & (curvature > 0)  # a non-positive curvature means rounding has taken over
        going[j[~ok]] = False
        j, alpha, Hd = j[ok], alpha[ok], Hd[:, ok]
        s[:, j] += alpha * d[:, j]
        r[:, j] -= alpha * Hd
        z_new = solve(r[:, j], which[j])
        rz_new = np.sum(r[:, j] * z_new, axis=0)
        d[:, j] = z_new + (rz_new / rz[j]) * d[:, j]
        rz[j] = rz_new
        going[j] = np.sqrt(np.maximum(rz_new, 0.0)) > limit[j]
        if 0 < going.sum() < len(j):
            rows.narrow(which[going])
    return s, rounds


def direct_cost(m, d: int):
    """Floating-point operations of `direct_step` on m support rows of d features: its Gram matrix (a
    symmetric product, half the flops of a general one) and its Cholesky factorisation."""
    side = np.minimum(m, d + 1)
    return 1.0 * m * side * (d + 1) + side ** 3 / 3


def direct_bytes(m, d: int, n: int):
    """Memory `direct_step` holds at most, for m of X's n rows of d features.

    With m <= d + 1 rows: the rows, copied (4 m d bytes), and their m x m Gram matrix in float32 and
    float64 (12 m^2). With more rows: the (d + 1)-square Gram matrix in float64, one float32 product of
    a block being added into it, and that block of rows.
    """
    m = np.asarray(m, dtype=float)
    return np.where(m <= d + 1, 4.0 * m * d + 12.0 * m * m, 12.0 * (d + 1) ** 2 + 4.0 * _gram_rows(n, d) * d)


def _gram_rows(n: int, d: int) -> int:
    """Rows per block of a (d + 1)-square Gram matrix product (GRAM_VALUES)."""
    return max(1, min(GRAM_VALUES, n * d // 16) // max(d, 1))


def direct_step(X: np.ndarray, index: np.ndarray, g: np.ndarray, C: float, forcing: float) -> np.ndarray:
    """H s = -g for one class from its support rows R = X[index] (m x d), H = I + 2C [R, 1]^T [R, 1].

    The smaller Gram matrix of [R, 1], factorised in float64, gives H^-1 (exactly, up to the float32
    products that formed it). It preconditions conjugate gradients on H, whose products read R alone,
    until the residual is below `forcing` |g| in the preconditioner's norm. With fewer rows than features
    R is copied (the m x m Gram matrix needs all of it at once); with more, it is read a block at a time.
    """
    m, d = len(index), X.shape[1]
    weight = 2.0 * C
    if m <= d + 1:  # Woodbury: H^-1 v = v - [R, 1]^T (I / 2C + [R, 1][R, 1]^T)^-1 [R, 1] v
        R = _Rows(_gathered(X, index), np.arange(m))
        # R R^T by BLAS's symmetric product (upper triangle, of R^T as the Fortran-ordered d x m matrix)
        gram = scipy.linalg.blas.ssyrk(1.0, R.X.T, trans=1) if R.X.dtype == np.float32 else R.X @ R.X.T
        gram = np.asarray(gram, dtype=np.float64, order="F")
        gram += 1.0
        gram[np.diag_indices(m)] += 1.0 / weight
        factor = scipy.linalg.cho_factor(gram, lower=False, overwrite_a=True, check_finite=False)

        def inverse(v):
            return v - R.transposed(scipy.linalg.cho_solve(factor, R.times(v), check_finite=False))
    else:
        R = _Rows(X, index)
        gram = np.zeros((d + 1, d + 1))
        R.inner(gram[:d, :d])
        gram[:d, d] = gram[d, :d] = R.column_sums()
        gram[d, d] = m
        gram *= weight
        gram[np.diag_indices(d + 1)] += 1.0
        # the symmetric matrix's transpose is itself, in the Fortran order LAPACK factorises in place
        factor = scipy.linalg.cho_factor(gram.T, lower=True, overwrite_a=True, check_finite=False)

        def inverse(v):
            return scipy.linalg.cho_solve(factor, v, check_finite=False)

    def product(v):
        return v + weight * R.transposed(R.times(v))

    s = np.zeros_like(g)
    r = -g
    z = inverse(r)
    direction = z.copy()
    rz = float(r @ z)
    limit = forcing * np.sqrt(max(rz, 0.0))
    for _ in range(ROUNDS):
        if not np.sqrt(max(rz, 0.0)) > limit:
            break
        Hd = product(direction)
        curvature = float(direction @ Hd)
        if not curvature > 0:
            break
        alpha = rz / curvature
        s += alpha * direction
        r -= alpha * Hd
        z = inverse(r)
        rz, previous = float(r @ z), rz
        direction = z + (rz / previous) * direction
    return s


def _gathered(X, index):
    """X[index], gathered a block of rows at a time (np.take would first make a non-C-ordered X contiguous)."""
    out = np.empty((len(index), X.shape[1]), dtype=X.dtype)
    step = max(1, BLOCK_VALUES // max(X.shape[1], 1))
    for start in range(0, len(index), step):
        out[start:start + step] = X[index[start:start + step]]
    return out


class _Rows:
    """The rows X[index], read a block at a time: cache-sized for products, larger (fewer float64 sums of
    the result) for the Gram matrix."""

    def __init__(self, X, index):
        self.X, self.index = X, index
        self.contiguous = len(index) == len(X)  # all of X, in order: blocks are slices, not gathers

    def _row_blocks(self, step=None):
        step = step or max(1, BLOCK_VALUES // max(self.X.shape[1], 1))
        for start in range(0, len(self.index), step):
            rows = slice(start, start + step) if self.contiguous else self.index[start:start + step]
            yield start, self.X[rows]

    def times(self, v):
        """[R, 1] v, in float64 (X's dtype for the product)."""
        weights, out = v[:-1].astype(self.X.dtype), np.empty(len(self.index))
        for start, block in self._row_blocks():
            out[start:start + len(block)] = block @ weights
        return out + v[-1]

    def transposed(self, u):
        """[R, 1]^T u, in float64."""
        out = np.zeros(self.X.shape[1] + 1)
        weights = u.astype(self.X.dtype)
        for start, block in self._row_blocks():
            out[:-1] += weights[start:start + len(block)] @ block
        out[-1] = u.sum()
        return out

    def inner(self, out):
        """R^T R (d x d), added into the float64 `out`: its upper triangle only (BLAS's symmetric product,
        half the flops), which is all the Cholesky factorisation of the transpose reads."""
        for _, block in self._row_blocks(_gram_rows(*self.X.shape)):
            if block.dtype == np.float32:  # of the block as a Fortran-ordered d x rows matrix: no copy
                out += scipy.linalg.blas.ssyrk(1.0, block.T, trans=0)
            else:
                out += block.T @ block

    def column_sums(self):
        out = np.zeros(self.X.shape[1])
        for _, block in self._row_blocks(_gram_rows(*self.X.shape)):
            out += block.sum(axis=0, dtype=np.float64)
        return out
