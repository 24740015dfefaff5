"""A stored job run read back as a typed record (`RunRecord.parse`): all that the sweep summary, compare and
resume ever look at. It reads the names `tracking.names` declares, which `tracking.record` writes. The config
keys a record reads back are checked against the config schema on import, so renaming one fails at once
instead of silently emptying a column of the comparison. No mlflow here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Mapping, Optional

from tlsweep import identity
from tlsweep.config import TlsweepConfig
from tlsweep.tracking.names import Metric, Param, Status, Tag, class_keys


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
    # transferability scores by metric (score/<metric> without its prefix), and whether prescreen left it out
    scores: Mapping[str, float] = field(default_factory=dict, metadata={"column": False})
    prescreen: str = field(default="", metadata={"column": False})
    # the content fingerprints it ran on, as tagged: what resume compares with the data and weights of now
    fingerprints: Mapping[str, str] = field(default_factory=dict, metadata={"column": False})

    @classmethod
    def parse(cls, run: StoredRun) -> "RunRecord":
        """Read a job run. A FINISHED run that lacks a config key every job logs is an error, never an empty
        cell; a run that failed before its params were written is read from its tags, as far as they go."""
        missing = [key for key in Param.CONFIG_KEYS if key not in run.params]
        if missing and run.status == Status.FINISHED:
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
            scores={key.removeprefix(Metric.SCORE_PREFIX): value for key, value in metrics.items()
                    if key.startswith(Metric.SCORE_PREFIX)},
            prescreen=tags.get(Tag.PRESCREEN, ""),
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
