"""The sweep's transferability scores, beside the probes they predict: how well each score ranked the children
on this data (Kendall's tau and scipy's weighted tau against val accuracy), `scores.csv`, a figure of score
against val accuracy, and what prescreen=K saved. Read from the comparison table alone.
"""

from __future__ import annotations

import math
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from scipy import stats

from tlsweep.scores import SCORES
from tlsweep.tracking.names import Metric, Status, Tag

PRESCREEN = "_prescreen"  # the comparison table's hidden column: the run's Tag.PRESCREEN
VAL, TEST = Metric.accuracy("val"), Metric.accuracy("test")
_NAMES = {score.metric: name for name, score in SCORES.items()}  # score/<metric> -> its config name


def score_columns(table: pd.DataFrame) -> list[str]:
    """The `score/<metric>` columns of the table, in the registry's order."""
    return [Metric.score(score.metric) for score in SCORES.values() if Metric.score(score.metric) in table.columns]


def skipped(table: pd.DataFrame) -> pd.DataFrame:
    """The runs prescreen=K scored and left without a probe."""
    if table.empty or PRESCREEN not in table.columns:
        return table.iloc[0:0]
    return table[(table["status"] == Status.FINISHED) & (table[PRESCREEN] == Tag.PRESCREEN_SKIPPED)]


def scores_csv(table: pd.DataFrame, keys: list[str]) -> Optional[str]:
    """One row per child: what it was, every score, val and test accuracy (none for a cut prescreen skipped),
    and its status; None when no child logged a score."""
    columns = score_columns(table)
    if not columns:
        return None
    shown = table[table["status"] == Status.FINISHED].copy()
    shown["status"] = [Tag.PRESCREEN_SKIPPED if value == Tag.PRESCREEN_SKIPPED else "fitted"
                       for value in shown.get(PRESCREEN, [""] * len(shown))]
    order = ["model", "layer", "classes", "C", *(key for key in keys if key != "model"), "seed", *columns, VAL,
             TEST, "status", "run_id"]
    return shown[[column for column in dict.fromkeys(order) if column in shown.columns]].to_csv(index=False)


def rank_metrics(done: pd.DataFrame) -> dict[str, float]:
    """For each score: Kendall's tau and scipy's weighted tau between it and val accuracy over the fitted
    children, in [-1, 1] (1: the score orders them as their probes do)."""
    metrics = {}
    for column in score_columns(done):
        pairs = done[[column, VAL]].dropna()
        if len(pairs) < 2 or pairs[column].nunique() < 2 or pairs[VAL].nunique() < 2:
            continue  # no order to compare
        name = _NAMES[column.removeprefix(Metric.SCORE_PREFIX)]
        kendall = stats.kendalltau(pairs[column], pairs[VAL]).statistic
        weighted = stats.weightedtau(pairs[column], pairs[VAL]).statistic
        for kind, value in zip(Metric.RANK_KINDS, (kendall, weighted)):
            if math.isfinite(value):
                metrics[Metric.rank(name, kind)] = float(value)
    return metrics


def prescreen_metrics(table: pd.DataFrame, done: pd.DataFrame) -> dict[str, float]:
    """The fits prescreen=K skipped, and the seconds that saved: each skipped cut at the mean fit time of the
    same model's cuts that were fitted."""
    left_out = skipped(table)
    if left_out.empty:
        return {}
    mean_fit = done.groupby("model")["fit_seconds"].mean()
    saved = sum(float(mean_fit.get(model, 0.0)) * count for model, count in left_out["model"].value_counts().items())
    return {Metric.PRESCREEN_SKIPPED_FITS: float(len(left_out)), Metric.PRESCREEN_SAVED_SECONDS: saved}


def scores_figure(done: pd.DataFrame) -> Optional[plt.Figure]:
    """Each score against val accuracy, one point per fitted child, one colour per model; None without scores."""
    columns = score_columns(done)
    if not columns or done.empty:
        return None
    figure, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for number, (model, rows) in enumerate(done.groupby("model", sort=True)):
            ax.scatter(rows[column], rows[VAL], color=f"C{number}", label=model, s=22)
        tau = rank_metrics(done).get(Metric.rank(_NAMES[column.removeprefix(Metric.SCORE_PREFIX)], "kendall_tau"))
        ax.set_xlabel(column)
        ax.set_ylabel("val accuracy")
        ax.set_title(column + ("" if tau is None else f" (Kendall's tau {tau:.2f})"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return figure
