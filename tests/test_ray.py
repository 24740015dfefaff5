"""Sweeps on Ray: a real two-node Ray cluster on this machine, and a sweep whose jobs run as its tasks.

The cluster's processes get an environment without the sweep's MLFLOW_TRACKING_URI and TLSWEEP_CACHE_DIR
and with a HOME of their own, as nodes of a real cluster would: the jobs must find the store and the
feature cache through the sweep's context alone. The test stops the cluster it started, and only that one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Kind, Metric, Param, Status, Tag

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed: pip install -e '.[ray]'")

LAYERS = ["block3_pool", "block4_pool", "block5_pool"]
IMAGES = 60 + 24  # train + test images of the tiny CIFAR-10 files, classes 4-9
START_TIMEOUT_S = 180
RAY = Path(sys.executable).with_name("ray")


def _session_pids(sid: int) -> list[int]:
    """The processes of session `sid`: a `ray start --block` started in its own session, and all it spawned."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.append(int(stat.parent.name))
    return found


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the node's `ray start --block` (it drains and stops its processes), then kill what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=40)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _session_pids(process.pid) and time.monotonic() < deadline:
        for pid in _session_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a process that left the group but not the session
        time.sleep(0.5)


def _wait_for_nodes(address: str, env: dict, nodes: int, processes: list[subprocess.Popen], logs: list[Path]) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(node['Alive'] for node in ray.nodes()))")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs):
            if process.poll() is not None:
                pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        done = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(nodes)]:
            return
        time.sleep(1)
    pytest.fail(f"the Ray cluster at {address} did not reach {nodes} nodes in {START_TIMEOUT_S}s:\n"
                + "\n".join(log.read_text()[-2000:] for log in logs))


@pytest.fixture
def ray_cluster(isolated, free_port):
    """A Ray head node on 127.0.0.1 and one worker node joined to it, one CPU each; yields (address, environment).

    Ray resolves 127.0.0.1 to this machine's routable address and listens on all interfaces, so the cluster
    requires a throwaway token (RAY_AUTH_MODE=token): only the processes given it can join or submit work.
    """
    folder = Path(tempfile.mkdtemp(prefix="tlsweep-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = isolated / "ray-home"
    home.mkdir()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "TLSWEEP_CACHE_DIR", "RAY_ADDRESS")}
    env.update(token, HOME=str(home))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", f"--temp-dir={folder}", "--disable-usage-stats", "--block"]
    commands = {
        "head": [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                 f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                 "--include-dashboard=false", *common],
        "worker": [str(RAY), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                   f"--dashboard-agent-listen-port={free_port()}", *common],
    }
    processes: list[subprocess.Popen] = []
    logs: list[Path] = []
    try:
        for name, command in commands.items():
            logs.append(folder / f"{name}.log")
            with open(logs[-1], "w") as out:  # each node in its own session: the stop reaches all it spawned
                processes.append(subprocess.Popen(command, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            _wait_for_nodes(address, env, len(processes), processes, logs)
        yield address, token
    finally:
        for process in reversed(processes):
            _stop(process)
        leftovers = {process.pid: _session_pids(process.pid) for process in processes}
        logs_text = "\n".join(log.read_text()[-1500:] for log in logs if log.exists())
        shutil.rmtree(folder, ignore_errors=True)
        assert not any(leftovers.values()), f"Ray processes left running: {leftovers}\n{logs_text}"


def test_ray_cluster_preset_joins_a_cluster_without_the_object_store_setting_ray_init_refuses(compose):
    cfg = compose(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=10.0.0.1:6379",
                   "+hydra.launcher.ray.remote.num_gpus=1"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert dict(launcher.ray.init) == {"address": "10.0.0.1:6379", "object_store_memory": None}
    assert dict(launcher.ray.remote) == {"num_gpus": 1}
    assert compose(["hydra/launcher=ray_cluster"], hydra=True).hydra.launcher.ray.init.address == "auto"


def test_a_sweep_runs_its_jobs_as_tasks_of_a_two_node_ray_cluster(ray_cluster, isolated, cifar_dir, cli, tiny,
                                                                   experiment_runs):
    address, token = ray_cluster
    result = cli("-m", f"layer={','.join(LAYERS)}", f"data.path={cifar_dir}", *tiny, "hydra/launcher=ray_cluster",
                 f"hydra.launcher.ray.init.address={address}", cwd=isolated, env=token)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Ray Launcher is launching 3 jobs" in result.stdout + result.stderr

    client = MlflowClient()  # the sweep's store: a SQLite file under this test's folder, reached by every node
    runs = experiment_runs(client)
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert len(parents) == 1 and parents[0].info.status == Status.FINISHED
    assert sorted(r.data.params[Param.LAYER] for r in children) == LAYERS
    assert all(r.info.status == Status.FINISHED for r in children)
    assert {r.data.tags[Tag.PARENT] for r in children} == {parents[0].info.run_id}
    # the jobs ran in Ray's worker processes, not in the one that opened the parent run
    assert parents[0].data.tags[Tag.PROCESS] not in {r.data.tags[Tag.PROCESS] for r in children}
    # one CNN pass in total, into the sweep's cache, though no node's environment names it
    assert sorted(r.data.metrics[Metric.CNN_FORWARD_IMAGES] for r in children) == [0, 0, IMAGES]
    assert list((isolated / "cache").rglob("*.npy"))
    assert not list((isolated / "ray-home").rglob("*.npy"))  # a worker's own cache holds Hydra's job folder alone
