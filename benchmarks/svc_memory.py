"""Peak memory a linear fit adds on top of its float32 features, for LinearSVC and tlsweep's LbfgsSVC.

Loads one cut's cached train features (all the classes found in the cache folder), as tlsweep does, then
fits once. `ru_maxrss` before and after the fit gives what the solver itself allocated. The fit is capped
at `--max-iter` iterations: the copies happen before the first iteration, so the peak does not depend on
how long the solver runs. Run each estimator in its own process so the peaks do not mix. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import time
import warnings
from pathlib import Path

import numpy as np


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-folder", type=Path, required=True, help="a tlsweep feature-cache folder (vgg16-...)")
    parser.add_argument("--layer", required=True)
    parser.add_argument("--estimator", choices=("linear_svc", "lbfgs_svc"), required=True)
    parser.add_argument("--max-iter", type=int, default=2)
    args = parser.parse_args()

    pattern = re.compile(rf"train-{args.layer}-class(\d+)\.npy$")
    entries = sorted((int(m.group(1)), path) for path in args.cache_folder.glob("train-*.npy")
                     if (m := pattern.search(path.name)))
    if not entries:
        raise SystemExit(f"no train features for layer={args.layer!r} in {args.cache_folder}")
    parts = [np.load(path, mmap_mode="r") for _, path in entries]
    X = np.concatenate([part.reshape(len(part), -1) for part in parts])
    y = np.concatenate([np.full(len(part), label) for (label, _), part in zip(entries, parts)])
    before = max_rss_bytes()

    from tlsweep.stages.probe.classify import make_classifier
    from tlsweep.stages.probe.probes import PROBES

    estimator = make_classifier(probe=PROBES[args.estimator](max_iter=args.max_iter), C=0.1)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # a capped fit warns by design: kept in the output
        warnings.simplefilter("always")
        estimator.fit(X, y)
    seconds = time.perf_counter() - t0
    after = max_rss_bytes()
    print(json.dumps({
        "layer": args.layer, "estimator": args.estimator, "n": int(X.shape[0]), "d": int(X.shape[1]),
        "features_bytes": int(X.nbytes), "nonzero_share": float(np.count_nonzero(X) / X.size),
        "rss_before_fit_bytes": before, "rss_peak_bytes": after, "fit_added_bytes": max(0, after - before),
        "capped_fit_s": seconds, "max_iter": args.max_iter,
        "warnings": [f"{item.category.__name__}: {item.message}"[:200] for item in caught],
    }))


if __name__ == "__main__":
    main()
