"""`python -m tlsweep.compare` on runs logged to a real MLflow store, the way tlsweep's jobs log them."""

from __future__ import annotations

import logging
import os
import shutil

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tlsweep import compare
from tlsweep.tracking.names import Artifact, Kind, Status, Tag

LAYERS = {"block3_pool": 11, "block4_pool": 15, "block5_pool": 19}


def _log_job(client, experiment_id, *, machine, layer, accuracy, fit_seconds, classes="deer,dog", C=0.1,
             parent=None, status=Status.FINISHED):
    """A job run with the params, metrics and tags that `python -m tlsweep` gives its runs."""
    tags = {Tag.KIND: Kind.JOB, "machine": machine, "classes": classes, "layer": layer,
            Tag.CONFIG_HASH: f"{layer}|{classes}|{C}"}
    if parent:
        tags[Tag.PARENT] = parent
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    params = {"model.name": "vgg16", "layer": layer, "classifier.C": str(C), "data.classes": "[4, 5]",
              "classifier.name": "linear_svc", "seed": "0",
              "feature_dim": "512"}
    metrics = {"train_accuracy": accuracy + 0.1, "val_accuracy": accuracy - 0.05, "test_accuracy": accuracy,
               "fit_seconds": fit_seconds, "extraction_seconds": 10 * fit_seconds, "converged": 1.0,
               "layer_index": float(LAYERS[layer])}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """One sweep per machine over two cuts; beta is slower; plus a run with other classes on alpha.

    Built once; each test gets its own copy of the SQLite file (creating a store costs seconds).
    """
    folder = tmp_path_factory.mktemp("store")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.create_experiment("tlsweep", artifact_location=str(folder / "artifacts"))
    parents = {machine: client.create_run(experiment_id, tags={Tag.KIND: Kind.SWEEP}).info.run_id
               for machine in ("alpha", "beta")}
    runs = {}
    for machine, slower in (("alpha", 1.0), ("beta", 3.0)):
        for layer, accuracy in (("block4_pool", 0.8), ("block5_pool", 0.7)):
            runs[machine, layer] = _log_job(client, experiment_id, machine=machine, layer=layer, accuracy=accuracy,
                                            fit_seconds=slower, parent=parents[machine])
    runs["other"] = _log_job(client, experiment_id, machine="alpha", layer="block5_pool", accuracy=0.9,
                             fit_seconds=1.0, classes="ship,truck")
    return folder / "mlflow.db", experiment_id, parents, runs


@pytest.fixture
def two_machines(isolated, store_template):
    database, experiment_id, parents, runs = store_template
    shutil.copyfile(database, isolated / "mlflow.db")  # where MLFLOW_TRACKING_URI points in this test
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return client, experiment_id, parents, runs


def _read(folder, name="comparison"):
    return pd.read_csv(folder / f"{name}.csv")


def test_same_configuration_from_two_machines_sits_side_by_side(two_machines, tmp_path):
    assert compare.main(["--classes", "deer,dog", "--out", str(tmp_path / "cmp")]) == 0

    table = _read(tmp_path / "cmp")
    assert len(table) == 4 and set(table["machine"]) == {"alpha", "beta"}
    by_machine = _read(tmp_path / "cmp", "by_machine")
    assert list(by_machine["layer"]) == ["block4_pool", "block5_pool"]  # input to output
    assert list(by_machine["test_accuracy[alpha]"]) == list(by_machine["test_accuracy[beta]"]) == [0.8, 0.7]
    assert list(by_machine["fit_seconds[alpha]"]) == [1.0, 1.0] and list(by_machine["fit_seconds[beta]"]) == [3.0, 3.0]
    assert list(by_machine["machines"]) == [2, 2] and list(by_machine["test_accuracy_spread"]) == [0.0, 0.0]
    assert "test_accuracy[alpha]" in (tmp_path / "cmp" / "by_machine.md").read_text()
    assert (tmp_path / "cmp" / "accuracy_vs_layer-vgg16-deer_dog-C0.1.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--machine", "beta"], {("beta", "block4_pool"), ("beta", "block5_pool")}),
        (["--machine", "alpha", "--classes", "ship,truck"], {"other"}),
        (["--filter", "params.layer = 'block4_pool'"], {("alpha", "block4_pool"), ("beta", "block4_pool")}),
        (["--machine", "alpha", "--machine", "beta", "--filter", "metrics.test_accuracy > 0.75"],
         {("alpha", "block4_pool"), ("beta", "block4_pool"), "other"}),
    ],
)
def test_filters_select_the_runs_they_name(two_machines, tmp_path, args, expected):
    _, _, _, runs = two_machines
    assert compare.main([*args, "--out", str(tmp_path / "cmp")]) == 0
    assert set(_read(tmp_path / "cmp")["run_id"]) == {runs[key] for key in expected}


