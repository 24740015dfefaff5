"""The cost of a depth profile: every stage of VGG16 and ResNet50 in one tlsweep command, read back from MLflow.

Run it from the repository root:

    .venv/bin/python -m benchmarks.depth_profile                      # classes 4-9, 500 train + 100 test per class
    .venv/bin/python -m benchmarks.depth_profile --figures docs/img   # the same, and the README's figures

It runs `python -m tlsweep -m model=vgg16,resnet50 layer=stages model.weights=null` on generated images in
the CIFAR-10 format, then reads the sweep back. Per model it reports the stages (child runs), the CNN passes
(children whose cnn_forward_images > 0: one is right), the images through the CNN, the extraction seconds
and the fit seconds, summed over the children. It also times `tlsweep.sweep.depth.layer_similarity` on the sweep's
records, as the parent computes them, and gives the wall time of the whole command. With --figures it
copies the parent's depth profile and CKA heatmaps into that folder. Results go to
benchmarks/results/depth_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from benchmarks.cifar_like import write_cifar_like
from benchmarks.run import HERE, fresh, machine, tlsweep, write_results
from tlsweep.sweep.depth import layer_similarity
from tlsweep.tracking import runs
from tlsweep.tracking.names import Artifact, Kind, Metric, Tag
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RunRecord, StoredRun

MODELS = ("vgg16", "resnet50")
OVERRIDES = ["-m", f"model={','.join(MODELS)}", "layer=stages"]
COMMAND = "python -m tlsweep " + " ".join(OVERRIDES) + " model.weights=null"
CKA_LINE = re.compile(r"linear CKA between \d+ cuts from the feature cache in ([\d.]+) s")
# the parent's figure -> the README's name for it, under --figures
FIGURES = {"depth_profile-*.png": "depth-profile.png", "cka.png": "cka.png"}

log = logging.getLogger(__name__)


def sweep_runs(workdir: Path) -> tuple[Store, str, list[StoredRun]]:
    """The store in `workdir`, the id of its newest sweep's parent, and that sweep's job runs."""
    store = Store.open(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = store.experiment_id("tlsweep")
    parents = store.search([experiment_id], f"tags.`{Tag.KIND}` = '{Kind.SWEEP}'")
    parent = max(parents, key=lambda run: run.start_time)
    return store, parent.run_id, runs.sweep_jobs(store, [experiment_id], parent.run_id)


def stage_rows(found: list[StoredRun]) -> list[dict]:
    """One row per child run, model by model, input to output."""
    rows = []
    for run in found:
        record = RunRecord.parse(run)
        rows.append({"model": record.model, "layer": record.layer, "layer_depth": record.layer_depth,
                     "features": record.feature_dim, "status": record.status,
                     "cnn_forward_images": int(run.metrics.get(Metric.CNN_FORWARD_IMAGES, 0)),
                     "extraction_s": record.extraction_seconds, "fit_s": record.fit_seconds,
                     "val_accuracy": record.val_accuracy, "test_accuracy": record.test_accuracy})
    return sorted(rows, key=lambda row: (MODELS.index(row["model"]) if row["model"] in MODELS else len(MODELS),
                                         row["layer_depth"] if row["layer_depth"] is not None else 2.0))


def per_model(rows: list[dict]) -> dict[str, dict]:
    models = {}
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        models[model] = {"stages": len(mine), "finished": sum(row["status"] == "FINISHED" for row in mine),
                         "cnn_passes": sum(row["cnn_forward_images"] > 0 for row in mine),
                         "cnn_images": sum(row["cnn_forward_images"] for row in mine),
                         "extraction_s": sum(row["extraction_s"] or 0.0 for row in mine),
                         "fit_s": sum(row["fit_s"] or 0.0 for row in mine)}
    return models


def timed_cka(found: list[StoredRun]) -> dict:
    """`layer_similarity` on the sweep's records, as the parent computes it: seconds and the cuts compared."""
    records = [RunRecord.parse(run) for run in found]
    start = time.perf_counter()
    similarities = layer_similarity(records)
    return {"seconds": time.perf_counter() - start, "cuts": sum(len(item.labels) for item in similarities)}


def in_command_cka_seconds(result: dict, logs: Path) -> float | None:
    """The CKA time the sweep's parent logged, from the command's output."""
    text = result["stdout"] + (logs.read_text() if logs.exists() else "")
    found = CKA_LINE.findall(text)
    return float(found[-1]) if found else None


