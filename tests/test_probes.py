"""The classifier registry: every conf/classifier/*.yaml names a probe class by `_target_`, what validation,
the layers table, the help page and the docs read; `classifier=ridge` runs as any other probe does."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import RidgeClassifier
from sklearn.svm import LinearSVC

from tlsweep.errors import ConfigError
from tlsweep.stages.features import pooling
from tlsweep.stages.probe import classify, probes
from tlsweep.tracking.names import Metric, Param, Status, Tag
from tlsweep.validate import validate


def test_every_classifier_config_names_a_registered_probe(compose, project_root):
    names = sorted(path.stem for path in (project_root / "conf" / "classifier").glob("*.yaml"))
    assert names == sorted(probes.PROBES)
    for name in names:
        config = validate(compose([f"classifier={name}", "model.weights=null"]))
        probe = classify.probe_for(config.classifier, seed=0)
        assert type(probe) is probes.PROBES[name] and probe.name == config.classifier.name == name
        assert config.classifier.loss in probe.losses and probe.bytes_per_value >= 4 and probe.about


def test_a_target_that_is_not_a_probe_is_one_line_naming_the_registry(compose):
    with pytest.raises(ConfigError) as raised:
        validate(compose(["classifier._target_=sklearn.svm.LinearSVC", "model.weights=null"]))
    assert "classifier._target_ should name a probe class" in str(raised.value)
    assert f"classifier={'|'.join(probes.PROBES)})" in str(raised.value) and "line_search_svc" in probes.PROBES
    with pytest.raises(ConfigError, match=r"classifier.name should be 'ridge' for classifier._target_="):
        validate(compose(["classifier=ridge", "classifier.name=linear_svc", "model.weights=null"]))


def test_ridge_is_scikit_learns_ridge_classifier_with_C_as_the_svms_have_it():
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    probe = probes.RidgeProbe(loss="squared_error")
    ours = classify.make_classifier(probe=probe, C=0.5).fit(X, y)
    reference = RidgeClassifier(alpha=1.0).fit(X, y)  # alpha = 1 / (2 C)
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))
    assert ours[-1].coef_.dtype == np.float32  # fitted on the float32 features
    tracemalloc.start()
    probe.estimator(0.5).fit(X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= probe.bytes_per_value * X.size + (1 << 20)  # within its declared memory, plus 1 MiB


def test_line_search_svc_fits_liblinears_problem_within_its_declared_memory(compose):
    config = validate(compose(["classifier=line_search_svc", "model.weights=null"]))
    probe = classify.probe_for(config.classifier, seed=0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 4000)
    X = np.maximum(rng.standard_normal((4000, 600), dtype=np.float32), 0)  # half zero, as after a ReLU
    X[:, :6] += 0.7 * np.eye(6, dtype=np.float32)[y]
    train, test = slice(0, 3000), slice(3000, None)
    estimator = classify.make_classifier(probe=probe, C=0.1)
    tracemalloc.start()
    estimator.fit(X[train], y[train])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert type(estimator[-1]).__name__ == "NewtonLineSearchSVC" and estimator[-1].coef_.dtype == np.float32
    assert peak <= (probe.bytes_per_value - 4) * X[train].size  # beyond the features themselves
    reference = LinearSVC(C=0.1, random_state=0).fit(X[train], y[train])
    assert np.mean(estimator.predict(X[test]) == reference.predict(X[test])) >= 0.99


def test_ridge_chooses_C_on_validation_like_any_probe():
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    found = classify.search_C(probe=probes.RidgeProbe(loss="squared_error"), normalize="none",
                              grid=[1e-4, 1e-2, 1.0, 100.0], X_train=X[:1200], y_train=y[:1200], X_val=X[1200:],
                              y_val=y[1200:], stride=1)
    assert found.selected_C in found.Cs and len(found.Cs) == 4
    assert found.best.estimator[-1].alpha == pytest.approx(1 / (2 * found.selected_C))


def test_classifier_ridge_runs_end_to_end(isolated, cifar_dir, compose, tiny, experiment_runs):
    from tlsweep.job import run

    run(compose([*tiny, f"data.path={cifar_dir}", "classifier=ridge", "layer=block5_pool", "data.classes=[4,5]"]))
    run(compose([*tiny, f"data.path={cifar_dir}", "classifier=ridge", "classifier.C=auto", "layer=block5_pool",
                 "data.classes=[4,5]"]))
    runs = experiment_runs(MlflowClient())
    assert sorted(r.info.status for r in runs) == [Status.FINISHED, Status.FINISHED]
    assert {r.data.params[Param.CLASSIFIER] for r in runs} == {"ridge"}
    auto = next(r for r in runs if r.data.params[Param.C] == "auto")
    assert float(auto.data.params[Param.SELECTED_C]) > 0 and auto.data.metrics[Metric.N_ITER] == 1  # closed form


def test_the_help_page_and_the_docs_list_every_registry_entry(project_root):
    shown = subprocess.run([sys.executable, "-m", "tlsweep", "--help"], capture_output=True, text=True,
                           cwd=project_root, timeout=120).stdout
    assert f"classifier={' | '.join(probes.PROBES)}" in shown
    assert f"features.pooling       {' | '.join(pooling.POOLINGS)}" in shown
    reference = (project_root / "docs" / "configuration.md").read_text()
    for name in [*probes.PROBES, *pooling.POOLINGS]:
        assert f"`{name}`" in reference, name


@pytest.mark.parametrize("classifier, estimator", [("line_search_svc", "NewtonLineSearchSVC"), ("lbfgs_svc", "LbfgsSVC")])
def test_tlsweeps_own_probes_log_a_probe_model_that_loads_back(isolated, cifar_dir, compose, tiny, experiment_runs,
                                                               classifier, estimator):
    import mlflow.sklearn

    from tlsweep.job import run
    from tlsweep.tracking.names import Artifact

    # MLflow saves scikit-learn models with skops, which refuses types it is not told to trust
    run(compose([*tiny, f"data.path={cifar_dir}", f"classifier={classifier}", "layer=block5_pool",
                 "data.classes=[4,5,6]"]))
    (logged,) = experiment_runs(MlflowClient())
    assert logged.info.status == Status.FINISHED, logged.data.tags.get(Tag.ERROR)
    probe = mlflow.sklearn.load_model(f"runs:/{logged.info.run_id}/{Artifact.PROBE_MODEL}")
    assert type(probe[-1]).__name__ == estimator
    rows = np.random.default_rng(0).random((5, int(logged.data.params[Param.FEATURE_DIM])), dtype=np.float32)
    assert set(probe.predict(rows)) <= {4, 5, 6}
