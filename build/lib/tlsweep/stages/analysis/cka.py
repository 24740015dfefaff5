"""Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited").

It says how alike two layers' features are on the same images, whatever their widths: 1 for features equal
up to an orthogonal transform and a scale, near 0 for unrelated ones. It reads cached features
(`FeatureCache.rows`); no CNN runs.

By default CKA is debiased: HSIC is estimated with the unbiased U-statistic of Song et al. (2012, JMLR,
"Feature Selection via Dependence Maximization"), as Nguyen et al. (2021, "Do Wide and Deep Networks Learn
the Same Things?") and Kornblith et al.'s demo (`cka(..., debiased=True)`) do. The plain (biased) estimate
is pulled towards 1 when layers have many features and few images: two independent random layers of
2000 x 50000 score about 0.96 biased and about 0 debiased. The debiased value can be slightly negative;
`debiased=False` gives the plain estimate.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

CHUNK_BYTES = 64 << 20  # float64 columns converted at a time, so a wide float32 layer is never copied whole


def _rows(features: np.ndarray, *, what: str) -> np.ndarray:
    """A 2-D (n, d) view of one layer's features: a feature map (n, H, W, C) is flattened per image."""
    features = np.asarray(features)
    if features.ndim < 2 or features.shape[0] == 0:
        raise ValueError(f"{what} should be features with one row per image, (n, d) or (n, H, W, C); "
                         f"received an array of shape {features.shape}")
    return features.reshape(features.shape[0], -1)


