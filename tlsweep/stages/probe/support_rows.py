"""The rows that still shape a squared-hinge fit, copied together once per Newton iteration, and the
solver's products over them, a cache-sized block at a time.

Only rows with positive slack, y (w . x + b) < 1, enter the gradient and the generalised Hessian of

    0.5 * ||[w, b]||^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2,

so liblinear's TRON computes its Hessian-vector products over that index set alone. As a fit converges
the set shrinks to the rows near the margins: for six one-vs-rest classes on CNN features, about half of
the rows are inside some class's margin after a few iterations. `SupportRows` copies the union over the
classes that step by conjugate gradients into one contiguous block, so every product of those gradients
reads only those rows; when the union is too large for the memory allowed, it reads X itself.

A Hessian-vector product X^T D (X V) is two thin matrix products, each reading X from memory. Done a
block of rows at a time (about 512 KB), the second product finds the block still in cache, so X is read
once: on two cores that is about twice as fast as two whole-matrix products, and it does not depend on
BLAS threads, which stall when another process holds a core. The blocks are split over threads (BLAS
itself single-threaded meanwhile), one contiguous share of the rows each (`RowShares`).
"""

from __future__ import annotations

import numpy as np

BLOCK_VALUES = 1 << 17  # values per row block: 512 KB of float32, reused from cache by the second product


