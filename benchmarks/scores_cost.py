"""Time and peak memory of the transferability scores (tlsweep.scores) as a function of rows and width.

Run it from the repository root:

    .venv/bin/python -m benchmarks.scores_cost            # every case below, a few minutes on 2 cores
    .venv/bin/python -m benchmarks.scores_cost --quick    # the small cases only

Each case runs in its own process on generated float32 features (Gaussian noise, 10 classes, a class signal
in the first columns), as a cut's cached features would arrive. The child times one call and reads its
peak RSS (ru_maxrss) before and after it: the difference is what the score added on top of its inputs,
LAPACK work and float64 chunks included. Results go to benchmarks/results/scores_cost.{json,md}. Other
load on the machine adds noise to the times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np

from benchmarks.run import HERE, last_json, machine, script, table, write_results

CLASSES = 10
# score, train rows, width, eval rows (k-NN), max_train (k-NN), quick
CASES = [
    ("logme", 10_000, 512, 0, None, True),
    ("logme", 5_000, 2_048, 0, None, True),
    ("logme", 2_000, 25_088, 0, None, True),  # VGG16 block5_pool flattened, n x n route
    ("logme", 2_000, 100_352, 0, None, False),  # a 28 x 28 x 128 map
    ("logme", 4_000, 25_088, 0, None, False),
    ("gbc", 10_000, 512, 0, None, True),
    ("gbc", 2_000, 25_088, 0, None, True),
    ("knn_accuracy", 10_000, 512, 2_000, None, True),
    ("knn_accuracy", 5_000, 25_088, 1_000, None, False),
    ("knn_accuracy", 5_000, 25_088, 1_000, 1_000, False),
]

log = logging.getLogger(__name__)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x[np.arange(n), labels] += 2.0
    return x, labels


def one_case(score: str, n: int, d: int, n_eval: int, max_train: int | None) -> dict:
    """Time one call of `score` on fresh features; its peak RSS above the inputs'."""
    from tlsweep import scores
    from tlsweep.scores import _arrays

    x, y = features(n, d, seed=0)
    evaluated = features(n_eval, d, seed=1) if n_eval else None
    before = max_rss_bytes()
    t0 = time.perf_counter()
    if score == "knn_accuracy":
        value = scores.knn_accuracy(x, y, *evaluated, max_train=max_train)
    else:
        value = getattr(scores, score)(x, y)
    seconds = time.perf_counter() - t0
    route = ("n x n" if _arrays.cheaper_in_samples(n, d) else "d x d") if score != "knn_accuracy" else "-"
    return {"score": score, "n": n, "d": d, "n_eval": n_eval, "max_train": max_train, "route": route,
            "seconds": seconds, "features_bytes": int(x.nbytes + (evaluated[0].nbytes if n_eval else 0)),
            "added_peak_bytes": max(0, max_rss_bytes() - before), "value": value}


def report(results: dict) -> str:
    rows = [{"score": r["score"], "n": r["n"], "d": r["d"], "eval rows": r["n_eval"] or "",
             "max_train": r["max_train"] or "", "route": r["route"], "seconds": r["seconds"],
             "input GB": r["features_bytes"] / 1e9, "added peak GB": r["added_peak_bytes"] / 1e9}
            for r in results["cases"]]
    head = (f"`{results['benchmark']}`; machine: {results['machine']['nproc']} cores ({results['machine']['cpu']}), "
            f"{results['machine']['mem_gib']} GiB, load average {results['load_average_at_start']:.1f} at the start "
            "(shared with other work); float32 inputs, 10 classes")
    return "\n".join([head, "", *table(rows, floatfmt=".2f")]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    parser.add_argument("--case", help="(internal) run one case, SCORE:N:D:N_EVAL:MAX_TRAIN, and print JSON")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.case:
        score, n, d, n_eval, max_train = args.case.split(":")
        print(json.dumps(one_case(score, int(n), int(d), int(n_eval), int(max_train) if max_train else None)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    cases = []
    for score, n, d, n_eval, max_train, quick in CASES:
        if args.quick and not quick:
            continue
        spec = f"{score}:{n}:{d}:{n_eval}:{max_train or ''}"
        child = script("scores_cost", ["--case", spec], name=f"scores_cost-{spec.replace(':', '-')}", out=out / "logs")
        cases.append({**last_json(child["stdout"]), "child_peak_rss_bytes": child["peak_rss_bytes"]})
    results = {"machine": machine(), "load_average_at_start": load, "benchmark": "python -m benchmarks.scores_cost"
               + (" --quick" if args.quick else ""), "cases": cases}
    write_results(out, "scores_cost", results, report(results))


if __name__ == "__main__":
    main()
