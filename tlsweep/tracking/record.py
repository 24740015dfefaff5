"""The run record: every param, metric, tag and artifact a tlsweep run carries, named once.

The job builds a `JobRecord` (what was asked, and what came of it) and `JobRecord.payload` turns it into
the params, metrics, tags and files a run stores. `RunRecord.parse` reads a stored run back into a typed
record, which is all the sweep summary, compare and resume ever look at. A name changes here, on both
sides at once. The config keys a record reads back are checked against the config schema on import, so
renaming one fails at once instead of silently emptying a column of the comparison.

This module does not import mlflow: `tracking.store` moves payloads in and out of the store.
"""

from __future__ import annotations

import dataclasses
import json
import re
import traceback
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from tlsweep import identity
from tlsweep.config import TlsweepConfig
from tlsweep.redact import redact, redact_mapping
from tlsweep.stages.analysis.report import SplitReport
from tlsweep.tracking.payload import DatasetRecord, Payload, PipelineModel, ProbeModel, csv_text


class Tag:
    """Tag keys. The kind tells sweep parents, job children and compare's summary runs apart."""

    KIND = "tlsweep.kind"
    PROCESS = "tlsweep.process"  # host:pid:start-time of the process that owns a RUNNING run
    HEARTBEAT = "tlsweep.heartbeat"  # UTC time its process last said a RUNNING run is alive (tracking/heartbeat.py)
    HEARTBEAT_INTERVAL = "tlsweep.heartbeat_interval"  # seconds between its beats, as its owner declared them
    CONFIG_HASH = "tlsweep.config_hash"
    RESUMED_PREFIX = "tlsweep.resumed."  # on a parent: tlsweep.resumed.<config hash> = the reused run's id
    FAILED_PREFIX = "tlsweep.failed."  # on a parent: tlsweep.failed.<key> = a job that failed before its run opened
    SEAL_PREFIX = "tlsweep.seal."  # on a parent: tlsweep.seal.<run id> = the proof that run is the sweep's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    ERROR = "error"
    LAYER = "layer"
    MODEL = "model"
    CLASSES = "classes"  # class names, comma-separated, for people and `compare --classes`
    CLASS_NAMES = "class_names"  # the class names as a JSON list: exact, whatever characters a name holds
    DEMO = "demo"
    MACHINE = "machine"
    DATA_FINGERPRINT = "data.fingerprint"
    WEIGHTS_FINGERPRINT = "weights.fingerprint"
    SPLIT_DIGEST = "split.digest"  # the train, val (and few-shot) row indices, hashed
    FEATURES_CACHE = "features.cache"  # the feature cache folder the job read: what the parent's CKA reads again
    BEST_LAYER = "best.layer"  # on a parent: the layer whose best configuration has the best mean val accuracy
    BEST_RUN_ID = "best.run_id"  # on a parent: that configuration's run with the best val accuracy
    NOTE = "mlflow.note.content"  # the run page's description: on a parent, the command and its answer
    SWEEP_OVERRIDES = "sweep.overrides"
    SWEEP_DIR = "sweep.dir"


class Kind:
    SWEEP = "sweep"
    JOB = "job"
    SUMMARY = "summary"


class Param:
    """Params beyond the flattened config, and the config keys that records read back."""

    FEATURE_DIM = "feature_dim"  # after pooling
    N_TRAIN = "n_train"
    N_VAL = "n_val"
    N_TEST = "n_test"
    N_FIT = "n_fit"  # rows of the final fit: train, or train+val after classifier.C=auto
    SELECTED_C = "selected_C"  # the C the final fit used: classifier.C, or the one chosen on validation
    MODEL = "model.name"
    LAYER = "layer"
    C = "classifier.C"
    CLASSIFIER = "classifier.name"
    SEED = "seed"
    CLASSES = "data.classes"
    POOLING = "features.pooling"
    NORMALIZE = "features.normalize"
    TRAIN_PER_CLASS = "data.train_per_class"
    CONFIG_KEYS = (MODEL, LAYER, C, CLASSIFIER, SEED)  # every tlsweep job run has these
    SHOWN_KEYS = (MODEL, LAYER, CLASSES, CLASSIFIER, C, POOLING, NORMALIZE, TRAIN_PER_CLASS, SEED)  # own columns


class Metric:
    """Metric keys; the per-split and per-class ones are built by the functions below."""

    EXTRACTION_SECONDS = "extraction_seconds"
    CNN_FORWARD_IMAGES = "cnn_forward_images"  # images the CNN ran on in this job: 0 on a warm cache
    FIT_SECONDS = "fit_seconds"
    N_ITER = "n_iter"
    CONVERGED = "converged"
    LAYER_INDEX = "layer_index"  # the cut's position in the backbone, input first
    LAYER_DEPTH = "layer_depth"  # the cut's position over the last stage's: 0 at the input, 1 at the last stage
    TOTAL_SECONDS = "total_seconds"

    SEARCH_C = "search/C"  # one step per C tried by classifier.C=auto, ascending
    SEARCH_VAL_ACCURACY = "search/val_accuracy"  # at the same steps

    @staticmethod
    def of(split: str, *name: str) -> str:
        """`{split}_{name}`: test_accuracy, val_balanced_accuracy, train_top5_accuracy, test_macro_f1, test_recall_deer."""
        return "_".join((split, *name))

    @staticmethod
    def accuracy(split: str) -> str:
        return Metric.of(split, "accuracy")


