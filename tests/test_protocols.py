"""The field's probing protocols: C chosen on validation and refit, pooling, normalisation, logistic
regression, few-shot and repeats, the sweep's answer chosen without test, and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from tlsweep.config import _default_C_grid
from tlsweep.job import run
from tlsweep.stages.probe import classify, probes
from tlsweep.sweep import summary
from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag
from tlsweep.tracking.stored import RunRecord, StoredRun

PROBE = dict(loss="squared_hinge", max_iter=1000, tol=1e-4, dual="auto", seed=0)


def _probe(name: str, **settings):
    return probes.PROBES[name](**{**PROBE, **settings})


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    return X_train, y_train, X_val, y_val


def _val_accuracy(name, loss, C, normalize, digits_split) -> float:
    X_train, y_train, X_val, y_val = digits_split
    estimator = classify.make_classifier(probe=_probe(name, loss=loss), C=C, normalize=normalize)
    return accuracy_score(y_val, estimator.fit(X_train, y_train).predict(X_val))


@pytest.mark.parametrize("name, loss", [("linear_svc", "squared_hinge"),
                                        # a minute: L-BFGS takes up to 4.6 s at each of the grid's 45 C values
                                        pytest.param("lbfgs_svc", "squared_hinge", marks=pytest.mark.slow),
                                        ("line_search_svc", "squared_hinge"), ("logreg", "log_loss")])
def test_coarse_to_fine_search_picks_a_C_as_good_on_val_as_the_whole_grid(digits_split, name, loss):
    X_train, y_train, X_val, y_val = digits_split
    grid = _default_C_grid()
    found = classify.search_C(probe=_probe(name, loss=loss), normalize="standardize", grid=grid, X_train=X_train,
                              y_train=y_train, X_val=X_val, y_val=y_val)
    assert len(found.Cs) < len(grid) / 2  # far fewer fits than the grid
    assert found.Cs == sorted(found.Cs) and found.selected_C in found.Cs
    every = {C: _val_accuracy(name, loss, C, "standardize", digits_split) for C in grid}
    # the chosen C scores, refitted from scratch, as well as the whole grid's best (warm starts may shift a
    # fit by a hair, so allow one validation image)
    assert _val_accuracy(name, loss, found.selected_C, "standardize", digits_split) >= max(every.values()) - 1 / len(y_val)
    assert max(found.val_accuracy) == found.val_accuracy[found.Cs.index(found.selected_C)]


def test_the_search_solves_the_squared_hinge_warm_started_from_one_C_to_the_next(digits_split, monkeypatch):
    from tlsweep.stages.probe import newton_svc

    cold_starts, solve = [], newton_svc.trust_region_newton

    def recording(X, Y, *, W, **kwargs):
        cold_starts.append(W is None)
        return solve(X, Y, W=W, **kwargs)

    monkeypatch.setattr(newton_svc, "trust_region_newton", recording)
    X_train, y_train, X_val, y_val = digits_split
    found = classify.search_C(probe=_probe("linear_svc"), normalize="standardize", grid=_default_C_grid(),
                              X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val)
    assert cold_starts == [True] + [False] * (len(found.Cs) - 1)  # one fit from zero, every other from a solution
    assert isinstance(found.best.estimator[-1], newton_svc.NewtonSVC) and found.best.estimator[-1].C == found.selected_C


def test_normalisation_statistics_come_from_the_fit_rows_only(digits_split):
    X_train, y_train, X_val, _ = digits_split
    standardize = classify.make_classifier(probe=_probe("logreg", loss="log_loss"), C=1.0,
                                           normalize="standardize").fit(X_train, y_train)
    np.testing.assert_allclose(standardize["normalize"].mean_, X_train.mean(axis=0), rtol=1e-5, atol=1e-6)
    l2 = classify.make_classifier(probe=_probe("linear_svc"), C=1.0, normalize="l2").fit(X_train, y_train)
    np.testing.assert_allclose(np.linalg.norm(l2["normalize"].transform(X_val), axis=1), 1.0, rtol=1e-5)


def test_C_auto_logs_the_search_and_refits_on_train_and_val(isolated, cifar_dir, compose, tiny, experiment_runs):
    cfg = compose([*tiny, f"data.path={cifar_dir}", "layer=block5_pool", "classifier=logreg", "classifier.C=auto",
                   "features.normalize=l2", "data.classes=[0,1,2,3,4,5,6]"])
    run(cfg)
    client = MlflowClient()
    (logged,) = experiment_runs(client)
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags
    assert params[Param.C] == "auto"
    assert int(params[Param.N_FIT]) == int(params[Param.N_TRAIN]) + int(params[Param.N_VAL])
    tried = client.get_metric_history(logged.info.run_id, Metric.SEARCH_C)
    scores = client.get_metric_history(logged.info.run_id, Metric.SEARCH_VAL_ACCURACY)
    assert [m.step for m in tried] == [m.step for m in scores] == list(range(len(tried))) and len(tried) > 3
    assert float(params[Param.SELECTED_C]) in [m.value for m in tried]
    assert max(m.value for m in scores) == pytest.approx(metrics[Metric.accuracy("val")])
    for split in ("train", "val", "test"):  # seven classes: top-5 is reported
        assert 0 <= metrics[f"{split}_balanced_accuracy"] <= 1 and 0 <= metrics[f"{split}_top5_accuracy"] <= 1
    assert len(tags[Tag.SPLIT_DIGEST]) == 16
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, "search")}
    assert artifacts == {Artifact.SEARCH_PLOT}


def test_few_shot_draws_k_training_images_per_class(isolated, cifar_dir, compose, tiny, experiment_runs):
    run(compose([*tiny, f"data.path={cifar_dir}", "data.train_per_class=3", "data.classes=[4,5]"]))
    (logged,) = experiment_runs(MlflowClient())
    assert logged.data.params[Param.N_TRAIN] == "6" and "top5" not in " ".join(logged.data.metrics)


def test_the_same_config_gives_bit_identical_metrics(isolated, cifar_dir, compose, tiny, experiment_runs):
    results = []
    for attempt in ("a", "b"):  # separate caches: both runs extract, fit and evaluate from scratch
        run(compose([*tiny, f"data.path={cifar_dir}", "classifier.C=auto", "features.pooling=grid",
                     f"cache_dir={isolated / attempt}", f"tracking.experiment={attempt}"]))
        (logged,) = experiment_runs(MlflowClient(), attempt)
        results.append(({k: v for k, v in logged.data.metrics.items() if not Metric.is_time(k)},
                        logged.data.tags[Tag.SPLIT_DIGEST], logged.data.params[Param.SELECTED_C]))
    assert results[0] == results[1]


def _record(layer, index, C, seed, val, test, run_id) -> RunRecord:
    params = {"model.name": "vgg16", "layer": layer, "classifier.C": str(C), "classifier.name": "linear_svc",
              "seed": str(seed)}
    metrics = {"train_accuracy": 1.0, "val_accuracy": val, "test_accuracy": test, "layer_index": index}
    return RunRecord.parse(StoredRun(run_id, Status.FINISHED, 0, params, metrics, {"classes": "deer,dog"}))


def test_the_answer_is_chosen_on_validation_never_on_test():
    records = [  # block4 wins on val; block5 has the best test accuracy of all and must not be chosen
        _record("block4_pool", 14, 0.1, 0, 0.80, 0.70, "b4-s0"), _record("block4_pool", 14, 0.1, 1, 0.82, 0.71, "b4-s1"),
        _record("block4_pool", 14, 1.0, 0, 0.60, 0.99, "b4-C1"),
        _record("block5_pool", 18, 0.1, 0, 0.75, 0.95, "b5-s0"), _record("block5_pool", 18, 0.1, 1, 0.75, 0.95, "b5-s1"),
    ]
    rows, best = summary.selection(summary.comparison_table(records))
    assert (best["layer"], best["C"], best["run_id"]) == ("block4_pool", "0.1", "b4-s1")
    assert best["val_mean"] == pytest.approx(0.81) and best["test_mean"] == pytest.approx(0.705)
    assert best["seeds"] == 2 and best["val_std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert rows.set_index("layer")["best_layer"].to_dict() == {"block4_pool": True, "block5_pool": False}
    text = summary.selection_markdown(rows, best)
    assert "0.8100 ± 0.0141" in text and "never used to choose" in text


def test_a_seed_sweep_names_the_best_layer_on_its_parent(isolated, cifar_dir, cli, tiny, experiment_runs):
    result = cli("-m", "layer=block4_pool,block5_pool", "seed=0,1", f"data.path={cifar_dir}", *tiny, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    runs = experiment_runs(client)
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = {r.info.run_id: r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB}
    assert len(children) == 4 and parent.data.tags[Tag.BEST_RUN_ID] in children
    best = children[parent.data.tags[Tag.BEST_RUN_ID]]
    assert parent.data.tags[Tag.BEST_LAYER] == best.data.params[Param.LAYER]
    text = open(client.download_artifacts(parent.info.run_id, Artifact.summary(Artifact.SELECTION), str(isolated))).read()
    assert text.count("±") == 4  # two layers, val and test, each a mean ± std over the two seeds
    # the answer, where the eye lands: the terminal, the parent's name, metrics and description
    output = result.stdout + result.stderr
    assert "best mean val accuracy" in output and "mlflow ui --backend-store-uri sqlite:///" in output
    assert f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in output
    assert parent.info.run_name == "vgg16 cifar10 layer=block4_pool,block5_pool seed=0,1"
    assert {"best_val_accuracy", "val_accuracy/block4_pool", "test_accuracy/block5_pool"} <= set(parent.data.metrics)
    assert "python -m tlsweep -m layer=block4_pool,block5_pool seed=0,1" in parent.data.tags[Tag.NOTE]
    assert "job 1/4: layer=block4_pool seed=0" in output and "job 4/4: layer=block5_pool seed=1" in output
    summary_files = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert any(path.startswith(Artifact.summary(f"{Artifact.CLASS_RECALL_VS_LAYER}-")) for path in summary_files)
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated)),
                        dtype=str)
    assert all(value.isdigit() for value in table["layer_index"]) and set(table["converged"]) <= {"0", "1"}
    by_layer = pd.DataFrame([{"layer": r.data.params[Param.LAYER], "val": r.data.metrics[Metric.accuracy("val")]}
                             for r in children.values()]).groupby("layer")["val"].mean()
    assert parent.data.tags[Tag.BEST_LAYER] == by_layer.idxmax()
