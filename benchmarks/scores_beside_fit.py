"""Would a job gain from computing its transferability scores beside its fit, on the core liblinear leaves idle?

A job scores its cut (LogME and k-NN, the defaults) and then fits `LinearSVC`, one after the other. liblinear
runs on one core and releases the GIL, so a thread or a second process can score meanwhile. This times, on the
same generated ReLU-like features (`benchmarks.fit_data.relu_like`; 7200 train and 1800 val rows, six classes):

- the scores, then the fit, one after the other (what a job does);
- the scores on a thread beside the fit, with numpy's BLAS threads as they are;
- the same, with BLAS held to one thread while the scores run (threadpoolctl; the limit is process-wide);
- the scores in a second process beside the fit (its start included), with BLAS at one thread there, and as
  is: there neither the BLAS setting nor the warnings state is shared with the fit. Each also says when the fit
  ended, which shows what the second process cost the fit.

The one-after-the-other timing runs first in the process, so it also carries the first calls' costs.

    .venv/bin/python -m benchmarks.scores_beside_fit --widths 4096,2048,512

Results go to benchmarks/results/scores_beside_fit.{json,md}.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from benchmarks.fit_data import relu_like
from benchmarks.run import HERE, write_table
from tlsweep.scores import score_features

TRAIN, VAL = 7200, 1800
SCORES = ["logme", "knn"]


def one_width(d: int) -> dict:
    X, y = relu_like(TRAIN + VAL, d)
    train, val = (X[:TRAIN], y[:TRAIN]), (X[TRAIN:], y[TRAIN:])

    def scores() -> None:
        score_features(SCORES, *train, *val)

    def fit() -> None:
        LinearSVC(C=0.1).fit(*train)

    start = time.perf_counter()
    scores()
    scored = time.perf_counter() - start
    fit()
    row = {"d": d, "scores s": scored, "fit s": time.perf_counter() - start - scored}
    row["one after the other s"] = row["scores s"] + row["fit s"]
    for label, limit in (("beside, BLAS as is s", None), ("beside, BLAS at 1 thread (process-wide) s", 1)):
        def beside(limit=limit) -> None:
            with threadpool_limits(limits=limit, user_api="blas"):
                scores()

        start = time.perf_counter()
        thread = threading.Thread(target=beside)
        thread.start()
        fit()
        thread.join()
        row[label] = time.perf_counter() - start
    for label, limit in (("second process, BLAS at 1 thread", 1), ("second process, BLAS as is", None)):
        start = time.perf_counter()  # the process's start counts, as it would in a job
        with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_limit_blas,
                                 initargs=(limit,)) as pool:
            scoring = pool.submit(_scores, train, val)
            fit()
            row[f"{label}: fit ended s"] = time.perf_counter() - start
            scoring.result()
        row[f"{label} s"] = time.perf_counter() - start
    return row


_limits = None


def _limit_blas(limit) -> None:
    """The second process's BLAS threads, for its whole life (threadpoolctl; None leaves them as they are)."""
    global _limits
    _limits = threadpool_limits(limits=limit, user_api="blas")


def _scores(train: tuple, val: tuple) -> dict:
    return {name: scored.seconds for name, scored in score_features(SCORES, *train, *val).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4096,2048,512", help="feature widths, comma-separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows = [one_width(int(d)) for d in args.widths.split(",")]
    write_table(args.out, "scores_beside_fit", f"Scores beside the fit ({TRAIN} train, {VAL} val rows)", rows)


if __name__ == "__main__":
    main()
