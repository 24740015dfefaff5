"""`python -m tlsweep.compare`: rebuild the comparison from runs already in MLflow, across sweeps and machines.

Selects job runs by experiment, parent run, machine, class subset or an MLflow search string, then either
logs the comparison to a new summary run (tag `tlsweep.kind=summary`) or writes it to a folder (`--out`).
Next to the sweep's own table and plots it writes `by_machine`: one row per configuration and seed (the same
identity the summary uses: every setting that can change a result, data and weights by content), one column
per machine, so equal accuracies and differing times sit side by side.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from tlsweep.config import default_tracking_uri
from tlsweep.errors import ConfigError, TlsweepError
from tlsweep.sweep import depth, summary
from tlsweep.tracking import runs
from tlsweep.tracking.names import Artifact, Kind, Metric, Tag
from tlsweep.tracking.payload import Payload, write_files
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RunRecord, StoredRun

log = logging.getLogger("tlsweep.compare")

# one row per configuration (identity.configuration: settings, data and weights by content) and seed
CONFIG_KEY = ["configuration", "seed", "model", "layer", "classes", "C"]
MACHINE_VALUES = [Metric.accuracy("test"), Metric.accuracy("val"), Metric.EXTRACTION_SECONDS, Metric.FIT_SECONDS]


def select_runs(
    store: Store, *, experiments: Sequence[str], parent: Optional[str] = None, machines: Sequence[str] = (),
    classes: Sequence[str] = (), search: str = "",
) -> list[StoredRun]:
    """Job runs of `experiments` that match every filter given; a parent brings its resumed runs along."""
    ids = []
    for name in experiments:
        found = store.experiment_id(name)
        if found is None:
            raise ConfigError(f"no experiment named {name!r} in the tracking store; received --experiment={name}")
        ids.append(found)
    clauses = [f"tags.`{Tag.KIND}` = '{Kind.JOB}'"]
    if parent:
        clauses.append(f"tags.`{Tag.PARENT}` = '{_quoted('parent', parent)}'")
    if search:
        clauses.append(search)
    selected: dict[str, StoredRun] = {}
    # MLflow's search has no OR: one query per (machine, classes) pair the user named
    for machine, subset in itertools.product(machines or [None], classes or [None]):
        query = clauses + ([f"tags.`{Tag.MACHINE}` = '{_quoted('machine', machine)}'"] if machine else [])
        query += [f"tags.`{Tag.CLASSES}` = '{_quoted('classes', subset)}'"] if subset else []
        selected.update((run.run_id, run) for run in store.find(ids, " and ".join(query)))
    if parent:  # already checked by the children's query above
        selected.update((run.run_id, run) for run in runs.resumed_runs(store, ids, parent))
    return list(selected.values())


def _quoted(option: str, value: str) -> str:
    if "'" in value:
        raise ConfigError(f"--{option} cannot contain a single quote; received --{option}={value}")
    return value


def machine_view(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, a column per (value, machine), and the spread of test accuracy."""
    done = summary.finished(table).fillna({"machine": "?"})
    if done.empty:
        return pd.DataFrame()
    order = done.groupby(CONFIG_KEY, dropna=False)["layer_index"].min().rename("layer_index")
    # several runs of one configuration on one machine: their mean
    wide = done.groupby(CONFIG_KEY + ["machine"], dropna=False)[MACHINE_VALUES].mean().unstack("machine")
    machines = sorted(done["machine"].unique())
    wide = wide.reindex(columns=pd.MultiIndex.from_product([MACHINE_VALUES, machines]))
    wide.columns = [f"{value}[{machine}]" for value, machine in wide.columns]
    accuracy = wide[[f"test_accuracy[{machine}]" for machine in machines]]
    wide["machines"] = accuracy.notna().sum(axis=1)
    wide["test_accuracy_spread"] = accuracy.max(axis=1) - accuracy.min(axis=1)
    wide = wide.join(order).reset_index()
    return wide.sort_values(["model", "classes", "C", "layer_index", "layer"]).drop(columns="layer_index")


