"""Fit engines against liblinear on the same cached float32 features: time, memory, objective, predictions.

Run it from the repository root:

    .venv/bin/python -m benchmarks.fits                                   # every shape, both kinds
    .venv/bin/python -m benchmarks.fits --shapes 7200x512 --kinds vgg16   # one shape, one kind
    .venv/bin/python -m benchmarks.fits --repeats 3                       # median of three timings
    .venv/bin/python -m benchmarks.fits --engines per_class               # liblinear, classes in parallel

Each shape n x d is fitted on two kinds of features (see benchmarks/fit_data.py): generated ReLU-like
features, and the random-init VGG16 cut with d features (block3_pool 4096, block4_pool 2048,
block5_pool 512) of generated six-class images; 4000 further images are the test set. Every engine fits
the same problem: squared hinge, one-vs-rest, penalised bias, C=0.1, tol=1e-4, max_iter=1000, as
tlsweep's default `LinearSVC(dual="auto")`, which for these shapes runs liblinear's primal solver.

Each fit runs in its own process, liblinear and the engines in turn, so their times come from the same
minutes of the machine: compare the ratios. Memory is the fit's own: its process's peak RSS during the
fit (VmHWM, reset through /proc/self/clear_refs once X is loaded; C allocations count too) less the RSS
just before it. The parent then
computes in float64 each fit's objective relative to liblinear's, the test predictions' agreement with
liblinear's, and test accuracy. With --optimum it also fits the exact minimum (the line-search engine on
float64 X at tol=1e-10), whose agreement with liblinear bounds what any other converged fit can reach.
Results go to benchmarks/results/fits.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.preprocessing import LabelBinarizer
from sklearn.svm import LinearSVC

from benchmarks import fit_data
from benchmarks.run import HERE, PYTHON, ROOT, machine, measured, table, write_results
from tlsweep.stages.probe.lbfgs_svc import OneVsRestLinear

SHAPES = ("7200x4096", "7200x2048", "7200x512", "24000x4096")
KINDS = ("relu", "vgg16")
ENGINES = {  # name: (module, class, extra settings)
    "liblinear": ("sklearn.svm", "LinearSVC", {"loss": "squared_hinge", "dual": "auto"}),
    "per_class": ("benchmarks.fits", "PerClassLinearSVC", {}),
    "line_search": ("tlsweep.stages.probe.line_search_svc", "NewtonLineSearchSVC", {}),
    "trust_region": ("tlsweep.stages.probe.newton_svc", "NewtonSVC", {}),
}
SETTINGS = {"C": 0.1, "tol": 1e-4, "max_iter": 1000}

log = logging.getLogger(__name__)


class PerClassLinearSVC(OneVsRestLinear):
    """liblinear's one-vs-rest, its classes fitted in parallel: one binary `LinearSVC` per class, on `threads`
    threads (liblinear releases the GIL). Each class's problem is the one `LinearSVC` solves for it (squared
    hinge, penalised bias, the same C, tol and max_iter, the primal solver at these shapes) but with the rows
    in the data's order, where liblinear's multi-class fit groups them by class: sums over rows run in another
    order, so the solution moves by rounding. Each thread converts X to liblinear's own rows (about 4x the
    float32 features), so two threads hold two copies."""

    def __init__(self, *, C: float, tol: float, max_iter: int, threads: int = os.cpu_count() or 1):
        self.C, self.tol, self.max_iter, self.threads = C, tol, max_iter, threads

    def fit(self, X: np.ndarray, y: np.ndarray) -> "PerClassLinearSVC":
        self.classes_, self.n_features_in_ = np.unique(y), X.shape[1]

        def one(label) -> LinearSVC:
            return LinearSVC(C=self.C, tol=self.tol, max_iter=self.max_iter, loss="squared_hinge",
                             dual="auto").fit(X, (y == label).astype(np.int64))

        with ThreadPoolExecutor(self.threads) as pool:
            fits = list(pool.map(one, self.classes_))
        self.coef_ = np.vstack([fit.coef_ for fit in fits])
        self.intercept_ = np.concatenate([fit.intercept_ for fit in fits])
        self.n_iter_ = np.array([fit.n_iter_ for fit in fits])
        return self


def set_name(kind: str, d: int) -> str:
    if kind == "relu":
        return "relu"
    cut = {size: name for name, size in fit_data.VGG_CUTS.items()}.get(d)
    if cut is None:
        raise ValueError(f"VGG16 cuts have {sorted(fit_data.VGG_CUTS.values())} features; received d={d}")
    return f"vgg16-{cut}"


def child(args) -> None:
    """Fit one engine on one set and print its figures as one JSON line; the solution goes to --save."""
    X, y, X_test, y_test = fit_data.load(args.data, args.set, n_train=args.n, d=args.d)
    X, X_test = np.array(X, dtype=np.float64 if args.float64 else np.float32), np.array(X_test)
    module, name, extra = ENGINES[args.child]
    settings = {**SETTINGS, **extra, **({"tol": args.tol} if args.tol else {})}
    estimator = getattr(__import__(module, fromlist=[name]), name)(**settings)
    gc.collect()  # the memory-mapped files are closed: only X and the test rows stay resident
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := RSS now, so the peak below is the fit's
    before = _status_kb("VmRSS") * 1024
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X, y)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = _status_kb("VmHWM") * 1024
    np.savez(args.save, coef=estimator.coef_, intercept=estimator.intercept_, predictions=estimator.predict(X_test))
    print(json.dumps({"fit_s": seconds, "cpu_s": cpu, "rss_added_bytes": max(0, after - before), "x_bytes": int(X.nbytes),
                      "n_iter": int(np.max(estimator.n_iter_)),
                      "warnings": [f"{w.category.__name__}: {w.message}"[:300] for w in caught]}))


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in kB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def fit(engine: str, name: str, n: int, d: int, *, out: Path, data: Path, tag: str, extra=()) -> dict:
    save = out / f"{tag}.npz"
    args = ["-m", "benchmarks.fits", "--child", engine, "--set", name, "--n", str(n), "--d", str(d),
            "--data", str(data), "--save", str(save), *extra]
    result = measured([PYTHON, *args], cwd=ROOT, env={}, name=tag, out=out / "logs")
    body = json.loads([line for line in result["stdout"].splitlines() if line.startswith("{")][-1])
    return {**body, "solution": str(save)}


def objective(X: np.ndarray, y: np.ndarray, solution: dict, C: float) -> float:
    """The squared-hinge objective (penalised bias, one-vs-rest, summed over classes) in float64."""
    coef, intercept = solution["coef"].astype(np.float64), solution["intercept"].astype(np.float64)
    Y = LabelBinarizer(neg_label=-1, pos_label=1).fit_transform(y).astype(np.float64)
    total = 0.5 * float(np.sum(coef ** 2) + np.sum(intercept ** 2))
    for start in range(0, len(X), 2048):
        margins = X[start:start + 2048].astype(np.float64) @ coef.T + intercept
        total += C * float(np.sum(np.maximum(0.0, 1.0 - Y[start:start + 2048] * margins) ** 2))
    return total


def compare(runs: dict, X, y, y_test, C: float) -> list[dict]:
    """One row per engine: median time, its ratio to liblinear's, memory, objective and predictions."""
    solutions = {engine: np.load(result[0]["solution"]) for engine, result in runs.items()}
    values = {engine: objective(X, y, solution, C) for engine, solution in solutions.items()}
    reference = solutions["liblinear"]["predictions"]
    lib_s = statistics.median(r["fit_s"] for r in runs["liblinear"])
    rows = []
    for engine, results in runs.items():
        seconds = statistics.median(r["fit_s"] for r in results)
        predictions = solutions[engine]["predictions"]
        row = {"engine": engine, "fit_s": seconds, "times": [round(r["fit_s"], 2) for r in results],
               "cpu_s": statistics.median(r["cpu_s"] for r in results),
               "liblinear_over_engine": lib_s / seconds, "rss_added_gb": results[0]["rss_added_bytes"] / 1e9,
               "rss_added_over_x": results[0]["rss_added_bytes"] / results[0]["x_bytes"],
               "objective": values[engine], "objective_vs_liblinear": values[engine] / values["liblinear"] - 1,
               "agreement_with_liblinear": float(np.mean(predictions == reference)),
               "test_accuracy": float(np.mean(predictions == y_test)), "n_iter": results[0]["n_iter"],
               "converged": not any("ConvergenceWarning" in w for w in results[0]["warnings"])}
        if "optimum" in solutions:
            row["agreement_with_optimum"] = float(np.mean(predictions == solutions["optimum"]["predictions"]))
        rows.append(row)
    return rows


