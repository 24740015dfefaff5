"""The sweep view: a comparison table of runs and the accuracy-against-layer and -against-C plots."""

from __future__ import annotations

import re
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

SPLIT_COLUMNS = ("train_accuracy", "val_accuracy", "test_accuracy")
GROUP = ["model", "classes", "C"]


def comparison_table(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per run: what was varied, where it ran, and the accuracy on each split."""
    rows = []
    for run in runs:
        params, metrics, tags = run["params"], run["metrics"], run["tags"]
        rows.append(
            {
                "model": params.get("model.name"),
                "layer": params.get("layer"),
                "layer_index": metrics.get("layer_index"),
                "classes": tags.get("classes", params.get("data.classes")),
                "C": float(params["classifier.C"]) if "classifier.C" in params else None,
                **{column: metrics.get(column) for column in SPLIT_COLUMNS},
                "feature_dim": params.get("feature_dim"),
                "converged": metrics.get("converged"),
                "extraction_seconds": metrics.get("extraction_seconds"),
                "fit_seconds": metrics.get("fit_seconds"),
                "machine": tags.get("machine"),
                "status": run["status"],
                "config_hash": tags.get("tlsweep.config_hash"),
                "error": tags.get("error", ""),
                "run_id": run["run_id"],
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["model", "classes", "C", "layer_index", "layer", "machine"], na_position="last")


def accuracy_by_layer(table: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """The seed report's view: one row per split, one column per cut, per (model, classes, C)."""
    views = {}
    done = table[table["status"] == "FINISHED"].dropna(subset=list(SPLIT_COLUMNS))
    for key, group in done.groupby(GROUP, sort=False):
        group = group.sort_values("layer_index")
        view = group.groupby("layer", sort=False)[list(SPLIT_COLUMNS)].mean().T
        view.index = [column.split("_")[0] + " accuracy" for column in SPLIT_COLUMNS]
        views[key] = view
    return views


def to_markdown(table: pd.DataFrame) -> str:
    """The per-split accuracy views, then every run in full."""
    parts = []
    for (model, classes, C), view in accuracy_by_layer(table).items():
        parts.append(f"## {model}, classes {classes}, C={C:g}\n\n{view.to_markdown(floatfmt='.3f')}\n")
    parts.append(f"## All runs\n\n{table.to_markdown(index=False, floatfmt='.4g')}\n")
    return "\n".join(parts)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(part) for part in parts)).strip("_")


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.figure.tight_layout()


def accuracy_vs_layer(table: pd.DataFrame) -> dict[str, plt.Figure]:
    """Train, val and test accuracy against the cut layer (the seed's Figures 13-15), per model, classes and C."""
    figures = {}
    done = table[table["status"] == "FINISHED"].dropna(subset=list(SPLIT_COLUMNS))
    for (model, classes, C), group in done.groupby(GROUP, sort=False):
        group = group.groupby(["layer", "layer_index"], as_index=False, dropna=False)[list(SPLIT_COLUMNS)].mean()
        group = group.sort_values("layer_index")
        fig, ax = plt.subplots(figsize=(6, 4))
        for column, marker in zip(SPLIT_COLUMNS, "osd"):
            ax.plot(group["layer"], group[column], marker=marker, label=column.split("_")[0])
        _label(ax, "cut layer (input → output)", "accuracy", f"{model}, classes {classes}, C={C:g}")
        figures[f"accuracy_vs_layer-{_slug(model, classes, f'C{C:g}')}.png"] = fig
    return figures


def val_accuracy_vs_C(table: pd.DataFrame) -> dict[str, plt.Figure]:
    """Validation accuracy against C for each layer, when the sweep varied C."""
    figures = {}
    done = table[table["status"] == "FINISHED"].dropna(subset=["val_accuracy"])
    for (model, classes), group in done.groupby(["model", "classes"], sort=False):
        if group["C"].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for layer, by_layer in group.sort_values("layer_index").groupby("layer", sort=False):
            points = by_layer.groupby("C")["val_accuracy"].mean()
            ax.plot(points.index, points.values, marker="o", label=layer)
        ax.set_xscale("log")
        _label(ax, "C", "val accuracy", f"{model}, classes {classes}")
        figures[f"val_accuracy_vs_C-{_slug(model, classes)}.png"] = fig
    return figures
