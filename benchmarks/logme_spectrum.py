"""LogME from the Gram matrix's tridiagonal form against its full eigendecomposition, on the same features.

`tlsweep.scores.logme` reduces G (F^T F, or F F^T when there are fewer rows than features) to tridiagonal form
and takes each class's sums over the eigenvectors as tridiagonal solves; the way before it called
`np.linalg.eigh(G)` for the eigenvectors too. Both feed the same fixed point (`evidence._log_evidence`), so the
table gives each one's seconds, their ratio, and how far apart the two scores are. Features: generated
ReLU-like ones (`benchmarks.fit_data.relu_like`, six classes), at the shapes of a job's train split.

    .venv/bin/python -m benchmarks.logme_spectrum
    .venv/bin/python -m benchmarks.logme_spectrum --shapes 7200x4096,2000x4096

Results go to benchmarks/results/logme_spectrum.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.fit_data import relu_like
from benchmarks.run import HERE, write_table
from tlsweep.scores import _arrays, evidence


@dataclass(frozen=True)
class Eigendecomposed:
    """The sums from G's eigenvalues s and each class's z over its eigenvectors, as the fixed point reads them."""

    s: np.ndarray
    z: np.ndarray  # one row per class

    def sums(self, k: int, t: float) -> tuple[float, float]:
        z2, shifted = self.z[k] ** 2, self.s + t
        return (z2 / shifted ** 2).sum(), (z2 * (self.s + 2 * t) / shifted ** 2).sum()


def by_eigh(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME as before: the same Gram matrix (`evidence._gram`), fully eigendecomposed."""
    x, classes, index = _arrays.features_and_classes(features, labels)
    n, d = x.shape
    gram, w, samples = evidence._gram(x, index, len(classes), "auto")
    s, vectors = np.linalg.eigh(gram)
    s = np.maximum(s, 0.0)
    z = (vectors.T @ w).T * (np.sqrt(s) if samples else 1.0)  # samples: z = sqrt(s) U^T y
    counts = np.bincount(index).astype(np.float64)
    return float(evidence._log_evidence(Eigendecomposed(s, z), counts, n, d).mean())


def timed(score, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    start = time.perf_counter()
    value = score(x, y)
    return value, time.perf_counter() - start


def compare(n: int, d: int) -> dict:
    x, y = relu_like(n, d)
    eigh_score, eigh_s = timed(by_eigh, x, y)
    tridiagonal_score, tridiagonal_s = timed(evidence.logme, x, y)
    return {"features (n x d)": f"{n}x{d}", "route": "samples" if _arrays.cheaper_in_samples(n, d) else "features",
            "eigh s": eigh_s, "tridiagonal s": tridiagonal_s, "eigh / tridiagonal": eigh_s / tridiagonal_s,
            "score": tridiagonal_score, "|difference|": abs(tridiagonal_score - eigh_score)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="7200x4096,7200x2048,7200x512,2000x4096",
                        help="n x d feature shapes, comma-separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    options = parser.parse_args()
    compare(600, 300)  # the first calls into LAPACK and numpy, paid before any timing
    rows = [compare(*map(int, shape.split("x"))) for shape in options.shapes.split(",")]
    write_table(options.out, "logme_spectrum", "LogME, tridiagonal form against full eigendecomposition", rows,
                floatfmt=".3g")


if __name__ == "__main__":
    main()