class Artifact:
    CONFIG = "config.yaml"
    ERROR = "error.txt"
    FIT_WARNINGS = "fit_warnings.txt"
    SEARCH_PLOT = "search/val_accuracy_vs_C.png"
    SUMMARY_FOLDER = "summary"
    SELECTION = "selection.md"  # under SUMMARY_FOLDER
    SKIPPED_IMAGES = "data/skipped_images.csv"  # data.skip_bad_images=true: id, reason of each file left out
    PROBE_MODEL = "probe"  # the job's fitted probe, scikit-learn flavour (an MLflow logged model)
    PIPELINE_MODEL = "model"  # raw images -> class names, pyfunc: the parent's best, or a job's (log_pipeline)

    @staticmethod
    def predictions(split: str) -> str:
        """predictions/{split}.csv: id, true, predicted (class names), one row per image."""
        return f"predictions/{split}.csv"

    @staticmethod
    def report(split: str, suffix: str) -> str:
        """reports/{split}_classification_report.txt (as scikit-learn prints it) or .json."""
        return f"reports/{split}_classification_report.{suffix}"

    @staticmethod
    def confusion(split: str) -> str:
        return f"confusion/{split}_confusion_matrix.png"


SPLITS = ("train", "val", "test")
_NOT_IN_KEYS = re.compile(r"[^\w.\- ]+")  # MLflow keys take letters, digits, `_ - . space` (and `/ :`, not on Windows)


def class_keys(names: Sequence[str]) -> dict[str, str]:
    """Each class name's form in metric keys (`test_recall_<key>`): what MLflow does not take becomes `_`,
    and a name that would then repeat an earlier one's key gets `_2`, `_3`, ... The names themselves are
    shown as they are everywhere a person reads them."""
    keys: dict[str, str] = {}
    for name in names:
        key = _NOT_IN_KEYS.sub("_", str(name)).strip() or "_"
        candidate, number = key, 1
        while candidate in keys.values():
            number += 1
            candidate = f"{key}_{number}"
        keys[name] = candidate
    return keys

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
            Metric.LAYER_INDEX: self.layer_index,
            **({} if self.layer_depth is None else {Metric.LAYER_DEPTH: self.layer_depth}),
            Metric.TOTAL_SECONDS: self.total_seconds,
        })
        return metrics

    def accuracy(self, split: str) -> float:
        return next(float(result.table["accuracy"]) for result in self.splits if result.split == split)


@dataclass(frozen=True)
class JobRecord:
    """One job: the configuration asked for, and its result or the error that stopped it."""

    params: Mapping[str, Any]  # the flattened, resolved config
    config_yaml: str
    tags: Mapping[str, str]  # provenance and what the run is (layer, model, classes, config hash)
    result: Optional[JobResult] = None
    error: Optional[BaseException] = None

    def payload(self) -> Payload:
        params, tags = redact_mapping(self.params), {**redact_mapping(self.tags), Tag.KIND: Kind.JOB}
        metrics: dict[str, float] = {}
        series: dict[str, list[float]] = {}
        files: dict[str, Union[str, bytes]] = {Artifact.CONFIG: redact(self.config_yaml)}
        inputs: Sequence[DatasetRecord] = ()
        models: dict = {}
        if self.result is not None:
            result = self.result
            tags.update({Tag.DATA_FINGERPRINT: result.data_fingerprint,
                         Tag.WEIGHTS_FINGERPRINT: result.weights_fingerprint, Tag.SPLIT_DIGEST: result.split_digest,
                         Tag.CLASS_NAMES: json.dumps(list(result.class_names), ensure_ascii=False),
                         **({Tag.FEATURES_CACHE: result.cache_folder} if result.cache_folder else {})})
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


@dataclass(frozen=True)
class StoredRun:
    """A run as the store returns it, before it is read as a record."""

    run_id: str
    status: str
    start_time: int
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]


class RecordError(ValueError):
    """A stored job run lacks a name every tlsweep job run carries."""


