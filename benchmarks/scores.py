"""What transferability scores cost against a probe fit at the same cut, and how well they rank the cuts.

Run it from the repository root:

    .venv/bin/python -m benchmarks.scores                 # generated images, then scikit-learn's digits
    .venv/bin/python -m benchmarks.scores --figures docs/img   # also the README's score-vs-accuracy figure

For each data set it runs `python -m tlsweep -m model=vgg16,resnet50,mobilenet_v2 layer=stages
scores=[logme,knn,gbc] model.weights=null` (random-init weights: the figures show the mechanics, not how
ImageNet features transfer) and reads the sweep back: per score, its seconds against the probe's fit seconds
at the same cut (median over the stages, and the ratio); and Kendall's tau and weighted tau between each
score and the val accuracy of the probes, over all stages (what the parent logs as rank/*) and per model.
Results go to benchmarks/results/scores.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

from scipy import stats
from tabulate import tabulate

from benchmarks.cifar_like import write_cifar_like
from benchmarks.run import HERE, PYTHON, QUIET, ROOT, fresh, machine, measured, write_results
from tlsweep.scores import SCORES
from tlsweep.tracking import runs
from tlsweep.tracking.names import Artifact, Kind, Metric, Tag
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RunRecord

MODELS = ("vgg16", "resnet50", "mobilenet_v2")
OVERRIDES = ["-m", f"model={','.join(MODELS)}", "layer=stages", f"scores=[{','.join(SCORES)}]", "model.weights=null"]

log = logging.getLogger(__name__)


def sweep(work: Path, extra: list[str], name: str) -> dict:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "TLSWEEP_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": str(ROOT), **QUIET}
    return measured([PYTHON, "-m", "tlsweep", *OVERRIDES, *extra], cwd=work, env=env, name=name, out=work)


def read_back(work: Path) -> tuple[Store, str, list, dict, dict]:
    """The store, the newest parent, its children as records, each child's score seconds by (run id, score),
    and the parent's metrics."""
    store = Store.open(f"sqlite:///{work / 'mlflow.db'}")
    experiment = store.experiment_id("tlsweep")
    parent = max(store.search([experiment], f"tags.`{Tag.KIND}` = '{Kind.SWEEP}'"), key=lambda run: run.start_time)
    found = runs.sweep_jobs(store, [experiment], parent.run_id)
    seconds = {(run.run_id, name): run.metrics.get(Metric.score_seconds(name)) for run in found for name in SCORES}
    return store, parent.run_id, [RunRecord.parse(run) for run in found], seconds, parent.metrics


def costs(records: list, seconds: dict) -> list[dict]:
    """Per score: median seconds over the cuts, the median fit at the same cuts, and the ratio at each cut."""
    rows = []
    for name in SCORES:
        pairs = [(seconds[(record.run_id, name)], record.fit_seconds) for record in records
                 if seconds.get((record.run_id, name)) is not None and record.fit_seconds]
        ratios = [score_s / fit_s for score_s, fit_s in pairs]
        rows.append({"score": name, "cuts": len(pairs),
                     "median_s": statistics.median(s for s, _ in pairs) if pairs else None,
                     "median_fit_s": statistics.median(f for _, f in pairs) if pairs else None,
                     "median_ratio_to_fit": statistics.median(ratios) if ratios else None,
                     "max_ratio_to_fit": max(ratios) if ratios else None})
    return rows


def ranks(records: list, parent_metrics: dict) -> list[dict]:
    """Kendall's tau and weighted tau of each score against val accuracy: all stages (the parent's), per model."""
    rows = []
    for name, score in SCORES.items():
        row = {"score": name, **{f"all {kind}": parent_metrics.get(Metric.rank(name, kind))
                                 for kind in Metric.RANK_KINDS}}
        for model in MODELS:
            pairs = [(record.scores[score.metric], record.val_accuracy) for record in records
                     if record.model == model and score.metric in record.scores and record.val_accuracy is not None]
            if len(pairs) >= 2:
                xs, ys = zip(*pairs)
                row[f"{model} kendall_tau"] = float(stats.kendalltau(xs, ys).statistic)
        rows.append(row)
    return rows


def one_data_set(label: str, work: Path, extra: list[str], figures: Path | None, *, again: bool = True) -> dict:
    """One data set's sweep (unless `again` is False: the sweep already in `work` is read back), then its figures."""
    wall = sweep(work, extra, name=label)["wall_s"] if again else None
    store, parent, records, seconds, parent_metrics = read_back(work)
    found = {"data": label, "wall_s": wall, "stages": len(records), "costs": costs(records, seconds),
             "ranks": ranks(records, parent_metrics), "parent_run_id": parent}
    if figures:
        with tempfile.TemporaryDirectory(prefix="scores-") as folder:
            local = store.client.download_artifacts(parent, Artifact.summary(Artifact.SCORES_FIGURE), folder)
            target = figures / f"scores-{label}.png"
            target.write_bytes(Path(local).read_bytes())
            found["figure"] = str(target)
    return found


def report(results: dict) -> str:
    lines = [f"# Transferability scores against probe fits ({results['machine']['cpu']}, "
             f"{results['machine']['nproc']} cores, load {results['load_average_at_start']:.1f} at the start)", "",
             "Random-init weights and generated or bundled images: these show the mechanics, not ImageNet transfer.",
             ""]
    for found in results["data_sets"]:
        wall = "" if found["wall_s"] is None else f", {found['wall_s']:.0f} s"
        lines += [f"## {found['data']}: {found['stages']} stages of {', '.join(MODELS)}{wall}", "",
                  tabulate(found["costs"], headers="keys", tablefmt="github", floatfmt=".3g"), "",
                  tabulate(found["ranks"], headers="keys", tablefmt="github", floatfmt=".2f"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=60)
    parser.add_argument("--figures", type=Path, help="copy each sweep's score-vs-accuracy figure here")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--read-back", action="store_true", help="report on the sweeps already in --out, run none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out.resolve()
    generated = write_cifar_like(out / f"data-{args.train_per_class}-{args.test_per_class}",
                                 train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    load = os.getloadavg()[0]
    figures = args.figures.resolve() if args.figures else None
    folder = (lambda name: out / name) if args.read_back else (lambda name: fresh(out / name))
    data_sets = [
        one_data_set("generated", folder("scores-generated"), [f"data.path={generated}"], figures,
                     again=not args.read_back),
        one_data_set("digits", folder("scores-digits"), ["data=digits"], figures, again=not args.read_back),
    ]
    results = {"machine": machine(), "load_average_at_start": load, "benchmark": "python -m benchmarks.scores",
               "command": "python -m tlsweep " + " ".join(OVERRIDES), "data_sets": data_sets,
               "generated": f"CIFAR-10-format images, classes 4-9, {args.train_per_class} train + "
                            f"{args.test_per_class} test per class"}
    write_results(out, "scores", results, report(results))


if __name__ == "__main__":
    main()
