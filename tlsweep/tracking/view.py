"""A sweep's runs table in MLflow's UI, as one link opens it: its runs, best first, with the columns that answer it.

MLflow 3.17's UI restores a view from the experiment tag `mlflow.sharedViewState.<key>` when the runs page's
address names `viewStateShareKey=<key>`. The tag holds the view as JSON: the search facets (`searchFilter`,
`orderByKey`, `orderByAsc`, ...) and the table's state (`selectedColumns`, `columnOrder`, `columnWidths`, ...).
It may also be a saved view's envelope (`{name, createdAt, updatedAt, state}`), which the UI lists under
*Views* and caps at 40 per experiment; a sweep writes the plain state, which the same link opens without
taking one of those places.

The UI drops `runsExpanded` (and pinned and hidden runs) from a view it restores, so no link can open a parent
expanded. It nests children under their parent only when the table is sorted by start time; sorted on
`val_accuracy`, the parent and its children are rows of their own. So a sweep's view lists its runs by id
(the children, the runs it resumed, and the parent), best validation accuracy first, the parent last (it has
no `val_accuracy`). No mlflow here: `Store.set_experiment_tag` writes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from tlsweep.tracking.names import ExperimentTag, Link, Metric, Tag
from tlsweep.tracking.stored import StoredRun

log = logging.getLogger(__name__)

MAX_CHARS = 20000  # the longest value MLflow stores in an experiment tag
RUN_NAME, CREATED, DURATION = "attributes.`Run Name`", "runDateAndNestInfo", "duration"  # the UI's column ids
CHAR_PX, NAME_PAD_PX, PAD_PX, MAX_PX = 6.5, 44, 32, 480  # a column wide enough for its header and values


@dataclass(frozen=True)
class RunsView:
    """A view of the runs table, saved under `key`."""

    key: str
    state: Mapping

    @property
    def tag(self) -> str:
        return f"{ExperimentTag.SHARED_VIEW_PREFIX}{self.key}"

    @property
    def value(self) -> str:
        return json.dumps(self.state, separators=(",", ":"))

    def link(self, ui: str, experiment_id: str) -> str:
        """The address that opens it: `http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=...`."""
        query = urlencode({Link.VIEW_KEY: self.key, Link.WORKFLOW: Link.MODEL_TRAINING})
        return f"{ui.rstrip('/')}/{Link.RUNS.format(experiment_id=experiment_id)}?{query}"


def column(kind: str, key: str) -> str:
    """A column's id in the runs table: params.`layer`, metrics.`val_accuracy`."""
    return f"{kind}.`{key}`"


def sweep_view(parent: StoredRun, jobs: Sequence[StoredRun], params: Sequence[str]) -> RunsView:
    """The view of a sweep: its parent and job runs, best val accuracy first; a column for each param in
    `params` (what the sweep varies), `val_accuracy`, `test_accuracy`, the parent's `best_val_accuracy`, then
    the scores its jobs logged; every column wide enough for its header and its values."""
    val, test, best = Metric.accuracy("val"), Metric.accuracy("test"), Metric.BEST_VAL_ACCURACY
    scores = sorted({key for job in jobs for key in job.metrics if key.startswith(Metric.SCORE_PREFIX)})
    shown = [("params", key, [job.params.get(key, "") for job in jobs]) for key in params]
    shown += [("metrics", key, [str(job.metrics[key]) for job in jobs if key in job.metrics]) for key in (val, test)]
    shown.append(("metrics", best, [str(parent.metrics[best])] if best in parent.metrics else []))
    shown += [("metrics", key, [str(job.metrics[key]) for job in jobs if key in job.metrics]) for key in scores]
    columns = [column(kind, key) for kind, key, _ in shown]
    names = [run.tags.get(Tag.RUN_NAME, run.run_id) for run in (parent, *jobs)]
    state = {
        "orderByKey": column("metrics", val), "orderByAsc": False,  # not by start time: children are rows of their own
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME, CREATED, DURATION, *columns],
        "columnWidths": {RUN_NAME: _px(names, pad=NAME_PAD_PX),
                         **{column(kind, key): _px([key, *values]) for kind, key, values in shown}},
    }
    ranked = sorted(jobs, key=lambda job: job.metrics.get(val, -1.0), reverse=True)
    room, listed = MAX_CHARS - len(RunsView(parent.run_id, {"searchFilter": _ids_filter([]), **state}).value), []
    for run_id in (parent.run_id, *(job.run_id for job in ranked)):  # the lowest val accuracies give way
        room -= len(f"'{run_id}', ")
        if room < 0:
            log.warning("the sweep's view lists its %d best runs of %d (MLflow keeps %d characters of a view)",
                        len(listed) - 1, len(jobs), MAX_CHARS)
            break
        listed.append(run_id)
    return RunsView(parent.run_id, {"searchFilter": _ids_filter(listed), **state})


def ui_address(tracking_uri: str) -> str:
    """Where the runs of `tracking_uri` are browsed: the server itself (without credentials), else `mlflow ui`."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return Link.UI
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def _ids_filter(run_ids: Sequence[str]) -> str:
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
    return f"attributes.run_id IN ({quoted})"


def _px(texts: Sequence[str], *, pad: float = PAD_PX) -> int:
    return int(min(MAX_PX, pad + CHAR_PX * max(map(len, texts), default=0)))
