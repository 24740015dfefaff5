"""`classifier.name=lbfgs_svc` solves LinearSVC's problem: same accuracy, float32 in place, honest convergence."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from svc_problems import digits, lbfgs_bound, minimum, objective, relu_features, two_digits
from tlsweep.stages.probe.classify import fit_classifier, make_classifier
from tlsweep.stages.probe.lbfgs_svc import LbfgsSVC
from tlsweep.stages.probe.probes import LbfgsSVCProbe


@pytest.mark.parametrize("data", [digits, relu_features], ids=["digits", "relu_features"])
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
    assert objective(ours, X_train, y_train, C) - minimum(X_train, y_train, C) <= lbfgs_bound(X_train, y_train, C)


def test_two_classes_give_one_hyperplane_like_linear_svc():
    X_train, X_test, y_train, y_test = digits()
    keep, keep_test = y_train < 2, y_test < 2
    ours = LbfgsSVC(C=0.1).fit(X_train[keep], y_train[keep])
    reference = LinearSVC(C=0.1, random_state=0).fit(X_train[keep], y_train[keep])
    assert ours.coef_.shape == reference.coef_.shape == (1, 64)
    assert list(ours.classes_) == [0, 1]
    assert (ours.score(X_test[keep_test], y_test[keep_test])
            >= reference.score(X_test[keep_test], y_test[keep_test]) - 0.005)


def test_fits_float32_without_copying_the_features():
    X_train, _, y_train, _ = relu_features(n=3000, d=1000)
    tracemalloc.start()
    with pytest.warns(ConvergenceWarning):  # 5 iterations are not enough; memory is what this test checks
        estimator = LbfgsSVC(C=0.1, max_iter=5).fit(X_train, y_train)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert estimator.coef_.dtype == np.float32
    assert peak < 0.25 * X_train.nbytes, f"fit allocated {peak} bytes for {X_train.nbytes} bytes of features"


def test_unconverged_fit_is_reported_through_tlsweep():
    X_train, _, y_train, _ = relu_features()
    estimator = make_classifier(probe=LbfgsSVCProbe(max_iter=2), C=1.0)
    with pytest.warns(ConvergenceWarning, match="increase classifier.max_iter"):
        result = fit_classifier(estimator=estimator, X=X_train, y=y_train)
    assert result.converged is False and result.n_iter == 2


@pytest.mark.parametrize("setting, value", [("C", 0.0), ("C", -1.0), ("tol", 0.0), ("max_iter", -1)])
def test_bad_settings_are_refused_quoting_the_value(setting, value):
    X_train, _, y_train, _ = two_digits()
    with pytest.raises(ValueError, match=f"'{setting}' parameter .* Got {value}"):
        LbfgsSVC(**{setting: value}).fit(X_train, y_train)


@parametrize_with_checks([LbfgsSVC()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
