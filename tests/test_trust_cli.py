"""Each fault of the trust review reproduced as a user meets it, and what happens now: sweeps through the real
command line (odd class names, all jobs failing, a mistyped layer, Ctrl-C, a password in an override), and
jobs run in-process where a process boundary adds nothing (resume after the content changed, few-shot C=auto,
a child whose results cannot be written, a run under the parent that the sweep did not log).
"""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlsweep.errors import ConfigError
from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag

ODD = ("great (white) shark", "a+b", "a&b", "o'neill", "x, y", "Ünïcødé ελάφι", "a$^$b")  # "$^$": bad mathtext
SECRET = "hunter2-s3cret"



def _everything_logged(client: MlflowClient, run, folder: Path) -> str:
    """Every param, tag, metric key, run name, and the text of every artifact file of a run, as one string."""
    parts = [run.info.run_name or "", *run.data.params, *run.data.params.values(), *run.data.tags,
             *run.data.tags.values(), *run.data.metrics]
    pending = [item.path for item in client.list_artifacts(run.info.run_id)]
    while pending:
        path = pending.pop()
        listed = client.list_artifacts(run.info.run_id, path)
        if listed and not (len(listed) == 1 and listed[0].path == path):
            pending += [item.path for item in listed]
            continue
        local = Path(client.download_artifacts(run.info.run_id, path, str(folder)))
        if local.is_file() and local.suffix not in (".png", ".npy", ".keras", ".joblib", ".pkl"):
            parts.append(local.read_text(errors="replace"))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def odd_sweep(tmp_path_factory, image_folder_writer, cli, tiny):
    """`-m data.image_size=32,40` on a folder whose class names hold ( ) + & ' , $ space and non-ASCII letters,
    with a password passed as an override: (result, client, parent, children, folder)."""
    work = tmp_path_factory.mktemp("odd")
    root = image_folder_writer(work / "images", classes=ODD, per_class=8)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", "data=folder", f"data.path={root}", "data.image_size=32,40", "layer=block5_pool",
                 f"+hydra.job.env_set.MLFLOW_TRACKING_PASSWORD={SECRET}", *tiny, cwd=work,
                 env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tlsweep").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [run for run in runs if run.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [run for run in runs if run.data.tags.get(Tag.PARENT) == parent.info.run_id]
    return result, client, parent, children, work


def test_odd_class_names_lose_nothing_and_are_shown_as_they_are(odd_sweep, monkeypatch):
    result, client, parent, children, work = odd_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert parent.info.status == Status.FINISHED and len(children) == 2
    for child in children:
        assert child.info.status == Status.FINISHED
        assert json.loads(child.data.tags[Tag.CLASS_NAMES]) == sorted(ODD)
        assert {"test_recall_great _white_ shark", "test_recall_a_b", "test_recall_a_b_2"} <= set(child.data.metrics)
        report = Path(client.download_artifacts(child.info.run_id, Artifact.report("test", "txt"),
                                                str(work))).read_text()
        assert all(name in report for name in ODD)
        rows = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
            child.info.run_id, Artifact.predictions("test"), str(work))).read_text())))
        assert {row["true"] for row in rows} == set(ODD) and {row["predicted"] for row in rows} <= set(ODD)
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    predicted = model.predict(np.full((2, 32, 32, 3), 128, np.uint8))
    assert set(predicted) <= set(ODD)


def test_a_setting_swept_makes_one_row_per_value_and_the_best_row_is_the_run_served(odd_sweep, lines_with):
    result, client, parent, children, work = odd_sweep
    import pandas as pd

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(work)))
    assert sorted(table["data.image_size"]) == [32, 40] and len(table) == 2
    best = max(children, key=lambda run: run.data.metrics[Metric.accuracy("val")])
    assert parent.data.tags[Tag.BEST_RUN_ID] in {run.info.run_id for run in children}
    served = next(run for run in children if run.info.run_id == parent.data.tags[Tag.BEST_RUN_ID])
    assert served.data.metrics[Metric.accuracy("val")] == best.data.metrics[Metric.accuracy("val")]
    assert parent.data.metrics[Metric.BEST_VAL_ACCURACY] == pytest.approx(best.data.metrics[Metric.accuracy("val")])
    header = next(line for line in lines_with(result, "layer") if "data.image_size" in line)
    assert "val" in header  # the closing table has a column for the setting that varied


