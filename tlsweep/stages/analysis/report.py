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
        display = ConfusionMatrixDisplay.from_predictions(
            y, predicted, labels=list(labels), display_labels=list(names), xticks_rotation=45, colorbar=False
        )
        display.ax_.set_title(f"{title}{split} (accuracy {table['accuracy']:.3f})", fontsize=9)
        display.figure_.tight_layout()
        top5 = (float(top_k_accuracy_score(y, scores, k=TOP_K, labels=classes)) if len(classes) > TOP_K else None)
        reports.append(SplitReport(split, text, table, figure_png(display.figure_),
                                   float(balanced_accuracy_score(y, predicted)), top5, np.asarray(y),
                                   np.asarray(predicted)))
    return reports


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
