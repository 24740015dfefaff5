"""LogME (You et al., ICML 2021) by the fixed-point iteration of You et al. 2022, on either Gram matrix, reduced
to tridiagonal form."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigvalsh_tridiagonal, lapack

from tlsweep.scores import _arrays

ITERATIONS, TOLERANCE, EPSILON = 11, 1e-3, 1e-5  # as the fixed-point paper's code (thuml/LogME)
ROUTES = ("auto", "samples", "features")


@dataclass(frozen=True)
class _Spectrum:
    """The Gram matrix G (F^T F or F F^T) in tridiagonal form, G = Q T Q^T, and what LogME needs of it.

    `s` are G's eigenvalues, from T alone. Each class's sums over the eigenvectors, sum_i z_i^2 f(s_i), are
    quadratic forms c^T f(T) c in c = Q^T w (w: the class's F^T y on the features route, its y on the samples
    route), so one tridiagonal solve per class and step replaces G's eigenvectors, the costliest part of a
    full eigendecomposition (`benchmarks/logme_spectrum.py`).
    """

    s: np.ndarray
    diagonal: np.ndarray
    off: np.ndarray  # T's sub- (= super-) diagonal
    c: np.ndarray  # Q^T w, one column per class
    samples: bool  # on the samples route z_i = sqrt(s_i) u_i^T y, so each sum carries one more factor T

    def sums(self, k: int, t: float) -> tuple[float, float]:
        """sum z^2 / (s + t)^2 and sum z^2 (s + 2t) / (s + t)^2 for class k: |m|^2 and |F m|^2 + 2t |m|^2."""
        c = self.c[:, k]
        if self.off.size == 0:  # a 1 x 1 G
            x = c / (self.diagonal + t)
        else:
            *_, x, info = lapack.dgtsv(self.off, self.diagonal + t, self.off, c[:, None])
            if info != 0:
                raise np.linalg.LinAlgError(f"T + {t} I is singular (dgtsv info={info})")
            x = x[:, 0]
        if not self.samples:
            m2 = x @ x
            return m2, c @ x + t * m2
        tx = self.diagonal * x
        tx[:-1] += self.off * x[1:]
        tx[1:] += self.off * x[:-1]
        m2 = x @ tx
        return m2, tx @ tx + 2 * t * m2


def _gram(x: np.ndarray, index: np.ndarray, classes: int, route: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(G, the class vectors w, one column per class, whether it is the samples route) on the cheaper route or
    the one asked for, accumulated in float64 a chunk at a time.

    The samples route uses G = F F^T (n x n) and w = y; the features route G = F^T F (d x d) and w = F^T y.
    Both give the same eigenvalues (up to the zeros beyond the rank) and the same sums.
    """
    n, d = x.shape
    samples = route == "samples" or (route == "auto" and _arrays.cheaper_in_samples(n, d))
    if samples:
        gram = np.zeros((n, n))
        for _, chunk in _arrays.chunks(x, axis=1):
            gram += chunk @ chunk.T
        w = np.zeros((n, classes))
        w[np.arange(n), index] = 1.0
        return gram, w, samples
    gram, w = np.zeros((d, d)), np.zeros((classes, d))
    for start, chunk in _arrays.chunks(x, axis=0):
        gram += chunk.T @ chunk
        w += _arrays.class_sums(index[start:start + len(chunk)], classes, chunk)
    return gram, w.T, samples


def _spectrum(x: np.ndarray, index: np.ndarray, classes: int, route: str) -> _Spectrum:
    """G and the class vectors w (`_gram`), reduced to tridiagonal form."""
    gram, w, samples = _gram(x, index, classes, route)
    size = len(gram)
    if size == 1:
        return _Spectrum(np.maximum(gram[0], 0.0), gram[0].copy(), np.zeros(0), w, samples)
    lwork = int(lapack.dsytrd_lwork(size, lower=1)[0])
    # G is symmetric, so its transpose is the same matrix in the column order LAPACK works in: no copy
    reduced, diagonal, off, tau, info = lapack.dsytrd(gram.T, lower=1, lwork=lwork, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd info={info}")
    c = np.asfortranarray(w)  # Q^T w: Q's reflectors are stored below T's subdiagonal, as LAPACK's dormtr reads
    c[1:], _, info = lapack.dormqr("L", "T", reduced[1:, :-1], tau, c[1:], lwork=max(1, classes) * 64)
    if info != 0:
        raise np.linalg.LinAlgError(f"dormqr info={info}")
    s = eigvalsh_tridiagonal(diagonal, off)
    return _Spectrum(np.maximum(s, 0.0), diagonal, off, c, samples)


def _log_evidence(spectrum: _Spectrum, counts: np.ndarray, n: int, d: int) -> np.ndarray:
    """Per class, the maximised log evidence per sample of Bayesian linear regression of its 0/1 target.

    The fixed-point iteration of You et al. (2022): with t = alpha / beta, the posterior mean m has
    |m|^2 = sum z^2 / (s + t)^2 and the residual |y - F m|^2 = |y|^2 - sum z^2 (s + 2t) / (s + t)^2; then
    gamma = sum s / (s + t), alpha = gamma / |m|^2, beta = (n - gamma) / residual, until t moves by 1e-3
    or less (11 steps at most). log|A| covers all d eigenvalues of A = alpha I + beta F^T F, so directions
    beyond the rank of F count log(alpha) each (thuml/LogME issue #23: their code drops them when n < d).
    """
    s, classes = spectrum.s, len(counts)
    alpha, beta = np.ones(classes), np.ones(classes)
    m2, res2 = np.zeros(classes), np.zeros(classes)
    live = np.ones(classes, dtype=bool)
    for _ in range(ITERATIONS):
        t = alpha / beta
        for k in np.flatnonzero(live):
            gamma = (s / (s + t[k])).sum()
            m2[k], fitted = spectrum.sums(k, t[k])
            res2[k] = counts[k] - fitted
            alpha[k] = gamma / (m2[k] + EPSILON)
            beta[k] = (n - gamma) / (res2[k] + EPSILON)
        live &= np.abs(alpha / beta - t) / t > TOLERANCE
        if not live.any():
            break
    log_det = np.log(alpha[:, None] + beta[:, None] * s).sum(axis=1) + (d - len(s)) * np.log(alpha)
    evidence = (d * np.log(alpha) + n * np.log(beta) - log_det - beta * res2 - alpha * m2
                - n * math.log(2 * math.pi)) / 2
    return evidence / n


def logme(features: np.ndarray, labels: np.ndarray, *, route: str = "auto") -> float:
    """LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"),
    computed by the fixed-point iteration of You et al. 2022 ("Ranking and Tuning Pre-trained Models").

    For each class a one-hot target is regressed on the features with a Gaussian prior (precision alpha) and
    noise (precision beta); the evidence is maximised over alpha and beta, and the score is the mean over
    classes of the log evidence per sample. Higher is better: the classes are more linearly predictable.
    Features are used as given (no centring, no bias), as in the published code.

    `route` picks the Gram matrix: "samples" (n x n, F F^T), "features" (d x d, F^T F) or "auto", the
    cheaper one (n x n when n < d). Both give the same score.
    """
    if route not in ROUTES:
        raise ValueError(f"route should be one of {ROUTES}; received route={route!r}")
    x, classes, index = _arrays.features_and_classes(features, labels)
    spectrum = _spectrum(x, index, len(classes), route)
    return float(_log_evidence(spectrum, np.bincount(index).astype(np.float64), *x.shape).mean())
