"""Sweep-level tracking as a Hydra callback: every job checked first, one parent run, a summary when it ends.

`on_multirun_start` composes and checks every job (`plan`): a config error anywhere stops the sweep with one
line per bad job before anything is opened. It then fetches what the jobs need, connects to the store once,
closes stale runs, opens (or claims) the parent run and builds the `SweepContext`. Hydra pickles this
callback into every job, under every launcher, and calls `on_job_start` in the job's own process: that is
where the context is handed to the job.

`on_multirun_end` summarises the children the sweep's own jobs logged (sealed on the parent, and of the
plan's configurations), logs the best configuration's pipeline, and always closes the parent: FINISHED, or
FAILED when a job failed or the summary could not be made. The command then exits non-zero if any job
failed. If the process ends before that (Ctrl-C, a crash), the parent is closed KILLED on the way out.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlsweep import console, preflight, provenance
from tlsweep.config import default_cache_dir, default_tracking_uri
from tlsweep.errors import TlsweepError
from tlsweep.redact import redact
from tlsweep.stages.probe.pipeline import ProbePipeline
from tlsweep.sweep import context, depth, plan, summary
from tlsweep.sweep.context import SweepContext
from tlsweep.tracking import runs, view
from tlsweep.tracking.heartbeat import Heartbeat, interval_for
from tlsweep.tracking.names import Artifact, Kind, Metric, Status, Tag
from tlsweep.tracking.payload import Payload, PipelineModel
from tlsweep.tracking.record import error_line
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RecordError, RunRecord, StoredRun
from tlsweep.validate import stale_after_seconds

log = logging.getLogger(__name__)


def data_label(config: DictConfig) -> str:
    """The data set a parent's name shows: cifar10, digits, or a folder's own name (`folder:birds`)."""
    if config.data.name == "folder" and config.data.path:
        return f"folder:{Path(str(config.data.path)).expanduser().name}"
    return str(config.data.name)


class MLflowSweepCallback(Callback):
    """Checks every job, opens the parent run, hands each job the sweep's context, writes the comparison."""

    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self.owns_parent = True
        self.heartbeat: Optional[Heartbeat] = None  # keeps the parent's tlsweep.heartbeat fresh while jobs run
        self.command = ""
        self.n_jobs = 0
        self.planned: Optional[frozenset] = None  # the config hashes of the plan's runs (None: no plan)
        self.cka_debiased = True  # cka.debiased
        self.closed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        console.mask_secrets_in_logs()  # Hydra's launcher prints each job's overrides
        overrides = plan.sweep_overrides(config)
        uri = default_tracking_uri(config.tracking.uri, Path.cwd())
        try:
            jobs = plan.plan(config, overrides)
            if jobs is not None and jobs.failed:  # nothing is opened, fetched or run
                for line in jobs.errors:
                    log.error("%s", redact(line))
                log.error("%d of %d jobs failed their checks; nothing was run", len(jobs.failed),
                          len(jobs.failed) + len(jobs.jobs))
                sys.exit(1)
            # what every job needs from the network, once: offline, one line names all of it
            preflight.fetch([job.config for job in jobs.jobs] if jobs else [plan.primary(config)])
            stale_after = stale_after_seconds(config.tracking.stale_after)
            store, experiment_id = runs.connect(uri, config.tracking.experiment, stale_after=stale_after)
            outer = context.outer_run_id()
            if outer:  # `mlflow run` opened a run for this command: it becomes the sweep's parent
                parent = runs.outer_run(store, outer, experiment_id=experiment_id)
                store.set_tag(parent, Tag.KIND, Kind.SWEEP)
            else:
                tags = {
                    **provenance.machine_tags(config.tracking.machine),
                    Tag.SWEEP_OVERRIDES: redact(" ".join(overrides))[:5000],
                    Tag.SWEEP_DIR: str(Path(config.hydra.sweep.dir).resolve()),
                }
                parent = runs.start_parent(store, experiment_id=experiment_id,
                                           run_name=plan.sweep_name(config.model.name, overrides, data_label(config)),
                                           kind=Kind.SWEEP,
                                           tags=tags, beat_interval=interval_for(stale_after))
            store.write(parent, Payload(metrics={Metric.STARTUP_SECONDS: provenance.process_age()}))
        except TlsweepError as err:
            console.raise_pending_interrupt()  # a Ctrl-C that a library turned into this error
            log.error("%s", redact(str(err)))
            sys.exit(1)
        self.owns_parent = not outer
        self.heartbeat = Heartbeat(uri, parent, interval=interval_for(stale_after)).start()
        self.command = redact(shlex.join(["python", "-m", "tlsweep", *sys.argv[1:]]))
        self.n_jobs = len(jobs.jobs) if jobs else plan.sweep_size(overrides)
        self.planned = jobs.config_hashes if jobs else None
        self.cka_debiased = bool(config.cka.debiased)
        self.context = SweepContext(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                                    sweep_layers=tuple(plan.swept_values(overrides, "layer")),
                                    cache_dir=str(default_cache_dir(config.cache_dir)),
                                    seal_key=secrets.token_hex(32))
        atexit.register(self._close_if_left_open)
        log.info("sweep parent run %s in experiment %r", parent, config.tracking.experiment)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is None:  # a single run (Hydra calls this outside a multirun too): nothing to hand over
            return
        console.start_backend_quietly()  # in a launcher's worker process, the first job starts the backend
        log.info("job %d/%d: %s", config.hydra.job.num + 1, self.n_jobs,
                 redact(" ".join(config.hydra.overrides.task)))
        context.hand_over(self.context)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        context.hand_over(None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is None:
            return
        sweep = self.context
        store = Store(sweep.tracking_uri)
        try:
            failures = self._summarise(store)
        except Exception as err:  # the children stand; the parent says what it lacks and fails
            console.raise_pending_interrupt()
            line = f"the sweep's summary could not be made: {error_line(err)}"
            log.error("%s", line)
            self._close(store, failed=True, error=line)
            sys.exit(1)
        if failures:
            sys.exit(1)

    def _summarise(self, store: Store) -> int:
        """Write the comparison and the best configuration's model to the parent, close it; the failed jobs."""
        sweep = self.context
        parent_tags = store.get(sweep.parent_run_id).tags
        records, unreadable, foreign = [], [], []
        jobs = runs.sweep_jobs(store, [sweep.experiment_id], sweep.parent_run_id)
        for run in jobs:
            try:
                record = RunRecord.parse(run)
            except RecordError as err:
                unreadable.append(str(err))
                continue
            mine = self.planned is None or record.config_hash in self.planned
            sealed = record.status != Status.FINISHED or runs.is_own(record, parent_tags, key=sweep.seal_key)
            (records if mine and sealed else foreign).append(record)
        if foreign:
            log.warning("left out of the summary: %d run(s) under this parent that its jobs did not log: %s",
                        len(foreign), ", ".join(record.run_id for record in foreign))
        table = summary.comparison_table(records)
        done = summary.finished(table)
        rows, best = summary.selection(done)  # chosen on validation, never on test
        answer = summary.terminal_table(table)
        tags = {Tag.NOTE: f"`{self.command}`\n\n{answer}\n"}
        if best is not None:
            tags.update({Tag.BEST_LAYER: best["layer"], Tag.BEST_RUN_ID: best["run_id"]})
        files = summary.summary_files(table, records, depth.layer_similarity(records, debiased=self.cka_debiased))
        store.write(sweep.parent_run_id, Payload(metrics=summary.parent_metrics(table), tags=tags, files=files),
                    under=Artifact.SUMMARY_FOLDER)
        failed = summary.failed(table)
        lines = [f"{row.model} layer={row.layer} classes={row.classes} C={row.C}: {row.status} "
                 f"({row.error or 'no error recorded'})" for row in failed.itertuples()] if len(failed) else []
        lines += runs.failed_checks(store, sweep.parent_run_id) + unreadable  # jobs that opened no readable run
        error = ""
        if best is not None:
            try:
                served = self._log_best_pipeline(store, next(r for r in records if r.run_id == best["run_id"]))
            except Exception as err:  # the comparison stands; the parent says what it lacks and fails
                console.raise_pending_interrupt()
                served = False
                error = f"could not log the best configuration's pipeline (run {best['run_id']}): {error_line(err)}"
        self._close(store, failed=bool(lines or error), error=error)
        log.info("sweep summary logged to parent run %s (%d runs):\n%s", sweep.parent_run_id, len(table), answer)
        link = self._share_view(store, jobs, records, table)
        log.info("open it with: mlflow ui --backend-store-uri %s   then #/experiments/%s/runs/%s",
                 store.display_uri, sweep.experiment_id, sweep.parent_run_id)
        if link:
            log.info("its runs table, best first: %s", link)
        if best is not None and served:
            log.info("serve the best configuration (raw images in, class names out): MLFLOW_TRACKING_URI=%s "
                     "mlflow models serve -m runs:/%s/%s --env-manager local", store.display_uri,
                     sweep.parent_run_id, Artifact.PIPELINE_MODEL)
        for line in lines:
            log.error("failed: %s", line)
        if error:
            log.error("%s", error)
        if lines:  # the closing line
            total = len(table) + len(lines) - len(failed)
            log.error("%d of %d jobs failed; see the parent run %s", len(lines), total, sweep.parent_run_id)
        elif error:
            log.error("every job finished, but the sweep's model was not logged; see the parent run %s",
                      sweep.parent_run_id)
        return len(lines) + bool(error)

    def _share_view(self, store: Store, jobs: list[StoredRun], records: list[RunRecord], table) -> str:
        """Save the runs table of the sweep's own jobs (`records`) as a view of its experiment (`tracking.view`);
        the link that opens it, or "" with a warning when the store refuses it: the summary stands without it."""
        own = {record.run_id for record in records}
        try:
            shared = view.sweep_view(store.get(self.context.parent_run_id), [job for job in jobs if job.run_id in own],
                                     summary.varied_params(table))
            store.set_experiment_tag(self.context.experiment_id, shared.tag, shared.value)
        except Exception as err:
            console.raise_pending_interrupt()
            log.warning("the sweep's runs table was not saved as a view: %s", error_line(err))
            return ""
        return shared.link(view.ui_address(store.uri), self.context.experiment_id)

    def _log_best_pipeline(self, store: Store, best: RunRecord) -> bool:
        """Log, on the parent, the whole pipeline of its best configuration as model `model`, rebuilt from that
        run's `probe` (the fitted probe and how its features were made) and the same backbone weights, with
        that run's val and test accuracy (`pipeline/val_accuracy`, not `val_accuracy`, so the parent sorts after its
        jobs) and its datasets, so the model's page shows them. False, with a
        warning, for a run that logged no probe (one resumed from before tlsweep logged them)."""
        if not store.has_model(best.run_id, Artifact.PROBE_MODEL):
            log.warning("best run %s logged no probe model, so the sweep logs no pipeline model", best.run_id)
            return False
        probe, spec, examples = store.load_probe(best.run_id, Artifact.PROBE_MODEL)
        pipeline = ProbePipeline.build(spec=spec, probe=probe)
        accuracies = {Metric.pipeline(split): value for split, value in (("val", best.val_accuracy),
                                                                          ("test", best.test_accuracy))}
        store.write(self.context.parent_run_id,
                    Payload(metrics=accuracies, inputs=store.datasets_of(best.run_id),
                            models={Artifact.PIPELINE_MODEL: PipelineModel(pipeline, examples)}))
        return True

    def _close(self, store: Store, *, failed: bool, error: str = "") -> None:
        """End the parent (unless `mlflow run` owns it) once its last heartbeat is written."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if error:
            store.set_tag(self.context.parent_run_id, Tag.ERROR, error)
        if self.owns_parent:  # `mlflow run` closes the run it opened
            runs.end(store, self.context.parent_run_id, failed=failed)
        self.closed = True

    def _close_if_left_open(self) -> None:
        """At process exit: a parent the sweep's end did not close (Ctrl-C, a crash) ends KILLED."""
        if self.closed or self.context is None or not self.owns_parent:  # `mlflow run` closes its own run
            return
        try:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            store = Store(self.context.tracking_uri)
            store.set_tag(self.context.parent_run_id, Tag.ERROR, "the sweep was interrupted before its end")
            store.end(self.context.parent_run_id, Status.KILLED)
            self.closed = True
        except Exception as err:  # the store is gone: the next command closes the parent (close_stale_runs)
            log.warning("the sweep's parent run %s could not be closed (%s)", self.context.parent_run_id,
                        error_line(err))
