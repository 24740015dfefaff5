"""Sweep-level tracking as a Hydra callback: one parent run per multirun, a summary when it ends.

The parent run id and the sweep's layers reach each job through the callback's own state, which
Hydra pickles into every launcher's job (basic, joblib, submitit, SLURM); `on_job_start` runs in the
job's process and exports them for the task function.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tlsweep import provenance, summary, tracking
from tlsweep.config import default_tracking_uri
from tlsweep.errors import TlsweepError

log = logging.getLogger(__name__)

PARENT_ENV = "TLSWEEP_PARENT_RUN_ID"
LAYERS_ENV = "TLSWEEP_SWEEP_LAYERS"
RESUMED_TAG_PREFIX = "tlsweep.resumed."


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


def resumed_runs(experiment_ids: list[str], parent_run_id: str) -> list[dict]:
    """The FINISHED runs a `resume=true` sweep reused instead of re-running; its parent tags name them."""
    found = []
    for parent in tracking.runs(experiment_ids, f"attributes.run_id = '{parent_run_id}'"):
        for key, run_id in parent["tags"].items():
            if key.startswith(RESUMED_TAG_PREFIX):
                found += tracking.runs(experiment_ids, f"attributes.run_id = '{run_id}'")
    return found


def publish_summary(run_id: str, runs: list[dict]) -> "summary.pd.DataFrame":
    """Log the comparison table (CSV, markdown) and plots to `run_id`."""
    table = summary.comparison_table(runs)
    if table.empty:
        return table
    tracking.log_run_text(run_id, table.to_csv(index=False), "summary/comparison.csv")
    tracking.log_run_text(run_id, summary.to_markdown(table), "summary/comparison.md")
    figures = {**summary.accuracy_vs_layer(table), **summary.val_accuracy_vs_C(table)}
    for name, figure in figures.items():
        tracking.log_run_figure(run_id, figure, f"summary/{name}")
    return table


class MLflowSweepCallback(Callback):
    """Opens the parent run at multirun start and writes the comparison into it at the end."""

    def __init__(self) -> None:
        self.parent_run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.sweep_layers: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = sweep_overrides(config)
        self.sweep_layers = swept_values(overrides, "layer")
        parent = os.environ.get(PARENT_ENV)
        try:
            uri = default_tracking_uri(config.tracking.uri, Path.cwd())
            self.experiment_id = tracking.connect(uri, config.tracking.experiment)
            tracking.close_stale_runs(self.experiment_id)
            project = None if parent else tracking.project_run_id(self.experiment_id, claim=True)
            if project:  # `mlflow run` opened a run for this command: it becomes the sweep's parent
                tracking.set_run_tag(project, tracking.KIND_TAG, "sweep")
                parent = project
            if parent:  # an outer process (`mlflow run`, another host's launcher, a wrapper) owns the parent run
                self.parent_run_id = parent
            else:
                name = f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}"
                tags = {
                    **provenance.machine_tags(config.tracking.machine),
                    "sweep.overrides": " ".join(overrides)[:5000],
                    "sweep.dir": str(Path(config.hydra.sweep.dir).resolve()),
                }
                self.parent_run_id = tracking.start_sweep_run(
                    experiment_id=self.experiment_id, run_name=name, tags=tags
                )
        except TlsweepError as err:
            log.error("%s", err)
            sys.exit(1)
        self._owns_parent = not parent
        self._export()
        log.info("sweep parent run %s in experiment %r", self.parent_run_id, config.tracking.experiment)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._export()

    def _export(self) -> None:
        if self.parent_run_id:
            os.environ[PARENT_ENV] = self.parent_run_id
            os.environ[LAYERS_ENV] = ",".join(self.sweep_layers)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        runs = tracking.runs([self.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{self.parent_run_id}'")
        runs += resumed_runs([self.experiment_id], self.parent_run_id)
        table = publish_summary(self.parent_run_id, runs)
        failed = [] if table.empty else table[table["status"] != "FINISHED"]
        if getattr(self, "_owns_parent", True):
            tracking.end_run(self.parent_run_id, failed=len(failed) > 0)
            os.environ.pop(PARENT_ENV, None)
            os.environ.pop(LAYERS_ENV, None)
        log.info("sweep summary logged to parent run %s (%d runs)", self.parent_run_id, len(table))
        if len(failed):
            for _, row in failed.iterrows():
                log.error("failed: layer=%s classes=%s C=%s: %s", row["layer"], row["classes"], row["C"], row["error"])
            log.error("%d of %d jobs failed; see the parent run %s", len(failed), len(table), self.parent_run_id)
            sys.exit(1)