def centered_gram(features: np.ndarray) -> np.ndarray:
    """The n x n Gram matrix of the column-centred features, accumulated in float64.

    Columns are centred and converted a chunk at a time, so memory is n x n plus one chunk, not a float64
    copy of a wide layer.
    """
    x = _rows(features, what="features")
    n, d = x.shape
    gram = np.zeros((n, n), dtype=np.float64)
    step = max(1, CHUNK_BYTES // (8 * n))
    for start in range(0, d, step):
        chunk = x[:, start:start + step].astype(np.float64)
        chunk -= chunk.mean(axis=0)
        gram += chunk @ chunk.T
    return gram


def _u_center(gram: np.ndarray) -> None:
    """U-centre a symmetric n x n matrix in place (Szekely and Rizzo 2014, "Partial distance correlation").

    With K the matrix with a zero diagonal, row sums r and total s, entry (i, j != i) becomes
    K_ij - (r_i + r_j) / (n - 2) + s / ((n - 1)(n - 2)), and the diagonal stays 0. For U-centred K and L,
    <K, L>_F / (n (n - 3)) is Song et al.'s unbiased HSIC, so their cosine is debiased CKA.
    """
    n = gram.shape[0]
    np.fill_diagonal(gram, 0.0)
    rows = gram.sum(axis=0) / (n - 2)
    total = rows.sum() / (n - 1)
    gram -= rows[:, None]
    gram -= rows[None, :]
    gram += total
    np.fill_diagonal(gram, 0.0)


def _normalized_gram(features: np.ndarray, *, debiased: bool) -> Optional[np.ndarray]:
    """The centred (or U-centred, when debiased) Gram matrix scaled to unit Frobenius norm; None for features
    that do not vary."""
    gram = centered_gram(features)
    if debiased:
        _u_center(gram)  # centring first changes nothing in exact arithmetic and keeps the sums small
    norm = np.linalg.norm(gram)
    if norm > 0:
        gram /= norm
        return gram
    return None


def _cka_of_grams(k: Optional[np.ndarray], l: Optional[np.ndarray]) -> float:
    return float("nan") if k is None or l is None else float(np.vdot(k, l))


def _check_rows_for_debiasing(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 images (its HSIC estimate divides by n - 3); received "
                         f"n={n}; use more images or debiased=False")


def _unbiased_feature_space_hsic(xc: np.ndarray, yc: np.ndarray) -> float:
    """n (n - 3) times Song et al.'s unbiased HSIC of centred features, from d x d products only.

    With K = X X^T and L = Y Y^T, whose rows sum to 0 once X and Y are centred, the estimator reduces to
    <K, L> - n / (n - 2) diag(K).diag(L) + tr(K) tr(L) / ((n - 1)(n - 2)), where <K, L> = ||Y^T X||_F^2
    and diag(K) holds the rows' squared norms.
    """
    n = xc.shape[0]
    dx, dy = np.einsum("ij,ij->i", xc, xc), np.einsum("ij,ij->i", yc, yc)
    plain = float(np.linalg.norm(yc.T @ xc) ** 2)
    return plain - n / (n - 2) * float(dx @ dy) + float(dx.sum() * dy.sum()) / ((n - 1) * (n - 2))


def linear_cka(x: np.ndarray, y: np.ndarray, *, debiased: bool = True) -> float:
    """Linear CKA between two layers' features on the same n images (row i of both is image i).

    With centred X (n x d1) and Y (n x d2), CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), which equals
    <K, L>_F / (||K||_F ||L||_F) for the Gram matrices K = X X^T and L = Y Y^T. The cheaper of the two is
    computed: the n x n Gram matrices when there are fewer images than features (early CNN layers), the
    d x d products otherwise; both give the same value, debiased or not. Sums are in float64, and the Gram
    route converts a chunk of columns at a time, so a wide float32 layer is never copied whole. NaN when
    either layer's features do not vary.

    `debiased` (default) replaces each HSIC by its unbiased estimate (module docstring); it needs n >= 4.
    """
    x, y = _rows(x, what="x"), _rows(y, what="y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y should have one row per image, the same images; received {x.shape[0]} "
                         f"rows in x and {y.shape[0]} in y")
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    _check_rows_for_debiasing(n, debiased)
    if n * (d1 + d2) < d1 * d1 + d2 * d2 + d1 * d2:  # multiply-adds of the Gram route vs the feature route
        return _cka_of_grams(_normalized_gram(x, debiased=debiased), _normalized_gram(y, debiased=debiased))
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    yc = y.astype(np.float64) - y.mean(axis=0, dtype=np.float64)
    if not debiased:
        scale = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
        return float(np.linalg.norm(yc.T @ xc) ** 2 / scale) if scale > 0 else float("nan")
    xx, yy = _unbiased_feature_space_hsic(xc, xc), _unbiased_feature_space_hsic(yc, yc)
    return _unbiased_feature_space_hsic(xc, yc) / math.sqrt(xx * yy) if xx > 0 and yy > 0 else float("nan")


def cka_matrix(a: Sequence[np.ndarray], b: Optional[Sequence[np.ndarray]] = None, *,
               debiased: bool = True) -> np.ndarray:
    """Linear CKA between every layer in `a` (rows) and every layer in `b` (columns), on the same images.

    With `b` None it compares `a` with itself: symmetric, with ones on the diagonal (NaN for a layer whose
    features do not vary). Each layer's n x n Gram matrix is built once, so keep n to a few thousand rows
    (`subsample_rows`): each takes n^2 x 8 bytes. `debiased` as in `linear_cka`.
    """
    if not a or (b is not None and not b):
        raise ValueError(f"a and b should each hold at least one layer's features; received {len(a)} in a"
                         + ("" if b is None else f" and {len(b)} in b"))
    rows = {_rows(features, what="each layer's features").shape[0] for features in [*a, *(b or [])]}
    if len(rows) > 1:
        raise ValueError(f"every layer's features should have a row per image, the same images; received "
                         f"row counts {sorted(rows)}")
    _check_rows_for_debiasing(rows.pop(), debiased)
    grams_a = [_normalized_gram(features, debiased=debiased) for features in a]
    if b is None:
        return _symmetric(grams_a)
    grams_b = [_normalized_gram(features, debiased=debiased) for features in b]
    return np.array([[_cka_of_grams(k, l) for l in grams_b] for k in grams_a])


def cka_matrix_of(layers: Sequence[Callable[[], np.ndarray]], *, debiased: bool = True) -> np.ndarray:
    """`cka_matrix(a)` for layers read one at a time: each is a function returning its features (the same n
    images for all), which are let go once its Gram matrix is made, so memory is the layers' n x n Gram
    matrices and one layer's rows."""
    grams, rows = [], set()
    for read in layers:
        features = _rows(read(), what="each layer's features")
        rows.add(features.shape[0])
        _check_rows_for_debiasing(features.shape[0], debiased)
        grams.append(_normalized_gram(features, debiased=debiased))
        del features
    if len(rows) > 1:
        raise ValueError(f"every layer's features should have a row per image, the same images; received "
                         f"row counts {sorted(rows)}")
    return _symmetric(grams)


def _symmetric(grams: Sequence[Optional[np.ndarray]]) -> np.ndarray:
    result = np.eye(len(grams))
    for i, j in ((i, j) for i in range(len(grams)) for j in range(i + 1, len(grams))):
        result[i, j] = result[j, i] = _cka_of_grams(grams[i], grams[j])
    for i, gram in enumerate(grams):
        if gram is None:
            result[i, i] = math.nan
    return result


def subsample_rows(n: int, *, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_rows` of `n` rows, the same for the same seed: CKA on a subsample costs
    seconds, and every layer compared must use the same rows."""
    if n < 0 or max_rows < 1:
        raise ValueError(f"n should be >= 0 and max_rows >= 1; received n={n}, max_rows={max_rows}")
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
