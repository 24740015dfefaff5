"""Where a sweep's start-up goes: the libraries it needs before its first job, each timed in a fresh process,
against the `startup_seconds` and `overhead_seconds` that `tlsweep preset=demo` logs, and how long its process
takes to exit once its parent run has ended.

Run it from the repository root:

    .venv/bin/python -m benchmarks.startup                  # the default backend (TensorFlow)
    .venv/bin/python -m benchmarks.startup --backends tensorflow,jax
    git worktree add /tmp/before HEAD~1 && .venv/bin/python -m benchmarks.startup --against /tmp/before --rounds 3

A sweep checks every job before it opens anything (`sweep/plan.py`): the backbones and their layers come
from `keras.applications`, so Keras and its backend load before the first job. Each part below is one
child process, so no part finds another's modules already imported. Results go to
benchmarks/results/startup.{json,md}. With `--against`, only the demo sweeps run: another checkout's (the
release before, say) and this one's in turn, `--rounds` times, so both are timed in the same minutes; results go
to benchmarks/results/startup_against.{json,md}.

It also times what a job pays once per process (its first probe model save) against the same work done again,
and one job's reports (classification reports and confusion matrices) at 9600 images.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from benchmarks.run import HERE, PYTHON, ROOT, machine, scratch, write_results, write_table
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

# what a job pays once per process and not again, after the modules a job has loaded by then
PROBE = """
import tempfile
from pathlib import Path
import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import make_pipeline
import tlsweep.job
from tlsweep.stages.probe.pipeline import PipelineSpec
from tlsweep.tracking.payload import ProbeModel
from tlsweep.tracking.store import save_model
rows = np.eye(2, dtype=np.float32)
spec = PipelineSpec(backbone="vgg16", layer="block3_pool", input_size=32, resize="keras", features={},
                    labels=[0, 1], class_names=["a", "b"])
probe = ProbeModel(make_pipeline(DummyClassifier()).fit(rows, [0, 1]), rows, spec, np.zeros((2, 32, 32, 3), np.uint8))
def save():
    with tempfile.TemporaryDirectory() as folder:
        save_model(Path(folder) / "probe", probe)
"""
REPORTS = """
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC
import tlsweep.job
from tlsweep.stages.analysis import report
rng = np.random.default_rng(0)
X, y = np.maximum(rng.standard_normal((9600, 4096), dtype=np.float32), 0), rng.integers(0, 6, 9600)
splits = {"train": (X[:7200], y[:7200]), "val": (X[7200:9000], y[7200:9000]), "test": (X[9000:], y[9000:])}
job = dict(estimator=make_pipeline(LinearSVC()).fit(X[:600], y[:600]), splits=splits, labels=list(range(6)),
           names=["deer", "dog", "frog", "horse", "ship", "truck"], title="vgg16 block3_pool: ")
report.classification_reports(**job)
"""
JOB_PARTS = {
    "a process's first probe model save (MLflow)": PROBE + "t = time.perf_counter(); save()",
    "a later probe model save": PROBE + "save()\nt = time.perf_counter(); save()",
    "one job's reports, after a first (6 classes; 7200, 1800, 600 rows x 4096)":
        REPORTS + "t = time.perf_counter(); report.classification_reports(**job)",
}


def part_seconds(code: str, env: dict) -> float:
    """Seconds of the snippet's timed step (from `t`, or the whole snippet), in a fresh interpreter."""
    program = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    done = subprocess.run([PYTHON, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def demo_sweeps(env: dict, out: Path) -> list[dict]:
    """`tlsweep preset=demo` twice from one empty folder (a fresh store, then the same): what each logged."""
    from mlflow.tracking import MlflowClient

    ended, walls = [], []  # when each process had exited (against its parent run's end: the interpreter's exit)
    with scratch(out, "startup-") as work:
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([PYTHON, "-m", "tlsweep", "preset=demo"], env=env, cwd=work, capture_output=True,
                           check=True)
            walls.append(time.perf_counter() - start)
            ended.append(time.time())
        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                  order_by=["attributes.start_time ASC"])
    sweeps = []
    parents = [run for run in runs if run.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert len(parents) == len(ended), f"{len(ended)} sweeps ran, {len(parents)} parent runs found"
    for parent, exited, wall in zip(parents, ended, walls):
        jobs = [run.data.metrics[Metric.OVERHEAD_SECONDS] for run in runs
                if run.data.tags.get(Tag.PARENT) == parent.info.run_id]
        sweeps.append({"startup_s": parent.data.metrics[Metric.STARTUP_SECONDS], "first_job_overhead_s": jobs[0],
                       "other_jobs_overhead_s": max(jobs[1:]), "exit_after_parent_run_s":
                       exited - parent.info.end_time / 1000, "whole_command_s": wall})
    return sweeps


def against(other: Path, rounds: int, out: Path) -> None:
    """The demo sweeps of another checkout and of this one, in turn: each round, each a fresh store then the same."""
    rows = []
    for round_ in range(1, rounds + 1):
        for label, source in (("against", other), ("this", ROOT)):
            env = {**os.environ, "PYTHONPATH": str(source), "TF_CPP_MIN_LOG_LEVEL": "2"}
            for store, found in zip(("fresh", "same"), demo_sweeps(env, out)):
                rows.append({"checkout": f"{label} ({source})", "round": round_, "store": store, **found})
    write_table(out, "startup_against", f"`tlsweep preset=demo`, {other} against this checkout", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow", help="Keras backends, comma-separated")
    parser.add_argument("--against", type=Path, help="another checkout: only the demo sweeps, its and this one's")
    parser.add_argument("--rounds", type=int, default=1, help="with --against: how many times each runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.against:
        return against(args.against.resolve(), args.rounds, out)
    results = {"machine": machine(), "load_average": os.getloadavg(), "backends": {}}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            raise SystemExit(f"--backends: {backend} is not installed")
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        parts = {name: part_seconds(code, env) for name, code in PARTS.items()}
        job_parts = {name: part_seconds(code, env) for name, code in JOB_PARTS.items()}
        fresh_store, same_store = demo_sweeps(env, out)
        results["backends"][backend] = {"parts_s": parts, "job_parts_s": job_parts, "fresh_store": fresh_store,
                                        "same_store": same_store}
    rows = []
    for backend, found in results["backends"].items():
        rows += [{"backend": backend, "what": name, "seconds": value} for name, value in found["parts_s"].items()]
        rows.append({"backend": backend, "what": "sum of the parts", "seconds": sum(found["parts_s"].values())})
        rows += [{"backend": backend, "what": f"per job: {name}", "seconds": value}
                 for name, value in found["job_parts_s"].items()]
        for store in ("fresh_store", "same_store"):
            rows += [{"backend": backend, "what": f"`tlsweep preset=demo`, {store.replace('_', ' ')}: {key}",
                      "seconds": value} for key, value in found[store].items()]
    text = (f"Start-up on {results['machine']['cpu']}, {results['machine']['nproc']} CPUs, load average "
            f"{results['load_average'][0]:.1f} at the end ({' '.join(sys.argv[1:]) or 'defaults'}):\n\n"
            + tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f") + "\n")
    write_results(out, "startup", results, text)


if __name__ == "__main__":
    main()
