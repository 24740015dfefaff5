"""The sweep view: the comparison of its job runs, the configuration chosen on validation, and the plots.

`summary_files` builds it once, as `{path: text or PNG bytes}`; MLflow (`Store.write`) and a folder
(`payload.write_files`) are two sinks of the same mapping.

A row stands for one configuration (`identity.configuration`: every setting that can change a result, data
and weights by content). Runs that differ in their seed alone are repeats of it, shown as mean and standard
deviation; runs that differ in anything else are other rows, and each setting that varies gets its own
column. Every choice (the best configuration of a layer, the best layer) is made on mean validation
accuracy; ties go to the smaller C, then to the cheaper cut (fewer features, then nearer the input). Test
accuracy is reported beside it and never chooses. Runs that did not finish are listed apart.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import pandas as pd

from tlsweep import identity
from tlsweep.stages.analysis.report import figure_png
from tlsweep.stages.data import datasets
from tlsweep.sweep import depth, figures, scoring
from tlsweep.tracking.names import SPLITS, Artifact, Metric, Param, Status
from tlsweep.tracking.stored import COLUMNS, RunRecord

# the comparison table's columns are the run record's fields, named as the metrics and params they hold
TRAIN, VAL, TEST = SPLIT_COLUMNS = tuple(Metric.accuracy(split) for split in SPLITS)
# config keys with a column of their own in every table (RunRecord's fields); any other key gets a column,
# named by the key, when its value varies
SHOWN = {Param.MODEL: "model", Param.LAYER: "layer", Param.CLASSES: "classes", Param.CLASSIFIER: "classifier",
         Param.C: "C", Param.POOLING: "pooling", Param.NORMALIZE: "normalize",
         Param.TRAIN_PER_CLASS: "train_per_class"}
# hidden columns: the configuration's keys and values; its task (data and classes); it less its layer
CONFIG, TASK, CURVE = figures.CONFIG, "_task", "_curve"
# the keys that make the task: which images (by content where known) and which classes
TASK_KEYS = (identity.DATA_FINGERPRINT, "data.name", identity.DATA_PATH, Param.CLASSES, "data.test_fraction",
             "data.skip_bad_images")
TIES = "Ties go to the smaller C, then to the cheaper cut (fewer features, then nearer the input)."


def comparison_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: what was asked (a column for every setting that varies), where it ran, and the
    accuracy on each split."""
    rows = []
    for record in records:
        row = {name: getattr(record, name) for name in COLUMNS}
        row.update({key: value for key, value in record.config.items() if key not in SHOWN})
        row.update({Metric.score(metric): value for metric, value in record.scores.items()})
        row[scoring.PRESCREEN] = record.prescreen
        row[CONFIG] = tuple(sorted(record.config.items()))
        row[TASK] = figures.config_id(record.config, *(key for key in record.config if key not in TASK_KEYS))
        row[CURVE] = figures.config_id(record.config, Param.LAYER)
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else list(COLUMNS))
    if table.empty:
        return table
    done = table[table["status"] == Status.FINISHED]
    extra = [key for key in table.columns if key not in COLUMNS and not key.startswith(("_", Metric.SCORE_PREFIX))]
    constant = [key for key in extra if done[key].astype(str).nunique(dropna=False) <= 1]
    table = table.drop(columns=constant)
    table = table.astype({"layer_index": "Int64", "converged": "Int64", "seed": "Int64"})  # counts, not floats
    return table.sort_values(["model", "classes", "classifier", "C", "pooling", "normalize", "train_per_class",
                              "layer_index", "layer", "seed", "machine"], na_position="last")


def varied(table: pd.DataFrame) -> list[str]:
    """The columns of settings that take more than one value among the finished runs, model first."""
    done = finished(table)
    keys = ["model", "classifier", "pooling", "normalize", "train_per_class",
            *(key for key in table.columns if key not in COLUMNS and not key.startswith(("_", Metric.SCORE_PREFIX)))]
    return [key for key in keys if done[key].astype(str).nunique(dropna=False) > 1]


def varied_params(table: pd.DataFrame) -> list[str]:
    """The params of the settings that take more than one value among the finished runs, model first, as the
    runs are logged (`layer`, `classifier.C`, `data.classes`, ...); data and weights known by content by their
    paths."""
    done = finished(table)
    if done.empty:
        return []
    own = [column for column in ("layer", "classes", "C", "seed") if done[column].astype(str).nunique(dropna=False) > 1]
    columns = sorted([*own, *varied(table)], key=lambda column: column != "model")
    params = {**{column: key for key, column in SHOWN.items()}, "seed": Param.SEED,
              identity.DATA_FINGERPRINT: identity.DATA_PATH, identity.WEIGHTS_FINGERPRINT: identity.WEIGHTS}
    return list(dict.fromkeys(params.get(column, column) for column in columns))


