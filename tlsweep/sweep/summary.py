"""The sweep view: the comparison of its job runs, the configuration chosen on validation, and the plots.

`summary_files` builds it once, as `{path: text or PNG bytes}`; MLflow (`Store.write`) and a folder
(`payload.write_files`) are two sinks of the same mapping.

A configuration is everything a run was asked for except its seed; runs that differ only in seed are
repeats, shown as mean and standard deviation. Every choice (the best configuration of a layer, the best
layer) is made on mean validation accuracy. Test accuracy is reported beside it and never chooses.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from tlsweep.stages.report import figure_png
from tlsweep.sweep import depth
from tlsweep.tracking.record import COLUMNS, RunRecord

SPLIT_COLUMNS = ("train_accuracy", "val_accuracy", "test_accuracy")
PROTOCOL = ["classifier", "C", "pooling", "normalize", "train_per_class"]
GROUP = ["model", "classes", *PROTOCOL]  # one accuracy-by-layer view per group
DEFAULT_PROTOCOL = {"classifier": "linear_svc", "pooling": "flatten", "normalize": "none", "train_per_class": "None"}
SELECTION = "selection.md"


def comparison_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: what was varied, where it ran, and the accuracy on each split."""
    table = pd.DataFrame([dataclasses.asdict(record) for record in records], columns=list(COLUMNS))
    if table.empty:
        return table
    table = table.astype({"layer_index": "Int64", "converged": "Int64", "seed": "Int64"})  # counts, not floats
    return table.sort_values(["model", "classes", *PROTOCOL, "layer_index", "layer", "seed", "machine"],
                             na_position="last")


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "FINISHED"].dropna(subset=list(SPLIT_COLUMNS))


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and layer: repeats over seeds as mean and standard deviation."""
    done = _finished(table)
    if done.empty:
        return pd.DataFrame()
    keys = [*GROUP, "layer"]
    grouped = done.groupby(keys, sort=False, dropna=False)
    view = grouped.agg(layer_index=("layer_index", "min"), seeds=("seed", "nunique"),
                       train_mean=("train_accuracy", "mean"), val_mean=("val_accuracy", "mean"), val_std=("val_accuracy", "std"),
                       test_mean=("test_accuracy", "mean"), test_std=("test_accuracy", "std"))
    best_runs = done.loc[done.groupby(keys, sort=False, dropna=False)["val_accuracy"].idxmax(), [*keys, "run_id"]]
    view = view.reset_index().merge(best_runs, on=keys, how="left")
    return view.fillna({"val_std": 0.0, "test_std": 0.0})


def selection(table: pd.DataFrame) -> tuple[pd.DataFrame, Optional[pd.Series]]:
    """Per (model, classes) and layer, the configuration with the best mean val accuracy; and the best of all.

    Ties go to the configuration listed first (smaller layer index, then the sweep's order).
    """
    view = configurations(table)
    if view.empty:
        return view, None
    view = view.sort_values(["model", "classes", "layer_index"], kind="stable")
    rows = view.loc[view.groupby(["model", "classes", "layer"], sort=False)["val_mean"].idxmax()]
    rows = rows.sort_values(["model", "classes", "layer_index"], kind="stable").reset_index(drop=True)
    best_per_task = rows.groupby(["model", "classes"], sort=False)["val_mean"].transform("max")
    rows["best_layer"] = rows["val_mean"] == best_per_task
    best = rows.loc[rows["val_mean"].idxmax()]
    return rows, best


def selection_markdown(rows: pd.DataFrame, best: Optional[pd.Series]) -> str:
    if best is None:
        return "No finished runs: nothing was chosen.\n"
    shown = rows.assign(
        val=[_mean_std(m, s, n) for m, s, n in zip(rows["val_mean"], rows["val_std"], rows["seeds"])],
        test=[_mean_std(m, s, n) for m, s, n in zip(rows["test_mean"], rows["test_std"], rows["seeds"])],
        best=["**best**" if flag else "" for flag in rows["best_layer"]],
    )[["model", "classes", "layer", *PROTOCOL, "seeds", "val", "test", "best", "run_id"]]
    return (
        "# The sweep's answer, chosen on validation\n\n"
        "For each layer, the configuration with the best mean validation accuracy over seeds; its test accuracy\n"
        "is reported, never used to choose. The best layer of each model and class subset is marked.\n\n"
        f"Best: **{best['model']} {best['layer']}** ({_protocol(best)}), val {best['val_mean']:.4f}, "
        f"test {best['test_mean']:.4f}, run {best['run_id']}\n\n"
        f"{shown.to_markdown(index=False)}\n"
    )


def terminal_table(table: pd.DataFrame) -> str:
    """The sweep's answer for the terminal: one row per configuration, the best on validation marked."""
    view = configurations(table)
    if view.empty:
        return "no finished runs"
    best = view["val_mean"].idxmax()
    varied = [key for key in ("model", *PROTOCOL) if view[key].nunique() > 1]
    shown = pd.DataFrame({
        " ": ["*" if index == best else "" for index in view.index],
        **{key: view[key] for key in varied},
        "layer": view["layer"], "classes": view["classes"], "C": view["C"],
        "train": view["train_mean"], "val": view["val_mean"], "test": view["test_mean"],
        **({"seeds": view["seeds"]} if view["seeds"].max() > 1 else {}),
    })
    return (shown.to_markdown(index=False, floatfmt=".3f")
            + "\n* best mean val accuracy (test accuracy is reported, never used to choose)")


def parent_metrics(rows: pd.DataFrame, best: Optional[pd.Series]) -> dict[str, float]:
    """The answer as the parent run's own metrics, so the collapsed runs table and the charts show it."""
    if best is None:
        return {}
    metrics = {"best_val_accuracy": float(best["val_mean"]), "best_test_accuracy": float(best["test_mean"])}
    several = rows[["model", "classes"]].drop_duplicates().shape[0] > 1
    for _, row in rows.iterrows():
        name = _metric_name(f"{row['model']}/{row['classes']}/{row['layer']}" if several else row["layer"])
        metrics[f"val_accuracy/{name}"] = float(row["val_mean"])
        metrics[f"test_accuracy/{name}"] = float(row["test_mean"])
    return metrics


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. :/]+", "_", text)


