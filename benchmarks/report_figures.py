"""One job's reports, its confusion-matrix PNGs drawn once (`report.figure_png`) against drawn twice, as a
plain `savefig` draws a figure that `tight_layout` laid out (matplotlib's placeholder layout engine makes it
lay the figure out first).

    .venv/bin/python -m benchmarks.report_figures --rounds 8

The job is the issue's size: generated ReLU-like features, 7200 train, 1800 val and 600 test rows of 4096
features, six classes, a `LinearSVC` probe; the two ways take turns. Results go to
benchmarks/results/report_figures.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
from sklearn.svm import LinearSVC

from benchmarks.fit_data import relu_like
from benchmarks.run import HERE, in_turn, write_table
from tlsweep.stages.analysis import report

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]


def drawn_twice(figure: plt.Figure) -> bytes:
    """The PNG as a plain `savefig` writes it."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timings of each way, in turn")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    X, y = relu_like(9600, 4096)
    probe = LinearSVC(C=0.1, max_iter=50).fit(X[:2000], y[:2000])
    splits = {"train": (X[:7200], y[:7200]), "val": (X[7200:9000], y[7200:9000]), "test": (X[9000:], y[9000:])}
    ways = {"drawn once (figure_png)": report.figure_png, "drawn twice (savefig)": drawn_twice}
    def job(save) -> None:
        report.figure_png = save  # what classification_reports calls for each split
        report.classification_reports(estimator=probe, splits=splits, labels=list(range(6)), names=NAMES,
                                      title="vgg16 block3_pool: ")

    seconds = in_turn({way: functools.partial(job, save) for way, save in ways.items()}, args.rounds)
    report.figure_png = ways["drawn once (figure_png)"]
    rows = [{"PNGs": way, "median s per job": statistics.median(times), "min s": min(times), "max s": max(times)}
            for way, times in seconds.items()]
    write_table(args.out, "report_figures", f"One job's reports, three splits, {args.rounds} rounds", rows,
                floatfmt=".3f")


if __name__ == "__main__":
    main()
