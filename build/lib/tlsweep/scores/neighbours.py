"""DINO's weighted k-NN classifier (Caron et al. 2021, eval_knn.py), evaluated in chunks of eval rows."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from tlsweep.scores import _arrays
from tlsweep.stages.analysis.cka import subsample_rows


def _inverse_norms(x: np.ndarray) -> np.ndarray:
    """1 / max(|row|, 1e-12) in float64, as torch's normalize in DINO: an all-zero row has similarity 0."""
    squares = np.zeros(x.shape[0])
    for start, chunk in _arrays.chunks(x, axis=0):
        squares[start:start + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    return 1.0 / np.maximum(np.sqrt(squares), 1e-12)


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values, ascending; among equal values the lowest index wins."""
    kth = np.partition(similarity, similarity.shape[1] - k, axis=1)[:, -k][:, None]
    above = similarity > kth
    tied = similarity == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(chosen)[1].reshape(len(similarity), k)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, eval_features: np.ndarray,
                 eval_labels: np.ndarray, k: int = 20, temperature: float = 0.07, *,
                 max_train: Optional[int] = None, seed: int = 0) -> float:
    """Accuracy of DINO's weighted k-NN classifier (Caron et al. 2021, "Emerging Properties in
    Self-Supervised Vision Transformers", eval_knn.py): a probe-free view of how well classes cluster.

    Rows are L2-normalised; each eval row takes its k most cosine-similar train rows, each voting for its
    class with weight exp(similarity / temperature), and is predicted as the class with the largest sum.
    Higher is better. Ties, which DINO leaves to torch's sort: among train rows equally similar at the k-th
    place, the lower row index is taken; among classes with equal votes, the smallest label wins. An eval
    label absent from train counts as wrong. Dot products are computed in the train features' precision
    (float32 stays float32) for a chunk of eval rows at a time, about 64 MB of similarities, so memory does not
    grow with the eval set.

    `max_train` keeps a seeded random subset of that many train rows (`seed`), for very wide features, where
    time and memory grow with train rows x width; None keeps them all.
    """
    train, classes, train_index = _arrays.features_and_classes(train_features, train_labels,
                                                                what="train_labels")
    evaluated = _arrays.features(eval_features, what="eval_features")
    truth = _arrays.labels(eval_labels, evaluated.shape[0], what="eval_labels")
    if evaluated.shape[1] != train.shape[1]:
        raise ValueError(f"train and eval features should have the same width; received {train.shape[1]} and "
                         f"{evaluated.shape[1]}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature should be a number > 0; received temperature={temperature!r}")
    if max_train is not None:
        if not isinstance(max_train, (int, np.integer)) or max_train < 1:
            raise ValueError(f"max_train should be None or an integer >= 1; received max_train={max_train!r}")
        rows = subsample_rows(train.shape[0], max_rows=int(max_train), seed=seed)
        train, train_index = train[rows], train_index[rows]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= train.shape[0]:
        raise ValueError(f"k should be an integer from 1 to the number of train rows ({train.shape[0]}); "
                         f"received k={k!r}")
    position = np.searchsorted(classes, truth).clip(0, len(classes) - 1)
    truth_index = np.where(classes[position] == truth, position, -1)
    train_scale, eval_scale = _inverse_norms(train), _inverse_norms(evaluated)
    correct = 0
    step = max(1, _arrays.CHUNK_BYTES // (8 * train.shape[0]))
    for start in range(0, evaluated.shape[0], step):
        block = evaluated[start:start + step].astype(train.dtype, copy=False) @ train.T
        similarity = block * eval_scale[start:start + step, None] * train_scale
        neighbours = _top_k(similarity, int(k))
        chosen = np.take_along_axis(similarity, neighbours, axis=1)
        weights = np.exp((chosen - chosen.max(axis=1, keepdims=True)) / temperature)  # no overflow; same argmax
        votes = np.zeros((len(similarity), len(classes)))
        np.add.at(votes, (np.arange(len(similarity))[:, None], train_index[neighbours]), weights)
        correct += int((votes.argmax(axis=1) == truth_index[start:start + step]).sum())
    return correct / evaluated.shape[0]
