"""The linear probes, a registry: one class per classifier, which `conf/classifier/NAME.yaml` names as its
`_target_` (as lightning-hydra-template's model configs do), made by Hydra's `instantiate`.

A probe says how to make its scikit-learn estimator at a given C, which losses it takes, how much memory its
fit holds per feature value (what `python -m tlsweep.layers` and the stage memory check budget), and what
`classifier.C=auto` fits along its search path: a warm-startable estimator where there is one. Adding a
classifier is its yaml and its class here; validation, the layers table, the help page and the docs read
the registry (`PROBES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

DUAL = {"auto": "auto", "true": True, "false": False}  # LinearSVC's dual, as classifier.dual spells it


@dataclass(frozen=True)
class Probe:
    """The settings of classifier.* that shape the estimator; a subclass is one classifier."""

    loss: str = "squared_hinge"
    max_iter: int = 1000
    tol: float = 1e-4
    dual: str = "auto"
    seed: int = 0

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    bytes_per_value: ClassVar[int]  # what its fit holds per feature value, the float32 features included
    warm_starts: ClassVar[bool] = False  # whether a search fit can start from the last C's solution
    about: ClassVar[str] = ""

    def estimator(self, C: float):
        """The unfitted scikit-learn estimator at `C`."""
        raise NotImplementedError

    def search_estimator(self, C: float):
        """What the C search fits along its path (`warm_starts`: it continues from the last C's solution)."""
        return self.estimator(C)

    def set_C(self, estimator, C: float):
        """`estimator`, set to `C` for the next fit of a search."""
        return estimator.set_params(C=C)


def _newton(probe: Probe, C: float):
    """liblinear's primal squared-hinge problem, solver (trust-region Newton) and stopping rule at the configured
    `tol`, on float32 for every class at once and warm-started, which liblinear cannot do."""
    from tlsweep.stages.probe.newton_svc import NewtonSVC

    return NewtonSVC(C=C, max_iter=probe.max_iter, tol=probe.tol, warm_start=True)


@dataclass(frozen=True)
class LinearSVCProbe(Probe):
    name: ClassVar[str] = "linear_svc"
    losses: ClassVar[tuple[str, ...]] = ("squared_hinge", "hinge")
    # the float32 features, scikit-learn's float64 copy and liblinear's 16-byte node per value
    bytes_per_value: ClassVar[int] = 4 + 8 + 16
    warm_starts: ClassVar[bool] = True
    about: ClassVar[str] = "sklearn.svm.LinearSVC (liblinear), the original study's"

    def estimator(self, C: float):
        from sklearn.svm import LinearSVC

        return LinearSVC(C=C, loss=self.loss, max_iter=self.max_iter, tol=self.tol, dual=DUAL[str(self.dual).lower()],
                         random_state=self.seed)

    def search_estimator(self, C: float):
        return _newton(self, C) if self.loss == "squared_hinge" else self.estimator(C)


@dataclass(frozen=True)
class LbfgsSVCProbe(Probe):
    name: ClassVar[str] = "lbfgs_svc"
    losses: ClassVar[tuple[str, ...]] = ("squared_hinge",)
    bytes_per_value: ClassVar[int] = 4
    warm_starts: ClassVar[bool] = True
    about: ClassVar[str] = "LinearSVC's squared-hinge problem by L-BFGS on the float32 features, without copies"

    def estimator(self, C: float):
        from tlsweep.stages.probe.lbfgs_svc import LbfgsSVC

        return LbfgsSVC(C=C, max_iter=self.max_iter, tol=self.tol)

    def search_estimator(self, C: float):
        return _newton(self, C)


@dataclass(frozen=True)
class LineSearchSVCProbe(Probe):
    name: ClassVar[str] = "line_search_svc"
    losses: ClassVar[tuple[str, ...]] = ("squared_hinge",)
    # the float32 features, and at most 1.2 times their size again: support rows copied or a Gram matrix,
    # with the threads' buffers (peak measured in docs/performance.md)
    bytes_per_value: ClassVar[int] = 4 + 5
    warm_starts: ClassVar[bool] = True
    about: ClassVar[str] = ("LinearSVC's squared-hinge problem by line-search Newton over the support rows, "
                            "float32 in place, on every core BLAS uses")

    def estimator(self, C: float, warm_start: bool = False):
        from tlsweep.stages.probe.line_search_svc import NewtonLineSearchSVC

        return NewtonLineSearchSVC(C=C, max_iter=self.max_iter, tol=self.tol, warm_start=warm_start)

    def search_estimator(self, C: float):
        return self.estimator(C, warm_start=True)


@dataclass(frozen=True)
class LogRegProbe(Probe):
    name: ClassVar[str] = "logreg"
    losses: ClassVar[tuple[str, ...]] = ("log_loss",)
    bytes_per_value: ClassVar[int] = 4
    warm_starts: ClassVar[bool] = True
    about: ClassVar[str] = "multinomial logistic regression by L-BFGS (CLIP's and DINOv2's linear probe)"

    def estimator(self, C: float, warm_start: bool = False):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, tol=self.tol, warm_start=warm_start,
                                  random_state=self.seed)

    def search_estimator(self, C: float):
        return self.estimator(C, warm_start=True)


@dataclass(frozen=True)
class RidgeProbe(Probe):
    name: ClassVar[str] = "ridge"
    losses: ClassVar[tuple[str, ...]] = ("squared_error",)
    bytes_per_value: ClassVar[int] = 4 + 4  # the features, and the centred copy its intercept needs
    about: ClassVar[str] = "sklearn.linear_model.RidgeClassifier, closed form; alpha = 1 / (2 C)"

    def estimator(self, C: float):
        from sklearn.linear_model import RidgeClassifier

        return RidgeClassifier(alpha=1.0 / (2.0 * C), max_iter=self.max_iter, tol=self.tol, random_state=self.seed)

    def set_C(self, estimator, C: float):
        return estimator.set_params(alpha=1.0 / (2.0 * C))


def _registry() -> dict[str, type[Probe]]:
    found, pending = {}, list(Probe.__subclasses__())
    while pending:
        probe = pending.pop(0)
        found[probe.name] = probe
        pending += probe.__subclasses__()
    return found


PROBES: dict[str, type[Probe]] = _registry()  # classifier.name -> its class
