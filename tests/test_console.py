"""What a person sees in the terminal: no TensorFlow start-up noise, progress with a rate, each warning once,
where a run was logged, and tlsweep's own --help."""

from __future__ import annotations

import re
import signal
import sys

import pytest

from tlsweep.console import NATIVE_NOISE


def test_tensorflow_start_up_lines_are_recognised_and_nothing_else():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795900222.316356   14803 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1795900222.321886   14803 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "E0000 00:00:1795900227.309702   14803 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    ]
    kept = [
        "E0000 00:00:1795900227.309702   14803 op_kernel.cc:1830] OP_REQUIRES failed: out of memory",
        "/x/sklearn/svm/_base.py:1295: ConvergenceWarning: Liblinear failed to converge",
        "[2026-11-28 21:10:52,058][tlsweep][INFO] - vgg16 block5_pool: train 0.943",
    ]
    assert all(NATIVE_NOISE.match(line) for line in noise)
    assert not any(NATIVE_NOISE.match(line) for line in kept)


def test_a_single_run_is_quiet_shows_progress_warns_once_and_says_where_it_logged(isolated, cifar_dir, cli, tiny):
    result = cli(f"data.path={cifar_dir}", "layer=block3_pool", "classifier.max_iter=1", *tiny, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in ("cuInit", "cuda_platform", "oneDNN", "absl::InitializeLog"):
        assert noise not in output, noise
    # not a terminal here: a few plain progress lines with rate and time left, no carriage returns
    progress = re.findall(r"features \(train\): \d+/60 images, \d+ img/s, \d+ s left", output)
    assert 1 <= len(progress) <= 11 and "\r" not in output
    assert output.count("ConvergenceWarning") == 1 and "recorded as converged=0" in output
    (line,) = [line for line in output.splitlines() if "logged run " in line]
    assert f"sqlite:///{isolated}/mlflow.db" in line and "mlflow ui --backend-store-uri" in line


def test_help_is_tlsweeps_own_page(isolated, cli):
    result = cli("--help", cwd=isolated)
    assert result.returncode == 0
    for text in ("Examples:", "tlsweep -m layer=block3_pool,block4_pool,block5_pool", "tlsweep preset=demo",
                 "protocols", "classifier.C", "features.pooling", "data.image_size", "data=folder data.path="):
        assert text in result.stdout, text
    assert "_schema" not in result.stdout and "Traceback" not in result.stderr


def test_a_sweep_is_named_and_counted_as_hydras_basic_sweeper_expands_it():
    from tlsweep.sweep.plan import sweep_name, sweep_size

    preset_then_command_line = ["layer=block3_pool,block4_pool,block5_pool", "layer=block3_pool",
                                "features.pooling=flatten,grid"]
    assert sweep_size(preset_then_command_line) == 2  # the command line's layer wins over the preset's
    assert sweep_name("vgg16", preset_then_command_line) == "vgg16 features.pooling=flatten,grid"
    assert sweep_name("vgg16", ["model=vgg16,resnet50", "layer=conv1"]) == "model=vgg16,resnet50"
    assert sweep_name("vgg16", ["layer=a,b"], "folder:birds") == "vgg16 folder:birds layer=a,b"  # the data set too
    assert sweep_size(["model=vgg16,resnet50", "seed=0,1,2"]) == 6


def test_a_ctrl_c_dropped_in_a_garbage_collector_callback_is_raised_at_the_next_step(monkeypatch):
    """Python raises Ctrl-C's KeyboardInterrupt wherever the main thread is, a gc callback included (JAX
    registers one); there it is reported as unraisable and dropped, and the sweep would go on."""
    import gc
    import logging

    from tlsweep import console

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # what Python would report; put back after
    monkeypatch.setattr(console, "_pending_interrupt", False)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest's own Ctrl-C handling stays as it is
    console.keep_swallowed_interrupts()
    raised = []

    def callback(phase, info):
        if len(raised) < 2:
            raised.append(KeyboardInterrupt if not raised else ValueError)
            raise raised[-1]("from a gc callback")

    gc.callbacks.append(callback)
    try:
        gc.collect()  # Ctrl-C: kept, not reported
        gc.collect()  # any other error: reported as before
    finally:
        gc.callbacks.remove(callback)
    assert raised == [KeyboardInterrupt, ValueError]
    assert [item.exc_type for item in reported] == [ValueError]
    with pytest.raises(KeyboardInterrupt):
        console.Progress(10, description="features (train)", log=logging.getLogger("tlsweep")).update(1)


def test_the_ctrl_c_handler_records_the_interrupt_and_leaves_an_ignored_ctrl_c_ignored(monkeypatch):
    """The handler records a Ctrl-C, then raises it as Python's own handler does; an error that a library raises
    after it becomes the interrupt, caused by that error. One without a Ctrl-C before it stays what it is."""
    from tlsweep import console

    monkeypatch.setattr(console, "_pending_interrupt", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # put back after
    installed = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.append((signum, handler)))
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_IGN)  # started in the background
    console.keep_swallowed_interrupts()
    assert installed == []
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.default_int_handler)
    console.keep_swallowed_interrupts()
    assert installed == [(signal.SIGINT, console._record_interrupt)]

    error = ValueError("a genuine error")
    assert console.as_interrupt(error) is error
    with pytest.raises(KeyboardInterrupt):
        installed[0][1](signal.SIGINT, None)
    converted = SystemError("bad argument to internal function")
    interrupt = console.as_interrupt(converted)
    assert isinstance(interrupt, KeyboardInterrupt) and interrupt.__cause__ is converted
    assert str(interrupt) == "came out of a library as SystemError"
    with pytest.raises(KeyboardInterrupt):
        console.raise_pending_interrupt()


