"""Transferability scores beside the real probe: every job logs them from its features as the probe sees them;
the parent says how well each ranked the children; prescreen=K fits only the K best stages."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.preprocessing import Normalizer

from tlsweep.errors import ConfigError
from tlsweep.scores import knn_accuracy, logme
from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag


def test_a_job_logs_each_score_on_the_features_its_probe_sees(isolated, cifar_dir, compose, tiny, experiment_runs):
    from tlsweep import train
    from tlsweep.job import run

    overrides = [*tiny, f"data.path={cifar_dir}", "layer=block5_pool", "data.classes=[4,5,6]",
                 "features.normalize=l2", "scores=[logme,knn,gbc]"]
    run(compose(overrides))
    (logged,) = experiment_runs(MlflowClient())
    metrics = logged.data.metrics
    for metric, name in (("logme", "logme"), ("knn_accuracy", "knn"), ("gbc", "gbc")):
        assert Metric.score(metric) in metrics and metrics[Metric.score_seconds(name)] >= 0
    # recomputed from the cache, as the probe saw the rows: l2-normalised, train for LogME, train to val for k-NN
    from tlsweep.validate import validate

    held_in = train.cut_features(validate(compose(overrides))).held_in()
    (X, y), (X_val, y_val) = held_in["train"], held_in["val"]
    normalizer = Normalizer().fit(X)
    assert metrics[Metric.score("logme")] == pytest.approx(logme(normalizer.transform(X), y), rel=1e-6)
    assert metrics[Metric.score("knn_accuracy")] == pytest.approx(
        knn_accuracy(normalizer.transform(X), y, normalizer.transform(X_val), y_val))


def test_a_cut_is_scored_once_whatever_the_probe_and_its_record_stays_honest(isolated, cifar_dir, compose, tiny,
                                                                              experiment_runs):
    """Scores depend on the features and rows, not on C: the second job reads them back from the feature cache
    (tagged, and timed as the read); other rows or another normalisation, or a damaged record, score again."""
    from tlsweep.job import run

    base = [*tiny, f"data.path={cifar_dir}", "layer=block5_pool", "data.classes=[4,5,6]", "scores=[logme,knn]"]
    for overrides in (["classifier.C=0.1"], ["classifier.C=0.01"], ["features.normalize=l2"]):
        run(compose([*base, *overrides]))
    first, again, other = sorted(experiment_runs(MlflowClient()), key=lambda found: found.info.start_time)
    assert Tag.SCORES_CACHED not in first.data.tags and again.data.tags[Tag.SCORES_CACHED] == "logme,knn"
    for metric in ("logme", "knn_accuracy"):
        assert again.data.metrics[Metric.score(metric)] == first.data.metrics[Metric.score(metric)]
    assert again.data.params[Param.C] != first.data.params[Param.C]
    assert Tag.SCORES_CACHED not in other.data.tags  # l2-normalised features are other features
    assert other.data.metrics[Metric.score("logme")] != first.data.metrics[Metric.score("logme")]

    records = sorted(Path(first.data.tags[Tag.FEATURES_CACHE]).glob("score-*.json"))
    assert len(records) == 4  # two scores, two normalisations
    for record in records:
        record.write_text("{not json")
    run(compose([*base, "classifier.C=1.0"]))
    latest = max(experiment_runs(MlflowClient()), key=lambda found: found.info.start_time)
    assert latest.info.status == Status.FINISHED and Tag.SCORES_CACHED not in latest.data.tags
    assert latest.data.metrics[Metric.score("logme")] == pytest.approx(first.data.metrics[Metric.score("logme")])


def test_scores_empty_logs_none(isolated, cifar_dir, compose, tiny, experiment_runs):
    from tlsweep.job import run

    run(compose([*tiny, f"data.path={cifar_dir}", "layer=block5_pool", "data.classes=[4,5]", "scores=[]"]))
    (logged,) = experiment_runs(MlflowClient())
    assert not [key for key in logged.data.metrics if key.startswith(("score/", "score_seconds/"))]


@pytest.mark.parametrize("overrides, message", [
    (["scores=[logme,leep]"], "scores should be a list of ['logme', 'knn', 'gbc'] ([] for none); received scores="
                              "['logme', 'leep'] (['leep'] unknown)"),
    (["prescreen_score=hscore"], "prescreen_score should be one of ['logme', 'knn', 'gbc']; received "
                                 "prescreen_score='hscore'"),
    (["prescreen=0", "layer=stages"], "prescreen should be null or an integer >= 1"),
    (["prescreen=2"], "prescreen=2 ranks the stages of layer=stages, and this job cuts one layer"),
])
def test_bad_score_settings_are_one_line(compose, overrides, message):
    from tlsweep.job import job_specs

    with pytest.raises(ConfigError) as raised:
        job_specs(compose(["model.weights=null", *overrides]))
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def prescreened(tmp_path_factory, cifar_writer, cli, tiny):
    """`-m model=vgg16,mobilenet_v2 layer=stages prescreen=2` on tiny CIFAR-10 files: (result, client, parent,
    children)."""
    work = tmp_path_factory.mktemp("prescreen")
    data = cifar_writer(work / "data")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", "model=vgg16,mobilenet_v2", "layer=stages", "prescreen=2", f"data.path={data}",
                 "data.classes=[4,5,6]", *tiny, cwd=work,
                 env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tlsweep").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.`{Tag.KIND}` = '{Kind.SWEEP}'")
    children = client.search_runs([experiment], f"tags.`{Tag.PARENT}` = '{parent.info.run_id}'")
    return result, client, parent, children


def test_prescreen_fits_the_k_best_stages_of_each_model_and_lists_the_rest(prescreened, compose):
    result, client, parent, children = prescreened
    assert result.returncode == 0, result.stderr[-3000:]
    assert parent.info.status == Status.FINISHED
    for model in ("vgg16", "mobilenet_v2"):
        runs = [run for run in children if run.data.params[Param.MODEL] == model]
        assert len(runs) == len(compose([f"model={model}"]).model.stages)
        fitted = [run for run in runs if run.data.tags[Tag.PRESCREEN] == Tag.PRESCREEN_KEPT]
        left_out = [run for run in runs if run.data.tags[Tag.PRESCREEN] == Tag.PRESCREEN_SKIPPED]
        assert len(fitted) == 2 and len(left_out) == len(runs) - 2
        assert all(Metric.accuracy("test") in run.data.metrics for run in fitted)
        # a kept stage's scores are the prescreen's, computed once: its cost is the run's, nothing read back
        assert not any(Tag.SCORES_CACHED in run.data.tags for run in runs)
        assert all(run.data.metrics[Metric.score_seconds("logme")] > 0 for run in fitted)
        assert not any(Metric.accuracy("val") in run.data.metrics for run in left_out)
        assert all(run.info.status == Status.FINISHED for run in runs)
        by_logme = sorted(runs, key=lambda run: -run.data.metrics[Metric.score("logme")])
        assert {run.info.run_id for run in by_logme[:2]} == {run.info.run_id for run in fitted}
        # every image through the CNN once: the 30 training images while scoring, the 12 test ones for a probe
        assert sum(run.data.metrics[Metric.CNN_FORWARD_IMAGES] for run in runs) == 3 * 10 + 3 * 4
    skipped = len(children) - 4
    assert parent.data.metrics[Metric.PRESCREEN_SKIPPED_FITS] == skipped
    assert parent.data.metrics[Metric.PRESCREEN_SAVED_SECONDS] > 0
    table = pd.read_csv(io.StringIO(Path(client.download_artifacts(
        parent.info.run_id, Artifact.summary(Artifact.SCORES_CSV))).read_text()))
    assert len(table) == len(children) and (table["status"] == Tag.PRESCREEN_SKIPPED).sum() == skipped
    assert table.loc[table["status"] == Tag.PRESCREEN_SKIPPED, Metric.accuracy("test")].isna().all()
    assert "failed" not in result.stdout + result.stderr  # left out is not failed


def test_the_parent_says_how_well_each_score_ranked_its_children(prescreened):
    _, client, parent, _ = prescreened
    for name in ("logme", "knn"):
        for kind in Metric.RANK_KINDS:
            value = parent.data.metrics[Metric.rank(name, kind)]
            assert -1.0 <= value <= 1.0
    listed = {item.path for item in client.list_artifacts(parent.info.run_id, Artifact.SUMMARY_FOLDER)}
    assert Artifact.summary(Artifact.SCORES_FIGURE) in listed


def test_rank_metrics_follow_the_scores_order(tmp_path):
    from tlsweep.sweep import scoring

    table = pd.DataFrame({"model": ["a"] * 4, Metric.accuracy("val"): [0.1, 0.2, 0.3, 0.4],
                          Metric.score("logme"): [1.0, 2.0, 3.0, 4.0], Metric.score("knn_accuracy"): [4.0, 3, 2, 1],
                          "status": [Status.FINISHED] * 4})
    ranks = scoring.rank_metrics(table)
    assert ranks[Metric.rank("logme", "kendall_tau")] == pytest.approx(1.0)
    assert ranks[Metric.rank("knn", "kendall_tau")] == pytest.approx(-1.0)
    assert ranks[Metric.rank("logme", "weighted_tau")] == pytest.approx(1.0)
    assert np.isfinite(ranks[Metric.rank("knn", "weighted_tau")])