class SupportRows:
    """For one iteration: which rows are inside the margin of each class in `columns`, and their slack;
    the products over those rows, read from X or from a copy of them (`keep`).

    Parameters
    ----------
    X : (n, d) float32 or float64 array, read only.
    Y : (n, k) float64 labels in {-1, +1}, one column per one-vs-rest class.
    margins : (n, k) float64 margins [X, 1] W of the current solution.
    columns : the classes (columns of Y) still being fitted.
    C : the loss weight.
    shares : how the blocked products split the rows over threads (`RowShares`; None: this thread only).
    """

    def __init__(self, X, Y, margins, columns, C, *, shares=None):
        self.X, self.C, self.columns, self.shares, self.copied = X, C, columns, shares, False
        self.labels = Y[:, columns]
        self.slack = np.maximum(0.0, 1.0 - self.labels * margins[:, columns])
        self.mask = self.slack > 0
        self.counts = self.mask.sum(axis=0)  # each class's support

    def keep(self, which, max_bytes: float) -> None:
        """From here on read only the rows inside the margin of the classes `which`: copied together when
        they fit in `max_bytes` and are at most half the rows being read, else X is read in place."""
        rows = np.flatnonzero(self.mask[:, which].any(axis=1))
        if len(rows) * self.X.shape[1] * self.X.itemsize <= max_bytes and len(rows) <= len(self.X) // 2:
            self._keep(rows)

    def narrow(self, which) -> None:
        """Keep only the copied rows inside the margin of the classes `which`, once they are at most half.

        Conjugate gradients end class by class; the last classes' products need not read the rows that
        only the finished ones had inside their margins. The copy is compacted in place, front to back.
        """
        rows = np.flatnonzero(self.mask[:, which].any(axis=1))
        if self.copied and len(rows) <= len(self.mask) // 2:
            self._keep(rows)

    def _keep(self, rows) -> None:
        step = max(1, BLOCK_VALUES // max(self.X.shape[1], 1))
        if not self.copied:  # a block of rows at a time: np.take would first make a non-C-ordered X contiguous
            copy = np.empty((len(rows), self.X.shape[1]), dtype=self.X.dtype)
            for start in range(0, len(rows), step):
                copy[start:start + step] = self.X[rows[start:start + step]]
            self.X, self.copied = copy, True
        else:  # within the copy: row i moves to position j <= i, so no row is overwritten before it is read
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                self.X[start:start + len(part)] = self.X[part]
            self.X = self.X[: len(rows)]
        self.mask, self.slack, self.labels = self.mask[rows], self.slack[rows], self.labels[rows]

    def gradient_and_statistics(self, W):
        """The gradient of every class in `columns` (W holds all classes), and the preconditioner's inputs.

        One blocked pass over the rows gives [X, 1]^T G (G = -2C y slack, the loss's gradient per row), and
        per class the count, the sum and the sum of squares of its rows with positive slack: the mean row
        and the diagonal of X_I^T X_I that `preconditioner` is built from.
        """
        G = (-2.0 * self.C * self.labels * self.slack).astype(self.X.dtype)
        weights = np.hstack([G, self.mask.astype(self.X.dtype)])
        k = len(self.columns)

        def work(block, rows):
            return np.vstack([weights[rows].T @ block, weights[rows, k:].T @ np.square(block)])

        products = blocked_sum(self.X, work, self.shares)  # rows: G's k, the mask's k, the squares' k
        gradient = W[:, self.columns].copy()
        gradient[:-1] += products[:k].T
        gradient[-1] += G.sum(axis=0, dtype=np.float64)
        counts = self.mask.sum(axis=0).astype(np.float64)
        return gradient, (counts, products[k:2 * k].T, products[2 * k:].T)

    def preconditioner(self, statistics):
        """M^-1 for conjugate gradients, per class: the Hessian's mean-row part exactly, the rest's diagonal.

        The generalised Hessian I + 2C X_I^T X_I (X with its column of ones) of CNN features has one huge
        eigenvalue, along the mean row of I (the features are non-negative), then a slowly decaying bulk.
        Its diagonal alone is dominated by that mean and scales the bulk badly. Writing X_I^T X_I as
        |I| u u^T (u the mean row) plus the centred scatter, M = Lambda + 2C |I| u u^T with Lambda = 1 + 2C
        (the centred scatter's diagonal), and M^-1 follows from Sherman-Morrison at O(d) per product.
        """
        counts, sums, squares = statistics
        mean = np.vstack([sums, counts]) / np.maximum(counts, 1.0)  # (d + 1, k): each class's mean row, 1 last
        weight = 2.0 * self.C * counts
        scatter = np.vstack([squares, counts]) - counts * mean * mean  # centred sums of squares per column
        diagonal = 1.0 + 2.0 * self.C * np.maximum(scatter, 0.0)
        scaled_mean = mean / diagonal
        factor = weight / (1.0 + weight * np.sum(mean * scaled_mean, axis=0))

        def solve(R, which):
            scaled = R / diagonal[:, which]
            return scaled - scaled_mean[:, which] * (factor[which] * np.sum(mean[:, which] * scaled, axis=0))

        return solve

    def hessian_product(self, V, which):
        """(I + 2C [X, 1]^T D [X, 1]) V for the classes `which` (positions in `columns`), one column each.

        The products see each column of V scaled to unit norm: with features around 1e9 a direction can be
        as long as the gradient, ~1e17, and X^T X V would overflow float32 where X^T X (V / |V|) does not.
        """
        norms = np.linalg.norm(V, axis=0)
        norms[norms == 0] = 1.0
        unit = V / norms
        weights, shift = unit[:-1].astype(self.X.dtype), unit[-1].astype(self.X.dtype)
        mask = self.mask[:, which].astype(self.X.dtype)

        def work(block, rows):
            Z = block @ weights
            Z += shift
            Z *= mask[rows]
            return np.hstack([Z.T @ block, Z.sum(axis=0, dtype=np.float64)[:, None]])

        product = blocked_sum(self.X, work, self.shares).T  # (d + 1, len(which)): the bias row last
        return V + (2.0 * self.C) * product * norms


class RowShares:
    """Runs a function on contiguous shares of the rows, one per thread of `pool` (None: all in this one)."""

    def __init__(self, pool=None, threads: int = 1):
        self.pool, self.threads = pool, threads if pool is not None else 1

    def map(self, share, n_rows: int) -> list:
        bounds = np.linspace(0, n_rows, self.threads + 1).astype(int)
        if self.threads == 1:
            return [share(0, n_rows)]
        return list(self.pool.map(share, bounds[:-1], bounds[1:]))


def blocked_sum(X: np.ndarray, work, shares: RowShares | None = None) -> np.ndarray:
    """The float64 sum of work(block, rows) over X's row blocks, each thread taking a share of the rows."""
    step = max(1, BLOCK_VALUES // max(X.shape[1], 1))

    def share(start, stop):
        total = None
        for first in range(start, stop, step):
            rows = slice(first, min(first + step, stop))
            part = work(X[rows], rows)
            total = part.astype(np.float64) if total is None else total + part
        return total

    parts = [part for part in (shares or RowShares()).map(share, len(X)) if part is not None]
    return np.sum(parts, axis=0)


def step_margins(X: np.ndarray, S: np.ndarray, shares: RowShares | None = None) -> np.ndarray:
    """[X, 1] S over every row, in float64 from products in X's dtype: how a step moves each margin."""
    weights = S[:-1].astype(X.dtype)
    out = np.empty((len(X), S.shape[1]))

    def share(start, stop):
        out[start:stop] = X[start:stop] @ weights

    (shares or RowShares()).map(share, len(X))
    out += S[-1]
    return out
