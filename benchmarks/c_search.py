"""The cost of `classifier.C=auto`: one job's coarse-to-fine search and refit on the cached features, against
one fixed-C fit, and against the same grid run as one Hydra job per C value.

Run it from the repository root:

    .venv/bin/python -m benchmarks.c_search                          # the original study's shapes: 24000 x 4096
    .venv/bin/python -m benchmarks.c_search --train-per-class 500 --grid-jobs   # smaller, with the Hydra grid

Each figure comes from tlsweep's own runs, read back from MLflow: `fit_seconds` of the fixed-C job, of the
C=auto job (search plus refit), and summed over the grid's jobs. The Hydra grid at full size costs hours
on two cores, so it runs only with --grid-jobs; it then also says whether the C that C=auto chose is as
good on val as the grid's best, both fitted by the configured estimator. Results go to
benchmarks/results/c_search.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import logging
from pathlib import Path

from tabulate import tabulate

from benchmarks.cifar_like import write_cifar_like
from benchmarks.run import HERE, fresh, tlsweep
from tlsweep.config import _default_C_grid


def store(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def job_runs(workdir: Path) -> list:
    """Job runs of `workdir`'s store, newest first."""
    client = store(workdir)
    experiment = client.get_experiment_by_name("tlsweep")
    return client.search_runs([experiment.experiment_id], "tags.`tlsweep.kind` = 'job'", max_results=5000,
                              order_by=["attributes.start_time DESC"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a cifar-10-batches-py folder (default: generated)")
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--layer", default="block3_pool")
    parser.add_argument("--classifier", default="linear_svc")
    parser.add_argument("--grid-jobs", action="store_true", help="also run the grid as one Hydra job per C")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = args.out.resolve()
    data = args.data or write_cifar_like(out / "data", train_per_class=args.train_per_class,
                                         test_per_class=args.test_per_class)
    work = fresh(out / "c-search")
    common = [f"layer={args.layer}", f"classifier.name={args.classifier}"]
    cold = tlsweep(common, workdir=work, data_path=data, name="c_fixed_cold", out=out)  # fills the cache
    fixed = tlsweep(common, workdir=work, data_path=data, name="c_fixed", out=out)
    (fixed_run, cold_run) = job_runs(work)[:2]
    auto = tlsweep([*common, "classifier.C=auto"], workdir=work, data_path=data, name="c_auto", out=out)
    auto_run = job_runs(work)[0]
    tried = len(store(work).get_metric_history(auto_run.info.run_id, "search/C"))
    results = {
        "shape": f"{fixed_run.data.params['n_train']} x {fixed_run.data.params['feature_dim']}",
        "layer": args.layer, "classifier": args.classifier, "grid_size": len(_default_C_grid()),
        "fixed": {"C": float(fixed_run.data.params["classifier.C"]), "fit_s": fixed_run.data.metrics["fit_seconds"],
                  "wall_s": fixed["wall_s"], "val_accuracy": fixed_run.data.metrics["val_accuracy"],
                  "test_accuracy": fixed_run.data.metrics["test_accuracy"]},
        "auto": {"fits": tried + 1, "selected_C": float(auto_run.data.params["selected_C"]),
                 "fit_s": auto_run.data.metrics["fit_seconds"], "wall_s": auto["wall_s"],
                 "val_accuracy": auto_run.data.metrics["val_accuracy"],
                 "test_accuracy": auto_run.data.metrics["test_accuracy"]},
        "cold_extraction_s": cold_run.data.metrics["extraction_seconds"], "cold_wall_s": cold["wall_s"],
    }
    results["auto_over_fixed_fit"] = results["auto"]["fit_s"] / results["fixed"]["fit_s"]
    if args.grid_jobs:
        grid = ",".join(f"{C:g}" for C in _default_C_grid())
        sweep = tlsweep(["-m", *common, f"classifier.C={grid}"], workdir=work, data_path=data, name="c_grid_jobs",
                        out=out)
        jobs = job_runs(work)[: len(_default_C_grid())]
        # as C=auto chooses: the best val accuracy, ties to the smaller C
        best = max(jobs, key=lambda run: (run.data.metrics.get("val_accuracy", -1.0),
                                          -float(run.data.params["classifier.C"])))
        # the configured estimator's own val accuracy at the C that C=auto chose: as good as the grid's best?
        chosen = next(run for run in jobs if math.isclose(float(run.data.params["classifier.C"]),
                                                          results["auto"]["selected_C"], rel_tol=1e-5))
        results["grid_jobs"] = {"jobs": len(jobs), "fit_s": sum(r.data.metrics["fit_seconds"] for r in jobs),
                                "wall_s": sweep["wall_s"], "best_val_C": float(best.data.params["classifier.C"]),
                                "best_val_accuracy": best.data.metrics["val_accuracy"],
                                "val_accuracy_at_selected_C": chosen.data.metrics["val_accuracy"]}
        results["auto_as_good_as_grid_on_val"] = (results["grid_jobs"]["val_accuracy_at_selected_C"]
                                                  >= results["grid_jobs"]["best_val_accuracy"])
        results["grid_jobs_over_auto_wall"] = sweep["wall_s"] / auto["wall_s"]
        results["grid_jobs_over_auto_fit"] = results["grid_jobs"]["fit_s"] / results["auto"]["fit_s"]
    (out / "c_search.json").write_text(json.dumps(results, indent=2))
    rows = [{"what": name, **values} for name, values in results.items() if isinstance(values, dict)]
    text = (f"C=auto at {results['shape']} ({args.layer}, {args.classifier}):\n\n"
            + tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g")
            + f"\n\nsearch and refit / one fixed-C fit: {results['auto_over_fixed_fit']:.2f}x\n"
            + (f"grid as Hydra jobs / C=auto, wall: {results['grid_jobs_over_auto_wall']:.2f}x; "
               f"fits: {results['grid_jobs_over_auto_fit']:.2f}x\n"
               f"C=auto chose C={results['auto']['selected_C']:g}: val accuracy "
               f"{results['grid_jobs']['val_accuracy_at_selected_C']:.4f} as a grid job; the grid's best is "
               f"{results['grid_jobs']['best_val_accuracy']:.4f} at C={results['grid_jobs']['best_val_C']:g} "
               f"({'as good' if results['auto_as_good_as_grid_on_val'] else 'worse'})\n" if args.grid_jobs else ""))
    (out / "c_search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
