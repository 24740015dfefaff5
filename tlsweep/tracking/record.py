"""What a job writes: its result (`JobResult`), and the record (`JobRecord`) that becomes its run.

The job builds a `JobRecord` (what was asked, and what came of it) and `JobRecord.payload` turns it into
the params, metrics, tags and files a run stores, under the names `tracking.names` declares. The other side,
a stored run read back as a typed record, is `tracking.stored`.

This module does not import mlflow: `tracking.store` moves payloads in and out of the store.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from tlsweep.redact import redact, redact_mapping
from tlsweep.stages.analysis.report import SplitReport
from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Tag, class_keys
from tlsweep.tracking.payload import DatasetRecord, Payload, PipelineModel, ProbeModel, csv_text

if TYPE_CHECKING:  # the stages' result objects a record is built from
    from tlsweep.scores import Scored
    from tlsweep.stages.data.datasets import Dataset, Split
    from tlsweep.stages.features.extraction import Features
    from tlsweep.stages.probe.classify import FitResult, SearchResult


_AVERAGES = {"macro avg": "macro", "weighted avg": "weighted"}
_STATS = {"precision": "precision", "recall": "recall", "f1-score": "f1"}

@dataclass(frozen=True)
class JobResult:
    """What the stages produced for one configuration."""

    splits: Sequence[SplitReport]
    class_names: Sequence[str]
    feature_dim: int
    n_train: int
    n_val: int
    n_test: int
    layer_index: int
    data_fingerprint: str
    weights_fingerprint: str
    extraction_seconds: float
    cnn_forward_images: int
    fit_seconds: float
    n_iter: int
    converged: bool
    fit_warnings: Sequence[str]
    total_seconds: float
    n_fit: int
    selected_C: float
    split_digest: str
    search_Cs: Sequence[float] = ()  # classifier.C=auto: every C tried, ascending
    search_val_accuracy: Sequence[float] = ()
    search_png: Optional[bytes] = None
    labels: Sequence[int] = ()  # the data set's class indices, in the order of class_names
    split_ids: Mapping[str, Sequence[str]] = field(default_factory=dict)  # split -> image ids, in report row order
    skipped: Sequence[tuple] = ()  # (id, reason) of image files left out under data.skip_bad_images=true
    datasets: Sequence[DatasetRecord] = ()
    probe: Optional[ProbeModel] = None
    pipeline: Optional[PipelineModel] = None  # tracking.log_pipeline=true
    layer_depth: Optional[float] = None  # None for a model config that names no stages
    cache_folder: str = ""
    scores: Mapping[str, "Scored"] = field(default_factory=dict)  # transferability scores, by name (config.scores)

    @classmethod
    def of(cls, *, dataset: "Dataset", split: "Split", train: "Features", test: "Features", fit: "FitResult",
           search: Optional["SearchResult"], reports: Sequence[SplitReport], selected_C: float,
           search_png: Optional[bytes] = None, probe: Optional[ProbeModel] = None,
           pipeline: Optional[PipelineModel] = None, layer_depth: Optional[float] = None,
           total_seconds: float = 0.0, scores: Mapping[str, "Scored"] = {}) -> "JobResult":
        """The record of a job, from the result objects its stages returned: the data set and its split, the
        train and test features, the final fit (and the C search), the per-split reports."""
        from tlsweep.stages.data.datasets import source_type

        names = list(split.class_names)
        counts = {"train": len(split.train), "val": len(split.val), "test": len(test.y)}
        return cls(
            splits=reports, class_names=names, feature_dim=train.dim, n_train=counts["train"], n_val=counts["val"],
            n_test=counts["test"], layer_index=train.layer_index, data_fingerprint=dataset.fingerprint,
            weights_fingerprint=train.weights_id, extraction_seconds=train.extraction_seconds + test.extraction_seconds,
            cnn_forward_images=train.cnn_images + test.cnn_images,
            fit_seconds=fit.fit_seconds + (search.search_seconds if search else 0.0), n_iter=fit.n_iter,
            converged=fit.converged, fit_warnings=(search.best.warnings if search else []) + fit.warnings,
            total_seconds=total_seconds, n_fit=fit.n_fit, selected_C=float(selected_C), split_digest=split.digest,
            search_Cs=search.Cs if search else (), search_val_accuracy=search.val_accuracy if search else (),
            search_png=search_png, labels=list(split.classes),
            split_ids={"train": [train.ids[row] for row in split.train], "val": [train.ids[row] for row in split.val],
                       "test": list(test.ids)},
            skipped=tuple(dataset.skipped),
            datasets=[DatasetRecord(name=f"{dataset.name} {name}", digest=dataset.fingerprint, source=dataset.source,
                                    source_type=source_type(dataset.source), context=name,
                                    profile={"images": count, "classes": names}) for name, count in counts.items()],
            probe=probe, pipeline=pipeline, cache_folder=train.cache_folder, layer_depth=layer_depth,
            scores=dict(scores),
        )

    @property
    def work_seconds(self) -> float:
        """What the job is for: extraction, fits (the C search's included) and transferability scores."""
        return self.extraction_seconds + self.fit_seconds + sum(scored.seconds for scored in self.scores.values())

    def predictions_csv(self, split: SplitReport) -> str:
        names = dict(zip(self.labels, self.class_names))
        ids = self.split_ids.get(split.split) or [""] * len(split.y_true)
        return csv_text(("id", "true", "predicted"), ((image_id, names[int(true)], names[int(predicted)])
                                                      for image_id, true, predicted in zip(ids, split.y_true,
                                                                                           split.y_pred)))

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for result in self.splits:
            table, split = result.table, result.split
            metrics[Metric.accuracy(split)] = float(table["accuracy"])
            metrics[Metric.of(split, "balanced_accuracy")] = result.balanced_accuracy
            if result.top5_accuracy is not None:
                metrics[Metric.of(split, "top5_accuracy")] = result.top5_accuracy
            for average, short in _AVERAGES.items():
                for stat, name in _STATS.items():
                    metrics[Metric.of(split, short, name)] = float(table[average][stat])
            for class_name, key in class_keys(self.class_names).items():
                for stat, name in _STATS.items():
                    metrics[Metric.of(split, name, key)] = float(table[class_name][stat])
        metrics.update({
            Metric.EXTRACTION_SECONDS: self.extraction_seconds,
            Metric.CNN_FORWARD_IMAGES: self.cnn_forward_images,
            Metric.FIT_SECONDS: self.fit_seconds,
            Metric.N_ITER: self.n_iter,
            Metric.CONVERGED: float(self.converged),
            Metric.TOTAL_SECONDS: self.total_seconds,
        })
        return {**metrics, **_cut_metrics(self)}

    def accuracy(self, split: str) -> float:
        return next(float(result.table["accuracy"]) for result in self.splits if result.split == split)


@dataclass(frozen=True)
class CutScores:
    """A cut scored and not fitted (prescreen=K left it out): what its run logs, without a probe or test images."""

    class_names: Sequence[str]
    feature_dim: int
    n_train: int
    n_val: int
    layer_index: int
    data_fingerprint: str
    weights_fingerprint: str
    split_digest: str
    extraction_seconds: float
    cnn_forward_images: int
    scores: Mapping[str, "Scored"]
    layer_depth: Optional[float] = None
    cache_folder: str = ""

    @classmethod
    def of(cls, *, dataset: "Dataset", split: "Split", train: "Features", scores: Mapping[str, "Scored"],
           layer_depth: Optional[float]) -> "CutScores":
        return cls(class_names=list(split.class_names), feature_dim=train.dim, n_train=len(split.train),
                   n_val=len(split.val), layer_index=train.layer_index, data_fingerprint=dataset.fingerprint,
                   weights_fingerprint=train.weights_id, split_digest=split.digest,
                   extraction_seconds=train.extraction_seconds, cnn_forward_images=train.cnn_images,
                   scores=dict(scores), layer_depth=layer_depth, cache_folder=train.cache_folder)


def _cut_metrics(cut: Union[JobResult, CutScores]) -> dict[str, float]:
    """What a fitted and a scored-only cut both log: where the cut is, and its scores with their cost."""
    from tlsweep.scores import SCORES

    metrics = {Metric.LAYER_INDEX: cut.layer_index,
               **({} if cut.layer_depth is None else {Metric.LAYER_DEPTH: cut.layer_depth})}
    for name, scored in cut.scores.items():
        metrics[Metric.score(SCORES[name].metric)] = scored.value
        metrics[Metric.score_seconds(name)] = scored.seconds
    return metrics


def _cut_tags(cut: Union[JobResult, CutScores]) -> dict[str, str]:
    cached = [name for name, scored in cut.scores.items() if scored.cached]
    return {Tag.DATA_FINGERPRINT: cut.data_fingerprint, Tag.WEIGHTS_FINGERPRINT: cut.weights_fingerprint,
            Tag.SPLIT_DIGEST: cut.split_digest, Tag.CLASS_NAMES: json.dumps(list(cut.class_names), ensure_ascii=False),
            **({Tag.FEATURES_CACHE: cut.cache_folder} if cut.cache_folder else {}),
            **({Tag.SCORES_CACHED: ",".join(cached)} if cached else {})}


@dataclass(frozen=True)
class JobRecord:
    """One job: the configuration asked for, and its result or the error that stopped it."""

    params: Mapping[str, Any]  # the flattened, resolved config
    config_yaml: str
    tags: Mapping[str, str]  # provenance and what the run is (layer, model, classes, config hash)
    result: Optional[Union[JobResult, CutScores]] = None
    error: Optional[BaseException] = None

    def payload(self) -> Payload:
        params, tags = redact_mapping(self.params), {**redact_mapping(self.tags), Tag.KIND: Kind.JOB}
        metrics: dict[str, float] = {}
        series: dict[str, list[float]] = {}
        files: dict[str, Union[str, bytes]] = {Artifact.CONFIG: redact(self.config_yaml)}
        inputs: Sequence[DatasetRecord] = ()
        models: dict = {}
        if isinstance(self.result, CutScores):  # scored, not fitted: no probe, no accuracy
            result = self.result
            tags.update({**_cut_tags(result), Tag.PRESCREEN: Tag.PRESCREEN_SKIPPED})
            params.update({Param.FEATURE_DIM: result.feature_dim, Param.N_TRAIN: result.n_train,
                           Param.N_VAL: result.n_val})
            metrics = {Metric.EXTRACTION_SECONDS: result.extraction_seconds,
                       Metric.CNN_FORWARD_IMAGES: result.cnn_forward_images, **_cut_metrics(result)}
        elif self.result is not None:
            result = self.result
            tags.update(_cut_tags(result))
            params.update({Param.FEATURE_DIM: result.feature_dim, Param.N_TRAIN: result.n_train,
                           Param.N_VAL: result.n_val, Param.N_TEST: result.n_test, Param.N_FIT: result.n_fit,
                           Param.SELECTED_C: result.selected_C})
            metrics = result.metrics()
            if result.search_Cs:
                series = {Metric.SEARCH_C: list(result.search_Cs),
                          Metric.SEARCH_VAL_ACCURACY: list(result.search_val_accuracy)}
            if result.search_png is not None:
                files[Artifact.SEARCH_PLOT] = result.search_png
            for split in result.splits:
                if len(split.y_true) and result.labels:
                    files[Artifact.predictions(split.split)] = result.predictions_csv(split)
                files[Artifact.report(split.split, "txt")] = split.text
                files[Artifact.report(split.split, "json")] = json.dumps(split.table, indent=2, ensure_ascii=False)
                files[Artifact.confusion(split.split)] = split.confusion_png
            if result.fit_warnings:
                files[Artifact.FIT_WARNINGS] = "\n".join(result.fit_warnings) + "\n"
            if result.skipped:
                files[Artifact.SKIPPED_IMAGES] = csv_text(("id", "reason"), result.skipped)
            inputs = result.datasets
            models = {name: model for name, model in ((Artifact.PROBE_MODEL, result.probe),
                                                      (Artifact.PIPELINE_MODEL, result.pipeline)) if model}
        if self.error is not None:
            tags[Tag.ERROR] = error_line(self.error)
            files[Artifact.ERROR] = redact("".join(traceback.format_exception(self.error)))
        return Payload(params=params, metrics=metrics, series=series, tags=tags, files=files, inputs=inputs,
                       models=models)


def error_line(error: BaseException) -> str:
    """The error as one line, secrets masked: what a run's `error` tag and the console say."""
    text = f"{type(error).__name__}: {error}".strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)[:5000]
