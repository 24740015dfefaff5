"""End to end, as a user runs it: `python -m tlsweep -m layer=...`, then read back with MlflowClient."""

from __future__ import annotations

import json
import os
import re

from mlflow.tracking import MlflowClient

from tlsweep import identity
from tlsweep.tracking import names
from tlsweep.tracking.names import Artifact, ExperimentTag, Kind, Link, Metric, Param, Status, Tag

LAYERS = ["block3_pool", "block4_pool", "block5_pool"]


def _artifacts(client, run_id, path=""):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _undeclared(run, artifacts: list[str]) -> list[str]:
    """The params, metrics, tags and artifacts of a run that tlsweep.tracking.names does not declare; MLflow's
    own system tags (`mlflow.user`, `mlflow.source.*`, ...) are MLflow's, not tlsweep's."""
    config_keys = list(identity.schema_defaults())
    found = [f"param {key}" for key in run.data.params if not names.declared("param", key, config_keys=config_keys)]
    found += [f"metric {key}" for key in run.data.metrics if not names.declared("metric", key)]
    found += [f"tag {key}" for key in run.data.tags if not names.declared("tag", key) and not key.startswith("mlflow.")]
    return found + [f"artifact {path}" for path in artifacts if not names.declared("artifact", path)]


def test_three_cut_multirun_is_one_parent_with_three_children(isolated, cifar_archive, cli, tiny, experiment_runs):
    result = cli("-m", f"layer={','.join(LAYERS)}", f"data.path={cifar_archive}", *tiny, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient()
    runs = experiment_runs(client)
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [r for r in runs if r.data.tags.get(Tag.PARENT)]
    assert len(parents) == 1 and parents[0].info.status == Status.FINISHED
    assert len(children) == 3
    assert {c.data.tags[Tag.PARENT] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params[Param.LAYER] for c in children) == LAYERS
    assert all(c.info.status == Status.FINISHED for c in children)

    dims = {c.data.params[Param.LAYER]: int(c.data.params[Param.FEATURE_DIM]) for c in children}
    assert dims == {"block3_pool": 4096, "block4_pool": 2048, "block5_pool": 512}
    for child in children:
        metrics, params, tags = child.data.metrics, child.data.params, child.data.tags
        for split in ("train", "val", "test"):
            assert 0.0 <= metrics[f"{split}_accuracy"] <= 1.0
            assert f"{split}_macro_f1" in metrics and f"{split}_weighted_precision" in metrics
            assert f"{split}_recall_deer" in metrics
        assert {"fit_seconds", "extraction_seconds", "n_iter", "converged"} <= set(metrics)
        assert params[Param.N_TRAIN] == "45" and params[Param.N_VAL] == "15" and params[Param.N_TEST] == "24"
        assert params[Param.C] == "0.1" and params[Param.CLASSES] == "[4, 5, 6, 7, 8, 9]"
        assert tags[Tag.CLASSES] == "deer,dog,frog,horse,ship,truck"
        assert tags[Tag.LAYER] == params[Param.LAYER]
        for key in ("machine.host", "machine.cpu", "machine.gpu", "version.tensorflow", "version.keras",
                    "version.scikit-learn", "version.mlflow", Tag.CONFIG_HASH):
            assert tags.get(key), key
        artifacts = set(_artifacts(client, child.info.run_id))
        for split in ("train", "val", "test"):
            assert Artifact.report(split, "txt") in artifacts
            assert Artifact.report(split, "json") in artifacts
            assert Artifact.confusion(split) in artifacts
        assert Artifact.CONFIG in artifacts
        report = client.download_artifacts(child.info.run_id, Artifact.report("test", "txt"), str(isolated))
        assert "precision" in open(report).read() and "deer" in open(report).read()
    # one forward pass filled every cut: only the first job ran the CNN
    forward = sorted(c.data.metrics[Metric.CNN_FORWARD_IMAGES] for c in children)
    assert forward == [0, 0, 60 + 24]

    for run in (*parents, *children):  # every name the sweep wrote is one tlsweep.tracking.names declares
        assert _undeclared(run, _artifacts(client, run.info.run_id)) == [], run.info.run_id

    summary = set(_artifacts(client, parents[0].info.run_id))
    assert {Artifact.summary(Artifact.COMPARISON_CSV), Artifact.summary(Artifact.COMPARISON_MD)} <= summary
    assert any(p.startswith(Artifact.summary(Artifact.ACCURACY_VS_LAYER)) and p.endswith(".png") for p in summary)
    table = open(client.download_artifacts(parents[0].info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))).read()
    assert all(layer in table for layer in LAYERS) and "test_accuracy" in table
    # the sweep's runs table, saved as a view of the experiment, and the link that opens it
    parent, experiment = parents[0].info.run_id, parents[0].info.experiment_id
    state = json.loads(client.get_experiment(experiment).tags[f"{ExperimentTag.SHARED_VIEW_PREFIX}{parent}"])
    assert sorted(re.findall(r"'(\w+)'", state["searchFilter"])) == sorted([parent, *(c.info.run_id for c in children)])
    assert {"params.`layer`", "metrics.`val_accuracy`", "metrics.`best_val_accuracy`"} <= set(state["selectedColumns"])
    link = f"{Link.UI}/#/experiments/{experiment}/runs?{Link.VIEW_KEY}={parent}&{Link.WORKFLOW}={Link.MODEL_TRAINING}"
    assert link in result.stderr + result.stdout


