"""Per-split evaluation with scikit-learn: reports, confusion matrices and flat metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # runs on headless machines; figures are only ever saved
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, classification_report

SPLITS = ("train", "val", "test")


@dataclass
class SplitReport:
    split: str
    text: str  # classification_report as scikit-learn prints it
    table: dict  # the same report, output_dict=True
    confusion: plt.Figure


def classification_reports(
    *, estimator, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[int], names: Sequence[str]
) -> list[SplitReport]:
    """Predict each split once; report precision/recall/F1 and draw its confusion matrix."""
    reports = []
    for split, (X, y) in splits.items():
        predicted = estimator.predict(X)
        kwargs = dict(labels=list(labels), target_names=list(names), zero_division=0)
        text = classification_report(y, predicted, **kwargs)
        table = classification_report(y, predicted, output_dict=True, **kwargs)
        display = ConfusionMatrixDisplay.from_predictions(
            y, predicted, labels=list(labels), display_labels=list(names), xticks_rotation=45, colorbar=False
        )
        display.ax_.set_title(f"{split} (accuracy {table['accuracy']:.3f})")
        display.figure_.tight_layout()
        reports.append(SplitReport(split, text, table, display.figure_))
    return reports


def report_metrics(reports: Sequence[SplitReport], names: Sequence[str]) -> dict[str, float]:
    """Flat MLflow metrics: `<split>_accuracy`, macro/weighted and per-class precision, recall, F1."""
    metrics: dict[str, float] = {}
    for report in reports:
        table, split = report.table, report.split
        metrics[f"{split}_accuracy"] = float(table["accuracy"])
        for average in ("macro avg", "weighted avg"):
            prefix = average.split()[0]
            for stat in ("precision", "recall", "f1-score"):
                metrics[f"{split}_{prefix}_{stat.replace('-score', '')}"] = float(table[average][stat])
        for name in names:
            for stat in ("precision", "recall", "f1-score"):
                metrics[f"{split}_{stat.replace('-score', '')}_{name}"] = float(table[name][stat])
    return metrics
