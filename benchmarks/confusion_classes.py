"""One job's three confusion-matrix PNGs as the class count grows: every count written on matplotlib's default
figure (the way before), against `report.confusion_figure`, which writes counts up to `report.VALUES_UP_TO`
classes and beyond draws them as colour on a figure that grows with the classes.

    .venv/bin/python -m benchmarks.confusion_classes --classes 10,30,100 --rounds 3

Predictions are generated (70% right) for 7200 train, 1800 val and 600 test images, the splits of a 9600-image
sweep; the two ways take turns. Results go to benchmarks/results/confusion_classes.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from benchmarks.run import HERE, in_turn, write_table
from tlsweep.stages.analysis import report

SPLITS = {"train": 7200, "val": 1800, "test": 600}


def every_count(y_true, y_pred, *, labels, names, title) -> plt.Figure:
    """The figure before: each cell's count written, at matplotlib's default size, whatever the classes."""
    display = ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(labels), display_labels=names,
                                                      xticks_rotation=45, colorbar=False)
    display.ax_.set_title(title, fontsize=9)
    display.figure_.tight_layout()
    return display.figure_


def three_pngs(figure, splits: dict, names: list[str]) -> None:
    """One job's confusion-matrix PNGs, one per split, drawn by `figure`."""
    for split, (y, predicted) in splits.items():
        report.figure_png(figure(y, predicted, labels=range(len(names)), names=names, title=split))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,30,100", help="class counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each way, in turn")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    ways = {"every count, default figure": every_count, "report.confusion_figure": report.confusion_figure}
    rows = []
    for k in (int(value) for value in args.classes.split(",")):
        rng = np.random.default_rng(k)
        names = [f"class_{i}" for i in range(k)]
        splits = {}
        for split, n in SPLITS.items():
            y = rng.integers(0, k, n)
            splits[split] = (y, np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n)))
        seconds = in_turn({way: functools.partial(three_pngs, figure, splits, names) for way, figure in ways.items()},
                          args.rounds)
        before, after = (statistics.median(seconds[way]) for way in ways)
        rows.append({"classes": k, **{f"{way}: median s per job": statistics.median(times)
                                      for way, times in seconds.items()}, "ratio": before / after})
    write_table(args.out, "confusion_classes", f"One job's three confusion-matrix PNGs, {args.rounds} rounds", rows,
                floatfmt=".3f")


if __name__ == "__main__":
    main()
