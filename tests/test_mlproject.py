"""`mlflow run . --env-manager local -P overrides=...` gives the runs that `python -m tlsweep ...` gives."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag

PROVENANCE_TAGS = (Tag.CONFIG_HASH, Tag.DATA_FINGERPRINT, Tag.WEIGHTS_FINGERPRINT, "layer", "classes", Tag.KIND)


def _start(command: list[str], *, cwd: Path, store: Path, cache: Path) -> subprocess.Popen:
    """A command with its own tracking store and feature cache; `python` on PATH is this interpreter."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "TLSWEEP_CACHE_DIR": str(cache),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _mlflow_run(project: Path, entry_point: str, overrides: list[str], *, experiment: str = "tlsweep") -> list[str]:
    return [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local",
            "--experiment-name", experiment, "-e", entry_point, "-P", f"overrides={' '.join(overrides)}"]


def _both(isolated: Path, project: list[str], direct: list[str]) -> tuple[list, list]:
    """Run `mlflow run` and the direct command side by side, each into its own store; their runs."""
    stores = {"project": isolated / "project.db", "direct": isolated / "direct.db"}
    processes = {
        "project": _start(project, cwd=isolated, store=stores["project"], cache=isolated / "cache-project"),
        "direct": _start([sys.executable, "-m", "tlsweep", *direct], cwd=isolated, store=stores["direct"],
                         cache=isolated / "cache-direct"),
    }
    for name, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}:\n{output[-3000:]}"
    found = []
    for name in ("project", "direct"):
        client = MlflowClient(f"sqlite:///{stores[name]}")
        found.append(client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id], max_results=100))
    return found[0], found[1]


def _result(run) -> tuple[dict, dict, dict]:
    """What a run says about its configuration: params, metrics other than times, provenance tags."""
    params = {k: v for k, v in run.data.params.items() if k != "overrides"}  # `overrides`: mlflow run's own
    metrics = {k: v for k, v in run.data.metrics.items() if not Metric.is_time(k)}
    return params, metrics, {k: run.data.tags.get(k) for k in PROVENANCE_TAGS}


def _jobs(runs) -> dict[str, tuple]:
    return {r.data.params[Param.LAYER]: _result(r) for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB}


def test_sweep_entry_point_gives_the_direct_sweeps_runs_under_the_project_run(isolated, cifar_dir, project_root,
                                                                              tiny):
    overrides = ["layer=block4_pool,block5_pool", f"data.path={cifar_dir}", *tiny]
    project, direct = _both(isolated, _mlflow_run(project_root, "sweep", overrides), ["-m", *overrides])

    assert len(_jobs(project)) == 2 and _jobs(project) == _jobs(direct)
    [parent] = [r for r in project if r.data.tags.get("mlflow.project.entryPoint") == "sweep"]
    assert parent.data.tags[Tag.KIND] == Kind.SWEEP and parent.info.status == Status.FINISHED
    assert shlex.split(parent.data.params["overrides"]) == [" ".join(overrides)]  # MLflow logs it shell-quoted
    children = [r for r in project if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert {r.data.tags[Tag.PARENT] for r in children} == {parent.info.run_id}
    assert len(project) == 3  # the project run is the parent: no second parent, no stray run
    client = MlflowClient(f"sqlite:///{isolated / 'project.db'}")
    assert Artifact.summary(Artifact.COMPARISON_CSV) in {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}


@pytest.mark.slow
def test_main_entry_point_logs_the_direct_runs_result_into_the_project_run(isolated, cifar_dir, project_root, tiny):
    overrides = ["layer=block5_pool", "classifier.C=0.5", "'data.classes=[4, 5, 6]'", f"data.path={cifar_dir}",
                 *tiny]
    project, direct = _both(isolated, _mlflow_run(project_root, "main", overrides),
                            [o.strip("'") for o in overrides])  # the shell strips those quotes too

    assert len(project) == len(direct) == 1
    assert _result(project[0]) == _result(direct[0])
    assert project[0].data.params[Param.CLASSES] == "[4, 5, 6]"
    assert project[0].data.tags["mlflow.project.entryPoint"] == "main" and project[0].info.status == Status.FINISHED


@pytest.mark.slow
def test_project_run_in_another_experiment_is_one_clear_line(isolated, cifar_dir, project_root, tiny):
    process = _start(_mlflow_run(project_root, "main", ["layer=block5_pool", f"data.path={cifar_dir}", *tiny],
                                 experiment="other"),
                     cwd=isolated, store=isolated / "project.db", cache=isolated / "cache")
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0
    lines = [line for line in output.splitlines() if "`mlflow run` opened run" in line]
    assert len(lines) == 1 and "'other'" in lines[0] and "--experiment-name" in lines[0]
    client = MlflowClient(f"sqlite:///{isolated / 'project.db'}")
    [project] = client.search_runs([client.get_experiment_by_name("other").experiment_id])
    assert project.info.status == Status.FAILED and "layer" not in project.data.params  # nothing logged astray
    assert client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id]) == []