def test_parent_selects_one_sweep_and_its_resumed_runs(two_machines, tmp_path):
    client, _, parents, runs = two_machines
    client.set_tag(parents["beta"], "tlsweep.resumed.somehash", runs["other"])  # a config resumed, not rerun
    assert compare.main(["--parent", parents["beta"], "--out", str(tmp_path / "cmp")]) == 0
    assert set(_read(tmp_path / "cmp")["run_id"]) == {runs["beta", "block4_pool"], runs["beta", "block5_pool"],
                                                      runs["other"]}


def test_without_out_logs_a_summary_run_that_later_comparisons_leave_out(two_machines, tmp_path):
    client, experiment_id, _, runs = two_machines
    assert compare.main(["--machine", "alpha", "--machine", "beta"]) == 0

    found = client.search_runs([experiment_id], "tags.`tlsweep.kind` = 'summary'")
    assert len(found) == 1
    summary_run = found[0]
    assert summary_run.info.status == Status.FINISHED
    assert summary_run.data.tags[Tag.COMPARE_MACHINES] == "alpha,beta" and summary_run.data.tags[Tag.COMPARE_RUNS] == "5"
    listed = {item.path for item in client.list_artifacts(summary_run.info.run_id, "summary")}
    assert {Artifact.summary(Artifact.COMPARISON_CSV), Artifact.summary(Artifact.COMPARISON_MD), Artifact.summary(Artifact.BY_MACHINE_CSV),
            Artifact.summary(Artifact.BY_MACHINE_MD)} <= listed
    assert any(path.startswith(Artifact.summary(Artifact.ACCURACY_VS_LAYER)) for path in listed)
    path = client.download_artifacts(summary_run.info.run_id, Artifact.summary(Artifact.BY_MACHINE_CSV), str(tmp_path))
    assert set(pd.read_csv(path)["machines"]) == {1, 2}  # ship,truck ran on alpha only

    assert compare.main(["--out", str(tmp_path / "again")]) == 0
    assert set(_read(tmp_path / "again")["run_id"]) == set(runs.values())


def test_failed_runs_are_listed_but_not_compared(two_machines, tmp_path):
    client, experiment_id, _, _ = two_machines
    failed = _log_job(client, experiment_id, machine="gamma", layer="block4_pool", accuracy=0.1, fit_seconds=1.0,
                      status=Status.FAILED)
    assert compare.main(["--out", str(tmp_path / "cmp")]) == 0
    assert failed not in set(_read(tmp_path / "cmp")["run_id"])  # no NaN row among the compared
    listed = _read(tmp_path / "cmp", "failed")
    assert listed.loc[listed["run_id"] == failed, "status"].item() == Status.FAILED
    assert not any("gamma" in column for column in _read(tmp_path / "cmp", "by_machine").columns)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "nope"], "no experiment named 'nope'"),
        (["--machine", "delta"], "no job runs in tlsweep"),
        (["--filter", "params.layer === 1"], "params.layer === 1"),
        (["--machine", "it's"], "--machine cannot contain a single quote"),
    ],
)
def test_bad_selection_is_one_clear_line(two_machines, tmp_path, caplog, args, message):
    with caplog.at_level(logging.ERROR, logger="tlsweep.compare"):
        assert compare.main([*args, "--out", str(tmp_path / "cmp")]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "cmp").exists()
