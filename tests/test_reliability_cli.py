"""Reliability through the real command line: bad input, a failing job in a parallel sweep, SIGKILL and
resume. Each subprocess pays TensorFlow's imports, so only what needs a real process is here; every bad
input is also checked in-process in test_reliability.py.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag

LAYERS = ["block3_pool", "block4_pool", "block5_pool"]



CLI_CASES = {
    # fails its checks before any run is opened: one line, exit 1, nothing logged
    "unknown-layer": (["layer=not_a_layer"], ["received layer='not_a_layer'", "python -m tlsweep.layers model=vgg16"]),
    # fails in the sweep callback, before any run: nothing is logged anywhere
    "unreachable-server-sweep": (["-m", "layer=block4_pool,block5_pool", "tracking.uri=http://127.0.0.1:{port}"],
                                 ["tracking.uri='http://127.0.0.1:", "unreachable"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_input_at_the_command_line_is_one_line_and_exit_1(isolated, cifar_dir, cli, tiny, free_port,
                                                               experiment_runs, case, lines_with):
    args, expected = CLI_CASES[case]
    args = [arg.format(port=free_port()) for arg in args]
    result = cli(*args, f"data.path={cifar_dir}", *tiny, cwd=isolated)  # -m must come first
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = lines_with(result, expected[0])  # said once, on one line
    assert all(text in line for text in expected), line
    runs = experiment_runs(MlflowClient())
    assert not [r for r in runs if r.info.status == Status.RUNNING]
    assert runs == []


def test_schema_type_error_is_hydras_message_without_a_traceback(isolated, cli, experiment_runs):
    result = cli("classifier.max_iter=many", cwd=isolated)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "classifier.max_iter=many" in result.stderr and "could not be converted to Integer" in result.stderr
    assert not (isolated / "mlflow.db").exists() or experiment_runs(MlflowClient()) == []


def test_parallel_sweep_shares_one_cache_entry_and_a_failing_job_does_not_stop_it(isolated, cifar_dir, cli, tiny,
                                                                                   experiment_runs, lines_with):
    """joblib, 3 processes at once on a cold cache and a new store; three of the six jobs fail inside their run
    (a val share that leaves a class no val image is found from the labels, before the CNN)."""
    result = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", f"layer={','.join(LAYERS)}",
                 f"data.path={cifar_dir}", *tiny, "data.val_fraction=0.25,0.05", cwd=isolated)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "database is locked" not in output and "Traceback" not in output
    assert len(lines_with(result, "3 of 6 jobs failed")) == 1

    client = MlflowClient()
    runs = experiment_runs(client)
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    jobs = [r for r in runs if r.data.tags.get(Tag.PARENT)]
    children = {r.data.params[Param.LAYER]: r for r in jobs if r.data.params["data.val_fraction"] == "0.25"}
    assert sorted(children) == sorted(LAYERS)
    assert all(children[layer].info.status == Status.FINISHED for layer in LAYERS)
    failed = [r for r in jobs if r.data.params["data.val_fraction"] == "0.05"]
    assert len(failed) == 3 and all(r.info.status == Status.FAILED for r in failed)
    assert all("data.val_fraction should lie in" in r.data.tags[Tag.ERROR] for r in failed)
    assert parent.info.status == Status.FAILED
    assert len(lines_with(result, "failed: vgg16 layer=")) == 3
    # the jobs ran in worker processes, children of the one parent that the launching process opened
    assert parent.data.tags[Tag.PROCESS] not in {r.data.tags[Tag.PROCESS] for r in jobs}
    assert {r.data.tags[Tag.PARENT] for r in jobs} == {parent.info.run_id}
    table = client.download_artifacts(parent.info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))
    assert all(layer in open(table).read() for layer in LAYERS)

    # every image went through the CNN once: the other processes waited for the entry, then read it
    assert sum(children[layer].data.metrics[Metric.CNN_FORWARD_IMAGES] for layer in LAYERS) == 60 + 24
    from tlsweep.stages.data import datasets
    from tlsweep.stages.features import cache, extraction

    # the entries' folder; Hydra's folders go beside it, in hydra/
    (folder,) = [p for p in (isolated / "cache").iterdir() if p.is_dir() and p.name != "hydra"]
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))
    entries = sorted(p.stem for p in folder.glob("*.npy"))
    assert entries == sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("key", "layers", "shapes")
                             and not p.stem.endswith("-ids") and not p.stem.startswith("score-"))
    assert len(list(folder.glob("score-*.json"))) == len(LAYERS) * 2  # LogME and k-NN of each cut, beside it
    assert len(list(folder.glob("*-ids.json"))) == 2 * 6  # each class's image ids, beside its entries
    assert len(entries) == 2 * len(LAYERS) * 6  # train and test, three cuts, six classes

    # the entries hold what one process alone computes from scratch
    dataset = datasets.load_dataset(name="cifar10", path=str(cifar_dir))
    for image_set in ("train", "test"):
        for layer in LAYERS:
            kwargs = dict(dataset=dataset, image_set=image_set, layer=layer, classes=[4, 5, 6, 7, 8, 9],
                          backbone="vgg16", weights=None, seed=0, input_size=32, batch_size=16)
            shared = extraction.extract_features(cache_root=isolated / "cache", **kwargs)
            alone = extraction.extract_features(cache_root=isolated / "alone", sweep_layers=LAYERS,
                                              **kwargs)
            assert shared.cnn_images == 0
            np.testing.assert_allclose(shared.X, alone.X, rtol=1e-5, atol=1e-5)
    assert all(cache.load_entry(folder, name) is not None for name in entries)


def test_sigkilled_sweep_is_closed_and_resumed_with_one_finished_child_per_layer(isolated, cifar_dir, cli, tiny,
                                                                                  experiment_runs, cli_in_background):
    args = ["-m", f"layer={','.join(LAYERS)}", f"data.path={cifar_dir}", *tiny]
    # the store's schema exists once the parent is opened
    proc, log_path = cli_in_background(*args, cwd=isolated, until="sweep parent run")
    try:
        deadline = time.monotonic() + 300
        client = MlflowClient()
        finished = []
        while not finished:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
            finished = [r for r in experiment_runs(client)
                        if r.info.status == Status.FINISHED and r.data.tags.get(Tag.PARENT)]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = experiment_runs(client)
    left_running = {r.info.run_id for r in before if r.info.status == Status.RUNNING}
    (killed_parent,) = [r for r in before if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert killed_parent.info.run_id in left_running  # SIGKILL leaves the run RUNNING
    done = {r.data.params[Param.LAYER]: r.info.run_id for r in before
            if r.info.status == Status.FINISHED and r.data.tags.get(Tag.PARENT)}
    assert 1 <= len(done) < len(LAYERS)

    result = cli(*args, "resume=true", cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for layer in done:
        assert f"resume: skipping layer={layer} " in output
    assert f"marked {len(left_running)} stale RUNNING run(s) KILLED" in output

    after = {r.info.run_id: r for r in experiment_runs(client)}
    assert not [r for r in after.values() if r.info.status == Status.RUNNING]
    for run_id in left_running:
        assert after[run_id].info.status == Status.KILLED and "ended without closing" in after[run_id].data.tags[Tag.ERROR]
    jobs = [r for r in after.values() if r.data.tags.get(Tag.KIND) == Kind.JOB and r.info.status == Status.FINISHED]
    assert sorted(r.data.params[Param.LAYER] for r in jobs) == LAYERS  # exactly one FINISHED child per layer
    assert len({r.data.tags[Tag.CONFIG_HASH] for r in jobs}) == len(LAYERS)
    assert {r.info.run_id for r in jobs} >= set(done.values())  # the finished ones were kept, not run again

    (new_parent,) = [r for r in after.values()
                     if r.data.tags.get(Tag.KIND) == Kind.SWEEP and r.info.run_id != killed_parent.info.run_id]
    assert new_parent.info.status == Status.FINISHED
    table = open(client.download_artifacts(new_parent.info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))).read()
    assert all(r.info.run_id in table for r in jobs)  # the resumed runs are in the new summary too
