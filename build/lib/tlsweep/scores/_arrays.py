"""Validation and chunked float64 arithmetic that the scores share.

Features arrive as float32 feature maps of any width; these helpers check them once at the boundary and then
convert a chunk of about CHUNK_BYTES at a time to float64, so a wide cut is never copied whole.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 64 << 20  # float64 chunk converted (or k-NN similarities held) at a time


def features(values: np.ndarray, *, what: str) -> np.ndarray:
    """A 2-D (n, d) view of real, finite features; a feature map (n, H, W, C) is flattened per image."""
    x = np.asarray(values)
    if x.ndim < 2 or x.shape[0] == 0 or x[0].size == 0:
        raise ValueError(f"{what} should be features with one row per image, (n, d) or (n, H, W, C); "
                         f"received an array of shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{what} should hold real numbers; received dtype={x.dtype}")
    x = x.reshape(x.shape[0], -1)
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:  # integers could overflow; float16 has no fast BLAS
        x = x.astype(np.float64 if x.dtype.kind != "f" else np.float32)
    if not np.isfinite(np.sum(x, dtype=np.float64)):  # buffered: no float64 copy; a NaN or inf shows here
        step = max(1, CHUNK_BYTES // (8 * x.shape[1]))
        for start in range(0, x.shape[0], step):
            bad = np.argwhere(~np.isfinite(x[start:start + step]))
            if len(bad):
                raise ValueError(f"{what} should be finite; received {x[start + bad[0, 0], bad[0, 1]]} at row "
                                 f"{start + bad[0, 0]}, column {bad[0, 1]}")
    return x


def labels(values: np.ndarray, n: int, *, what: str) -> np.ndarray:
    """1-D integer labels, one per feature row (any integers: they need not be 0..K-1)."""
    y = np.asarray(values)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != n:
        raise ValueError(f"{what} should be integers, one per feature row ({n}); received dtype={y.dtype}, "
                         f"shape {y.shape}")
    return y


def features_and_classes(values: np.ndarray, targets: np.ndarray, *, what: str = "labels"
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated features, the sorted distinct labels, and each row's index into them (2 classes or more)."""
    x = features(values, what="features")
    distinct, index = np.unique(labels(targets, x.shape[0], what=what), return_inverse=True)
    if len(distinct) < 2:
        raise ValueError(f"{what} should hold at least 2 classes; received {len(distinct)}: {distinct.tolist()}")
    return x, distinct, index


def chunks(x: np.ndarray, *, axis: int):
    """(start, float64 copy) of consecutive row (axis 0) or column (axis 1) blocks of about CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // (8 * x.shape[1 - axis]))
    for start in range(0, x.shape[axis], step):
        yield start, (x[start:start + step] if axis == 0 else x[:, start:start + step]).astype(np.float64)


def class_sums(index: np.ndarray, classes: int, values: np.ndarray) -> np.ndarray:
    """Per class, the sum of the rows of `values` (n x m) whose class index is `index`: (classes x m)."""
    sums = np.zeros((classes, values.shape[1]))
    step = max(1, CHUNK_BYTES // (8 * max(classes, values.shape[1])))
    for start in range(0, len(index), step):
        block = index[start:start + step]
        onehot = np.zeros((len(block), classes))
        onehot[np.arange(len(block)), block] = 1.0
        sums += onehot.T @ values[start:start + step]
    return sums


def cheaper_in_samples(n: int, d: int) -> bool:
    """Whether an n x n eigenproblem (F F^T) costs less than a d x d one (F^T F): n d^2 + d^3 multiply-adds
    against n^2 d + n^3, which is whether n < d."""
    return n * n * d + n ** 3 < n * d * d + d ** 3
