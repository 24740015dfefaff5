"""A new SQLite store's schema made by a second process while the command starts (tracking/prepared.py): it
lands only when the store is opened, never over a store that exists, and nothing is left when it is not used."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tlsweep.tracking import prepared
from tlsweep.tracking.store import Store


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    prepared.discard()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".new"))


def test_the_store_uri_is_resolved_as_the_sweep_resolves_it(folder, monkeypatch):
    assert prepared.store_uri([], folder) == f"sqlite:///{folder / 'mlflow.db'}"
    assert prepared.store_uri(["layer=block3_pool,block4_pool", "tracking.uri=null"], folder) == \
        f"sqlite:///{folder / 'mlflow.db'}"
    assert prepared.store_uri(["tracking.uri=sqlite:////x/a.db"], folder) == "sqlite:////x/a.db"
    assert prepared.store_uri(["+tracking.uri='sqlite:////x/b.db'"], folder) == "sqlite:////x/b.db"
    assert prepared.store_uri(["tracking.uri=sqlite:////x/a.db,sqlite:////x/b.db"], folder) is None  # swept
    assert prepared.store_uri(["layer=[unclosed"], folder) is None  # Hydra reports it
    assert prepared.store_uri(["-cn", "mine", "-m"], folder) is None  # a config of the user's may name another store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert prepared.store_uri([], folder) == "http://127.0.0.1:5000"
    assert prepared.sqlite_path("http://127.0.0.1:5000") is None
    assert prepared.sqlite_path("sqlite:///a.db?timeout=5") is None
    assert prepared.sqlite_path("sqlite:///a.db") == folder / "a.db"


def test_the_schema_is_made_aside_and_lands_when_the_store_is_opened(folder):
    prepared.begin(["preset=demo"], folder)
    pending = prepared._pending
    assert pending is not None and pending.target == folder / "mlflow.db"
    assert pending.finished()
    assert not (folder / "mlflow.db").exists() and hidden(folder) == [pending.scratch.name]  # nothing in place yet

    store = Store.open(f"sqlite:///{folder / 'mlflow.db'}")
    assert hidden(folder) == [] and prepared._pending is None
    tables = {row[0] for row in sqlite3.connect(folder / "mlflow.db").execute("select name from sqlite_master")}
    assert {"runs", "metrics", "alembic_version", "logged_models"} <= tables
    (default,) = store.client.search_experiments()
    assert Path(default.artifact_location.removeprefix("file://")) == folder / "mlruns" / "0"  # made in the cwd
    experiment = store.experiment_id("tlsweep", create=True)
    run_id = store.create_run(experiment, run_name="r", tags={})
    assert store.client.get_run(run_id).info.experiment_id == experiment


def test_the_child_loads_no_stage_scikit_learn_or_backend(folder):
    """What the child imports decides whether the schema is ready when the command opens its store: `store`,
    without the stages and scikit-learn that runs are written with, nor the backend."""
    heavy = ("tlsweep.stages", "sklearn", "keras", "tensorflow")
    program = ("import runpy, sys; runpy.run_module('tlsweep.tracking.prepared', run_name='__main__'); "
               f"print([name for name in {heavy!r} if name in sys.modules])")
    target = folder / "child.db"
    done = subprocess.run([sys.executable, "-c", program, f"sqlite:///{target}"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    tables = {row[0] for row in sqlite3.connect(target).execute("select name from sqlite_master")}
    assert {"runs", "metrics", "alembic_version", "logged_models"} <= tables


def test_an_unused_schema_is_deleted_and_a_store_that_exists_is_left_alone(folder):
    prepared.begin([], folder)
    prepared.discard()  # the command failed before opening its store: no store, no hidden file
    assert sorted(p.name for p in folder.iterdir()) == []

    Store.open(f"sqlite:///{folder / 'mlflow.db'}")
    before = (folder / "mlflow.db").read_bytes()
    prepared.begin([], folder)
    assert prepared._pending is None  # the store exists: nothing to make

    other = folder / "other.db"
    prepared.begin([f"tracking.uri=sqlite:///{other}"], folder)
    assert prepared._pending.target == other
    Store.open(f"sqlite:///{folder / 'mlflow.db'}")  # the command opened another store after all
    assert not other.exists() and hidden(folder) == []
    assert (folder / "mlflow.db").read_bytes() == before


def test_a_child_that_fails_leaves_mlflow_to_make_the_schema(folder, monkeypatch):
    monkeypatch.setattr(prepared.sys, "executable", "false")  # exits 1 at once
    prepared.begin([], folder)
    assert not prepared._pending.finished()
    store = Store.open(f"sqlite:///{folder / 'mlflow.db'}")
    assert [e.name for e in store.client.search_experiments()] == ["Default"] and hidden(folder) == []


def test_the_command_leaves_no_store_when_its_config_is_wrong(cli, isolated):
    result = cli("layer=block9_pool", "model.weights=null", cwd=isolated)
    assert result.returncode == 1 and "layer='block9_pool'" in result.stdout + result.stderr
    assert [p.name for p in isolated.iterdir() if "mlflow.db" in p.name] == []
