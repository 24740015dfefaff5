"""Transferability scores from frozen features alone: LogME, weighted k-NN accuracy and GBC.

Each says, before (or instead of) fitting a probe, how well a cut's features are likely to serve the target
classes. For all three, higher means better predicted transfer. They read features and integer labels
(any integers; they need not be 0..K-1) as numpy arrays, (n, d) or feature maps (n, H, W, C) that are
flattened per image; float32 stays float32 where a product allows, and Gram products are accumulated in
float64 a chunk at a time, so a wide float32 cut is never copied whole to float64.

`SCORES` maps a config name to a `Score`, called as `score(train_X, train_y, val_X, val_y)`; a job logs
its value as `score/<score.metric>`:

    name    metric          data                     function
    logme   logme           train only               `logme`
    knn     knn_accuracy    train -> val neighbours  `knn_accuracy`
    gbc     gbc             train only               `gbc`

Cost, for n rows, d features, K classes (n_t and n_e train and eval rows for k-NN); "added" memory is the
peak a call adds on top of its input features:

- LogME: the n x n route (eigenvectors of F F^T) when n < d, as for flattened early cuts, the d x d route
  (F^T F) otherwise. Time: n d min(n, d) multiply-adds in float64 for the Gram matrix, then an
  eigendecomposition of min(n, d)^3 order, which dominates from min(n, d) of about 2000 on. Added memory
  (Gram matrix, eigenvectors, LAPACK work, one 64 MB float64 chunk) grows as min(n, d)^2: 0.24 GB at 2000
  and 0.72 GB at 4000 in the table below, whatever the width. Subsample the rows when both n and d are large.
- k-NN: n_e n_t d multiply-adds in the train features' precision. Added memory: a few arrays of one chunk
  of eval rows x n_t similarities (about 64 MB each), whatever n_e; `max_train` bounds n_t.
- GBC: the PCA costs what LogME's eigenproblem does (centred, same route rule); then K^2 p for the class
  pairs, p <= 64 dimensions.

Measured by `python -m benchmarks.scores_cost` (float32 Gaussian features, 10 classes), twice, on 2 shared
cores of an "Intel(R) Xeon(R) Processor" (its /proc/cpuinfo name), with load averages 2.9 and 4.3 at the
start from other work: the times are those two runs' and vary that much with the load.

    score          n       d  eval rows  max_train  route  seconds (2 runs)  added peak GB
    logme      10000     512                        d x d    2.4,  3.6        0.06
    logme       5000    2048                        d x d   10.9, 14.0        0.19
    logme       2000   25088                        n x n    5.6, 14.8        0.24
    logme       2000  100352                        n x n   15.1, 15.4        0.23
    logme       4000   25088                        n x n   36.0, 33.9        0.72
    gbc        10000     512                        d x d    0.7,  1.1        0.16
    gbc         2000   25088                        n x n    6.9,  8.4        0.21
    knn        10000     512       2000                      0.9,  1.3        0.32
    knn         5000   25088       1000                      3.4,  4.6        0.19
    knn         5000   25088       1000       1000           0.9,  2.4        0.24
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tlsweep.scores.bhattacharyya import gbc
from tlsweep.scores.evidence import logme
from tlsweep.scores.neighbours import knn_accuracy

__all__ = ["SCORES", "Score", "Scored", "gbc", "knn_accuracy", "logme", "score_features"]


@dataclass(frozen=True)
class Score:
    """A registry entry: the metric a job logs (as `score/<metric>`) and the function behind it, called with
    train and val features and labels; options (k=..., pca_dims=...) pass through to the function."""

    metric: str
    function: Callable[..., float]
    uses_val: bool
    fit_to: Callable[[int], dict] = lambda rows: {}  # options for `rows` train rows, where a default would not fit

    def __call__(self, train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray, val_y: np.ndarray,
                 **options) -> float:
        options = {**self.fit_to(len(train_y)), **options}
        if self.uses_val:
            return self.function(train_X, train_y, val_X, val_y, **options)
        return self.function(train_X, train_y, **options)


SCORES: dict[str, Score] = {
    "logme": Score("logme", logme, uses_val=False),
    # k=20 neighbours, or every train row when there are fewer (a few-shot probe)
    "knn": Score("knn_accuracy", knn_accuracy, uses_val=True, fit_to=lambda rows: {"k": min(20, rows)}),
    "gbc": Score("gbc", gbc, uses_val=False),
}


MAX_ROWS = 10000  # train rows a job scores (a seeded subsample beyond): LogME's and GBC's cost grows as min(n, d)^3


@dataclass(frozen=True)
class Scored:
    """One score of a cut's features: its value, and what it cost this job."""

    value: float
    seconds: float
    cached: bool = False  # read back from the feature cache, where an earlier job recorded it; seconds: the read


def score_features(names: Sequence[str], train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray,
                   val_y: np.ndarray, *, max_rows: int = MAX_ROWS, seed: int = 0) -> dict[str, Scored]:
    """Each score `names` picks (keys of SCORES), on at most `max_rows` seeded train rows, timed; what a job logs
    as score/<metric> and score_seconds/<name>."""
    unknown = [name for name in names if name not in SCORES]
    if unknown:
        raise ValueError(f"scores should name entries of {list(SCORES)}; received {list(names)} ({unknown} unknown)")
    if len(train_y) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(train_y), size=max_rows, replace=False))
        train_X, train_y = train_X[rows], train_y[rows]
    found = {}
    for name in names:
        start = time.perf_counter()
        try:
            value = SCORES[name](train_X, train_y, val_X, val_y)
        except (ValueError, np.linalg.LinAlgError) as err:  # a score is a side result: the probe still runs
            warnings.warn(f"score {name} not computed on these features: {err}", RuntimeWarning)
            continue
        found[name] = Scored(float(value), time.perf_counter() - start)
    return found
