"""Where a sweep's start-up goes: the libraries it needs before its first job, each timed in a fresh process,
against the `startup_seconds` and `overhead_seconds` that `tlsweep preset=demo` logs.

Run it from the repository root:

    .venv/bin/python -m benchmarks.startup                  # the default backend (TensorFlow)
    .venv/bin/python -m benchmarks.startup --backends tensorflow,jax

A sweep checks every job before it opens anything (`sweep/plan.py`): the backbones and their layers come
from `keras.applications`, so Keras and its backend load before the first job. Each part below is one
child process, so no part finds another's modules already imported. Results go to
benchmarks/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from benchmarks.run import HERE, PYTHON, ROOT, machine, scratch, write_results
from tlsweep.tracking.names import Kind, Metric, Tag

# each snippet prints the seconds of its last step; the steps before it are what a sweep has loaded by then
PARTS = {
    "keras and its backend (import, one op)": "import keras; keras.ops.convert_to_numpy(keras.ops.zeros((1,)))",
    "mlflow, after Keras": "import keras\nt = time.perf_counter(); import mlflow.pyfunc",
    "tlsweep's own modules, after both": "import keras, mlflow.pyfunc\n"
                                         "t = time.perf_counter(); import tlsweep.__main__",
    "a fresh SQLite store (MLflow's schema)": "from tlsweep.tracking.store import Store\nimport tempfile\n"
                                              "t = time.perf_counter()\n"
                                              "Store.open(f'sqlite:///{tempfile.mkdtemp()}/m.db')",
}


def part_seconds(code: str, env: dict) -> float:
    """Seconds of the snippet's timed step (from `t`, or the whole snippet), in a fresh interpreter."""
    program = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    done = subprocess.run([PYTHON, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def demo_sweeps(env: dict, out: Path) -> list[dict]:
    """`tlsweep preset=demo` twice from one empty folder (a fresh store, then the same): what each logged."""
    from mlflow.tracking import MlflowClient

    with scratch(out, "startup-") as work:
        for _ in range(2):
            subprocess.run([PYTHON, "-m", "tlsweep", "preset=demo"], env=env, cwd=work, capture_output=True,
                           check=True)
        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                  order_by=["attributes.start_time ASC"])
    sweeps = []
    for parent in (run for run in runs if run.data.tags.get(Tag.KIND) == Kind.SWEEP):
        jobs = [run.data.metrics[Metric.OVERHEAD_SECONDS] for run in runs
                if run.data.tags.get(Tag.PARENT) == parent.info.run_id]
        sweeps.append({"startup_s": parent.data.metrics[Metric.STARTUP_SECONDS], "first_job_overhead_s": jobs[0],
                       "other_jobs_overhead_s": max(jobs[1:])})
    return sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow", help="Keras backends, comma-separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    out = args.out.resolve()
    results = {"machine": machine(), "load_average": os.getloadavg(), "backends": {}}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            raise SystemExit(f"--backends: {backend} is not installed")
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        parts = {name: part_seconds(code, env) for name, code in PARTS.items()}
        fresh_store, same_store = demo_sweeps(env, out)
        results["backends"][backend] = {"parts_s": parts, "fresh_store": fresh_store, "same_store": same_store}
    rows = []
    for backend, found in results["backends"].items():
        rows += [{"backend": backend, "what": name, "seconds": value} for name, value in found["parts_s"].items()]
        rows.append({"backend": backend, "what": "sum of the parts", "seconds": sum(found["parts_s"].values())})
        for store in ("fresh_store", "same_store"):
            rows += [{"backend": backend, "what": f"`tlsweep preset=demo`, {store.replace('_', ' ')}: {key}",
                      "seconds": value} for key, value in found[store].items()]
    text = (f"Start-up on {results['machine']['cpu']}, {results['machine']['nproc']} CPUs, load average "
            f"{results['load_average'][0]:.1f} at the end ({' '.join(sys.argv[1:]) or 'defaults'}):\n\n"
            + tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f") + "\n")
    write_results(out, "startup", results, text)


if __name__ == "__main__":
    main()
