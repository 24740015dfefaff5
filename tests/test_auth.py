"""A shared tracking server that lets no one in without credentials: `mlflow server --app-name basic-auth`.

One server for the module, on 127.0.0.1, with a throwaway admin password, Flask secret and auth database
(SQLite here; docs/deployment.md puts both stores on PostgreSQL). It is stopped after the last test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Kind, Param, Status, Tag

pytestmark = pytest.mark.server
pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF: pip install -e '.[auth]'")

LAYERS = ["block4_pool", "block5_pool"]
ADMIN = "admin"
SWEEPER, READER = "sweeper", "reader"
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{folder}/auth.db
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# each request otherwise re-hashes the password (PBKDF2), about 0.7 s on 2 cores
auth_cache_ttl_seconds = 60
"""


class AuthServer:
    """The server's URL and its users' passwords."""

    def __init__(self, url: str, passwords: dict[str, str]):
        self.url, self.passwords = url, passwords

    def request(self, user: str, path: str, body: dict) -> dict:
        token = base64.b64encode(f"{user}:{self.passwords[user]}".encode()).decode()
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Basic {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")

    def env(self, user: str | None, password: str | None = None) -> dict[str, str]:
        """The environment a command runs with as `user` (None: no credentials at all)."""
        env = {key: value for key, value in os.environ.items() if key not in CREDENTIALS}
        env["MLFLOW_TRACKING_URI"] = self.url
        if user is not None:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or self.passwords[user])
        return env

    @contextlib.contextmanager
    def client(self, user: str = ADMIN):
        """An MlflowClient that reads as `user` (the client takes credentials from the environment only)."""
        saved = {key: os.environ.get(key) for key in CREDENTIALS}
        os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=self.passwords[user])
        try:
            yield MlflowClient(self.url)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def all_runs(self) -> list:
        with self.client() as client:
            ids = [e.experiment_id for e in client.search_experiments()]
            return client.search_runs(ids, max_results=1000)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, free_port, mlflow_server):
    """A basic-auth server with an admin and two users: `sweeper` (may create experiments) and `reader`."""
    folder = tmp_path_factory.mktemp("auth-server")
    passwords = {user: secrets.token_urlsafe(18) for user in (ADMIN, SWEEPER, READER)}  # >= 12 characters
    (folder / "auth.ini").write_text(AUTH_INI.format(folder=folder, admin=ADMIN))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(folder / "auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=passwords[ADMIN],
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    with mlflow_server(folder, port, f"sqlite:///{folder / 'backend.db'}", "--app-name", "basic-auth",
                       env=env) as url:
        server = AuthServer(url, passwords)
        for user in (SWEEPER, READER):
            server.request(ADMIN, "/api/2.0/mlflow/users/create", {"username": user, "password": passwords[user]})
        with server.client() as admin:  # the admin's: the others get the default permission, READ
            admin.create_experiment("tlsweep")
        yield server


def _sweep(cli, isolated, cifar_dir, tiny, env, *args):
    return cli("-m", f"layer={','.join(LAYERS)}", f"data.path={cifar_dir}", *tiny, *args, cwd=isolated, env=env)


def _lines(result, text: str) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if text in line]


def test_with_credentials_a_sweep_logs_as_on_an_open_server(auth_server, isolated, cifar_dir, cli, tiny):
    result = _sweep(cli, isolated, cifar_dir, tiny, auth_server.env(SWEEPER), "tracking.experiment=sweeper-own")
    assert result.returncode == 0, result.stderr[-3000:]

    with auth_server.client(SWEEPER) as client:
        experiment = client.get_experiment_by_name("sweeper-own")  # created by the sweep, as its user
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
        children = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB]
        assert len(parents) == 1 and parents[0].info.status == Status.FINISHED
        assert sorted(r.data.params[Param.LAYER] for r in children) == LAYERS
        assert all(r.info.status == Status.FINISHED and r.data.tags[Tag.PARENT] == parents[0].info.run_id
                   for r in children)
        report = client.download_artifacts(children[0].info.run_id, Artifact.report("test", "txt"),
                                           str(isolated))
        assert "precision" in Path(report).read_text()
        table = client.download_artifacts(parents[0].info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))
        assert all(layer in Path(table).read_text() for layer in LAYERS)


@pytest.mark.parametrize("who", ["no-credentials", "wrong-password", "single-run-no-credentials"])
def test_refused_credentials_stop_the_command_before_any_job_in_one_line(auth_server, isolated, cifar_dir, cli, tiny,
                                                                         monkeypatch, who):
    for key in CREDENTIALS:
        monkeypatch.delenv(key, raising=False)
    before = {r.info.run_id for r in auth_server.all_runs()}
    if who == "wrong-password":
        result = _sweep(cli, isolated, cifar_dir, tiny, auth_server.env(SWEEPER, "not-the-password"))
    elif who == "no-credentials":
        result = _sweep(cli, isolated, cifar_dir, tiny, auth_server.env(None))
    else:
        result = cli(f"data.path={cifar_dir}", *tiny, cwd=isolated, env=auth_server.env(None))

    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    (line,) = _lines(result, "refused")
    assert f"tracking server {auth_server.url} refused" in line and "(401 Unauthorized)" in line
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
    assert ("user 'sweeper'" in line) == (who == "wrong-password")
    assert not _lines(result, "job 1/")  # no job started
    after = auth_server.all_runs()
    assert {r.info.run_id for r in after} == before and not [r for r in after if r.info.status == Status.RUNNING]
    assert _no_features(isolated / "cache")  # TLSWEEP_CACHE_DIR


def test_a_read_only_user_cannot_log_into_an_experiment(auth_server, isolated, cifar_dir, cli, tiny):
    before = {r.info.run_id for r in auth_server.all_runs()}
    result = _sweep(cli, isolated, cifar_dir, tiny, auth_server.env(READER))  # tracking.experiment=tlsweep: admin's

    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    (line,) = _lines(result, "refused")
    assert line.endswith(
        f"tracking server {auth_server.url} refused user 'reader' permission to write to experiment 'tlsweep' "
        "(403 Permission denied); ask its admin for EDIT permission on it, or set tracking.experiment to an "
        "experiment you may write to"
    ), line
    assert not _lines(result, "job 1/")
    after = auth_server.all_runs()
    assert {r.info.run_id for r in after} == before and not [r for r in after if r.info.status == Status.RUNNING]
    assert _no_features(isolated / "cache")


def _no_features(cache: Path) -> bool:
    """No feature was read or written: the cache folder holds at most Hydra's folders (`hydra/`)."""
    return not cache.exists() or [p.name for p in cache.iterdir()] == ["hydra"]
