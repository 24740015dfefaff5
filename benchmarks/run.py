"""tlsweep's performance benchmark, in one run: ratios against the seed's way and a hand-written one-pass
script, a warm sweep, extraction throughput against the FLOP limit, and peak memory on all ten classes.

Run it from the repository root:

    .venv/bin/python -m benchmarks.run                        # full size: 30000 train + 6000 test (six classes)
    .venv/bin/python -m benchmarks.run --train-per-class 1000 # smaller, same steps
    .venv/bin/python -m benchmarks.run --data /data/cifar-10-batches-py   # real CIFAR-10
    .venv/bin/python -m benchmarks.run --skip-ten --steps cold,warm,warm_parallel   # warm, one job or two at once

Everything it writes goes under benchmarks/results/ (git-ignored); the figures end in results.json and
results.md there and are printed at the end. Concurrent load on the machine adds noise to the times, so
compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from tabulate import tabulate

from benchmarks.cifar_like import write_cifar_like
from tlsweep.tracking.names import Kind, Metric, Param, Tag

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
LAYERS = ("block3_pool", "block4_pool", "block5_pool")
TEN = "[0,1,2,3,4,5,6,7,8,9]"
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}

log = logging.getLogger(__name__)


def measured(args: list[str], *, cwd: Path, env: dict, name: str, out: Path) -> dict:
    """Run a child process; return its wall time, exit status, peak RSS (its own, by wait4) and stdout."""
    out.mkdir(parents=True, exist_ok=True)
    stdout, stderr = out / f"{name}.out", out / f"{name}.err"
    log.info("%s: %s", name, " ".join(args))
    started, t0 = time.time(), time.perf_counter()
    with stdout.open("w") as so, stderr.open("w") as se:
        child = subprocess.Popen(args, cwd=cwd, env={**os.environ, **env}, stdout=so, stderr=se)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    result = {"wall_s": wall, "started": started, "rc": child.returncode, "peak_rss_bytes": usage.ru_maxrss * 1024,
              "stdout": stdout.read_text()}
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed with exit status {child.returncode}; see {stderr}:\n"
                           + stderr.read_text()[-3000:])
    log.info("%s: %.1f s, peak RSS %.2f GB", name, wall, result["peak_rss_bytes"] / 1e9)
    return result


def script(module: str, args: list[str], *, name: str, out: Path, env: dict | None = None) -> dict:
    """`python -m benchmarks.MODULE ARGS` from the repository root, measured."""
    return measured([PYTHON, "-m", f"benchmarks.{module}", *args], cwd=ROOT, env=env or {}, name=name, out=out)


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def tlsweep(overrides: list[str], *, workdir: Path, data_path: Path, name: str, out: Path) -> dict:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "TLSWEEP_CACHE_DIR": str(workdir / "cache"),
           **QUIET}
    args = [PYTHON, "-m", "tlsweep", *overrides, f"data.path={data_path}", "model.weights=null"]
    return measured(args, cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, name=name, out=out)


def sweep_children(workdir: Path) -> list[dict]:
    """Metrics and params of the job runs of the newest sweep in `workdir`'s MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tlsweep")
    runs = client.search_runs([experiment.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [r for r in runs if r.data.tags.get(Tag.PARENT) == parents[0].info.run_id]
    return [{"layer": r.data.params[Param.LAYER], "C": float(r.data.params[Param.C]), "status": r.info.status,
             **{k: r.data.metrics.get(k) for k in (Metric.CNN_FORWARD_IMAGES, Metric.EXTRACTION_SECONDS,
                                                   Metric.FIT_SECONDS, Metric.TOTAL_SECONDS, Metric.accuracy("test"),
                                                   Metric.CONVERGED, Metric.OVERHEAD_SECONDS)}}
            for r in children]


def sweep_startup(workdir: Path) -> float:
    """The `startup_seconds` the newest sweep in `workdir`'s MLflow store logged on its parent: from the process's
    start to its jobs handed to the launcher."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tlsweep")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{Tag.KIND}` = '{Kind.SWEEP}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    return parents[0].data.metrics.get(Metric.STARTUP_SECONDS, math.nan)


def split(result: dict, children: list[dict], startup: float) -> dict:
    extraction = sum(c["extraction_seconds"] for c in children)
    fits = sum(c["fit_seconds"] for c in children)
    return {"total_s": result["wall_s"], "extraction_s": extraction, "fit_s": fits,
            "overhead_s": result["wall_s"] - extraction - fits, "startup_s": startup,
            "peak_rss_bytes": result["peak_rss_bytes"],
            "cnn_forward_images": sum(c["cnn_forward_images"] for c in children), "runs": children}


def script_split(result: dict) -> dict:
    body = last_json(result["stdout"])
    return {"total_s": result["wall_s"], "extraction_s": body["extraction_s"], "fit_s": body["fit_s"],
            "overhead_s": result["wall_s"] - body["extraction_s"] - body["fit_s"],
            "peak_rss_bytes": result["peak_rss_bytes"], "images": body["images"], "layers": body["layers"]}


def write_results(out: Path, stem: str, results: dict, text: str) -> None:
    """`<stem>.json` (every figure) and `<stem>.md` (the report) under `out`; the report is printed too."""
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (out / f"{stem}.md").write_text(text)
    print(text)


def in_turn(ways: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each way's call, the ways taking turns `rounds` times after one uncounted round (the first
    pays the libraries' first calls)."""
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for counted in (False, *([True] * rounds)):
        for way, call in ways.items():
            start = time.perf_counter()
            call()
            if counted:
                seconds[way].append(time.perf_counter() - start)
    return seconds


def write_table(out: Path, stem: str, title: str, rows: list[dict], *, floatfmt: str = ".2f") -> None:
    """`rows` as one table, `title` followed by the machine and its load average as the run ends."""
    found = {"machine": machine(), "load_average": os.getloadavg(), "rows": rows}
    text = (f"{title}, on {found['machine']['cpu']}, {found['machine']['nproc']} CPUs, load average "
            f"{found['load_average'][0]:.1f} at the end:\n\n"
            + tabulate(rows, headers="keys", tablefmt="github", floatfmt=floatfmt) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    write_results(out.resolve(), stem, found, text)


@contextmanager
def scratch(out: Path, prefix: str) -> Iterator[Path]:
    """A throwaway folder under `out` (created if need be), removed when the block ends, however it ends."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out, prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def cache_folder(workdir: Path) -> Path:
    return next(p for p in (workdir / "cache").iterdir() if p.is_dir())


@dataclass(frozen=True)
class SixClass:
    """What the six-class steps share: the data, the output folder, and the sweeps' store and cache."""

    data_path: Path
    out: Path
    work: Path

    def reference(self, module: str) -> dict:
        args = ["--data", str(self.data_path), "--layers", ",".join(LAYERS)]
        return script_split(script(module, args, name=module, out=self.out, env=QUIET))

    def sweep(self, overrides: list[str], name: str, *, own_store: bool = False) -> dict:
        """The three-cut sweep with `overrides`; `own_store`: in a store and cache of its own, so it starts cold."""
        work = fresh(self.out / f"tlsweep-six-{name}") if own_store else self.work
        run = tlsweep(["-m", f"layer={','.join(LAYERS)}", *overrides], workdir=work, data_path=self.data_path,
                      name=name, out=self.out)
        return split(run, sweep_children(work), sweep_startup(work))


def throughput(six: SixClass) -> dict:
    run = script("throughput", ["--data", str(six.data_path)], name="throughput", out=six.out, env=QUIET)
    return last_json(run["stdout"])


class Step(NamedTuple):
    key: str  # where its figures go in results["six"]
    run: Callable[[SixClass], dict]
    needs: tuple[str, ...] = ()  # steps that must run before it


# the six-class steps by their --steps name, in the order they run
SIX_STEPS = {
    "seed": Step("seed_style", lambda six: six.reference("seed_style")),
    "cold": Step("tlsweep_cold", lambda six: six.sweep([], "tlsweep_cold")),
    # the same work as the seed's way: no transferability scores
    "cold_no_scores": Step("tlsweep_cold_no_scores", lambda six: six.sweep(["scores=[]"], "tlsweep_cold_no_scores",
                                                                           own_store=True)),
    "one_pass": Step("one_pass", lambda six: six.reference("one_pass")),
    "warm": Step("tlsweep_warm", lambda six: six.sweep(["classifier.C=0.01,0.03,0.1"], "tlsweep_warm"), ("cold",)),
    "warm_line_search": Step("tlsweep_warm_line_search", lambda six: six.sweep(
        ["classifier=line_search_svc", "classifier.C=0.01,0.03,0.1"], "tlsweep_warm_line_search"), ("cold",)),
    # the warm sweep's jobs two at a time, in joblib's worker processes: one liblinear fit per core
    "warm_parallel": Step("tlsweep_warm_parallel", lambda six: six.sweep(
        ["classifier.C=0.01,0.03,0.1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "tlsweep_warm_parallel"),
                          ("cold",)),
    "throughput": Step("throughput", throughput),
}


def chosen_steps(text: str) -> list[str]:
    """--steps as a list in run order; unknown names and missing prerequisites stop before anything runs."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in SIX_STEPS]
    if unknown:
        raise SystemExit(f"--steps should name steps from {','.join(SIX_STEPS)}; received {unknown}")
    for name in names:
        missing = [need for need in SIX_STEPS[name].needs if need not in names]
        if missing:
            raise SystemExit(f"--steps: {name} needs {','.join(missing)}, which fills the cache")
    return [name for name in SIX_STEPS if name in names]


def six_class(data_path: Path, out: Path, steps: list[str]) -> dict:
    six = SixClass(data_path=data_path, out=out, work=fresh(out / "tlsweep-six"))
    return {SIX_STEPS[name].key: SIX_STEPS[name].run(six) for name in steps}


def ten_class(data_path: Path, out: Path, max_iter: int) -> dict:
    """Peak RSS of tlsweep on all ten classes at the three cuts, and at block2_pool with both classifiers."""
    work = fresh(out / "tlsweep-ten")
    results = {}
    sweep = tlsweep(["-m", f"layer={','.join(LAYERS)}", f"data.classes={TEN}", f"classifier.max_iter={max_iter}"],
                    workdir=work, data_path=data_path, name="ten_three_cuts", out=out)
    results["three_cuts"] = split(sweep, sweep_children(work), sweep_startup(work))
    for classifier in ("linear_svc", "lbfgs_svc"):
        run = tlsweep(["-m", "layer=block2_pool", f"data.classes={TEN}", f"classifier.max_iter={max_iter}",
                       f"classifier.name={classifier}"], workdir=work, data_path=data_path,
                      name=f"ten_block2_pool_{classifier}", out=out)
        results[f"block2_pool_{classifier}"] = split(run, sweep_children(work), sweep_startup(work))
    copies = {}
    for layer in ("block2_pool", *LAYERS):
        for estimator in ("linear_svc", "lbfgs_svc"):
            run = script("svc_memory", ["--cache-folder", str(cache_folder(work)), "--layer", layer,
                                        "--estimator", estimator], name=f"svc_memory_{layer}_{estimator}", out=out)
            copies[f"{layer}/{estimator}"] = last_json(run["stdout"])
    results["fit_copies"] = copies
    results["max_iter"] = max_iter
    return results


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": round(int(memory) / 2**20, 1), "gpu": "none"}


def gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def table(rows: list[dict], floatfmt: str = ".1f") -> list[str]:
    """A markdown table, one row a dict (its keys are the header), as lines."""
    return tabulate(rows, headers="keys", tablefmt="github", floatfmt=floatfmt).splitlines()


# result key in results["six"]: its row label in the six-class table
SIX_RUNS = {"seed_style": "seed-style script (3 cut models)", "tlsweep_cold": "tlsweep cold, 3 cuts",
            "tlsweep_cold_no_scores": "tlsweep cold, 3 cuts, scores=[]",
            "one_pass": "hand-written one pass", "tlsweep_warm": "tlsweep warm, 3 cuts x 3 C",
            "tlsweep_warm_line_search": "tlsweep warm, 3 cuts x 3 C, classifier=line_search_svc",
            "tlsweep_warm_parallel": "tlsweep warm, 3 cuts x 3 C, joblib, 2 jobs at once (peak RSS: the parent's)"}
# throughput key prefix: its row label
EXTRACTIONS = {"predict_block5_pool": "`predict`, block5_pool cut, warm",
               "predict_three_outputs_cold": "`predict`, 3-output model, first call",
               "predict_three_outputs": "`predict`, 3-output model, warm",
               "tlsweep_extraction": "tlsweep `extract_features`, 3 cuts, cold cache"}


def job_overheads(runs: list[dict]) -> dict:
    """`overhead_seconds` of a sweep's first job, and the range over the others (nan for a script)."""
    seconds = [run.get(Metric.OVERHEAD_SECONDS) for run in runs]
    first, others = (seconds[-1], seconds[:-1]) if seconds and None not in seconds else (math.nan, [])  # newest first
    return {"job overhead s, first": f"{first:.2f}",
            "others": f"{min(others):.2f}-{max(others):.2f}" if others else "-"}


# the report's "how many times" lines: (label, the slower run, the faster run, what the line adds, or None)
RATIOS = (
    ("seed-style / tlsweep cold", "seed_style", "tlsweep_cold",
     lambda slow, fast: f" (extraction alone: {slow['extraction_s'] / fast['extraction_s']:.2f}x)"),
    ("seed-style / tlsweep cold with scores=[]", "seed_style", "tlsweep_cold_no_scores", None),
    ("warm sweep, liblinear / line_search_svc", "tlsweep_warm", "tlsweep_warm_line_search",
     lambda slow, fast: f", fits {slow['fit_s'] / fast['fit_s']:.2f}x"),
    ("warm sweep, one job at a time / two at once (joblib)", "tlsweep_warm", "tlsweep_warm_parallel", None),
)


def end_to_end(label: str, slower: dict, faster: dict) -> str:
    """A report line: how many times the whole of `slower` took the whole of `faster`."""
    return f"- {label}, end to end: **{slower['total_s'] / faster['total_s']:.2f}x**"


def report(results: dict) -> str:
    """The figures as markdown: the tables docs/performance.md quotes."""
    lines = [f"machine: {results['machine']}", f"data: {results['data']}", ""]
    six = results.get("six") or {}
    rows = [{"run": label, "total s": row["total_s"], "extraction s": row["extraction_s"], "fits s": row["fit_s"],
             "overhead s": row["overhead_s"], "of which startup s": row.get("startup_s", math.nan),
             **job_overheads(row.get("runs", [])), "peak RSS": gb(row["peak_rss_bytes"])}
            for key, label in SIX_RUNS.items() if (row := six.get(key))]
    if rows:
        lines += [*table(rows), ""]
    cold, one, warm = (six.get(key) for key in ("tlsweep_cold", "one_pass", "tlsweep_warm"))
    for label, slower, faster, more in RATIOS:
        if six.get(slower) and six.get(faster):
            lines.append(end_to_end(label, six[slower], six[faster]) + (more(six[slower], six[faster]) if more else ""))
    if cold and one:
        lines.append(f"- tlsweep cold / hand-written one pass: **{cold['total_s'] / one['total_s']:.3f}**"
                     f" (overhead {100 * (cold['total_s'] / one['total_s'] - 1):+.1f}%)")
    if warm:
        lines.append(f"- warm sweep: {len(warm['runs'])} runs, cnn_forward_images per run "
                     f"{sorted({int(r['cnn_forward_images']) for r in warm['runs']})} (read back from MLflow)"
                     + (f", cold sweep total {int(cold['cnn_forward_images'])}" if cold else ""))
    tp = six.get("throughput")
    if tp:
        best = max(tp["matmul_gflops"].values())
        nominal = tp["nominal"]["gflops"]
        lines += [
            "",
            f"throughput on {tp['images']} images, batch {tp['batch_size']}, {tp['keras_backend']} backend; "
            f"GMAC/image {', '.join(f'{k} {v:.3f}' for k, v in tp['gmac_per_image'].items())}; "
            f"float32 matmul {', '.join(f'{k} {v:.0f}' for k, v in tp['matmul_gflops'].items())} GFLOP/s; "
            f"nominal {nominal:.0f} GFLOP/s ({tp['nominal']['cores']} cores x {tp['nominal']['mhz']} MHz x 64)",
            "",
            *table([{"extraction": label, "images/s": tp[f"{name}_images_per_s"],
                     "GFLOP/s (to block5_pool)": tp[f"{name}_gflops"],
                     "share of matmul": f"{tp[f'{name}_gflops'] / best:.0%}",
                     "share of nominal": f"{tp[f'{name}_gflops'] / nominal:.0%}"}
                    for name, label in EXTRACTIONS.items()], floatfmt=".0f"),
        ]
    ten = results.get("ten")
    if ten:
        runs = {"tlsweep cold, 3 cuts, linear_svc": ten["three_cuts"],
                **{f"tlsweep block2_pool, {name}": ten[f"block2_pool_{name}"] for name in ("linear_svc", "lbfgs_svc")}}
        lines += ["", f"all ten classes (classifier.max_iter={ten['max_iter']}):", "",
                  *table([{"run": label, "total s": row["total_s"], "peak RSS": gb(row["peak_rss_bytes"])}
                          for label, row in runs.items()]), ""]
        copies = []
        for layer in ("block2_pool", *LAYERS):
            lin, lb = ten["fit_copies"][f"{layer}/linear_svc"], ten["fit_copies"][f"{layer}/lbfgs_svc"]
            copies.append({"cut": layer, "features": f"{lin['n']} x {lin['d']}",
                           "train X float32": gb(lin["features_bytes"]), "nonzero": f"{lin['nonzero_share']:.0%}",
                           "LinearSVC adds": gb(lin["fit_added_bytes"]), "LbfgsSVC adds": gb(lb["fit_added_bytes"])})
        lines += table(copies)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a real cifar-10-batches-py folder; default: generated images")
    parser.add_argument("--train-per-class", type=int, default=5000, help="generated train images per class")
    parser.add_argument("--test-per-class", type=int, default=1000, help="generated test images per class")
    parser.add_argument("--skip-six", action="store_true", help="skip the six-class comparisons (1-4)")
    parser.add_argument("--steps", default=",".join(SIX_STEPS),
                        help=f"six-class steps to run, comma-separated, from {','.join(SIX_STEPS)} (default: all)")
    parser.add_argument("--skip-ten", action="store_true", help="skip the ten-class memory study (5)")
    parser.add_argument("--ten-max-iter", type=int, default=20,
                        help="classifier.max_iter in the ten-class memory runs (the copies do not depend on it)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    steps = chosen_steps(args.steps)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out = args.out.resolve()

    if args.data:
        data_path, data = args.data.resolve(), f"CIFAR-10 at {args.data}"
    else:
        folder = args.out / f"data-{args.train_per_class}-{args.test_per_class}"
        data_path = write_cifar_like(folder, train_per_class=args.train_per_class, test_per_class=args.test_per_class)
        data = (f"generated CIFAR-10-format images, {args.train_per_class} train + {args.test_per_class} test per "
                f"class (six classes: {6 * args.train_per_class} train + {6 * args.test_per_class} test; "
                f"ten: {10 * (args.train_per_class + args.test_per_class)} images)")
    out = args.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    results = {"machine": machine(), "data": data, "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]])}
    if not args.skip_six:
        results["six"] = six_class(data_path, out, steps)
    if not args.skip_ten:
        results["ten"] = ten_class(data_path, out, args.ten_max_iter)
    write_results(out, "results", results, report(results))


if __name__ == "__main__":
    main()
