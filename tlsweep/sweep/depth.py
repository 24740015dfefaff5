"""Transfer by depth: accuracy against relative depth across backbones, and why, by linear CKA between stages.

`depth_profiles` plots, per task (data and classes), validation (solid) and test (dashed) accuracy against
each cut's `layer_depth`, one line per model. At each cut the configuration plotted is the one with the best
mean validation accuracy (its label gives its C, under C=auto the one chosen on validation); test never
chooses.

`cka_files` reads the sweep's cached train features again (no CNN runs) and compares the stages of each
model, and the stages of every pair of models on the same images, by linear CKA on a seeded subsample of
at most `MAX_ROWS` images. Each matrix is a CSV and a heatmap.
"""

from __future__ import annotations

import ast
import itertools
import logging
import time
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tlsweep.stages.analysis import cka
from tlsweep.stages.analysis.report import figure_png
from tlsweep.stages.features.cache import FeatureCache
from tlsweep.tracking.record import RunRecord

log = logging.getLogger(__name__)

MAX_ROWS = 2000  # images CKA compares: its n x n Gram matrices cost n^2 x 8 bytes each
SEED = 0
SPLITS = (("val_mean", "-", "val"), ("test_mean", "--", "test"))  # means over seeds


def depth_profiles(rows: pd.DataFrame) -> dict[str, plt.Figure]:
    """`depth_profile-<classes>.png`: accuracy against layer_depth, one line per model, for each task with at
    least two cuts of known depth. `rows` are the sweep's selection: per task, model and cut, the
    configuration with the best mean val accuracy (`summary.selection`)."""
    figures = {}
    known = rows[rows["layer_depth"].notna()] if len(rows) else rows
    for _, task in (known.groupby("_task", sort=False) if len(known) else ()):
        if task["layer"].nunique() < 2:
            continue
        classes = task["classes"].iloc[0]
        figure, ax = plt.subplots(figsize=(7, 4.5))
        for number, (model, line) in enumerate(task.sort_values("layer_depth").groupby("model", sort=True)):
            colour = f"C{number}"
            for column, style, split in SPLITS:
                ax.plot(line["layer_depth"], line[column], style, marker="o", color=colour, label=f"{model} {split}")
            for _, point in line.iterrows():
                ax.annotate(f"C={point['C_chosen']:.2g}", (point["layer_depth"], point["val_mean"]),
                            textcoords="offset points", xytext=(3, 4), fontsize=6, color=colour)
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("layer_depth (0: input, 1: the model's last stage)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Transfer by depth, classes {classes}\nbest configuration per cut, chosen on val", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        name = f"depth_profile-{_slug(classes)}.png"
        figures[name if name not in figures else f"depth_profile-{_slug(classes)}-{len(figures)}.png"] = figure
    return figures


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(text))[:80]


def _stages(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """(model, cache folder, classes) -> one finished record per cut, in depth order."""
    found: dict[tuple, dict[str, RunRecord]] = {}
    for record in records:
        if record.status == "FINISHED" and record.cache and record.layer_index is not None:
            found.setdefault((record.model, record.cache, record.data_classes), {})[record.layer] = record
    return {key: sorted(cuts.values(), key=lambda r: r.layer_index) for key, cuts in found.items()}


def _train_parts(folder: str, layer: str, classes: list[int]) -> list[np.ndarray]:
    """A cut's cached train features, one memory-mapped array per class (checked once, as every load is)."""
    parts = FeatureCache.at(Path(folder)).load("train", layer, classes)
    if parts is None:
        raise FileNotFoundError(f"{folder} holds no train features of {layer} for classes {classes}")
    return parts


def _rows_of(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (class order) of per-class arrays, read class by class."""
    bounds = np.cumsum([0] + [len(part) for part in parts])
    return np.concatenate([np.asarray(part[rows[(rows >= lo) & (rows < hi)] - lo], dtype=np.float32)
                           for part, lo, hi in zip(parts, bounds[:-1], bounds[1:])])


def _heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> bytes:
    figure, ax = plt.subplots(figsize=(1.6 + 0.55 * len(columns), 1.4 + 0.45 * len(rows)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, j in itertools.product(range(len(rows)), range(len(columns))):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_title(title, fontsize=8)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure_png(figure)


def _matrix_files(name: str, matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> dict:
    csv = pd.DataFrame(matrix, index=list(rows), columns=list(columns)).to_csv(float_format="%.6f")
    return {f"{name}.csv": csv, f"{name}.png": _heatmap(matrix, rows, columns, title)}


def cka_files(records: Sequence[RunRecord], *, max_rows: int = MAX_ROWS, seed: int = SEED) -> dict[str, str | bytes]:
    """`cka-<model>.{csv,png}` for each model with two or more cuts, and `cka-<model>-vs-<model>.{csv,png}`
    for each pair of models whose features cover the same images; {} where the cache is gone."""
    start = time.perf_counter()
    features: dict[tuple, list[np.ndarray]] = {}
    names: dict[tuple, list[str]] = {}
    groups = _stages(records)
    for (model, folder, classes_text), cuts in groups.items():
        if len(cuts) < 2 and len(groups) < 2:  # nothing to compare
            continue
        classes = [int(c) for c in ast.literal_eval(classes_text)]
        try:
            parts = [_train_parts(folder, cut.layer, classes) for cut in cuts]
            rows = cka.subsample_rows(sum(len(part) for part in parts[0]), max_rows=max_rows, seed=seed)
            features[(model, classes_text)] = [_rows_of(cut_parts, rows) for cut_parts in parts]
        except (OSError, TypeError, ValueError) as err:  # the cache was cleared, or the sweep ran elsewhere
            log.warning("no CKA for %s: its cached features are not readable here (%s)", model, err)
            continue
        names[(model, classes_text)] = [cut.layer for cut in cuts]
    files: dict[str, str | bytes] = {}
    for (model, classes), layers in names.items():
        if len(layers) >= 2:
            matrix = cka.cka_matrix(features[(model, classes)])
            files.update(_matrix_files(f"cka-{_slug(model)}", matrix, layers, layers,
                                       f"linear CKA between the cuts of {model} ({len(features[(model, classes)][0])} "
                                       "train images)"))
    for first, second in itertools.combinations(sorted(names), 2):
        if first[1] != second[1] or len(features[first][0]) != len(features[second][0]):
            continue  # other images: CKA compares the same images only
        matrix = cka.cka_matrix(features[first], features[second])
        files.update(_matrix_files(f"cka-{_slug(first[0])}-vs-{_slug(second[0])}", matrix, names[first],
                                   names[second], f"linear CKA, {first[0]} (rows) vs {second[0]} (columns)"))
    if files:
        log.info("linear CKA of %d model(s)' cuts from the feature cache in %.1f s", len(names),
                 time.perf_counter() - start)
    return files