def summary_folder(store: Store, parent_run_id: str, target: Path) -> Path:
    """The parent's summary/ artifacts, downloaded under `target`."""
    return Path(store.client.download_artifacts(parent_run_id, Artifact.SUMMARY_FOLDER, str(target)))


def copy_figures(summary: Path, folder: Path) -> dict[str, str]:
    """Copy the parent's figures under the README's names; a missing one is an error, not a stale image."""
    folder.mkdir(parents=True, exist_ok=True)
    copied = {}
    for pattern, name in FIGURES.items():
        found = sorted(summary.glob(pattern))
        if len(found) > 1:
            raise RuntimeError(f"{len(found)} figures match {pattern} in {summary}: {[p.name for p in found]}")
        if found:
            shutil.copyfile(found[0], folder / name)
            copied[name] = found[0].name
    missing = sorted(set(FIGURES.values()) - set(copied))
    if missing:
        logged = sorted(path.name for path in summary.iterdir())
        raise RuntimeError(f"the parent logged no figure for {missing}; it logged {logged}")
    return copied


def report(results: dict) -> str:
    models = [{"model": model, "stages": row["stages"], "CNN passes": row["cnn_passes"],
               "images through the CNN": row["cnn_images"], "extraction s": row["extraction_s"],
               "fits s": row["fit_s"]} for model, row in results["models"].items()]
    stages = [{"model": row["model"], "stage": row["layer"], "layer_depth": row["layer_depth"],
               "features": row["features"], "CNN images": row["cnn_forward_images"],
               "extraction s": row["extraction_s"], "fit s": row["fit_s"], "val acc": row["val_accuracy"],
               "test acc": row["test_accuracy"]} for row in results["stages"]]
    cka = results["cka"]
    passes = {model: row["cnn_passes"] for model, row in results["models"].items()}
    lines = [f"`{results['command']}` on {results['data']}; machine: {results['machine']['nproc']} cores "
             f"({results['machine']['cpu']}), load average {results['load_average_at_start']:.1f} at the start "
             "(shared with other work)", "",
             tabulate(models, headers="keys", tablefmt="github", floatfmt=".1f"), "",
             f"- whole command: {results['wall_s']:.1f} s wall, peak RSS {results['peak_rss_bytes'] / 1e9:.2f} GB",
             f"- debiased linear CKA (`layer_similarity` on the sweep's records, one matrix of {cka['cuts']} cuts): "
             f"{cka['seconds']:.1f} s; " + (f"the parent logged {cka['in_command_s']:.1f} s during the command"
                                            if cka["in_command_s"] is not None else "the parent logged no CKA time"),
             "- one CNN pass per model: " + ("yes" if set(passes.values()) == {1} else f"NO, {passes} (a bug)"), "",
             tabulate(stages, headers="keys", tablefmt="github", floatfmt=".3g")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a cifar-10-batches-py folder (default: generated)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--figures", type=Path, help="copy the parent's figures here (the README's: docs/img)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = args.out.resolve()
    if args.data:
        data_path, data = args.data.resolve(), f"CIFAR-10 at {args.data}"
    else:
        data_path = write_cifar_like(out / f"data-{args.train_per_class}-{args.test_per_class}",
                                     train_per_class=args.train_per_class, test_per_class=args.test_per_class)
        data = (f"generated CIFAR-10-format images, default classes 4-9, {args.train_per_class} train + "
                f"{args.test_per_class} test per class")
    work = fresh(out / "depth-profile")
    load = os.getloadavg()[0]
    sweep = tlsweep(OVERRIDES, workdir=work, data_path=data_path, name="depth_profile", out=work)
    store, parent_run_id, found = sweep_runs(work)
    rows = stage_rows(found)
    cka = {**timed_cka(found), "in_command_s": in_command_cka_seconds(sweep, work / "depth_profile.err")}
    results = {"machine": machine(), "load_average_at_start": load, "data": data, "command": COMMAND,
               "benchmark": "python -m benchmarks.depth_profile", "parent_run_id": parent_run_id,
               "wall_s": sweep["wall_s"], "peak_rss_bytes": sweep["peak_rss_bytes"], "models": per_model(rows),
               "stages": rows, "cka": cka}
    if args.figures:
        with tempfile.TemporaryDirectory(prefix="depth-profile-") as folder:
            results["figures"] = copy_figures(summary_folder(store, parent_run_id, Path(folder)),
                                              args.figures.resolve())
        log.info("figures copied into %s: %s", args.figures, results["figures"])
    write_results(out, "depth_profile", results, report(results))


if __name__ == "__main__":
    main()