def test_single_run_without_m_logs_one_run_to_mlflow_db_in_the_folder_it_ran_in(isolated, cifar_dir, cli, tiny,
                                                                                 experiment_runs):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    os.environ.pop("MLFLOW_TRACKING_URI")
    result = cli(f"data.path={cifar_dir.parent}", "layer=block5_pool", *tiny, "classifier.C=0.5", cwd=isolated,
                 env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (isolated / "mlflow.db").exists()
    runs = experiment_runs(MlflowClient(f"sqlite:///{isolated / 'mlflow.db'}"))
    assert [r.data.params[Param.C] for r in runs] == ["0.5"]
    assert runs[0].info.status == Status.FINISHED
    assert Tag.PARENT not in runs[0].data.tags


def test_sweep_over_layer_classes_and_c(isolated, cifar_dir, cli, tiny, experiment_runs):
    result = cli("-m", "layer=block4_pool,block5_pool", "classifier.C=0.01,1.0", "data.classes=[4,5],[0,1,9]",
                 f"data.path={cifar_dir}", *tiny, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    runs = experiment_runs(client)
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP)
    children = [r for r in runs if r.data.tags.get(Tag.PARENT) == parent.info.run_id]
    seen = {(c.data.params[Param.LAYER], c.data.params[Param.C], c.data.tags[Tag.CLASSES]) for c in children}
    assert seen == {(layer, C, classes) for layer in ("block4_pool", "block5_pool") for C in ("0.01", "1.0")
                    for classes in ("deer,dog", "airplane,automobile,truck")}
    # classes 4 and 5 were extracted once, for both layers; the second subset only ran its own images
    assert sum(c.data.metrics[Metric.CNN_FORWARD_IMAGES] for c in children) == (10 + 4) * 5
    artifacts = _artifacts(client, parent.info.run_id)
    assert sum(p.startswith(Artifact.summary(Artifact.VAL_ACCURACY_VS_C)) for p in artifacts) == 2  # one per class subset
    assert sum(p.startswith(Artifact.summary(Artifact.ACCURACY_VS_LAYER)) for p in artifacts) == 4  # per class subset and C


def test_offline_download_failure_is_one_clear_line(isolated, cli, experiment_runs):
    result = cli("model.weights=null", cwd=isolated, env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "could not download" in line]
    assert len(lines) == 1 and "CIFAR-10" in lines[0] and "data.path=" in lines[0]
    assert "ImageNet weights" not in lines[0]  # model.weights=null needs no download
    assert "Traceback" not in result.stderr
    assert experiment_runs(MlflowClient()) == []  # found before any run was opened


def test_offline_sweep_names_everything_missing_once_and_points_to_the_demo(isolated, cli, experiment_runs):
    result = cli("-m", "model=vgg16,resnet50", "seed=0,1", cwd=isolated,  # each model at its default cut
                 env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert result.returncode == 1
    output = result.stdout + result.stderr
    (line,) = [line for line in output.splitlines() if "could not download" in line]  # once, not once per job
    for text in ("CIFAR-10", "ImageNet weights for vgg16", "ImageNet weights for resnet50", "data.path=",
                 "model.weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "tlsweep preset=demo"):
        assert text in line, text
    assert "Traceback" not in output and "job 1/4" not in output  # no job started
    assert experiment_runs(MlflowClient()) == []


def test_offline_imagenet_weights_failure_names_the_file_to_pass(isolated, cifar_dir, cli):
    result = cli(f"data.path={cifar_dir}", "model.batch_size=16", cwd=isolated,
                 env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert result.returncode == 1
    line = next(line for line in (result.stdout + result.stderr).splitlines() if "could not download" in line)
    assert "ImageNet weights for vgg16" in line and "model.weights=" in line
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in line
    assert "Traceback" not in result.stderr


def test_the_demo_preset_runs_offline_from_any_folder_without_m_and_is_tagged(isolated, cli, experiment_runs):
    result = cli("preset=demo", "model.batch_size=64", "layer=block4_pool,block5_pool", cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    children = [r for r in experiment_runs(MlflowClient()) if r.data.tags.get(Tag.PARENT)]
    assert len(children) == 2
    assert all(c.data.tags[Tag.DEMO] == "true" and c.data.params["data.name"] == "digits" for c in children)
    assert all(c.data.metrics[Metric.accuracy("test")] > 0.5 for c in children)  # real images, learnable