def report(results: dict) -> str:
    lines = [f"# Fit engines vs liblinear ({results['machine']['cpu']}, {results['machine']['nproc']} CPUs)", "",
             f"C={SETTINGS['C']}, tol={SETTINGS['tol']}, squared hinge, one-vs-rest, penalised bias. fit_s: wall "
             "seconds, median of the repeats (each listed in times); cpu_s: the process's CPU seconds (both "
             "threads); rss_added: peak RSS added by the fit (VmHWM); objective relative to liblinear's.", ""]
    keys = ("engine", "fit_s", "times", "cpu_s", "liblinear_over_engine", "rss_added_gb", "rss_added_over_x",
            "objective_vs_liblinear", "agreement_with_liblinear", "agreement_with_optimum", "test_accuracy",
            "n_iter", "converged")
    for case in results["cases"]:
        lines += [f"## {case['shape']} {case['kind']} ({case['set']}; load average {case['load']})", ""]
        lines += table([{k: row[k] for k in keys if k in row} for row in case["rows"]], floatfmt=".4g") + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="n x d pairs, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help="relu, vgg16 or both")
    parser.add_argument("--engines", default="line_search", help=f"besides liblinear: {', '.join(ENGINES)}")
    parser.add_argument("--repeats", type=int, default=1, help="timings per engine (the median is reported)")
    parser.add_argument("--optimum", action="store_true", help="also fit the exact minimum (float64, tol=1e-10)")
    parser.add_argument("--test", type=int, default=4000, help="test images")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    # one fit in a child process (used by the parent)
    for option, kind in (("--child", str), ("--set", str), ("--n", int), ("--d", int), ("--data", Path),
                         ("--save", Path), ("--tol", float)):
        parser.add_argument(option, type=kind, help=argparse.SUPPRESS)
    parser.add_argument("--float64", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    engines = ["liblinear", *[e for e in args.engines.split(",") if e != "liblinear"]]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"engines should be among {sorted(ENGINES)}; received {unknown}")
    out = args.out.resolve()
    # the same images whatever the shapes asked for: a smaller shape fits the first n of the 24000 rows
    data = fit_data.prepare(out / "fits", train=max(24000, *(n for n, _ in shapes)), test=args.test)
    results = {"machine": machine(), "settings": SETTINGS, "command": " ".join(sys.argv), "cases": []}
    for n, d in shapes:
        for kind in args.kinds.split(","):
            name = set_name(kind, d)
            load = " ".join(f"{v:.1f}" for v in os.getloadavg())
            runs = {engine: [] for engine in engines}
            for repeat in range(args.repeats):
                for engine in engines:  # in turn, so each engine's timings see the same minutes
                    tag = f"{name}-{n}x{d}-{engine}-{repeat}"
                    runs[engine].append(fit(engine, name, n, d, out=out / "fits-runs", data=data, tag=tag))
            if args.optimum:
                runs["optimum"] = [fit("line_search", name, n, d, out=out / "fits-runs", data=data,
                                       tag=f"{name}-{n}x{d}-optimum", extra=["--float64", "--tol", "1e-10"])]
            X, y, _, y_test = fit_data.load(data, name, n_train=n, d=d)
            rows = compare(runs, X, y, y_test, SETTINGS["C"])
            results["cases"].append({"shape": f"{n}x{d}", "kind": kind, "set": name, "load": load,
                                     "rows": rows})
            log.info("%s %s: %s", f"{n}x{d}", kind, [(r["engine"], round(r["fit_s"], 2)) for r in rows])
    write_results(out, "fits", results, report(results))


if __name__ == "__main__":
    main()
