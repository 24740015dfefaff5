"""The sweep's plots, from its comparison table: accuracy against the cut, per-class recall against the cut,
and validation accuracy against C. Each curve is one configuration less the key on its x axis, so a plot
never averages runs that differ in anything but their seed."""

from __future__ import annotations

import math
import re
import textwrap
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # runs on headless machines; figures are only ever saved
import matplotlib.pyplot as plt
import pandas as pd

from tlsweep import identity
from tlsweep.stages.data import datasets
from tlsweep.tracking.names import SPLITS, Artifact, Metric, Param
from tlsweep.tracking.stored import RunRecord

ACCURACIES = tuple(Metric.accuracy(split) for split in SPLITS)  # the comparison table's accuracy columns
CONFIG = "_config"  # the comparison table's hidden column: each run's configuration, as (key, value) pairs
# the per-class recall heatmap gives each class a row this tall (inches), up to a figure this tall; beyond,
# recall is colour alone and every few classes are named
RECALL_ROW, RECALL_MAX_HEIGHT = 0.35, 40.0
# protocol settings a title names when they are not the schema's default
PROTOCOL = {"classifier": Param.CLASSIFIER, "pooling": Param.POOLING, "normalize": Param.NORMALIZE,
            "train_per_class": Param.TRAIN_PER_CLASS}


def C_text(C: str, chosen: float) -> str:
    """C as a table shows it: the number, or `auto: <the C chosen on validation>`."""
    return f"auto: {chosen:.3g}" if C == "auto" and pd.notna(chosen) else str(C)


def group_ids(table: pd.DataFrame, *leave_out: str) -> pd.Series:
    """Per row, the id of its configuration less the keys `leave_out`: rows with equal ids differ only there."""
    return table[CONFIG].map(lambda config: config_id(config, *leave_out))


def config_id(config, *leave_out: str) -> str:
    return identity.configuration_id({key: value for key, value in dict(config).items() if key not in leave_out})


def _settings(row: pd.Series, keys: Sequence[str]) -> list[tuple[str, str]]:
    """(name, value) of what sets a curve apart: a protocol setting off its default, and every varied key."""
    defaults = identity.schema_defaults()
    found = [(name, str(row[name])) for name, key in PROTOCOL.items() if str(row[name]) != str(defaults[key])]
    found += [(key, str(row[key])) for key in keys if key not in PROTOCOL and key not in ("model", "layer")]
    return [("C", str(row["C"]))] + found  # a curve's cuts may each choose their own C under auto


def title(row: pd.Series, keys: Sequence[str] = ()) -> str:
    """`vgg16, classes deer,dog, C=0.1`, plus each setting that sets this curve apart."""
    return ", ".join([row["model"], f"classes {datasets.brief_classes(row['classes'])}",
                      *(f"{k}={v}" for k, v in _settings(row, keys))])


def slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(part) for part in parts)).strip("_")[:150]


def _slug_of(row: pd.Series, keys: Sequence[str]) -> str:
    return slug(row["model"], _classes_slug(row["classes"]),
                *(f"C{v}" if k == "C" else v for k, v in _settings(row, keys)))


def _classes_slug(classes: str) -> str:
    return datasets.brief_classes(classes, ellipsis="...")


def _curves(table: pd.DataFrame, *along: str):
    """(first row, rows) per curve: the runs whose configurations differ only in the keys `along`."""
    for _, rows in table.groupby(group_ids(table, *along), sort=False):
        yield rows.iloc[0], rows


def _unique(name: str, figures: dict, row: pd.Series) -> str:
    """`name`, or with the curve's id when another curve's settings read the same."""
    if name not in figures:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}-{config_id(row[CONFIG])[:6]}.{suffix}"


def _label(ax, xlabel: str, ylabel: str, title_text: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title_text, fontsize=9, parse_math=False)  # names as they are: a "$" is not mathtext
    ax.grid(alpha=0.3)
    ax.legend()
    ax.figure.tight_layout()


