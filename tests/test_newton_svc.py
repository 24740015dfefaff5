"""The Newton solvers of LinearSVC's primal problem, `NewtonSVC` (trust region, the C search's) and
`NewtonLineSearchSVC` (line search, the fast engine): liblinear's objective value on float32 in place,
warm starts, and fits that always end and never report convergence they did not reach."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from svc_problems import PROBLEMS, assert_honest, digits, liblinear_bound, minimum, objective, relu_features, two_digits
from tlsweep.stages.probe import line_search_svc, newton_svc
from tlsweep.stages.probe.line_search_svc import NewtonLineSearchSVC
from tlsweep.stages.probe.newton_svc import NewtonSVC

SOLVERS = {NewtonSVC: (newton_svc, "trust_region_newton"), NewtonLineSearchSVC: (line_search_svc, "newton_line_search")}
NEWTONS = pytest.mark.parametrize("solver", list(SOLVERS), ids=lambda solver: solver.__name__)


@NEWTONS
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_objective_within_liblinears_stopping_rule_of_the_minimum(solver, problem, C):
    X_train, X_test, y_train, y_test = PROBLEMS[problem]()
    reference = LinearSVC(C=C, dual=False, random_state=0).fit(X_train, y_train)  # liblinear's own TRON, tol 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = solver(C=C).fit(X_train, y_train)  # float32 in place, every class at once
    assert ours.coef_.dtype == np.float32 and ours.coef_.shape == reference.coef_.shape
    # the same stopping rule, so both values lie within the rule's bound above the minimum
    least, bound = minimum(X_train, y_train, C), liblinear_bound(X_train, y_train, C)
    assert objective(reference, X_train, y_train, C) - least <= bound  # the bound holds for liblinear too
    assert objective(ours, X_train, y_train, C) - least <= bound
    assert np.mean(ours.predict(X_test) == reference.predict(X_test)) >= 0.99


@NEWTONS
def test_warm_start_starts_from_the_last_solution(solver, monkeypatch):
    X_train, _, y_train, _ = digits()
    cold = solver(C=1.0).fit(X_train, y_train)
    warm = solver(C=0.5, warm_start=True).fit(X_train, y_train).set_params(C=1.0).fit(X_train, y_train)
    assert warm.n_iter_[0] < cold.n_iter_[0]
    gap = objective(warm, X_train, y_train, 1.0) - minimum(X_train, y_train, 1.0)
    assert gap <= liblinear_bound(X_train, y_train, 1.0)
    # a solution for other classes is no start: the fit starts from w = 0
    module, name = SOLVERS[solver]
    starts, solve = [], getattr(module, name)

    def recording(X, Y, *, W, **kwargs):
        starts.append(W)
        return solve(X, Y, W=W, **kwargs)

    monkeypatch.setattr(module, name, recording)
    keep = y_train < 3
    warm.fit(X_train[keep], y_train[keep])
    warm.fit(X_train[keep], y_train[keep])
    assert starts[0] is None and starts[1] is not None


@NEWTONS
def test_an_unconverged_fit_is_reported(solver):
    X_train, _, y_train, _ = relu_features()
    with pytest.warns(ConvergenceWarning, match="reached max_iter; increase classifier.max_iter"):
        estimator = solver(C=10.0, max_iter=1).fit(X_train, y_train)
    assert estimator.n_iter_[0] == 1


def test_newton_svc_counts_every_trust_region_iteration_accepted_or_not(monkeypatch):
    solves, cg = [], newton_svc._steihaug_cg

    def counting(*args, **kwargs):
        solves.append(1)
        return cg(*args, **kwargs)

    monkeypatch.setattr(newton_svc, "_steihaug_cg", counting)
    X_train, _, y_train, _ = digits()
    with pytest.warns(ConvergenceWarning, match="reached max_iter"):
        estimator = NewtonSVC(C=1000.0, max_iter=5).fit(X_train, y_train)
    assert len(solves) == estimator.n_iter_[0] == 5  # one CG solve per iteration, all classes at once


@NEWTONS
@pytest.mark.timeout(60)
def test_a_fit_ends_on_features_around_1e9_with_a_large_C(solver):
    # digit-like pixel values times 1e9, random labels, C=1e5: NewtonSVC's trust radius once shrank to 0
    # and the fit ran thousands of rejected iterations, since only accepted ones counted
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    X = (rng.integers(0, 17, (200, 20)) * 1e9).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = solver(C=1e5).fit(X, y)
    assert_honest(estimator, X, y, caught)


@NEWTONS
@pytest.mark.timeout(60)
def test_a_fit_ends_on_random_labels_with_features_at_1e12(solver):
    # float32 products of X^T X d overflowed here, NewtonSVC's trust radius became NaN and the fit never ended
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    X = (rng.standard_normal((200, 20)) * 1e12).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = solver(C=1.0).fit(X, y)
    assert_honest(estimator, X, y, caught)


@NEWTONS
@pytest.mark.timeout(60)
def test_a_fit_stops_with_a_warning_when_float32_products_overflow(solver):
    rng = np.random.default_rng(0)
    X, y = (rng.random((100, 10)) * 1e20).astype(np.float32), rng.integers(0, 2, 100)
    with pytest.warns(RuntimeWarning, match="overflow"), pytest.warns(ConvergenceWarning, match="overflowed"):
        estimator = solver().fit(X, y)
    assert estimator.n_iter_[0] <= 1 and np.isfinite(estimator.coef_).all()  # it stops at once


@NEWTONS
def test_a_float32_precision_limit_is_not_called_convergence(solver):
    # tol=1e-10 asks for a gradient float32 products cannot resolve: the fit ends long before max_iter
    # (liblinear would call that convergence), and says why
    X_train, _, y_train, _ = digits()
    with pytest.warns(ConvergenceWarning, match="no longer change the objective|not in float64"):
        estimator = solver(C=1.0, tol=1e-10).fit(X_train, y_train)
    assert estimator.n_iter_[0] < 100


@NEWTONS
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e9])
@pytest.mark.parametrize("C", [1e-3, 1.0, 1e3])
def test_convergence_is_reported_only_when_the_float64_gradient_meets_tol(solver, scale, C):
    X_train, _, y_train, _ = relu_features()
    X_train = (X_train * scale).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = solver(C=C).fit(X_train, y_train)
    assert_honest(estimator, X_train, y_train, caught)


@NEWTONS
@pytest.mark.parametrize("setting, value", [("C", 0.0), ("C", -1.0), ("tol", 0.0), ("max_iter", -1)])
def test_bad_settings_are_refused_quoting_the_value(solver, setting, value):
    X_train, _, y_train, _ = two_digits()
    with pytest.raises(ValueError, match=f"'{setting}' parameter .* Got {value}"):
        solver(**{setting: value}).fit(X_train, y_train)


@parametrize_with_checks([NewtonSVC(), NewtonLineSearchSVC()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