def finished(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    return table[table["status"] == Status.FINISHED].dropna(subset=list(SPLIT_COLUMNS))


def failed(table: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not finish, with their error: listed apart, never compared."""
    if table.empty:
        return table
    rest = table[~table.index.isin(finished(table).index) & ~table.index.isin(scoring.skipped(table).index)]
    return rest[["run_id", "status", "model", "layer", "classes", "C", "seed", "machine", "error"]]


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: its repeats over seeds as mean and standard deviation, and its best run."""
    done = finished(table)
    if done.empty:
        return pd.DataFrame()
    grouped = done.groupby("configuration", sort=False)
    view = grouped.agg(layer_index=("layer_index", "min"), seeds=("seed", "nunique"),
                       train_mean=(TRAIN, "mean"), val_mean=(VAL, "mean"), val_std=(VAL, "std"),
                       test_mean=(TEST, "mean"), test_std=(TEST, "std"), C_chosen=(Param.SELECTED_C, "median"),
                       **{column: (column, "mean") for column in scoring.score_columns(done)})
    shown = [column for column in done.columns
             if column not in view.columns and column not in SPLIT_COLUMNS and column != "configuration"]
    first = done.loc[grouped[VAL].idxmax()].set_index("configuration")[shown]
    view = view.join(first).reset_index()
    view["features"] = pd.to_numeric(view["feature_dim"], errors="coerce")
    return view.fillna({"val_std": 0.0, "test_std": 0.0})


def _ranked(view: pd.DataFrame) -> pd.DataFrame:
    """Best first: mean val accuracy, then the smaller C, then the cheaper cut."""
    return view.sort_values(["val_mean", "C_chosen", "features", "layer_index"],
                            ascending=[False, True, True, True], kind="stable", na_position="last")


def selection(table: pd.DataFrame) -> tuple[pd.DataFrame, Optional[pd.Series]]:
    """Per task (data and classes), model and layer, the configuration with the best mean val accuracy; the
    best layer of each task and model marked; and the best of all. Exactly one best at each level."""
    view = configurations(table)
    if view.empty:
        return view, None
    ranked = _ranked(view)
    rows = ranked.drop_duplicates([TASK, "model", "layer"]).copy()
    best_layers = _ranked(rows).drop_duplicates([TASK, "model"]).index
    rows["best_layer"] = rows.index.isin(best_layers)
    best = _ranked(rows).iloc[0]
    rows = rows.sort_values(["model", "classes", "layer_index"], kind="stable").reset_index(drop=True)
    return rows, best


def _mean_std(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _settings(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join([f"C={figures.C_text(row['C'], row['C_chosen'])}", *(f"{key}={row[key]}" for key in keys)])


def selection_markdown(rows: pd.DataFrame, best: Optional[pd.Series], keys: Sequence[str] = ()) -> str:
    if best is None:
        return "No finished runs: nothing was chosen.\n"
    keys = [key for key in keys if key in rows.columns]
    shown = pd.DataFrame({
        "model": rows["model"], "classes": rows["classes"], "layer": rows["layer"],
        "C": [figures.C_text(C, chosen) for C, chosen in zip(rows["C"], rows["C_chosen"])],
        **{key: rows[key] for key in keys if key != "model"},
        "seeds": rows["seeds"],
        "val": [_mean_std(m, s, n) for m, s, n in zip(rows["val_mean"], rows["val_std"], rows["seeds"])],
        "test": [_mean_std(m, s, n) for m, s, n in zip(rows["test_mean"], rows["test_std"], rows["seeds"])],
        "best": ["**best**" if flag else "" for flag in rows["best_layer"]], "run_id": rows["run_id"],
    })
    return (
        "# The sweep's answer, chosen on validation\n\n"
        "For each layer, the configuration with the best mean validation accuracy over seeds; its test accuracy\n"
        "is reported, never used to choose. The best layer of each model and task (data and classes) is marked.\n"
        f"{TIES}\n\n"
        f"Best: **{best['model']} {best['layer']}** ({_settings(best, [k for k in keys if k != 'model'])}), "
        f"val {best['val_mean']:.4f}, test {best['test_mean']:.4f}, run {best['run_id']}\n\n"
        f"{shown.to_markdown(index=False)}\n"
    )


def terminal_table(table: pd.DataFrame) -> str:
    """The sweep's answer for the terminal: one row per configuration, a column per setting that varies, the
    best on validation marked."""
    view = configurations(table)
    if view.empty:
        return "no finished runs"
    best = _ranked(view).index[0]
    shown = pd.DataFrame({
        " ": ["*" if index == best else "" for index in view.index],
        **{key: view[key] for key in varied(table)},
        "layer": view["layer"], "classes": view["classes"].map(datasets.brief_classes),
        "C": [figures.C_text(C, chosen) for C, chosen in zip(view["C"], view["C_chosen"])],
        "train": view["train_mean"], "val": view["val_mean"], "test": view["test_mean"],
        **{column.removeprefix(Metric.SCORE_PREFIX): view[column] for column in scoring.score_columns(view)},
        **({"seeds": view["seeds"]} if view["seeds"].max() > 1 else {}),
    })
    return (shown.to_markdown(index=False, floatfmt=".3f")
            + f"\n* best mean val accuracy (test accuracy is reported, never used to choose). {TIES}")


def parent_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The answer as the parent run's own metrics, so the collapsed runs table and the charts show it; how
    well each score ranked the children, and what prescreen saved."""
    done = finished(table)
    rows, best = selection(done)
    extra = {**scoring.rank_metrics(done), **scoring.prescreen_metrics(table, done)} if len(table) else {}
    if best is None:
        return extra
    metrics = {**extra, Metric.BEST_VAL_ACCURACY: float(best["val_mean"]), Metric.BEST_TEST_ACCURACY: float(best["test_mean"])}
    several = rows[["model", TASK]].drop_duplicates().shape[0] > 1
    tasks: dict[str, list] = {}  # the tasks whose names read the same (a long class list shortened, the same
    for _, row in rows.iterrows():  # classes on other data): the second and later get " task 2", ...
        classes = datasets.brief_classes(row["classes"], ellipsis="...")
        name = _metric_name(f"{row['model']}/{classes}/{row['layer']}" if several else row["layer"])
        same = tasks.setdefault(name, [])
        same += [row[TASK]] if row[TASK] not in same else []
        name += f" task {same.index(row[TASK]) + 1}" if same.index(row[TASK]) else ""
        metrics[Metric.per_layer("val", name)] = float(row["val_mean"])
        metrics[Metric.per_layer("test", name)] = float(row["test_mean"])
    return metrics


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w\-. :/]+", "_", text)


def public(table: pd.DataFrame) -> pd.DataFrame:
    """The table as files show it: without the hidden grouping columns."""
    return table[[column for column in table.columns if not str(column).startswith("_")]]


def summary_files(table: pd.DataFrame, records: Sequence[RunRecord] = (),
                  similarities: Sequence[depth.Similarity] = ()) -> dict[str, str | bytes]:
    """The comparison as files: the finished runs as CSV and markdown, the failed ones apart, the selection,
    the plots as PNG, and the linear CKA between the sweep's cuts (`depth.layer_similarity`, computed where
    the features are)."""
    if table.empty:
        return {}
    done, rest, keys = finished(table), failed(table), varied(table)
    files: dict[str, str | bytes] = {Artifact.FAILED: rest.to_csv(index=False)} if len(rest) else {}
    if done.empty:
        return {**files, Artifact.SELECTION: selection_markdown(pd.DataFrame(), None)}
    rows, best = selection(done)
    figures_made = {**figures.accuracy_vs_layer(done, keys), **figures.val_accuracy_vs_C(done),
                    **figures.class_recall_vs_layer(done, records, keys), **depth.depth_profiles(rows)}
    scores_figure = scoring.scores_figure(done)
    if scores_figure is not None:
        figures_made[Artifact.SCORES_FIGURE] = scores_figure
    scores_csv = scoring.scores_csv(table, keys)
    return {
        **files,
        **({Artifact.SCORES_CSV: scores_csv} if scores_csv else {}),
        Artifact.COMPARISON_CSV: public(done).to_csv(index=False),
        Artifact.COMPARISON_MD: to_markdown(done, rest, keys),
        Artifact.SELECTION: selection_markdown(rows, best, keys),
        **{name: figure_png(figure) for name, figure in figures_made.items()},
        **depth.similarity_files(similarities),
    }


def accuracy_by_layer(table: pd.DataFrame, keys: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """The original study's table: one row per split, one column per cut, per curve (the configuration less
    its layer), by title."""
    views = {}
    for _, group in finished(table).groupby(CURVE, sort=False):
        group = group.sort_values("layer_index")
        view = group.groupby("layer", sort=False)[list(SPLIT_COLUMNS)].mean().T
        view.index = [column.split("_")[0] + " accuracy" for column in SPLIT_COLUMNS]
        views[figures.title(group.iloc[0], keys)] = view
    return views


def to_markdown(done: pd.DataFrame, rest: pd.DataFrame, keys: Sequence[str] = ()) -> str:
    """The per-split accuracy views (means over seeds), every finished run in full, then the failed ones."""
    parts = [f"## {title}\n\n{view.to_markdown(floatfmt='.3f')}\n" for title, view in accuracy_by_layer(done, keys).items()]
    parts.append(f"## All runs\n\n{public(done).to_markdown(index=False, floatfmt='.4g')}\n")
    if len(rest):
        parts.append(f"## Runs that did not finish (not compared)\n\n{rest.to_markdown(index=False)}\n")
    return "\n".join(parts)