def accuracy_vs_layer(done: pd.DataFrame, keys: Sequence[str] = ()) -> dict[str, plt.Figure]:
    """Train, val and test accuracy against the cut layer (the original study's Figures 13-15), per curve."""
    figures = {}
    for first, rows in _curves(done, Param.LAYER):
        means = rows.groupby(["layer", "layer_index"], as_index=False, dropna=False)[list(ACCURACIES)].mean()
        means = means.sort_values("layer_index")
        fig, ax = plt.subplots(figsize=(6, 4))
        for column, marker in zip(ACCURACIES, "osd"):
            ax.plot(means["layer"], means[column], marker=marker, label=column.split("_")[0])
        _label(ax, "cut layer (input → output)", "accuracy", title(first, keys))
        figures[_unique(Artifact.figure(Artifact.ACCURACY_VS_LAYER, _slug_of(first, keys)), figures, first)] = fig
    return figures


def class_recall_vs_layer(done: pd.DataFrame, records: Sequence[RunRecord], keys: Sequence[str] = ()
                          ) -> dict[str, plt.Figure]:
    """Test recall of each class at each layer, per curve: which classes gain from a deeper or shallower cut."""
    recall = {record.run_id: record.test_recall for record in records}
    figures = {}
    for first, rows in _curves(done, Param.LAYER):
        per_run = [{"layer": row.layer, "layer_index": row.layer_index, **recall.get(row.run_id, {})}
                   for row in rows.itertuples()]
        frame = pd.DataFrame(per_run).groupby(["layer_index", "layer"], dropna=False).mean().droplevel(0)
        if frame.shape[0] < 2 or frame.shape[1] == 0:
            continue
        classes, margin = frame.shape[1], 1.8  # inches of the figure outside the class rows
        width, height = 1.2 * frame.shape[0] + 3, classes * RECALL_ROW + margin
        rows_fit = height <= RECALL_MAX_HEIGHT  # each class a row of its own, its values written
        fig, ax = plt.subplots(figsize=(width, min(height, RECALL_MAX_HEIGHT)))
        image = ax.imshow(frame.T.values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(frame.shape[0]), frame.index, rotation=30, ha="right")
        named = range(0, classes, 1 if rows_fit else math.ceil(classes * RECALL_ROW / (RECALL_MAX_HEIGHT - margin)))
        ax.set_yticks(named, [frame.columns[i] for i in named], parse_math=False)
        for (i, j), value in pd.DataFrame(frame.T.values).stack().items() if rows_fit else ():
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
        fig.colorbar(image, ax=ax, label="test recall")
        ax.set_xlabel("cut layer (input → output)")
        # about 13 characters of a 9-point title to an inch
        ax.set_title(textwrap.fill(f"test recall per class: {title(first, keys)}", int(13 * width)), fontsize=9,
                     parse_math=False)
        fig.tight_layout()
        figures[_unique(Artifact.figure(Artifact.CLASS_RECALL_VS_LAYER, _slug_of(first, keys)), figures, first)] = fig
    return figures


def val_accuracy_vs_C(done: pd.DataFrame) -> dict[str, plt.Figure]:
    """Validation accuracy against C, one line per layer, per curve whose sweep varied a numeric C."""
    figures = {}
    numeric = done.assign(C_value=pd.to_numeric(done["C"], errors="coerce")).dropna(subset=["C_value"])
    for first, rows in _curves(numeric, Param.LAYER, Param.C):
        if rows["C_value"].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for layer, by_layer in rows.sort_values("layer_index").groupby("layer", sort=False):
            points = by_layer.groupby("C_value")[Metric.accuracy("val")].mean()
            ax.plot(points.index, points.values, marker="o", label=layer)
        ax.set_xscale("log")
        _label(ax, "C", "val accuracy", f"{first['model']}, classes {datasets.brief_classes(first['classes'])}")
        name = Artifact.figure(Artifact.VAL_ACCURACY_VS_C, slug(first["model"], _classes_slug(first["classes"])))
        figures[_unique(name, figures, first)] = fig
    return figures
