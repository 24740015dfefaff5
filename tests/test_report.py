"""Per-split reports: a figure laid out by tight_layout is drawn once to PNG, to the bytes savefig gives."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from tlsweep.stages.analysis import report


def confusion_figure() -> plt.Figure:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 600)
    predicted = np.where(rng.random(600) < 0.8, y, rng.integers(0, 6, 600))
    display = ConfusionMatrixDisplay.from_predictions(y, predicted, display_labels=list("abcdef"),
                                                      xticks_rotation=45, colorbar=False)
    display.ax_.set_title("vgg16 block3_pool: train (accuracy 0.800)", fontsize=9)
    display.figure_.tight_layout()
    return display.figure_


def test_a_laid_out_figure_is_drawn_once_to_the_bytes_savefig_gives():
    reference, buffer = confusion_figure(), io.BytesIO()
    draws = []
    reference.canvas.mpl_connect("draw_event", draws.append)
    reference.savefig(buffer, format="png")
    plt.close(reference)
    assert len(draws) == 2  # matplotlib's own savefig: a layout pass, then the drawing

    figure = confusion_figure()
    draws.clear()
    figure.canvas.mpl_connect("draw_event", draws.append)
    assert report.figure_png(figure) == buffer.getvalue()
    assert len(draws) == 1 and not plt.fignum_exists(figure.number)
