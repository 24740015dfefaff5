"""`classifier.name=lbfgs_svc` solves LinearSVC's problem: same accuracy, float32 in place, honest convergence.
So does `NewtonSVC`, the C search's solver: liblinear's objective value, reached faster from a warm start."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from tlsweep.stages.probe import newton_svc
from tlsweep.stages.probe.classify import fit_classifier, make_classifier
from tlsweep.stages.probe.lbfgs_svc import LbfgsSVC
from tlsweep.stages.probe.newton_svc import NewtonSVC, squared_hinge_objective
from tlsweep.stages.probe.probes import LbfgsSVCProbe


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16).astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def _two_digits():
    X_train, X_test, y_train, y_test = _digits()
    return X_train[y_train < 2], X_test[y_test < 2], y_train[y_train < 2], y_test[y_test < 2]


def _relu_features(n=800, d=150, classes=4, seed=0):
    """Wide, half-zero float32 features like a ReLU cut, with a weak class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    X[:, :classes] += 0.8 * np.eye(classes, dtype=np.float32)[y]
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


@pytest.mark.parametrize("data", [_digits, _relu_features], ids=["digits", "relu_features"])
@pytest.mark.parametrize("C", [0.01, 0.1, 1.0])
def test_same_accuracy_as_linear_svc_within_half_a_point(data, C):
    X_train, X_test, y_train, y_test = data()
    reference = LinearSVC(C=C, random_state=0).fit(X_train, y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it must converge on these, not just score well
        ours = LbfgsSVC(C=C).fit(X_train, y_train)
    gap = abs(ours.score(X_test, y_test) - reference.score(X_test, y_test))
    assert gap <= 0.005, f"test accuracy differs by {100 * gap:.2f} points at C={C}"
    assert abs(ours.score(X_train, y_train) - reference.score(X_train, y_train)) <= 0.005
    # the same problem, solved: the objective is as close to its minimum as L-BFGS's own stopping rule
    # guarantees. (Coefficients are not compared: two fits that stop at a tolerance differ in them by
    # amounts that depend on the CPU's arithmetic, while the objective's distance to its minimum does not.)
    assert _objective(ours, X_train, y_train, C) - _minimum(X_train, y_train, C) <= _lbfgs_bound(X_train, y_train, C)


def test_two_classes_give_one_hyperplane_like_linear_svc():
    X_train, X_test, y_train, y_test = _digits()
    keep, keep_test = y_train < 2, y_test < 2
    ours = LbfgsSVC(C=0.1).fit(X_train[keep], y_train[keep])
    reference = LinearSVC(C=0.1, random_state=0).fit(X_train[keep], y_train[keep])
    assert ours.coef_.shape == reference.coef_.shape == (1, 64)
    assert list(ours.classes_) == [0, 1]
    assert (ours.score(X_test[keep_test], y_test[keep_test])
            >= reference.score(X_test[keep_test], y_test[keep_test]) - 0.005)


def test_fits_float32_without_copying_the_features():
    X_train, _, y_train, _ = _relu_features(n=3000, d=1000)
    tracemalloc.start()
    with pytest.warns(ConvergenceWarning):  # 5 iterations are not enough; memory is what this test checks
        estimator = LbfgsSVC(C=0.1, max_iter=5).fit(X_train, y_train)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert estimator.coef_.dtype == np.float32
    assert peak < 0.25 * X_train.nbytes, f"fit allocated {peak} bytes for {X_train.nbytes} bytes of features"


def test_unconverged_fit_is_reported_through_tlsweep():
    X_train, _, y_train, _ = _relu_features()
    estimator = make_classifier(probe=LbfgsSVCProbe(max_iter=2), C=1.0)
    with pytest.warns(ConvergenceWarning, match="increase classifier.max_iter"):
        result = fit_classifier(estimator=estimator, X=X_train, y=y_train)
    assert result.converged is False and result.n_iter == 2


def _objective(estimator, X, y, C) -> float:
    """The squared-hinge objective (penalised bias) of a fitted one-vs-rest probe, in float64."""
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    W = np.vstack([estimator.coef_.T, estimator.intercept_]).astype(np.float64)
    return float(squared_hinge_objective(X.astype(np.float64), Y, W, C).sum())


def _minimum(X, y, C) -> float:
    """The objective's minimum, to float64 precision: liblinear's primal solver in float64 at tol=1e-12."""
    best = LinearSVC(C=C, dual=False, tol=1e-12, max_iter=100_000).fit(X.astype(np.float64), y)
    return _objective(best, X, y, C)


def _gradients(X, y, C, coef=None, intercept=None) -> np.ndarray:
    """The objective's gradient per class (columns), in float64, at (coef, intercept) or at w = 0."""
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    X1 = np.hstack([X.astype(np.float64), np.ones((len(X), 1))])
    W = np.zeros((X1.shape[1], Y.shape[1])) if coef is None else np.vstack([coef.T, intercept]).astype(np.float64)
    return W - X1.T @ (2.0 * C * Y * np.maximum(0.0, 1.0 - Y * (X1 @ W)))


def _liblinear_eps(y, tol=1e-4) -> np.ndarray:
    """liblinear's gradient tolerance per class, relative to the gradient at w = 0: tol * min(n_pos, n_neg) / n."""
    Y = LabelBinarizer().fit_transform(y)
    positives = Y.sum(axis=0)
    return tol * np.maximum(np.minimum(positives, len(y) - positives), 1) / len(y)


def _liblinear_bound(X, y, C, tol=1e-4) -> float:
    """How far above its minimum a fit meeting liblinear's stopping rule can be.

    The objective is 1-strongly convex (its Hessian is at least the identity), so f(w) - f* <= |g(w)|^2 / 2,
    and the rule stops class c once |g_c| <= eps_c |g_c(0)|.
    """
    return float(np.sum(0.5 * (_liblinear_eps(y, tol) * np.linalg.norm(_gradients(X, y, C), axis=0)) ** 2))


def _lbfgs_bound(X, y, C, tol=1e-4) -> float:
    """The same for LbfgsSVC's rule: every gradient entry within tol * max |g(0)|, over all p parameters."""
    at_zero = _gradients(X, y, C)
    return float(0.5 * at_zero.size * (tol * np.abs(at_zero).max()) ** 2)


@pytest.mark.parametrize("data", [_digits, _two_digits, _relu_features],
                         ids=["digits", "two_digits", "relu_features"])
@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_newton_svc_reaches_liblinears_objective_value(data, C):
    X_train, X_test, y_train, y_test = data()
    reference = LinearSVC(C=C, dual=False, random_state=0).fit(X_train, y_train)  # liblinear's own TRON, tol 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = NewtonSVC(C=C).fit(X_train, y_train)  # float32 in place, every class at once
    assert ours.coef_.dtype == np.float32 and ours.coef_.shape == reference.coef_.shape
    # the same stopping rule, so both values lie within the rule's bound above the minimum
    minimum, bound = _minimum(X_train, y_train, C), _liblinear_bound(X_train, y_train, C)
    assert _objective(reference, X_train, y_train, C) - minimum <= bound  # the bound holds for liblinear too
    assert _objective(ours, X_train, y_train, C) - minimum <= bound
    assert np.mean(ours.predict(X_test) == reference.predict(X_test)) >= 0.99


def test_newton_svc_warm_start_starts_from_the_last_solution(monkeypatch):
    X_train, _, y_train, _ = _digits()
    cold = NewtonSVC(C=1.0).fit(X_train, y_train)
    warm = NewtonSVC(C=0.5, warm_start=True).fit(X_train, y_train).set_params(C=1.0).fit(X_train, y_train)
    assert warm.n_iter_[0] < cold.n_iter_[0]
    minimum, bound = _minimum(X_train, y_train, 1.0), _liblinear_bound(X_train, y_train, 1.0)
    assert _objective(warm, X_train, y_train, 1.0) - minimum <= bound
    # a solution for other classes is no start: the fit starts from w = 0
    starts, solve = [], newton_svc.trust_region_newton

    def recording(X, Y, *, W, **kwargs):
        starts.append(W)
        return solve(X, Y, W=W, **kwargs)

    monkeypatch.setattr(newton_svc, "trust_region_newton", recording)
    keep = y_train < 3
    warm.fit(X_train[keep], y_train[keep])
    warm.fit(X_train[keep], y_train[keep])
    assert starts[0] is None and starts[1] is not None


def test_newton_svc_reports_an_unconverged_fit():
    X_train, _, y_train, _ = _relu_features()
    with pytest.warns(ConvergenceWarning, match="increase classifier.max_iter"):
        estimator = NewtonSVC(C=10.0, max_iter=1).fit(X_train, y_train)
    assert estimator.n_iter_[0] == 1


def test_newton_svc_counts_every_trust_region_iteration_accepted_or_not(monkeypatch):
    solves, cg = [], newton_svc._steihaug_cg

    def counting(*args, **kwargs):
        solves.append(1)
        return cg(*args, **kwargs)

    monkeypatch.setattr(newton_svc, "_steihaug_cg", counting)
    X_train, _, y_train, _ = _digits()
    with pytest.warns(ConvergenceWarning, match="reached max_iter"):
        estimator = NewtonSVC(C=1000.0, max_iter=5).fit(X_train, y_train)
    assert len(solves) == estimator.n_iter_[0] == 5  # one CG solve per iteration, all classes at once


def _assert_honest(estimator, X, y, caught):
    """No ConvergenceWarning only if every class's float64 gradient met liblinear's rule."""
    warned = any(issubclass(item.category, ConvergenceWarning) for item in caught)
    at_zero = np.linalg.norm(_gradients(X, y, estimator.C), axis=0)
    norms = np.linalg.norm(_gradients(X, y, estimator.C, estimator.coef_, estimator.intercept_), axis=0)
    assert warned or np.all(norms <= _liblinear_eps(y, estimator.tol) * at_zero), norms / at_zero
    assert estimator.n_iter_[0] <= estimator.max_iter


def _huge_pixels(rng):
    # digit-like pixel values times 1e9, random labels, C=1e5: the trust radius once shrank to 0 and the fit
    # ran thousands of rejected iterations, since only accepted ones counted
    return (rng.integers(0, 17, (200, 20)) * 1e9).astype(np.float32), rng.integers(0, 4, 200), 1e5


def _huge_noise(rng):
    # float32 products of X^T X d overflowed here, the trust radius became NaN and the fit never ended
    y = rng.integers(0, 3, 200)
    return (rng.standard_normal((200, 20)) * 1e12).astype(np.float32), y, 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", [_huge_pixels, _huge_noise], ids=["features_1e9_C_1e5", "random_labels_1e12"])
def test_newton_svc_always_ends_and_reports_only_the_convergence_it_reached(data):
    X, y, C = data(np.random.default_rng(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = NewtonSVC(C=C).fit(X, y)
    _assert_honest(estimator, X, y, caught)


@pytest.mark.timeout(60)
def test_newton_svc_stops_with_a_warning_when_float32_products_overflow():
    rng = np.random.default_rng(0)
    X, y = (rng.random((100, 10)) * 1e20).astype(np.float32), rng.integers(0, 2, 100)
    with pytest.warns(RuntimeWarning, match="overflow"), pytest.warns(ConvergenceWarning, match="overflowed"):
        estimator = NewtonSVC().fit(X, y)
    assert estimator.n_iter_[0] == 1 and np.isfinite(estimator.coef_).all()


def test_newton_svc_does_not_call_a_float32_precision_limit_convergence():
    # tol=1e-10 asks for a gradient float32 products cannot resolve: the steps stop changing the objective
    # long before max_iter, which liblinear would take for convergence; here it is reported
    X_train, _, y_train, _ = _digits()
    with pytest.warns(ConvergenceWarning, match="no longer change the objective"):
        estimator = NewtonSVC(C=1.0, tol=1e-10).fit(X_train, y_train)
    assert estimator.n_iter_[0] < 100


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e9])
@pytest.mark.parametrize("C", [1e-3, 1.0, 1e3])
def test_newton_svc_reports_convergence_only_when_the_float64_gradient_meets_tol(scale, C):
    X_train, _, y_train, _ = _relu_features()
    X_train = (X_train * scale).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = NewtonSVC(C=C).fit(X_train, y_train)
    _assert_honest(estimator, X_train, y_train, caught)


@pytest.mark.parametrize("estimator", [LbfgsSVC, NewtonSVC])
@pytest.mark.parametrize("setting, value", [("C", 0.0), ("C", -1.0), ("tol", 0.0), ("max_iter", -1)])
def test_bad_settings_are_refused_quoting_the_value(estimator, setting, value):
    X_train, _, y_train, _ = _two_digits()
    with pytest.raises(ValueError, match=f"'{setting}' parameter .* Got {value}"):
        estimator(**{setting: value}).fit(X_train, y_train)


@parametrize_with_checks([LbfgsSVC(), NewtonSVC()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
