"""LogME (You et al., ICML 2021) by the fixed-point iteration of You et al. 2022, on either eigenproblem."""

from __future__ import annotations

import math

import numpy as np

from tlsweep.scores import _arrays

ITERATIONS, TOLERANCE, EPSILON = 11, 1e-3, 1e-5  # as the fixed-point paper's code (thuml/LogME)
ROUTES = ("auto", "samples", "features")


def _spectrum(x: np.ndarray, index: np.ndarray, classes: int, route: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues s of F^T F (the squared singular values of F) and z = V^T F^T Y, one row per class.

    The samples route eigendecomposes F F^T = U diag(s) U^T and takes z = sqrt(s) U^T Y; the features route
    eigendecomposes F^T F = V diag(s) V^T and takes z = V^T (F^T Y). Both give the same s (up to the zeros
    beyond the rank) and z (up to the signs of its rows).
    """
    n, d = x.shape
    if route == "samples" or (route == "auto" and _arrays.cheaper_in_samples(n, d)):
        gram = np.zeros((n, n))
        for _, chunk in _arrays.chunks(x, axis=1):
            gram += chunk @ chunk.T
        s, u = np.linalg.eigh(gram)
        s = np.maximum(s, 0.0)
        return s, _arrays.class_sums(index, classes, u) * np.sqrt(s)
    covariance, class_sums = np.zeros((d, d)), np.zeros((classes, d))
    for start, chunk in _arrays.chunks(x, axis=0):
        covariance += chunk.T @ chunk
        class_sums += _arrays.class_sums(index[start:start + len(chunk)], classes, chunk)
    s, v = np.linalg.eigh(covariance)
    return np.maximum(s, 0.0), class_sums @ v


def _log_evidence(s: np.ndarray, z: np.ndarray, counts: np.ndarray, n: int, d: int) -> np.ndarray:
    """Per class, the maximised log evidence per sample of Bayesian linear regression of its 0/1 target.

    The fixed-point iteration of You et al. (2022): with t = alpha / beta, the posterior mean m has
    |m|^2 = sum z^2 / (s + t)^2 and the residual |y - F m|^2 = |y|^2 - sum z^2 (s + 2t) / (s + t)^2; then
    gamma = sum s / (s + t), alpha = gamma / |m|^2, beta = (n - gamma) / residual, until t moves by 1e-3
    or less (11 steps at most). log|A| covers all d eigenvalues of A = alpha I + beta F^T F, so directions
    beyond the rank of F count log(alpha) each (thuml/LogME issue #23: their code drops them when n < d).
    """
    alpha, beta = np.ones(len(z)), np.ones(len(z))
    m2, res2 = np.zeros(len(z)), np.zeros(len(z))
    live = np.ones(len(z), dtype=bool)
    z2 = z * z
    for _ in range(ITERATIONS):
        t = (alpha / beta)[live][:, None]
        gamma = (s / (s + t)).sum(axis=1)
        m2[live] = (z2[live] / (s + t) ** 2).sum(axis=1)
        res2[live] = counts[live] - (z2[live] * (s + 2 * t) / (s + t) ** 2).sum(axis=1)
        alpha[live] = gamma / (m2[live] + EPSILON)
        beta[live] = (n - gamma) / (res2[live] + EPSILON)
        live[live] = np.abs(alpha[live] / beta[live] - t[:, 0]) / t[:, 0] > TOLERANCE
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

    `route` picks the eigenproblem: "samples" (n x n, F F^T), "features" (d x d, F^T F) or "auto", the
    cheaper one (n x n when n < d). Both give the same score.
    """
    if route not in ROUTES:
        raise ValueError(f"route should be one of {ROUTES}; received route={route!r}")
    x, classes, index = _arrays.features_and_classes(features, labels)
    s, z = _spectrum(x, index, len(classes), route)
    return float(_log_evidence(s, z, np.bincount(index).astype(np.float64), *x.shape).mean())