def comparison_files(table: pd.DataFrame, by_machine: pd.DataFrame, records=()) -> dict[str, str | bytes]:
    """The sweep's own summary files, plus the per-machine view as CSV and markdown."""
    return {
        **summary.summary_files(table, records, depth.layer_similarity(records)),
        Artifact.BY_MACHINE_CSV: by_machine.to_csv(index=False),
        Artifact.BY_MACHINE_MD: by_machine.to_markdown(index=False, floatfmt=".4g") + "\n",
    }


def log_summary_run(store: Store, *, experiment: str, files: dict, tags: dict[str, str]) -> str:
    """A new run (tag tlsweep.kind=summary) holding the comparison, as a sweep's parent holds its own."""
    run_id = runs.start_parent(store, experiment_id=store.experiment_id(experiment),
                               run_name=runs.timestamped("compare"), kind=Kind.SUMMARY, tags=tags)
    try:
        store.write(run_id, Payload(files=files), under=Artifact.SUMMARY_FOLDER)
    except BaseException:
        runs.end(store, run_id, failed=True)
        raise
    runs.end(store, run_id, failed=False)
    return run_id


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tlsweep-compare",
        description="Rebuild the comparison table and plots from runs already in MLflow, across sweeps and machines. "
                    "Without --out it logs them to a new summary run (tag tlsweep.kind=summary) in the first "
                    "experiment named; with --out it writes them to that folder and logs nothing.",
        epilog="examples:\n"
               "  tlsweep-compare --out comparison                    # every job run of experiment tlsweep\n"
               "  tlsweep-compare --parent <sweep run id> --out cmp   # one sweep, with the runs it resumed\n"
               "  tlsweep-compare --machine laptop --machine cluster  # the same configurations on two machines\n"
               "  tlsweep-compare --filter \"params.layer = 'block4_pool'\" --tracking-uri http://127.0.0.1:5000\n"
               "(python -m tlsweep.compare takes the same options)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    parser.add_argument("--experiment", action="append", help="experiment name, repeatable (default: tlsweep)")
    parser.add_argument("--parent", help="only the children of this sweep's parent run id")
    parser.add_argument("--machine", action="append", default=[], help="tag `machine`, repeatable")
    parser.add_argument("--classes", action="append", default=[],
                        help="tag `classes` as runs show it (deer,dog,frog,horse,ship,truck), repeatable")
    parser.add_argument("--filter", default="", help="an MLflow search string, e.g. \"params.layer = 'block4_pool'\"")
    parser.add_argument("--out", type=Path, help="write the comparison to this folder instead of a summary run")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = parse_args(argv)
    experiments = args.experiment or ["tlsweep"]
    try:
        uri = default_tracking_uri(args.tracking_uri, Path.cwd())
        store = Store.open(uri)
        found = select_runs(store, experiments=experiments, parent=args.parent, machines=args.machine,
                            classes=args.classes, search=args.filter)
        if not found:
            raise ConfigError(f"no job runs in {', '.join(experiments)} at {uri} match the filters given")
        records = [RunRecord.parse(run) for run in found]
        table = summary.comparison_table(records)
        files = comparison_files(table, machine_view(table), records)
        if args.out:
            write_files(args.out.resolve(), files)
            log.info("comparison of %d runs written to %s", len(table), args.out.resolve())
        else:
            tags = {Tag.COMPARE_EXPERIMENTS: ",".join(experiments), Tag.COMPARE_RUNS: str(len(table)),
                    Tag.COMPARE_MACHINES: ",".join(sorted(map(str, table["machine"].dropna().unique())))}
            tags.update({Tag.compare(key): str(value) for key, value in
                         (("parent", args.parent), ("machine", ",".join(args.machine)),
                          ("classes", ";".join(args.classes)), ("filter", args.filter)) if value})
            run_id = log_summary_run(store, experiment=experiments[0], files=files, tags=tags)
            log.info("comparison of %d runs logged to summary run %s in %r", len(table), run_id, experiments[0])
    except TlsweepError as err:
        log.error("%s", err)
        return 1
    return 0


def cli() -> None:
    """The `tlsweep-compare` command (and `python -m tlsweep.compare`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
