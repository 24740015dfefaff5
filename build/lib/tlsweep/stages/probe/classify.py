"""Fitting a probe on frozen features, or choosing its C on validation; convergence is recorded as a result,
never hidden."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from hydra.utils import instantiate
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from tlsweep.config import ClassifierConfig
from tlsweep.stages.probe.probes import Probe


log = logging.getLogger(__name__)

NORMALIZERS = ("none", "l2", "standardize")
AUTO = "auto"  # classifier.C=auto: chosen on validation over classifier.C_grid, then refit


@dataclass(frozen=True)
class FitResult:
    estimator: Pipeline  # normalisation, then the probe
    fit_seconds: float
    n_iter: int
    converged: bool
    n_fit: int  # rows the probe was fitted on
    warnings: list = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    """C chosen on validation: every C tried (ascending) with its val accuracy, and the fit that won."""

    Cs: list
    val_accuracy: list
    selected_C: float
    best: FitResult  # fitted on the train rows at selected_C: what train and val are reported on
    search_seconds: float


def probe_for(spec: ClassifierConfig, *, seed: int) -> Probe:
    """The probe classifier.* names (its `_target_`), with its settings; checked by `tlsweep.validate`."""
    return instantiate({"_target_": spec._target_, "loss": spec.loss, "max_iter": spec.max_iter, "tol": spec.tol,
                        "dual": str(spec.dual), "seed": seed})


def make_normalizer(normalize: str):
    """`l2` scales each row to unit length; `standardize` learns per-feature mean and scale from the fit rows."""
    return {"none": "passthrough", "l2": Normalizer(), "standardize": StandardScaler()}[normalize]


def make_classifier(*, probe: Probe, C: float, normalize: str = "none") -> Pipeline:
    """Normalisation, then the probe's estimator at `C`, unfitted."""
    return Pipeline([("normalize", make_normalizer(normalize)), ("probe", probe.estimator(C))])


def fit_classifier(*, estimator: Pipeline, X: np.ndarray, y: np.ndarray) -> FitResult:
    """Fit, timing it and keeping every warning the solver raised (then re-emitting them)."""
    log.info("fitting %s on %d x %d features", type(estimator[-1]).__name__, *X.shape)
    seconds, caught = _fit_recording_warnings(estimator, X, y)
    n_iter = iterations(estimator[-1])
    for item in caught:  # shown once, saying where it is recorded
        note = f" ({n_iter} iterations; recorded as converged=0)" if item.category is ConvergenceWarning else ""
        warnings.warn_explicit(f"{item.message}{note}", item.category, item.filename, item.lineno)
    converged = not any(issubclass(item.category, ConvergenceWarning) for item in caught)
    return FitResult(estimator, seconds, n_iter, converged, len(y), [_describe(item) for item in caught])


def iterations(estimator) -> int:
    """The solver's iterations (the slowest class's); 1 for a closed-form fit, which has none."""
    n_iter = getattr(estimator, "n_iter_", None)
    return 1 if n_iter is None else int(np.max(n_iter))


def search_C(
    *, probe: Probe, normalize: str, grid: Sequence[float], X_train: np.ndarray, y_train: np.ndarray,
    X_val: np.ndarray, y_val: np.ndarray, stride: int = 4, patience: int = 2,
) -> SearchResult:
    """Choose C by validation accuracy, coarse to fine over `grid`, each fit warm-started from the nearest C.

    The fits are the probe's `search_estimator`: the configured problem at the configured tolerance, each
    starting from the solution at the nearest C fitted so far where the probe `warm_starts`. The coarse pass fits every `stride`-th grid value,
    smallest C first, and stops once `patience` values in a row past a peak have not beaten it: there,
    larger C only costs more solver iterations. (The flat, underfit start of the path, where every tiny C
    scores the same, never stops it.) The fine pass then halves the step around the best value until it
    reaches the grid's own spacing, as CLIP's linear-probe search does; both candidates of a step start from
    the best value's solution. Ties go to the smaller C. Test data never enters: it is not an argument.
    """
    start = time.perf_counter()
    grid = sorted(set(float(C) for C in grid))
    normalizer = make_normalizer(normalize)
    Z_train = X_train if normalizer == "passthrough" else normalizer.fit_transform(X_train)
    Z_val = X_val if normalizer == "passthrough" else normalizer.transform(X_val)
    estimator = probe.search_estimator(grid[0])
    scores: dict[int, float] = {}
    fits: dict[int, tuple] = {}  # grid index -> (fitted probe, seconds, caught warnings), kept for the best only
    failed: list[str] = []

    def evaluate(index: int, estimator) -> None:
        probe.set_C(estimator, grid[index])
        seconds, caught = _fit_recording_warnings(estimator, Z_train, y_train)
        scores[index] = float(np.mean(estimator.predict(Z_val) == y_val))
        log.debug("C search: C=%g, val accuracy %.4f (%d iterations, %.1f s)", grid[index], scores[index],
                  iterations(estimator), seconds)
        if any(issubclass(item.category, ConvergenceWarning) for item in caught):
            failed.append(f"{grid[index]:g}")
        if max(scores, key=lambda i: (scores[i], -i)) == index:
            fits.clear()
            fits[index] = (copy.deepcopy(estimator), seconds, caught)

    coarse = list(range(0, len(grid), stride))
    coarse += [len(grid) - 1] if coarse[-1] != len(grid) - 1 else []
    best, stale = coarse[0], 0
    for index in coarse:  # each fit starts from the last one's solution, the nearest C fitted so far
        evaluate(index, estimator)
        if scores[index] > scores[best]:
            best, stale = index, 0
        elif index != best and scores[best] > scores[coarse[0]]:  # past a peak, not on the underfit plateau
            stale += 1
        if stale >= patience:
            break
    step = stride // 2
    while step >= 1:  # binary refinement around the best so far: half the coarse stride, then half again
        centre = fits[best][0]  # the nearest C fitted so far to both sides: each starts from its solution
        for index in (best - step, best + step):
            if 0 <= index < len(grid) and index not in scores:
                evaluate(index, copy.deepcopy(centre) if probe.warm_starts else probe.search_estimator(grid[index]))
        best = max(scores, key=lambda i: (scores[i], -i))
        step //= 2
    (selected, (probe_fit, seconds, caught)), = fits.items()
    if failed:  # one warning for the whole search, recorded with the fit's own
        warnings.warn(f"{len(failed)} of {len(scores)} fits in the C search did not converge (C={', '.join(failed)}); "
                      "increase classifier.max_iter", ConvergenceWarning)
    pipeline = Pipeline([("normalize", normalizer), ("probe", probe_fit)])
    order = sorted(scores)
    log.info("C search: %d of %d grid values fitted; C=%g has the best val accuracy, %.4f",
             len(scores), len(grid), grid[selected], scores[selected])
    best_fit = FitResult(pipeline, seconds, iterations(probe_fit),
                         not any(issubclass(item.category, ConvergenceWarning) for item in caught), len(y_train),
                         [_describe(item) for item in caught] + [f"ConvergenceWarning: search did not converge at C={C}"
                                                                 for C in failed])
    return SearchResult([grid[i] for i in order], [scores[i] for i in order], grid[selected], best_fit,
                        time.perf_counter() - start)


def _fit_recording_warnings(estimator, X: np.ndarray, y: np.ndarray) -> tuple[float, list]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X, y)
    return time.perf_counter() - start, list(caught)


def _describe(item: warnings.WarningMessage) -> str:
    return f"{item.category.__name__}: {item.message}"
