"""Linear classifiers on frozen features; convergence is recorded as a result, never hidden."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from tlsweep.errors import ConfigError

log = logging.getLogger(__name__)

CLASSIFIERS = ("linear_svc", "lbfgs_svc")
LOSSES = ("squared_hinge", "hinge")
DUAL = {"auto": "auto", "true": True, "false": False}


@dataclass
class FitResult:
    estimator: object
    fit_seconds: float
    n_iter: int
    converged: bool
    warnings: list = field(default_factory=list)


def validate_classifier(*, name: str, C: float, loss: str, max_iter: int, tol: float, dual: str) -> None:
    """Check classifier settings before any work starts."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"classifier.name should be one of {list(CLASSIFIERS)}; received classifier.name={name!r}")
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not np.isfinite(C) or C <= 0:
        raise ConfigError(f"classifier.C should be a positive number; received classifier.C={C!r}")
    if loss not in LOSSES or (name == "lbfgs_svc" and loss != "squared_hinge"):
        allowed = ["squared_hinge"] if name == "lbfgs_svc" else list(LOSSES)
        raise ConfigError(f"classifier.loss should be one of {allowed} for {name}; received classifier.loss={loss!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"classifier.max_iter should be an integer >= 1; received classifier.max_iter={max_iter!r}")
    if not tol > 0:
        raise ConfigError(f"classifier.tol should be a positive number; received classifier.tol={tol!r}")
    if str(dual).lower() not in DUAL:
        raise ConfigError(f"classifier.dual should be one of {list(DUAL)}; received classifier.dual={dual!r}")


def make_classifier(*, name: str, C: float, loss: str, max_iter: int, tol: float, dual: str, seed: int):
    validate_classifier(name=name, C=C, loss=loss, max_iter=max_iter, tol=tol, dual=dual)
    if name == "lbfgs_svc":
        from tlsweep.lbfgs_svc import LbfgsSVC

        return LbfgsSVC(C=C, max_iter=max_iter, tol=tol)
    return LinearSVC(C=C, loss=loss, max_iter=max_iter, tol=tol, dual=DUAL[str(dual).lower()], random_state=seed)


def fit_classifier(*, estimator, X: np.ndarray, y: np.ndarray) -> FitResult:
    """Fit, timing it and keeping every warning the solver raised (then re-emitting them)."""
    log.info("fitting %s on %d x %d features", type(estimator).__name__, *X.shape)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X, y)
    seconds = time.perf_counter() - start
    messages = []
    for item in caught:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        messages.append(f"{item.category.__name__}: {item.message}")
    not_converged = any(issubclass(item.category, ConvergenceWarning) for item in caught)
    n_iter = int(np.max(estimator.n_iter_))
    if not_converged:
        log.warning("the solver did not converge in %d iterations; recorded as converged=0", n_iter)
    return FitResult(estimator, seconds, n_iter, not not_converged, messages)
