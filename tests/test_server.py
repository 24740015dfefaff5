"""A real `mlflow server` on 127.0.0.1 (SQLite- or PostgreSQL-backed, proxied artifacts) shared by two machines.

The server, and the PostgreSQL cluster behind it, are started by fixtures and stopped after the test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Kind, Metric, Status, Tag

pytestmark = pytest.mark.server

def _postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and createdb: Debian's versioned one, else pg_ctl's on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    found = candidates[-1] if candidates else shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def postgres_cluster(port: int):
    """A throwaway PostgreSQL cluster on 127.0.0.1:port (a free one); yields the URI of a fresh database.

    PostgreSQL refuses to run as root, so under root it runs as the `postgres` user, in a folder it owns.
    """
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install -e '.[test]') is needed for a postgresql store")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tlsweep-pg-"))  # not under tmp_path: its parents are private to root
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run([*as_user, str(bin_dir / tool), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        pg("pg_ctl", "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1 would pick psycopg 3
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"])  # tests/test_ui.py serves SQLite
def tracking_server(request, tmp_path, free_port, mlflow_server):
    """(url, artifacts folder) of a running server backed by the store named by the parameter."""
    folder = tmp_path / "server"
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            backend = f"sqlite:///{folder / 'backend.db'}"
        else:
            backend = stack.enter_context(postgres_cluster(free_port()))
        yield stack.enter_context(mlflow_server(folder, free_port(), backend)), folder / "mlartifacts"


def _sweep(machine: str, url: str, root: Path, data: Path, tiny: tuple[str, ...]) -> subprocess.Popen:
    """`python -m tlsweep -m ...` as run on `machine`: its own folder and feature cache, the shared server."""
    cwd = root / machine
    cwd.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "TLSWEEP_CACHE_DIR": str(cwd / "cache")}
    command = [sys.executable, "-m", "tlsweep", "-m", "layer=block4_pool,block5_pool", f"data.path={data}",
               f"tracking.machine={machine}", *tiny]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_machines_sweep_into_one_experiment_on_a_shared_server(tracking_server, isolated, cifar_writer, tiny):
    url, artifacts = tracking_server
    data = cifar_writer(isolated / "data")
    sweeps = {machine: _sweep(machine, url, isolated, data, tiny) for machine in ("alpha", "beta")}  # at the same time
    for machine, process in sweeps.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{machine}:\n{output[-3000:]}"

    client = MlflowClient(url)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == ["tlsweep"]
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    parents = {r.data.tags[Tag.MACHINE]: r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP}
    children = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert sorted(parents) == ["alpha", "beta"] and len(children) == 4
    for child in children:
        parent = parents[child.data.tags[Tag.MACHINE]]
        assert child.data.tags[Tag.PARENT] == parent.info.run_id and child.info.status == Status.FINISHED
        # artifacts go through the server (proxied) into its --artifacts-destination, and come back through it
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        report = client.download_artifacts(child.info.run_id, Artifact.report("test", "txt"), str(isolated))
        assert "precision" in Path(report).read_text()
        assert list(artifacts.rglob(f"{child.info.run_id}/artifacts/reports/test_classification_report.txt"))
    for parent in parents.values():
        table = client.download_artifacts(parent.info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))
        assert set(pd.read_csv(table)["machine"]) == {parent.data.tags[Tag.MACHINE]}

    # the same configuration on two machines: same hash, same fingerprints, same accuracy
    by_hash: dict[str, list] = {}
    for child in children:
        by_hash.setdefault(child.data.tags[Tag.CONFIG_HASH], []).append(child)
    assert len(by_hash) == 2
    for pair in by_hash.values():
        assert sorted(r.data.tags[Tag.MACHINE] for r in pair) == ["alpha", "beta"]
        for key in (Tag.DATA_FINGERPRINT, Tag.WEIGHTS_FINGERPRINT):
            assert pair[0].data.tags[key] == pair[1].data.tags[key]
        assert pair[0].data.metrics[Metric.accuracy("test")] == pair[1].data.metrics[Metric.accuracy("test")]

    done = subprocess.run([sys.executable, "-m", "tlsweep.compare", "--tracking-uri", url],
                          cwd=isolated, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = client.search_runs([experiments[0].experiment_id], "tags.`tlsweep.kind` = 'summary'")
    assert len(summaries) == 1 and summaries[0].data.tags[Tag.COMPARE_MACHINES] == "alpha,beta"
    path = client.download_artifacts(summaries[0].info.run_id, Artifact.summary(Artifact.BY_MACHINE_CSV), str(isolated))
    by_machine = pd.read_csv(path)
    assert len(by_machine) == 2 and list(by_machine["machines"]) == [2, 2]
    assert (by_machine["test_accuracy[alpha]"] == by_machine["test_accuracy[beta]"]).all()
    assert by_machine[["fit_seconds[alpha]", "fit_seconds[beta]"]].notna().all().all()