def test_a_sweep_says_where_its_time_went(odd_sweep):
    """The parent logs its start-up, each job the wall time outside extraction, fits and scores, so the three
    parts add up to the job's run (the run ends just after its last metric)."""
    _, _, parent, children, _ = odd_sweep
    startup = parent.data.metrics[Metric.STARTUP_SECONDS]
    first_job = min(child.info.start_time for child in children)
    assert 0 < startup and parent.info.start_time <= first_job
    for child in children:
        metrics = child.data.metrics
        work = metrics[Metric.EXTRACTION_SECONDS] + metrics[Metric.FIT_SECONDS] + sum(
            value for key, value in metrics.items() if key.startswith(Metric.SCORE_SECONDS_PREFIX))
        wall = (child.info.end_time - child.info.start_time) / 1000
        assert 0 < metrics[Metric.OVERHEAD_SECONDS] and work + metrics[Metric.OVERHEAD_SECONDS] <= wall + 0.002


def test_a_password_in_an_override_reaches_neither_the_store_nor_the_console(odd_sweep):
    result, client, parent, children, work = odd_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    for run in (parent, *children):
        assert SECRET not in _everything_logged(client, run, work / "downloaded")
    assert "MLFLOW_TRACKING_PASSWORD=***" in parent.data.tags[Tag.NOTE]


def test_a_sweep_whose_jobs_all_fail_exits_non_zero_with_one_closing_line(isolated, cifar_dir, cli, tiny,
                                                                          experiment_runs, lines_with):
    result = cli("-m", "layer=block4_pool,block5_pool", f"data.path={isolated / 'missing'}", *tiny, cwd=isolated)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "iterrows" not in output and "UserWarning" not in output
    assert len(lines_with(result, "2 of 2 jobs failed")) == 1
    runs = experiment_runs(MlflowClient())
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert parent.info.status == Status.FAILED and not [r for r in runs if r.info.status == Status.RUNNING]
    assert sorted(r.info.status for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB) == [Status.FAILED, Status.FAILED]


def test_config_errors_in_any_job_stop_the_sweep_before_anything_runs(isolated, cifar_dir, cli, tiny,
                                                                      experiment_runs, lines_with):
    result = cli("-m", "classifier.C=-1,0.1", "layer=block3_pol,block4_pool", f"data.path={cifar_dir}", *tiny,
                 cwd=isolated)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert "job 1/" not in output and "serve the best" not in output  # nothing ran, nothing was summarised
    (closing,) = lines_with(result, "jobs failed their checks")
    assert "3 of 4 jobs failed their checks; nothing was run" in closing
    (typo,) = lines_with(result, "did you mean")  # one line for the two jobs it concerns
    assert "classifier.C=-1 layer=block3_pol; classifier.C=0.1 layer=block3_pol:" in typo
    assert "did you mean 'block3_pool'" in typo and "python -m tlsweep.layers model=vgg16" in typo
    assert len(typo) < 400  # never every layer
    (negative,) = lines_with(result, "received classifier.C=-1.0")
    assert "classifier.C=-1 layer=block4_pool: classifier.C should be" in negative
    assert experiment_runs(MlflowClient()) == []


def test_a_mistyped_layer_gets_suggestions_and_a_wrong_input_size_opens_no_run(compose, isolated):
    from tlsweep.job import job_specs

    with pytest.raises(ConfigError) as raised:
        job_specs(compose(["model=resnet50", "layer=conv5_block3_ot", "model.weights=null"]))
    line = str(raised.value)
    assert "did you mean 'conv5_block3_out'" in line and "python -m tlsweep.layers model=resnet50" in line
    assert "conv2_block1_1_conv" not in line and "\n" not in line
    with pytest.raises(ConfigError, match=r"data.image_size should be at least 32x32 for vgg16"):
        job_specs(compose(["data.image_size=16", "model.weights=null"]))
    with pytest.raises(ConfigError, match=r"received data.image_size=null, which keeps the 8x8 images of data=digits"):
        job_specs(compose(["data=digits", "data.image_size=null", "model.weights=null"]))
    assert not (isolated / "mlflow.db").exists()


