"""Per-split reports: a figure laid out by tight_layout is drawn once to PNG, to the bytes savefig gives; a
confusion matrix writes its counts while they are legible and grows with the classes beyond."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import ConfusionMatrixDisplay

from tlsweep.stages.analysis import report


def confusion_figure(y=None, predicted=None, names="abcdef", title="vgg16 block3_pool: train (accuracy 0.800)"
                     ) -> plt.Figure:
    """scikit-learn's display laid out as the reports drew it before they scaled with the classes."""
    if y is None:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 6, 600)
        predicted = np.where(rng.random(600) < 0.8, y, rng.integers(0, 6, 600))
    display = ConfusionMatrixDisplay.from_predictions(y, predicted, display_labels=list(names), xticks_rotation=45,
                                                      colorbar=False)
    display.ax_.set_title(title, fontsize=9)
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


def predictions(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, n)
    return y, np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))


def test_up_to_ten_classes_each_count_is_written_on_the_default_figure():
    y, predicted = predictions(10, 500)
    figure = report.confusion_figure(y, predicted, labels=range(10), names=[f"c{i}" for i in range(10)], title="t")
    ax = figure.axes[0]
    counts = {text.get_text() for text in ax.texts}
    assert len(ax.texts) == 100 and str(int(np.sum((y == 0) & (predicted == 0)))) in counts
    assert len(figure.axes) == 1  # no colorbar: the counts say it
    assert tuple(figure.get_size_inches()) == tuple(plt.rcParams["figure.figsize"])
    plt.close(figure)


def test_up_to_ten_classes_the_png_is_scikit_learns_display_as_it_was():
    y, predicted = predictions(10, 500)
    names = [f"class_{i}" for i in range(10)]
    title = "vgg16 block3_pool: test (accuracy 0.700)"
    figure = report.confusion_figure(y, predicted, labels=range(10), names=names, title=title)
    assert report.figure_png(figure) == report.figure_png(confusion_figure(y, predicted, names, title))


@pytest.mark.parametrize("k", [11, 100, 300])  # 300: past MAX_LABELS and MAX_SIDE
def test_beyond_ten_classes_each_row_is_a_fraction_of_its_class_and_the_figure_grows(k):
    y, predicted = predictions(k, 20 * k)
    names = [f"class_{i}" for i in range(k)]
    figure = report.confusion_figure(y, predicted, labels=range(k), names=names, title="t")
    ax, colorbar = figure.axes
    assert not ax.texts and colorbar.get_ylabel() == "fraction of the true class"
    shown = ax.images[0].get_array()
    recall = [np.mean(predicted[y == i] == i) for i in range(k)]
    assert np.allclose(np.diag(shown), recall) and np.allclose(shown.sum(axis=1), 1)  # every class has images
    assert ax.images[0].get_clim() == (0, 1)
    side = min(report.MAX_SIDE, report.SIDE + report.PER_CLASS * k)
    assert tuple(figure.get_size_inches()) == (side, side) and side > plt.rcParams["figure.figsize"][1]  # taller
    named = [label.get_text() for label in ax.get_yticklabels()]
    assert named[:2] == (names[:2] if k <= report.MAX_LABELS else [names[0], names[-(-k // report.MAX_LABELS)]])
    assert len(named) == min(k, len(range(0, k, -(-k // report.MAX_LABELS))))
    image = plt.imread(io.BytesIO(report.figure_png(figure)))
    assert image.shape[0] == round(side * figure.dpi)


@pytest.mark.parametrize("k", [3, 12])
def test_class_names_are_drawn_as_they_are_not_as_mathtext(k):
    y, predicted = predictions(k, 20 * k)
    names = ["a$^$b", "$5 bill", *(f"c{i}" for i in range(2, k))]  # "$^$" raises in matplotlib's mathtext parser
    figure = report.confusion_figure(y, predicted, labels=range(k), names=names, title="x$^$y: test")
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == names
    assert report.figure_png(figure).startswith(b"\x89PNG")
