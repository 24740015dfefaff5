"""Sweep-level tracking as a Hydra callback: one parent run per multirun, a summary when it ends.

`on_multirun_start` connects to the store once, closes stale runs, opens (or claims) the parent run and
builds the `SweepContext`. Hydra pickles this callback into every job, under every launcher, and calls
`on_job_start` in the job's own process: that is where the context is handed to the job.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tlsweep import console, preflight, provenance
from tlsweep.config import default_cache_dir, default_tracking_uri
from tlsweep.errors import TlsweepError
from tlsweep.sweep import context, summary
from tlsweep.sweep.context import SweepContext
from tlsweep.tracking import runs
from tlsweep.tracking.payload import Payload
from tlsweep.tracking.record import Artifact, Kind, RunRecord, Tag, error_line
from tlsweep.tracking.heartbeat import Heartbeat, interval_for
from tlsweep.tracking.store import Store
from tlsweep.validate import stale_after_seconds

log = logging.getLogger(__name__)


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep as the basic sweeper expands it: `hydra.sweeper.params`, then the command line."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def swept_values(overrides: list[str], key: str) -> list[str]:
    """Every value `key` takes in the sweep, parsed by Hydra's own grammar; the last override wins."""
    values: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.get_key_element().lstrip("+~") != key:
            continue
        if override.is_sweep_override():
            values = [str(value) for value in override.sweep_string_iterator()]
        else:
            values = [str(override.value())]
    return list(dict.fromkeys(values))


def sweep_size(overrides: list[str]) -> int:
    """How many jobs the basic sweeper makes of `overrides`: the product of each swept key's value count."""
    counts = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # a later override of a key wins
        swept = override.is_sweep_override()
        counts[override.get_key_element()] = len(list(override.sweep_string_iterator())) if swept else 1
    return math.prod(counts.values())


def sweep_name(model: str, overrides: list[str]) -> str:
    """A parent run named after what the sweep varies: `vgg16 layer=block3_pool,block4_pool,block5_pool`."""
    swept: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # a later override of a key wins
        key = override.get_key_element()
        swept.pop(key, None)
        if override.is_sweep_override():
            swept[key] = f"{key}={','.join(map(str, override.sweep_string_iterator()))}"
    varied = list(swept.values())
    prefix = [] if any(item.startswith("model=") for item in varied) else [model]
    return " ".join(prefix + (varied or ["sweep"]))[:250]


