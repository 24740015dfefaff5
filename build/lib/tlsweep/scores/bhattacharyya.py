"""GBC, the Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022), after an optional PCA."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tlsweep.scores import _arrays
from tlsweep.stages.analysis.cka import centered_gram

VARIANCE_FLOOR = 1e-4  # as the published GBC code: a feature constant within a class would divide by 0


def _principal_components(x: np.ndarray, dims: int) -> np.ndarray:
    """The centred features projected on their `dims` leading principal axes (n x dims, float64), by the
    cheaper eigenproblem: the centred n x n Gram matrix (scores U sqrt(s)) or the d x d covariance (X_c V)."""
    n, d = x.shape
    dims = min(dims, n, d)
    if _arrays.cheaper_in_samples(n, d):
        s, u = np.linalg.eigh(centered_gram(x))
        return u[:, ::-1][:, :dims] * np.sqrt(np.maximum(s[::-1][:dims], 0.0))
    mean = np.zeros(d)
    for _, chunk in _arrays.chunks(x, axis=0):
        mean += chunk.sum(axis=0)
    mean /= n
    covariance = np.zeros((d, d))
    for _, chunk in _arrays.chunks(x, axis=0):
        chunk -= mean
        covariance += chunk.T @ chunk
    axes = np.linalg.eigh(covariance)[1][:, ::-1][:, :dims]
    return np.concatenate([(chunk - mean) @ axes for _, chunk in _arrays.chunks(x, axis=0)])


def gbc(features: np.ndarray, labels: np.ndarray, *, pca_dims: Optional[int] = 64) -> float:
    """GBC, the Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022, "Transferability Estimation using
    Bhattacharyya Class Separability"), as google-research's stable_transfer/transferability/gbc.py.

    Features are reduced by PCA to `pca_dims` dimensions (64, their configuration; at most min(n, d); None
    keeps the features as they are). Each class is a Gaussian with its mean and per-dimension (diagonal)
    variance (divided by the class size), floored at 1e-4. GBC = -sum over ordered class pairs i != j of
    exp(-D_B(i, j)), D_B the Bhattacharyya distance. It lies in [-K(K-1), 0] for K classes: 0 for classes far
    apart, -K(K-1) for classes on top of each other. Higher (closer to 0) is better. The variance floor is
    absolute, so the score depends on the features' scale. The published code also offers spherical
    Gaussians (its configuration's default); they are not implemented here.
    """
    if pca_dims is not None and (not isinstance(pca_dims, (int, np.integer)) or pca_dims < 1):
        raise ValueError(f"pca_dims should be None or an integer >= 1; received pca_dims={pca_dims!r}")
    x, classes, index = _arrays.features_and_classes(features, labels)
    if pca_dims is not None:
        x = _principal_components(x, int(pca_dims))
    counts = np.bincount(index)[:, None].astype(np.float64)
    means, variances = np.zeros((len(classes), x.shape[1])), np.zeros((len(classes), x.shape[1]))
    for start, chunk in _arrays.chunks(x, axis=1):
        columns = slice(start, start + chunk.shape[1])
        means[:, columns] = _arrays.class_sums(index, len(classes), chunk) / counts
        variances[:, columns] = _arrays.class_sums(index, len(classes), (chunk - means[index, columns]) ** 2) / counts
    variances = np.maximum(variances, VARIANCE_FLOOR)
    logs = np.log(variances)
    total = 0.0
    for i in range(len(classes) - 1):
        average = (variances[i] + variances[i + 1:]) / 2
        distance = (((means[i] - means[i + 1:]) ** 2 / average).sum(axis=1) / 8
                    + (np.log(average) - (logs[i] + logs[i + 1:]) / 2).sum(axis=1) / 2)
        total += np.exp(-distance).sum()
    return float(-2.0 * total)  # D_B is symmetric: each unordered pair stands for two ordered ones
