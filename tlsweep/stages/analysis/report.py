"""Per-split evaluation with scikit-learn: the classification report and the confusion matrix of each split."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # runs on headless machines; figures are only ever saved
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from sklearn.metrics import ConfusionMatrixDisplay, balanced_accuracy_score, classification_report, top_k_accuracy_score

TOP_K = 5  # top-5 accuracy is reported when there are more classes than this
# A confusion matrix writes each cell's count up to VALUES_UP_TO classes, as many as the default figure holds
# legibly; the text is most of its drawing (100 classes: 10,000 counts, 11 s a split, unreadable). Beyond, the
# figure's side grows with the classes (inches), up to MAX_SIDE, with at most MAX_LABELS class names on each axis.
VALUES_UP_TO = 10
SIDE, PER_CLASS, MAX_SIDE = 5.0, 0.1, 20.0
MAX_LABELS, LABEL_POINTS = 140, 6


@dataclass(frozen=True)
class SplitReport:
    split: str
    text: str  # classification_report as scikit-learn prints it
    table: dict  # the same report, output_dict=True
    confusion_png: bytes
    balanced_accuracy: float  # mean per-class recall
    top5_accuracy: Optional[float]  # None with TOP_K classes or fewer
    y_true: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # labels, row order
    y_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)


def figure_png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed, so a long sweep never accumulates open figures.

    `tight_layout` leaves matplotlib's placeholder layout engine on a figure, and `savefig` then draws a figure
    with any engine twice, once to lay it out; one already laid out drops it first, so it is drawn once, to
    the same bytes.
    """
    buffer = io.BytesIO()
    if isinstance(figure.get_layout_engine(), PlaceHolderLayoutEngine):
        figure.set_layout_engine(None)
    try:
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def classification_reports(
    *, estimator, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[int], names: Sequence[str],
    title: str = "",
) -> list[SplitReport]:
    """Score each split once; report precision/recall/F1, balanced and top-5 accuracy, and the confusion matrix."""
    reports = []
    for split, (X, y) in splits.items():
        scores = estimator.decision_function(X)
        classes = estimator.classes_
        predicted = classes[scores.argmax(axis=1)] if scores.ndim == 2 else classes[(scores > 0).astype(int)]
        kwargs = dict(labels=list(labels), target_names=list(names), zero_division=0)
        text = classification_report(y, predicted, **kwargs)
        table = classification_report(y, predicted, output_dict=True, **kwargs)
        figure = confusion_figure(y, predicted, labels=labels, names=names,
                                  title=f"{title}{split} (accuracy {table['accuracy']:.3f})")
        top5 = (float(top_k_accuracy_score(y, scores, k=TOP_K, labels=classes)) if len(classes) > TOP_K else None)
        reports.append(SplitReport(split, text, table, figure_png(figure),
                                   float(balanced_accuracy_score(y, predicted)), top5, np.asarray(y),
                                   np.asarray(predicted)))
    return reports


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, *, labels: Sequence[int], names: Sequence[str],
                     title: str) -> plt.Figure:
    """The split's ConfusionMatrixDisplay, laid out. Up to VALUES_UP_TO classes each cell's count is written on
    the default figure. Beyond, each row is coloured as a fraction of its true class (the diagonal is each
    class's recall) against a colorbar, the counts staying in predictions/<split>.csv (every image's true and
    predicted class), and the figure grows with the classes so each keeps a readable row; past MAX_LABELS
    classes only every step-th is named. Class names are drawn as they are ("$" is not mathtext)."""
    k = len(labels)
    write_counts = k <= VALUES_UP_TO
    figure, ax = plt.subplots(figsize=None if write_counts else (min(MAX_SIDE, SIDE + PER_CLASS * k),) * 2)
    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(labels), display_labels=list(names), ax=ax, include_values=write_counts,
        colorbar=not write_counts, xticks_rotation=45 if write_counts else 90,
        **({} if write_counts else {"normalize": "true", "im_kw": {"vmin": 0, "vmax": 1}}),
    )
    step = 1 if k <= MAX_LABELS else -(-k // MAX_LABELS)
    for axis in (ax.xaxis, ax.yaxis):
        ticks = list(range(0, k, step))
        axis.set_ticks(ticks, [names[i] for i in ticks], parse_math=False,
                       **({} if write_counts else {"fontsize": LABEL_POINTS}))
    if not write_counts:
        display.im_.colorbar.set_label("fraction of the true class")
    ax.set_title(title, fontsize=9, parse_math=False)
    figure.tight_layout()
    return figure


def search_plot(Cs: Sequence[float], val_accuracy: Sequence[float], selected_C: float, *, title: str) -> bytes:
    """Validation accuracy against every C the search tried, on a log axis, the chosen C marked."""
    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot(Cs, val_accuracy, marker="o", label="val accuracy")
    ax.axvline(selected_C, color="tab:red", linestyle="--", label=f"chosen C={selected_C:g}")
    ax.set_xscale("log")
    ax.set_xlabel("C")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{title}: C chosen on validation", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return figure_png(figure)