@dataclass(frozen=True)
class RunRecord:
    """A job run read back: the fields of the comparison table, in its column order."""

    model: str
    layer: str
    layer_index: Optional[float]
    layer_depth: Optional[float]
    classes: str
    classifier: str
    C: str  # as asked: a number, or auto
    selected_C: Optional[float]  # the C the final fit used
    pooling: str
    normalize: str
    train_per_class: str  # None: every training image
    seed: int
    train_accuracy: Optional[float]
    val_accuracy: Optional[float]
    test_accuracy: Optional[float]
    feature_dim: Optional[str]
    converged: Optional[float]
    extraction_seconds: Optional[float]
    fit_seconds: Optional[float]
    machine: Optional[str]
    status: str
    config_hash: Optional[str]
    configuration: str  # identity.configuration_id: equal for repeats (runs that differ in their seed alone)
    error: str
    run_id: str
    test_recall: Mapping[str, float] = field(default_factory=dict, metadata={"column": False})  # per class
    cache: str = field(default="", metadata={"column": False})  # Tag.FEATURES_CACHE
    data_classes: str = field(default="", metadata={"column": False})  # the data.classes param: "[4, 5, 6]"
    # identity.configuration: the config keys that can change the result, data and weights by content
    config: Mapping[str, str] = field(default_factory=dict, metadata={"column": False})
    class_names: tuple = field(default=(), metadata={"column": False})
    # the content fingerprints it ran on, as tagged: what resume compares with the data and weights of now
    fingerprints: Mapping[str, str] = field(default_factory=dict, metadata={"column": False})

    @classmethod
    def parse(cls, run: StoredRun) -> "RunRecord":
        """Read a job run. A FINISHED run that lacks a config key every job logs is an error, never an empty
        cell; a run that failed before its params were written is read from its tags, as far as they go."""
        missing = [key for key in Param.CONFIG_KEYS if key not in run.params]
        if missing and run.status == "FINISHED":
            raise RecordError(f"run {run.run_id} is not a tlsweep job run: it has no param {missing}")
        defaults = {key: str(value) for key, value in identity.schema_defaults().items()}
        metrics, tags = run.metrics, run.tags
        params = {**defaults, Param.MODEL: tags.get(Tag.MODEL, "?"), Param.LAYER: tags.get(Tag.LAYER, "?"),
                  **run.params}
        C = params[Param.C]
        selected = params.get(Param.SELECTED_C, None if C == "auto" or missing else C)
        names = json.loads(tags[Tag.CLASS_NAMES]) if Tag.CLASS_NAMES in tags else None
        recall = {key.removeprefix(_TEST_RECALL): value for key, value in metrics.items()
                  if key.startswith(_TEST_RECALL)}
        if names is not None:  # back from the metric keys to the names as they are
            recall = {name: recall[key] for name, key in class_keys(names).items() if key in recall}
        config = identity.configuration(run.params, tags)
        return cls(
            model=params[Param.MODEL],
            layer=params[Param.LAYER],
            layer_index=metrics.get(Metric.LAYER_INDEX),
            layer_depth=metrics.get(Metric.LAYER_DEPTH),
            classes=tags.get(Tag.CLASSES, params[Param.CLASSES]),
            classifier=params[Param.CLASSIFIER],
            C=C if C == "auto" or missing else f"{float(C):g}",
            selected_C=None if selected is None else float(selected),
            pooling=params[Param.POOLING],
            normalize=params[Param.NORMALIZE],
            train_per_class=params[Param.TRAIN_PER_CLASS],
            seed=int(params[Param.SEED]),
            train_accuracy=metrics.get(Metric.accuracy("train")),
            val_accuracy=metrics.get(Metric.accuracy("val")),
            test_accuracy=metrics.get(Metric.accuracy("test")),
            feature_dim=run.params.get(Param.FEATURE_DIM),
            converged=metrics.get(Metric.CONVERGED),
            extraction_seconds=metrics.get(Metric.EXTRACTION_SECONDS),
            fit_seconds=metrics.get(Metric.FIT_SECONDS),
            machine=tags.get(Tag.MACHINE),
            status=run.status,
            config_hash=tags.get(Tag.CONFIG_HASH),
            configuration=identity.configuration_id(config),
            error=tags.get(Tag.ERROR, ""),
            run_id=run.run_id,
            test_recall=recall,
            cache=tags.get(Tag.FEATURES_CACHE, ""),
            data_classes=params[Param.CLASSES],
            config=config,
            class_names=tuple(names) if names is not None else tuple(tags.get(Tag.CLASSES, "").split(",")),
            fingerprints={key: tags[key] for key in (Tag.DATA_FINGERPRINT, Tag.WEIGHTS_FINGERPRINT) if key in tags},
        )


_TEST_RECALL = Metric.of("test", "recall", "")
COLUMNS = tuple(item.name for item in dataclasses.fields(RunRecord) if item.metadata.get("column", True))


def config_keys_missing_from(schema: type) -> list[str]:
    """The config keys records read back that the dataclass `schema` does not declare."""

    def declared(key: str) -> bool:
        node = schema
        for part in key.split("."):
            hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
            if part not in hints:
                return False
            node = hints[part]
        return True

    return [key for key in dict.fromkeys((*Param.CONFIG_KEYS, *Param.SHOWN_KEYS)) if not declared(key)]


_renamed = config_keys_missing_from(TlsweepConfig)
if _renamed:  # a config key was renamed here or in the schema alone: its comparison column would empty
    raise ImportError(f"tlsweep.tracking.record reads config keys {_renamed}, which the config schema lacks")
