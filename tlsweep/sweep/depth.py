"""Transfer by depth: accuracy against relative depth across backbones, and why, by linear CKA between stages.

`depth_profiles` plots, per task (data and classes), validation (solid) and test (dashed) accuracy against
each cut's `layer_depth`, one line per model. At each cut the configuration plotted is the one with the best
mean validation accuracy (its label gives its C, under C=auto the one chosen on validation); test never
chooses.

`layer_similarity` has the feature cache read the sweep's train features again (no CNN runs) and compares
every cut of every model on the same images, by debiased linear CKA (`tlsweep.stages.analysis.cka`) on a
seeded subsample of at most `MAX_ROWS` images (fewer when many cuts' Gram matrices would pass
`GRAM_BUDGET`), one matrix per task, ordered by model and depth: n cuts make one n x n matrix, not a file per
pair of models. `similarity_files` renders it as a CSV and a heatmap.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tlsweep.stages.analysis import cka
from tlsweep.stages.analysis.report import figure_png
from tlsweep.stages.data import datasets
from tlsweep.stages.features.cache import FeatureCache
from tlsweep.tracking.names import Artifact, Status
from tlsweep.tracking.stored import RunRecord

log = logging.getLogger(__name__)

MAX_ROWS = 2000  # images CKA compares: its n x n Gram matrices cost n^2 x 8 bytes each
GRAM_BUDGET = 2 << 30  # bytes for all the cuts' Gram matrices at once: many cuts compare fewer images
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
        ax.set_title(f"Transfer by depth, classes {datasets.brief_classes(classes)}\nbest configuration per cut, "
                     "chosen on val", fontsize=9, parse_math=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        name = Artifact.figure(Artifact.DEPTH_PROFILE, _slug(classes))
        if name in figures:  # another task whose classes read the same
            name = Artifact.figure(Artifact.DEPTH_PROFILE, f"{_slug(classes)}-{len(figures)}")
        figures[name] = figure
    return figures


def _slug(classes: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in datasets.brief_classes(classes, ellipsis="..."))


@dataclass(frozen=True)
class Similarity:
    """Linear CKA between every cut of one task's runs (the same train images), ordered by model and depth."""

    classes: str  # the task's class names, as runs show them
    labels: tuple[str, ...]  # `model/layer`, one per row and column
    matrix: np.ndarray
    images: int  # the train images compared
    debiased: bool


def _task_cuts(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """(data fingerprint, data.classes) -> one finished record per (model, cut), by model, then depth."""
    found: dict[tuple, dict[tuple, RunRecord]] = {}
    for record in records:
        if record.status == Status.FINISHED and record.cache and record.layer_index is not None:
            task = (record.fingerprints.get("data.fingerprint", ""), record.data_classes)
            found.setdefault(task, {})[(record.model, record.layer)] = record
    return {task: sorted(cuts.values(), key=lambda r: (r.model, r.layer_index)) for task, cuts in found.items()}


def max_rows_for(cuts: int, *, max_rows: int = MAX_ROWS) -> int:
    """Images compared: at most `max_rows`, fewer when the cuts' n x n Gram matrices would pass GRAM_BUDGET."""
    return max(4, min(max_rows, int(math.sqrt(GRAM_BUDGET / (8 * max(cuts, 1))))))


def layer_similarity(records: Sequence[RunRecord], *, debiased: bool = True, max_rows: int = MAX_ROWS,
                     seed: int = SEED) -> list[Similarity]:
    """Linear CKA between the cuts of the sweep's runs, per task, from the feature cache (no CNN runs); a task
    whose cached features are not readable here (cleared, or cached on another machine) is left out."""
    start = time.perf_counter()
    found = []
    for (_, classes_text), cuts in _task_cuts(records).items():
        if len(cuts) < 2:
            continue
        classes = json.loads(classes_text)
        try:
            caches = [FeatureCache.at(Path(cut.cache)) for cut in cuts]
            rows = cka.subsample_rows(caches[0].count("train", cuts[0].layer, classes),
                                      max_rows=max_rows_for(len(cuts), max_rows=max_rows), seed=seed)
            matrix = cka.cka_matrix_of([lambda store=store, cut=cut: store.rows("train", cut.layer, classes, rows)
                                        for store, cut in zip(caches, cuts)], debiased=debiased)
        except (OSError, TypeError, ValueError) as err:  # the cache was cleared, or the sweep ran elsewhere
            log.warning("no CKA for classes %s: its cached features are not readable here (%s)", cuts[0].classes, err)
            continue
        found.append(Similarity(cuts[0].classes, tuple(f"{cut.model}/{cut.layer}" for cut in cuts), matrix,
                                len(rows), debiased))
    if found:
        log.info("linear CKA between %d cuts from the feature cache in %.1f s", sum(len(s.labels) for s in found),
                 time.perf_counter() - start)
    return found


def _heatmap(similarity: Similarity) -> bytes:
    labels, matrix = similarity.labels, similarity.matrix
    figure, ax = plt.subplots(figsize=(2.2 + 0.5 * len(labels), 1.8 + 0.42 * len(labels)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, j in itertools.product(range(len(labels)), repeat=2):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if matrix[i, j] < 0.6 else "black")
    kind = "debiased linear CKA" if similarity.debiased else "linear CKA (biased)"
    ax.set_title(f"{kind} between cuts, classes {datasets.brief_classes(similarity.classes)}\n"
                 f"({similarity.images} train images; by model, input to output)", fontsize=8, parse_math=False)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure_png(figure)


def similarity_files(similarities: Sequence[Similarity]) -> dict[str, str | bytes]:
    """`cka.{csv,png}`: one matrix over every (model, cut) of the sweep, ordered by model and depth; with
    several tasks, `cka-<classes>.{csv,png}` for each."""
    files: dict[str, str | bytes] = {}
    for number, similarity in enumerate(similarities, start=1):
        name = Artifact.CKA if len(similarities) == 1 else f"{Artifact.CKA}-{_slug(similarity.classes)}"
        name = name if f"{name}.csv" not in files else f"{name}-{number}"  # tasks whose classes read the same
        labels = list(similarity.labels)
        files[f"{name}.csv"] = pd.DataFrame(similarity.matrix, index=labels, columns=labels).to_csv(
            float_format="%.6f")
        files[f"{name}.png"] = _heatmap(similarity)
    return files