def test_a_command_leaves_its_heap_to_the_os_and_still_ends_its_run_and_flushes_its_log(isolated, cifar_dir, tiny):
    """As the command ends, its heap is frozen (the collector then tracks almost nothing, so the interpreter's final
    collections have nothing to walk), and nothing that was logged is lost: exit handlers run, the run is FINISHED
    with its metrics, the job's log file is complete."""
    import subprocess

    from mlflow.tracking import MlflowClient

    program = ("import atexit, gc, sys\n"
               "atexit.register(lambda: print('exit handler ran', flush=True))\n"
               f"sys.argv = ['tlsweep', {'data.path=' + str(cifar_dir)!r}, 'layer=block5_pool', *{list(tiny)!r}]\n"
               "from tlsweep.__main__ import cli\n"
               "try:\n"
               "    cli()\n"
               "finally:\n"
               "    print('tracked at exit:', len(gc.get_objects()), flush=True)\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=isolated, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, tracked, handler = result.stdout.splitlines()
    assert int(tracked.split(":")[1]) < 1000 and handler == "exit handler ran"  # 200,000 without it
    assert "Exception ignored" not in result.stderr
    client = MlflowClient(f"sqlite:///{isolated / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    (log_file,) = isolated.glob("**/__main__.log")
    *_, result_line, where_line = log_file.read_text().splitlines()  # the job's last two lines, as it wrote them
    assert "vgg16 block5_pool: train" in result_line and f"logged run {run.info.run_id}" in where_line


def test_the_collector_is_off_while_the_backend_starts_and_what_it_built_is_frozen_after():
    import gc

    from tlsweep.console import collector_paused

    try:
        with collector_paused():
            assert not gc.isenabled()
            loaded = [[index] for index in range(1000)]  # objects a library keeps for the process's life
        assert gc.isenabled()
        tracked = gc.get_objects()  # frozen objects are no longer tracked by any generation
        assert not any(item is loaded or item is loaded[0] for item in tracked)
        gc.disable()
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller that had turned the collector off keeps it off
    finally:
        gc.enable()
        gc.unfreeze()  # the rest of the test session's heap is collected as before