def _mean_std(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _protocol(row) -> str:
    return ", ".join(f"{key}={row[key]}" for key in PROTOCOL)


def summary_files(table: pd.DataFrame, records: Sequence[RunRecord] = ()) -> dict[str, str | bytes]:
    """The comparison as files: the tables as CSV and markdown, the selection, the plots as PNG, and the
    linear CKA between the sweep's cuts (read from the feature cache)."""
    if table.empty:
        return {}
    figures = {**accuracy_vs_layer(table), **val_accuracy_vs_C(table), **class_recall_vs_layer(table, records),
               **depth.depth_profiles(table, PROTOCOL)}
    return {
        "comparison.csv": table.to_csv(index=False),
        "comparison.md": to_markdown(table),
        SELECTION: selection_markdown(*selection(table)),
        **{name: figure_png(figure) for name, figure in figures.items()},
        **depth.cka_files(records),
    }


def accuracy_by_layer(table: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """The original study's table: one row per split, one column per cut, per model, classes and protocol."""
    views = {}
    for key, group in _finished(table).groupby(GROUP, sort=False, dropna=False):
        group = group.sort_values("layer_index")
        view = group.groupby("layer", sort=False)[list(SPLIT_COLUMNS)].mean().T
        view.index = [column.split("_")[0] + " accuracy" for column in SPLIT_COLUMNS]
        views[key] = view
    return views


def _title(key: tuple) -> str:
    """`vgg16, classes deer,dog, C=0.1`, plus every protocol setting that is not the original study's."""
    values = dict(zip(GROUP, key))
    extra = [f"{name}={values[name]}" for name, default in DEFAULT_PROTOCOL.items() if str(values[name]) != default]
    return ", ".join([values["model"], f"classes {values['classes']}", f"C={values['C']}", *extra])


def _slug_of(key: tuple) -> str:
    values = dict(zip(GROUP, key))
    extra = [str(values[name]) for name, default in DEFAULT_PROTOCOL.items() if str(values[name]) != default]
    return _slug(values["model"], values["classes"], f"C{values['C']}", *extra)


def to_markdown(table: pd.DataFrame) -> str:
    """The per-split accuracy views (means over seeds), then every run in full."""
    parts = [f"## {_title(key)}\n\n{view.to_markdown(floatfmt='.3f')}\n"
             for key, view in accuracy_by_layer(table).items()]
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
    """Train, val and test accuracy against the cut layer (the original study's Figures 13-15), per group."""
    figures = {}
    for key, group in _finished(table).groupby(GROUP, sort=False, dropna=False):
        group = group.groupby(["layer", "layer_index"], as_index=False, dropna=False)[list(SPLIT_COLUMNS)].mean()
        group = group.sort_values("layer_index")
        fig, ax = plt.subplots(figsize=(6, 4))
        for column, marker in zip(SPLIT_COLUMNS, "osd"):
            ax.plot(group["layer"], group[column], marker=marker, label=column.split("_")[0])
        _label(ax, "cut layer (input → output)", "accuracy", _title(key))
        figures[f"accuracy_vs_layer-{_slug_of(key)}.png"] = fig
    return figures


def class_recall_vs_layer(table: pd.DataFrame, records: Sequence[RunRecord]) -> dict[str, plt.Figure]:
    """Test recall of each class at each layer, per group: which classes gain from a deeper or shallower cut."""
    recall = {record.run_id: record.test_recall for record in records}
    figures = {}
    for key, group in _finished(table).groupby(GROUP, sort=False, dropna=False):
        rows = [{"layer": row.layer, "layer_index": row.layer_index, **recall.get(row.run_id, {})}
                for row in group.itertuples()]
        frame = pd.DataFrame(rows).groupby(["layer_index", "layer"], dropna=False).mean().droplevel(0)
        if frame.shape[0] < 2 or frame.shape[1] == 0:
            continue
        fig, ax = plt.subplots(figsize=(1.2 * frame.shape[0] + 3, 0.35 * frame.shape[1] + 1.8))
        image = ax.imshow(frame.T.values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(frame.shape[0]), frame.index, rotation=30, ha="right")
        ax.set_yticks(range(frame.shape[1]), frame.columns)
        for (i, j), value in pd.DataFrame(frame.T.values).stack().items():
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
        fig.colorbar(image, ax=ax, label="test recall")
        ax.set_xlabel("cut layer (input → output)")
        ax.set_title(f"test recall per class: {_title(key)}", fontsize=9)
        fig.tight_layout()
        figures[f"class_recall_vs_layer-{_slug_of(key)}.png"] = fig
    return figures


def val_accuracy_vs_C(table: pd.DataFrame) -> dict[str, plt.Figure]:
    """Validation accuracy against C for each layer, when the sweep varied a numeric C."""
    figures = {}
    done = _finished(table).assign(C=lambda frame: pd.to_numeric(frame["C"], errors="coerce")).dropna(subset=["C"])
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