class MLflowSweepCallback(Callback):
    """Opens the parent run at multirun start, hands each job the sweep's context, writes the comparison."""

    def __init__(self) -> None:
        self.context: Optional[SweepContext] = None
        self.owns_parent = True
        self.heartbeat: Optional[Heartbeat] = None  # keeps the parent's tlsweep.heartbeat fresh while jobs run
        self.command = ""
        self.n_jobs = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = sweep_overrides(config)
        uri = default_tracking_uri(config.tracking.uri, Path.cwd())
        try:  # what every job needs from the network, once: offline, one line names all of it
            preflight.fetch(data_name=config.data.name, data_path=config.data.path,
                            backbones=swept_values(overrides, "model") or [config.model.name],
                            weights=config.model.weights, image_size=config.data.image_size)
            stale_after = stale_after_seconds(config.tracking.stale_after)
            store, experiment_id = runs.connect(uri, config.tracking.experiment, stale_after=stale_after)
            outer = context.outer_run_id()
            if outer:  # `mlflow run` opened a run for this command: it becomes the sweep's parent
                parent = runs.outer_run(store, outer, experiment_id=experiment_id)
                store.set_tag(parent, Tag.KIND, Kind.SWEEP)
            else:
                tags = {
                    **provenance.machine_tags(config.tracking.machine),
                    Tag.SWEEP_OVERRIDES: " ".join(overrides)[:5000],
                    Tag.SWEEP_DIR: str(Path(config.hydra.sweep.dir).resolve()),
                }
                parent = runs.start_parent(store, experiment_id=experiment_id,
                                           run_name=sweep_name(config.model.name, overrides), kind=Kind.SWEEP,
                                           tags=tags)
        except TlsweepError as err:
            log.error("%s", err)
            sys.exit(1)
        self.owns_parent = not outer
        self.heartbeat = Heartbeat(uri, parent, interval=interval_for(stale_after)).start()
        self.command = shlex.join(["python", "-m", "tlsweep", *sys.argv[1:]])
        self.n_jobs = sweep_size(overrides)
        self.context = SweepContext(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                                    sweep_layers=tuple(swept_values(overrides, "layer")),
                                    cache_dir=str(default_cache_dir(config.cache_dir)))
        log.info("sweep parent run %s in experiment %r", parent, config.tracking.experiment)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is None:  # a single run (Hydra calls this outside a multirun too): nothing to hand over
            return
        console.start_backend_quietly()  # in a launcher's worker process, the first job starts the backend
        log.info("job %d/%d: %s", config.hydra.job.num + 1, self.n_jobs, " ".join(config.hydra.overrides.task))
        context.hand_over(self.context)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        context.hand_over(None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.context is None:
            return
        sweep = self.context
        store = Store(sweep.tracking_uri)
        found = runs.sweep_jobs(store, [sweep.experiment_id], sweep.parent_run_id)
        records = [RunRecord.parse(run) for run in found]
        table = summary.comparison_table(records)
        rows, best = summary.selection(table)  # chosen on validation, never on test
        answer = summary.terminal_table(table)
        tags = {Tag.NOTE: f"`{self.command}`\n\n{answer}\n"}
        if best is not None:
            tags.update({Tag.BEST_LAYER: best["layer"], Tag.BEST_RUN_ID: best["run_id"]})
        store.write(sweep.parent_run_id, Payload(metrics=summary.parent_metrics(rows, best), tags=tags,
                                                 files=summary.summary_files(table, records)),
                    under=Artifact.SUMMARY_FOLDER)
        failed = [] if table.empty else table[table["status"] != runs.FINISHED]
        checks = runs.failed_checks(store, sweep.parent_run_id)  # jobs whose config failed: they opened no run
        served = False
        if best is not None:
            try:
                served = runs.log_best_pipeline(store, sweep.parent_run_id, best_run_id=best["run_id"])
            except Exception as err:  # the comparison stands; the parent says what it lacks and fails
                line = f"could not log the best configuration's pipeline (run {best['run_id']}): {error_line(err)}"
                store.set_tag(sweep.parent_run_id, Tag.ERROR, line)
                checks.append(line)
        if self.heartbeat is not None:  # its last beat is written before the run closes
            self.heartbeat.stop()
        if self.owns_parent:  # `mlflow run` closes the run it opened
            runs.end(store, sweep.parent_run_id, failed=len(failed) + len(checks) > 0)
        log.info("sweep summary logged to parent run %s (%d runs):\n%s", sweep.parent_run_id, len(table), answer)
        log.info("open it with: mlflow ui --backend-store-uri %s   then #/experiments/%s/runs/%s", sweep.tracking_uri,
                 sweep.experiment_id, sweep.parent_run_id)
        if served:
            log.info("serve the best configuration (raw images in, class names out): MLFLOW_TRACKING_URI=%s "
                     "mlflow models serve -m runs:/%s/%s --env-manager local", sweep.tracking_uri,
                     sweep.parent_run_id, Artifact.PIPELINE_MODEL)
        if len(failed) or checks:
            for _, row in failed.iterrows():
                log.error("failed: layer=%s classes=%s C=%s: %s", row["layer"], row["classes"], row["C"], row["error"])
            for line in checks:
                log.error("failed: %s", line)
            log.error("%d of %d jobs failed; see the parent run %s", len(failed) + len(checks),
                      len(table) + len(checks), sweep.parent_run_id)
            sys.exit(1)
