"""Everything that talks to MLflow: connection, runs, stale-run cleanup, resume lookups, summaries.

This is the only module that imports mlflow.
"""

from __future__ import annotations

import logging
import os
import traceback
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Mapping, Optional

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlsweep import provenance
from tlsweep.errors import ConfigError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
PROCESS_TAG = "tlsweep.process"
HASH_TAG = "tlsweep.config_hash"
KIND_TAG = "tlsweep.kind"  # "sweep" for parents, "job" for children, "summary" for compare runs


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at `uri` and return the experiment's id, creating it on first use."""
    open_store(uri)
    try:
        with _sqlite_lock(uri):  # the first process creates the schema; the others wait instead of racing it
            found = mlflow.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else _create_experiment(experiment)
    except (MlflowException, OSError) as err:  # OSError: the sqlite file's folder cannot be made
        reason = str(err).strip().splitlines()[0][:200]
        raise ConfigError(f"tracking.uri={uri!r} cannot be used: {reason}") from None
    return experiment_id


def _create_experiment(name: str) -> str:
    """Create experiment `name`, or take the one another machine created a moment before (a server has no lock)."""
    try:
        return mlflow.create_experiment(name)
    except MlflowException:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _probe(uri: str) -> None:
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri={uri!r} is unreachable ({reason}); start the server, or leave tracking.uri "
            "null and MLFLOW_TRACKING_URI unset to log to ./mlflow.db"
        ) from None


def _sqlite_lock(uri: str):
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", timeout=600)


class RunLog:
    """Logging calls for the active run, so callers never import mlflow."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            mlflow.log_params(dict(items[start : start + 100]))

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics(dict(metrics))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_dict(self, data: dict, path: str) -> None:
        mlflow.log_dict(data, path)

    def log_figure(self, figure, path: str) -> None:
        import matplotlib.pyplot as plt

        mlflow.log_figure(figure, path)
        plt.close(figure)


@contextmanager
def job_run(
    *, experiment_id: str, run_name: str, parent_run_id: Optional[str], tags: Mapping[str, str]
) -> Iterator[RunLog]:
    """A child (or single) run; an exception marks it FAILED with the error as tag and artifact."""
    tags = {**tags, KIND_TAG: "job", PROCESS_TAG: provenance.process_id()}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags
    ) as run:
        try:
            yield RunLog(run.info.run_id)
        except BaseException as err:
            mlflow.set_tag("error", f"{type(err).__name__}: {err}".splitlines()[0][:5000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise


def start_sweep_run(*, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """The parent of a multirun. It spans Hydra callbacks, so it is closed by `end_run`."""
    return _create_run(experiment_id=experiment_id, run_name=run_name, tags=tags, kind="sweep")


def start_summary_run(*, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """A run that holds a comparison rebuilt by `tlsweep.compare`; closed by `end_run`."""
    return _create_run(experiment_id=experiment_id, run_name=run_name, tags=tags, kind="summary")


def _create_run(*, experiment_id: str, run_name: str, tags: Mapping[str, str], kind: str) -> str:
    tags = {**tags, KIND_TAG: kind, PROCESS_TAG: provenance.process_id(), "mlflow.runName": run_name}
    return MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id


def open_store(uri: str) -> None:
    """Point MLflow at `uri` to read what is there, creating nothing (a server is checked first)."""
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    mlflow.set_tracking_uri(uri)


def project_run_id(experiment_id: str, *, claim: bool = False) -> Optional[str]:
    """The run `mlflow run` opened for this process (MLFLOW_RUN_ID), if any.

    A single run logs into it (mlflow.start_run resumes it); a sweep claims it as its parent, which
    removes it from the environment so that no job resumes it. It must live in tlsweep's experiment.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    found = MlflowClient().get_run(run_id).info.experiment_id
    if found != experiment_id:
        name = MlflowClient().get_experiment(found).name
        raise ConfigError(
            f"`mlflow run` opened run {run_id} in experiment {name!r}, not in tracking.experiment's; "
            "pass the same name to both (mlflow run --experiment-name NAME ... tracking.experiment=NAME)"
        )
    if claim:
        del os.environ["MLFLOW_RUN_ID"]
    return run_id


def end_run(run_id: str, *, failed: bool) -> None:
    MlflowClient().set_terminated(run_id, "FAILED" if failed else "FINISHED")


def log_run_text(run_id: str, text: str, path: str) -> None:
    MlflowClient().log_text(run_id, text, path)


def log_run_figure(run_id: str, figure, path: str) -> None:
    import matplotlib.pyplot as plt

    MlflowClient().log_figure(run_id, figure, path)
    plt.close(figure)


def set_run_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, value)


def runs(experiment_ids: list[str], filter_string: str = "") -> list[dict]:
    """Runs as plain dicts: run_id, status, start_time, params, metrics, tags."""
    found = MlflowClient().search_runs(experiment_ids, filter_string=filter_string, max_results=50000)
    return [
        {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "tags": dict(run.data.tags),
        }
        for run in found
    ]


def find_runs(experiment_ids: list[str], filter_string: str) -> list[dict]:
    """`runs` for a search string a user typed: a malformed one is a ConfigError that quotes it."""
    try:
        return runs(experiment_ids, filter_string)
    except MlflowException as err:
        raise ConfigError(f"cannot search runs with {filter_string!r}: {str(err).splitlines()[0][:300]}") from None


def experiment_id(name: str) -> Optional[str]:
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found else None


def close_stale_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host is gone (killed, crashed, rebooted)."""
    closed = []
    for run in runs([experiment_id], "attributes.status = 'RUNNING'"):
        process = run["tags"].get(PROCESS_TAG)
        if process and not provenance.process_alive(process):
            MlflowClient().set_terminated(run["run_id"], RunStatus.to_string(RunStatus.KILLED))
            MlflowClient().set_tag(run["run_id"], "error", f"process {process} ended without closing the run")
            closed.append(run["run_id"])
    if closed:
        log.warning("marked %d stale RUNNING run(s) KILLED: %s", len(closed), ", ".join(closed))
    return closed


def finished_run(experiment_id: str, config_hash: str) -> Optional[dict]:
    """The newest FINISHED job run with this config hash, if any (for resume)."""
    found = runs(
        [experiment_id],
        f"tags.`{HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED' and tags.`{KIND_TAG}` = 'job'",
    )
    return max(found, key=lambda run: run["start_time"]) if found else None