def test_ctrl_c_is_one_line_leaves_nothing_running_and_resume_picks_up(isolated, cifar_writer, cli, tiny,
                                                                      experiment_runs, cli_in_background):
    data = cifar_writer(isolated / "data", train_per_class_per_batch=24)  # a first job of a few seconds
    args = ["-m", "layer=block3_pool,block4_pool,block5_pool", f"data.path={data}", *tiny]
    proc, log_path = cli_in_background(*args, cwd=isolated, until="extracting")  # the first job is at work
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and len([line for line in output.splitlines() if "interrupted" in line]) == 1
    client = MlflowClient()
    before = experiment_runs(client)
    assert not [r for r in before if r.info.status == Status.RUNNING]
    (parent,) = [r for r in before if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert parent.info.status == Status.KILLED
    (child,) = [r for r in before if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert child.info.status == Status.KILLED and child.data.tags[Tag.ERROR].startswith("KeyboardInterrupt")

    result = cli(*args, "resume=true", cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [r for r in experiment_runs(client) if r.data.tags.get(Tag.KIND) == Kind.JOB
            and r.info.status == Status.FINISHED]
    assert sorted(r.data.params[Param.LAYER] for r in jobs) == ["block3_pool", "block4_pool", "block5_pool"]


# A Ctrl-C landing in a library's C code can come out as another error: TensorFlow's graph building once raised
# `SystemError: ... bad argument to internal function`. Here the first job's work is that library.
CONVERTED_CTRL_C = """
import os, signal, sys, time
import tlsweep.job
from tlsweep import train

def converted(*args, **kwargs):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    except KeyboardInterrupt:
        raise SystemError("Objects/listobject.c:338: bad argument to internal function") from None
    raise AssertionError("no Ctrl-C arrived")

signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C reaches it, also in a background job
train.train_and_evaluate = converted
from tlsweep.__main__ import cli
sys.argv[0] = "tlsweep"
cli()
"""


def test_a_ctrl_c_that_a_library_turns_into_another_error_still_stops_the_sweep(isolated, cifar_dir, tiny,
                                                                               experiment_runs):
    """Not a FAILED job and a sweep that goes on and exits 1: the job ends KILLED, its error names the
    interrupt and what the library made of it, and the sweep stops with the one line and status 130."""
    import subprocess
    import sys

    args = ["-m", "layer=block3_pool,block4_pool,block5_pool", f"data.path={cifar_dir}", *tiny]
    result = subprocess.run([sys.executable, "-c", CONVERTED_CTRL_C, *args], cwd=isolated, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 130, output[-3000:]
    assert "Traceback" not in output and len([line for line in output.splitlines() if "interrupted" in line]) == 1
    runs = experiment_runs(MlflowClient())
    assert sorted(r.info.status for r in runs) == [Status.KILLED, Status.KILLED]  # the parent and the first job
    (child,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert child.data.tags[Tag.ERROR] == "KeyboardInterrupt: came out of a library as SystemError"
    trace = Path(MlflowClient().download_artifacts(child.info.run_id, Artifact.ERROR, str(isolated))).read_text()
    assert "SystemError: Objects/listobject.c:338: bad argument to internal function" in trace


# In-process: one job at a time, as a sweep's job runs it, without a process per job


@pytest.fixture
def two_classes(isolated, image_folder_writer):
    return image_folder_writer(isolated / "images", classes=("cat", "dog"), per_class=10)


def _resume(compose, tiny, *overrides):
    from tlsweep.job import run

    return run(compose([*tiny, "data=folder", "layer=block5_pool", "resume=true", *overrides]))


def test_resume_reuses_a_run_only_for_the_same_data_and_weights(isolated, two_classes, compose, tiny, caplog,
                                                               image_saver, experiment_runs):
    import keras

    weights = isolated / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    args = (f"data.path={two_classes}", f"model.weights={weights}")
    client = MlflowClient()

    def finished() -> int:
        return len([r for r in experiment_runs(client) if r.info.status == Status.FINISHED])

    _resume(compose, tiny, *args)
    with caplog.at_level("INFO", logger="tlsweep"):
        _resume(compose, tiny, *args)
    assert finished() == 1 and "resume: skipping" in caplog.text

    caplog.clear()
    keras.utils.set_random_seed(7)
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    with caplog.at_level("INFO", logger="tlsweep"):
        _resume(compose, tiny, *args)  # the weights file was replaced at the same path
    assert finished() == 2 and "again: its weights changed" in caplog.text

    caplog.clear()
    image_saver(np.full((32, 32, 3), 90, np.uint8), two_classes / "dog" / "new.png")
    with caplog.at_level("INFO", logger="tlsweep"):
        _resume(compose, tiny, *args)  # an image was added
    assert finished() == 3 and "again: its data changed" in caplog.text

    caplog.clear()
    for i in range(10):  # a class folder that sorts first: data.classes=[0,1] now names other classes
        image_saver(np.full((32, 32, 3), 20 * i, np.uint8), two_classes / "ant" / f"{i}.png")
    with caplog.at_level("INFO", logger="tlsweep"):
        _resume(compose, tiny, *args, "data.classes=[0,1]")
    assert finished() == 4 and "again: its data changed" in caplog.text


def test_a_few_shot_probe_under_C_auto_is_fitted_on_k_images_per_class(isolated, cifar_dir, compose, tiny,
                                                                      experiment_runs):
    from tlsweep.job import run

    run(compose([*tiny, f"data.path={cifar_dir}", "data.train_per_class=3", "data.classes=[4,5,6]",
                 "classifier.C=auto", "layer=block5_pool"]))
    (logged,) = experiment_runs(MlflowClient())
    assert logged.data.params[Param.N_TRAIN] == "9" and logged.data.params[Param.N_FIT] == "9"


@pytest.fixture
def sweep_in_process(isolated, cifar_dir, compose, tiny):
    """A parent run and a context as the sweep's callback makes them, and `job(layer)` to run one of its jobs."""
    import secrets

    from tlsweep.job import run
    from tlsweep.sweep.callback import MLflowSweepCallback
    from tlsweep.sweep.context import SweepContext
    from tlsweep.tracking import runs
    from tlsweep.tracking.names import Kind

    uri = f"sqlite:///{isolated / 'mlflow.db'}"
    store, experiment = runs.connect(uri, "tlsweep")
    parent = runs.start_parent(store, experiment_id=experiment, run_name="sweep", kind=Kind.SWEEP, tags={})
    context = SweepContext(tracking_uri=uri, experiment_id=experiment, parent_run_id=parent,
                           seal_key=secrets.token_hex(32))
    callback = MLflowSweepCallback()
    callback.context = context

    def job(layer: str) -> float:
        return run(compose([*tiny, f"data.path={cifar_dir}", f"layer={layer}", "data.classes=[4,5]"]), context)

    return callback, job, parent


def test_a_child_whose_results_cannot_be_written_never_takes_the_sweep_down(sweep_in_process, monkeypatch,
                                                                           experiment_runs, caplog):
    from tlsweep.errors import LoggingError
    from tlsweep.tracking.store import Store

    callback, job, parent = sweep_in_process
    job("block4_pool")
    write = Store.write

    def unavailable(self, run_id, payload, **kwargs):
        if payload.params.get(Param.LAYER) == "block5_pool":
            raise MlflowException("503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE")
        return write(self, run_id, payload, **kwargs)

    monkeypatch.setattr(Store, "write", unavailable)
    with pytest.raises(LoggingError, match="could not be written"):
        job("block5_pool")
    monkeypatch.setattr(Store, "write", write)
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as exited:
        callback.on_multirun_end(config=None)
    assert exited.value.code == 1
    client = MlflowClient()
    runs = {r.data.tags.get(Tag.LAYER, r.info.run_id): r for r in experiment_runs(client)}
    assert runs["block5_pool"].info.status == Status.FAILED and "503" in runs["block5_pool"].data.tags[Tag.ERROR]
    assert client.get_run(parent).info.status == Status.FAILED  # never left RUNNING
    assert client.get_run(parent).data.tags[Tag.BEST_LAYER] == "block4_pool"  # the summary covers what logged
    assert "1 of 2 jobs failed" in caplog.text


def test_a_ctrl_c_that_a_library_turns_into_an_error_while_results_or_the_summary_are_written_is_an_interrupt(
        sweep_in_process, monkeypatch, experiment_runs):
    """Where an error is caught and the sweep would go on (a child's results that could not be written, the
    parent's summary), an error that follows a Ctrl-C is raised as the interrupt: the child KILLED, not FAILED."""
    from tlsweep import console
    from tlsweep.sweep import summary
    from tlsweep.tracking.store import Store

    callback, job, parent = sweep_in_process
    job("block4_pool")
    write = Store.write

    def interrupted(self, run_id, payload, **kwargs):
        if payload.params.get(Param.LAYER) == "block5_pool":
            monkeypatch.setattr(console, "_pending_interrupt", True)  # what the SIGINT handler records
            raise SystemError("bad argument to internal function")
        return write(self, run_id, payload, **kwargs)

    monkeypatch.setattr(Store, "write", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        job("block5_pool")
    assert isinstance(raised.value.__cause__, SystemError)
    runs = {r.data.tags.get(Tag.LAYER, r.info.run_id): r for r in experiment_runs(MlflowClient())}
    assert runs["block5_pool"].info.status == Status.KILLED and Tag.ERROR not in runs["block5_pool"].data.tags

    monkeypatch.setattr(Store, "write", write)
    monkeypatch.setattr(summary, "summary_files", lambda *args: (_ for _ in ()).throw(SystemError("in matplotlib")))
    with pytest.raises(KeyboardInterrupt):  # not SystemExit(1) with the parent FAILED for a summary it lacks
        callback.on_multirun_end(config=None)
    assert MlflowClient().get_run(parent).info.status == Status.RUNNING  # closed KILLED at exit, as after any Ctrl-C
    monkeypatch.setattr(console, "_pending_interrupt", False)
    with pytest.raises(SystemExit):  # the same error without a Ctrl-C before it: the summary could not be made
        callback.on_multirun_end(config=None)
    assert MlflowClient().get_run(parent).info.status == Status.FAILED


def test_the_parent_serves_only_a_run_its_own_jobs_logged(sweep_in_process, experiment_runs, caplog):
    from mlflow.entities import Metric, Param, RunTag

    callback, job, parent = sweep_in_process
    job("block4_pool")
    client = MlflowClient()
    (own,) = [r for r in experiment_runs(client) if r.data.tags.get(Tag.KIND) == Kind.JOB]
    # another writer of the experiment adds a run claiming to be a child of this sweep, with a better score
    forged = client.create_run(own.info.experiment_id, tags={**own.data.tags}).info.run_id
    client.log_batch(forged, params=[Param(k, v) for k, v in own.data.params.items()],
                     metrics=[Metric(k, 1.0 if k == "val_accuracy" else v, 0, 0) for k, v in own.data.metrics.items()],
                     tags=[RunTag(Tag.PARENT, parent)])
    client.set_terminated(forged, Status.FINISHED)
    with caplog.at_level("WARNING"):
        callback.on_multirun_end(config=None)
    tags = client.get_run(parent).data.tags
    assert tags[Tag.BEST_RUN_ID] == own.info.run_id and client.get_run(parent).info.status == Status.FINISHED
    assert forged in caplog.text and "did not log" in caplog.text
