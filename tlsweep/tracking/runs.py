"""The lifecycles of tlsweep's runs in a store: jobs, sweep parents, compare's summaries, stale runs, resume.

A job run is written once, when the job has ended, from its `JobRecord`: it is created, filled and closed
in one call, and closed FAILED if the writing itself fails, so no job run is ever left RUNNING. A sweep
parent and a summary run span more than one call; they carry the process that owns them and a heartbeat,
so the next command, on this host or any other, can tell a run whose process died from one still at work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Optional, Sequence


from tlsweep import console, provenance
from tlsweep.errors import ConfigError, LoggingError
from tlsweep.tracking import heartbeat
from tlsweep.tracking.names import Kind, Metric, Status, Tag
from tlsweep.tracking.payload import Payload
from tlsweep.tracking.record import error_line
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RunRecord, StoredRun

log = logging.getLogger(__name__)



def connect(tracking_uri: str, experiment: str, *, stale_after: Optional[float] = None) -> tuple[Store, str]:
    """The store and experiment a command logs to, after closing the runs whose process died.

    `stale_after` (seconds, tracking.stale_after) also closes runs of any host whose heartbeat is older.
    """
    store = Store.open(tracking_uri)
    experiment_id = store.experiment_id(experiment, create=True)
    close_stale_runs(store, experiment_id, stale_after=stale_after)
    return store, experiment_id


def log_job(store: Store, *, experiment_id: str, run_name: str, payload: Payload, started: float,
            parent_run_id: Optional[str] = None, run_id: Optional[str] = None, interrupted: bool = False,
            work_seconds: Optional[float] = None) -> str:
    """Write a finished, failed or interrupted job as one run; `run_id` is a run opened for it (`mlflow run`'s).

    `work_seconds`, the job's extraction, fits and scores: the rest of its wall time since `started`, this
    writing included, is logged last as `overhead_seconds`.

    The run is created with the tags that say what it is, so even a run whose results cannot be written is
    listed by what it was. It always ends: FINISHED, FAILED (an error, or results that could not be written,
    then with that line as its `error` tag) or KILLED (Ctrl-C).
    """
    failed = Tag.ERROR in payload.tags
    if run_id is None:
        tags = {**payload.tags, Tag.KIND: Kind.JOB, Tag.PROCESS: provenance.process_id(),
                **({Tag.PARENT: parent_run_id} if parent_run_id else {})}
        run_id = store.create_run(experiment_id, run_name=run_name, tags=tags, start_time=int(started * 1000))
    try:
        store.write(run_id, payload)
        if work_seconds is not None:
            store.write(run_id, Payload(metrics={Metric.OVERHEAD_SECONDS: time.time() - started - work_seconds}))
    except Exception as err:
        stopped = console.as_interrupt(err)
        if stopped is not err:  # a Ctrl-C while writing, that a library turned into this error
            _closing(store, run_id, Status.KILLED)
            raise stopped
        line = f"the run's results could not be written to {store.display_uri}: {error_line(err)}"
        _closing(store, run_id, Status.FAILED, error=line)
        raise LoggingError(line) from None
    except BaseException:  # Ctrl-C while writing
        _closing(store, run_id, Status.KILLED)
        raise
    store.end(run_id, Status.KILLED if interrupted else Status.FAILED if failed else Status.FINISHED)
    return run_id


def _closing(store: Store, run_id: str, status: str, *, error: str = "") -> None:
    """End a run whose writing went wrong, as far as the store still answers; what it does not is logged."""
    try:
        if error:
            store.set_tag(run_id, Tag.ERROR, error)
        store.end(run_id, status)
    except Exception as err:  # the store is gone too: the next command marks the run KILLED (close_stale_runs)
        log.warning("run %s could not be closed (%s); the next command in its experiment closes it", run_id,
                    error_line(err))


def start_parent(store: Store, *, experiment_id: str, run_name: str, kind: str, tags: dict[str, str],
                 beat_interval: float = heartbeat.MAX_INTERVAL_S) -> str:
    """A sweep's parent or a summary run: it spans several calls, so `end` closes it.

    Its first heartbeat is stamped now, with the interval its owner will keep it fresh at
    (`heartbeat.Heartbeat`, while a sweep's jobs run), so observers know how long a silence means death.
    """
    tags = {**tags, Tag.KIND: kind, Tag.PROCESS: provenance.process_id(), Tag.HEARTBEAT: heartbeat.stamp(),
            Tag.HEARTBEAT_INTERVAL: f"{beat_interval:g}"}
    return store.create_run(experiment_id, run_name=run_name, tags=tags)


def end(store: Store, run_id: str, *, failed: bool) -> None:
    store.end(run_id, Status.FAILED if failed else Status.FINISHED)


def outer_run(store: Store, run_id: str, *, experiment_id: str) -> str:
    """Check that the run `mlflow run` opened lives in tlsweep's experiment, where its jobs will be."""
    found = store.experiment_of(run_id)
    if found != experiment_id:
        raise ConfigError(
            f"`mlflow run` opened run {run_id} in experiment {store.experiment_name(found)!r}, not in "
            "tracking.experiment's; pass the same name to both (mlflow run --experiment-name NAME ... "
            "tracking.experiment=NAME)"
        )
    return run_id


def close_stale_runs(store: Store, experiment_id: str, *, stale_after: Optional[float] = None) -> list[str]:
    """Mark KILLED the RUNNING runs whose process is gone (killed, crashed, rebooted, its host lost).

    On this host the process itself is checked, and one still alive keeps its run. A run of any other host
    is closed when its heartbeat is older than `stale_after` seconds and than several of the beat intervals
    its owner declared (`heartbeat.dead_after`), whatever this command's own `stale_after`; its end time is
    then its last beat. A run without either mark (not tlsweep's, or from before heartbeats) is left alone.
    """
    closed = []
    for run in store.search([experiment_id], f"attributes.status = '{Status.RUNNING}'"):
        process, beat = run.tags.get(Tag.PROCESS), run.tags.get(Tag.HEARTBEAT)
        age = heartbeat.age_seconds(beat) if beat else None
        if process and provenance.process_on_this_host(process):
            if provenance.process_alive(process):
                continue
            store.end(run.run_id, Status.KILLED)
            store.set_tag(run.run_id, Tag.ERROR, f"process {process} ended without closing the run")
        elif stale_after is not None and age is not None and \
                age > heartbeat.dead_after(stale_after, run.tags.get(Tag.HEARTBEAT_INTERVAL)):
            limit = heartbeat.dead_after(stale_after, run.tags.get(Tag.HEARTBEAT_INTERVAL))
            store.end(run.run_id, Status.KILLED, end_time=heartbeat.beat_time(beat))
            store.set_tag(run.run_id, Tag.ERROR, f"no heartbeat for {age:.0f}s, more than {limit:g}s (tracking."
                                                 f"stale_after={stale_after:g}s, and {heartbeat.MISSED_BEATS} of "
                                                 f"its own beats): process {process or '?'} presumed dead")
        else:
            continue
        closed.append(run.run_id)
    if closed:
        log.warning("marked %d stale RUNNING run(s) KILLED: %s", len(closed), ", ".join(closed))
    return closed


def finished_job(store: Store, experiment_id: str, config_hash: str) -> Optional[RunRecord]:
    """The newest FINISHED job run with this config hash, if any (what `resume=true` reuses)."""
    found = store.search(
        [experiment_id],
        f"tags.`{Tag.CONFIG_HASH}` = '{config_hash}' and attributes.status = '{Status.FINISHED}' "
        f"and tags.`{Tag.KIND}` = '{Kind.JOB}'",
    )
    fitted = [run for run in found if run.tags.get(Tag.PRESCREEN) != Tag.PRESCREEN_SKIPPED]  # not a probe's result
    return RunRecord.parse(max(fitted, key=lambda run: run.start_time)) if fitted else None


def mark_resumed(store: Store, parent_run_id: str, *, config_hash: str, run_id: str) -> None:
    """Name, on the sweep's parent, the finished run it reuses for a configuration instead of running it."""
    store.set_tag(parent_run_id, f"{Tag.RESUMED_PREFIX}{config_hash}", run_id)


def seal(key: str, *, run_id: str, config_hash: str, val_accuracy: Optional[float]) -> str:
    """What proves a run is a sweep's own: an HMAC, under the sweep's secret, of the run, its configuration
    and its val accuracy, so a run added or changed by another writer of the experiment fails it."""
    message = f"{run_id}|{config_hash}|{val_accuracy!r}".encode()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()[:32]


def mark_own(store: Store, parent_run_id: str, *, key: str, run_id: str, config_hash: str,
             val_accuracy: Optional[float]) -> None:
    """Seal, on the sweep's parent, a run the sweep logged or reused (`seal`)."""
    store.set_tag(parent_run_id, f"{Tag.SEAL_PREFIX}{run_id}",
                  seal(key, run_id=run_id, config_hash=config_hash, val_accuracy=val_accuracy))


def is_own(record: RunRecord, parent_tags: dict, *, key: str) -> bool:
    """Whether a job run carries its sweep's seal, for its config hash and val accuracy as stored now."""
    expected = seal(key, run_id=record.run_id, config_hash=record.config_hash or "",
                    val_accuracy=record.val_accuracy)
    return hmac.compare_digest(parent_tags.get(f"{Tag.SEAL_PREFIX}{record.run_id}", ""), expected)


def mark_failed(store: Store, parent_run_id: str, *, line: str) -> None:
    """Name, on the sweep's parent, a job that failed before it opened a run of its own."""
    key = hashlib.sha256(line.encode()).hexdigest()[:16]
    store.set_tag(parent_run_id, f"{Tag.FAILED_PREFIX}{key}", line[:5000])


def failed_checks(store: Store, parent_run_id: str) -> list[str]:
    """The lines `mark_failed` left on a sweep's parent."""
    return [value for key, value in sorted(store.get(parent_run_id).tags.items()) if key.startswith(Tag.FAILED_PREFIX)]


def sweep_jobs(store: Store, experiment_ids: Sequence[str], parent_run_id: str) -> list[StoredRun]:
    """A sweep's job runs: its children and the finished runs it resumed."""
    return store.search(experiment_ids, f"tags.`{Tag.PARENT}` = '{parent_run_id}'") + resumed_runs(
        store, experiment_ids, parent_run_id)


def resumed_runs(store: Store, experiment_ids: Sequence[str], parent_run_id: str) -> list[StoredRun]:
    """The FINISHED runs a `resume=true` sweep reused instead of re-running; its parent's tags name them."""
    found = []
    for parent in store.search(experiment_ids, f"attributes.run_id = '{parent_run_id}'"):
        for key, run_id in parent.tags.items():
            if key.startswith(Tag.RESUMED_PREFIX):
                found += store.search(experiment_ids, f"attributes.run_id = '{run_id}'")
    return found


def timestamped(prefix: str) -> str:
    """A run name that tells runs of one kind apart: `sweep 2026-11-28 19:22:58`."""
    return f"{prefix} {time.strftime('%Y-%m-%d %H:%M:%S')}"
