"""Linear classifiers on frozen features; convergence is recorded as a result, never hidden."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC


log = logging.getLogger(__name__)

LOSSES = {"linear_svc": ("squared_hinge", "hinge"), "lbfgs_svc": ("squared_hinge",), "logreg": ("log_loss",)}
CLASSIFIERS = tuple(LOSSES)
DUAL = {"auto": "auto", "true": True, "false": False}
NORMALIZERS = ("none", "l2", "standardize")
AUTO = "auto"  # classifier.C=auto: chosen on validation over classifier.C_grid, then refit on train+val


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


def make_probe(*, name: str, C: float, loss: str, max_iter: int, tol: float, dual: str, seed: int,
               warm_start: bool = False):
    """The linear classifier `name` (settings checked by `tlsweep.validate`), unfitted."""
    if name == "lbfgs_svc":
        from tlsweep.stages.probe.lbfgs_svc import LbfgsSVC

        return LbfgsSVC(C=C, max_iter=max_iter, tol=tol, warm_start=warm_start)
    if name == "logreg":  # multinomial for more than two classes, as scikit-learn's default L-BFGS fits it
        return LogisticRegression(C=C, max_iter=max_iter, tol=tol, warm_start=warm_start, random_state=seed)
    return LinearSVC(C=C, loss=loss, max_iter=max_iter, tol=tol, dual=DUAL[str(dual).lower()], random_state=seed)


def make_search_probe(*, name: str, C: float, loss: str, max_iter: int, tol: float, dual: str, seed: int):
    """The probe that C=auto fits along its search path, warm-started from one C to the next.

    For the squared hinge (linear_svc, lbfgs_svc) it is `NewtonSVC`: liblinear's primal problem, solver
    (trust-region Newton) and stopping rule at the configured `tol`, but on float32 for every class at once
    and warm-started, which liblinear cannot do. The refit at the chosen C stays the configured estimator.
    """
    if loss == "squared_hinge":
        from tlsweep.stages.probe.newton_svc import NewtonSVC

        return NewtonSVC(C=C, max_iter=max_iter, tol=tol, warm_start=True)
    return make_probe(name=name, C=C, loss=loss, max_iter=max_iter, tol=tol, dual=dual, seed=seed, warm_start=True)


def make_normalizer(normalize: str):
    """`l2` scales each row to unit length; `standardize` learns per-feature mean and scale from the fit rows."""
    return {"none": "passthrough", "l2": Normalizer(), "standardize": StandardScaler()}[normalize]


def make_classifier(*, normalize: str = "none", **probe) -> Pipeline:
    return Pipeline([("normalize", make_normalizer(normalize)), ("probe", make_probe(**probe))])


def fit_classifier(*, estimator: Pipeline, X: np.ndarray, y: np.ndarray) -> FitResult:
    """Fit, timing it and keeping every warning the solver raised (then re-emitting them)."""
    log.info("fitting %s on %d x %d features", type(estimator[-1]).__name__, *X.shape)
    seconds, caught = _fit_recording_warnings(estimator, X, y)
    n_iter = int(np.max(estimator[-1].n_iter_))
    for item in caught:  # shown once, saying where it is recorded
        note = f" ({n_iter} iterations; recorded as converged=0)" if item.category is ConvergenceWarning else ""
        warnings.warn_explicit(f"{item.message}{note}", item.category, item.filename, item.lineno)
    converged = not any(issubclass(item.category, ConvergenceWarning) for item in caught)
    return FitResult(estimator, seconds, n_iter, converged, len(y), [_describe(item) for item in caught])


def search_C(
    *, normalize: str, grid: Sequence[float], X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
    y_val: np.ndarray, stride: int = 4, patience: int = 2, **probe,
) -> SearchResult:
    """Choose C by validation accuracy, coarse to fine over `grid`, each fit warm-started from the nearest C.

    The fits are `make_search_probe`'s: the configured problem at the configured tolerance, each starting
    from the solution at the nearest C fitted so far. The coarse pass fits every `stride`-th grid value,
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
    estimator = make_search_probe(C=grid[0], **probe)
    scores: dict[int, float] = {}
    fits: dict[int, tuple] = {}  # grid index -> (fitted probe, seconds, caught warnings), kept for the best only
    failed: list[str] = []

    def evaluate(index: int, estimator) -> None:
        estimator.set_params(C=grid[index])
        seconds, caught = _fit_recording_warnings(estimator, Z_train, y_train)
        scores[index] = float(np.mean(estimator.predict(Z_val) == y_val))
        log.info("C search: C=%g, val accuracy %.4f (%d iterations, %.1f s)", grid[index], scores[index],
                 int(np.max(estimator.n_iter_)), seconds)
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
                evaluate(index, copy.deepcopy(centre))
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
    best_fit = FitResult(pipeline, seconds, int(np.max(probe_fit.n_iter_)),
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
