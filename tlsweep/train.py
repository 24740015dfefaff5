"""The stages of one configuration, top to bottom: data and its split, features, transferability scores, fit (or
choose C on val and refit), reports; and what the run logs of them (`JobResult`, or `CutScores` for a cut that
prescreen scored and did not fit). Nothing here talks to MLflow."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from tlsweep.config import TlsweepConfig, default_cache_dir
from tlsweep.scores import MAX_ROWS, Scored, score_features
from tlsweep.stages.analysis import report
from tlsweep.stages.backbone import model_stages
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data import datasets
from tlsweep.stages.features import cache, extraction
from tlsweep.stages.probe import classify
from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline
from tlsweep.tracking.payload import PipelineModel, ProbeModel
from tlsweep.tracking.record import CutScores, JobResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cut:
    """The data and the features of one configuration's cut: what scoring and fitting start from."""

    dataset: datasets.Dataset
    split: datasets.Split
    train: extraction.Features  # every training image of the classes; split.train and split.val index it
    input_size: int

    def held_in(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The train and val rows, gathered straight from the per-class cache files (never in memory twice)."""
        rows = {"train": self.split.train, "val": self.split.val}
        return {name: (self.train.take(index), self.train.y[index]) for name, index in rows.items()}


def cut_features(config: TlsweepConfig, *, sweep_layers: Sequence[str] = (),
                 dataset: Optional[datasets.Dataset] = None) -> Cut:
    """Data (unless given) and its split, then the cut's training features: from the cache, or from one CNN pass
    that fills every layer the sweep names."""
    if dataset is None:
        dataset = datasets.load_dataset(name=config.data.name, path=config.data.path, image_size=config.data.image_size,
                                        test_fraction=config.data.test_fraction,
                                        skip_bad_images=config.data.skip_bad_images)
    split = datasets.split_classes(dataset, list(config.data.classes), val_fraction=config.data.val_fraction,
                                   seed=config.seed, train_per_class=config.data.train_per_class)
    input_size = dataset.train.images.shape[1] if config.data.image_size is None else config.data.image_size
    train = extraction.extract_features(image_set="train", **_extraction(config, dataset, split, input_size,
                                                                         sweep_layers))
    return Cut(dataset, split, train, input_size)


def _extraction(config: TlsweepConfig, dataset, split, input_size: int, sweep_layers: Sequence[str]) -> dict:
    return dict(dataset=dataset, layer=config.layer, classes=list(split.classes), backbone=config.model.name,
                weights=config.model.weights, seed=config.seed, input_size=input_size,
                batch_size=config.model.batch_size, cache_root=cache.ensure_writable(default_cache_dir(config.cache_dir)),
                sweep_layers=sweep_layers, settings=config.features, preset=config.model.preset,
                path=config.model.path, preprocess=config.model.preprocess, precision=config.model.precision)


SCORE_RECORD_VERSION = 1  # raise it when a score's definition changes, so recorded values are not reused


def score_cut(config: TlsweepConfig, names: Sequence[str], cut: Cut,
              held_in: Optional[Mapping[str, tuple]] = None) -> dict[str, Scored]:
    """The transferability scores `names`, on the features as the probe sees them (pooled, and normalised as
    configured, with statistics from the train rows): LogME and GBC on train, k-NN from train to val.

    A score depends on the features and the rows, not on the probe: one recorded in the feature cache for the
    same cut, classes, split, normalisation and seed is read back (`Scored.cached`), so a sweep over C or probes
    scores each cut once. `held_in` (`Cut.held_in`) is gathered here when a score must be computed and it is
    not given.
    """
    store = _score_store(cut) if names else None
    key = dict(version=SCORE_RECORD_VERSION, layer=config.layer, features=dataclasses.asdict(config.features),
               classes=[int(c) for c in cut.split.classes], split=cut.split.digest, data=cut.dataset.fingerprint,
               weights=cut.train.weights_id, seed=config.seed, max_rows=MAX_ROWS)
    found: dict[str, Scored] = {}
    for name in names:
        start = time.perf_counter()
        value = store.score({**key, "score": name}) if store is not None else None
        if value is not None:
            found[name] = Scored(value, time.perf_counter() - start, cached=True)
    missing = [name for name in names if name not in found]
    if missing:
        held_in = held_in or cut.held_in()
        (X, y), (X_val, y_val) = held_in["train"], held_in["val"]
        normalizer = classify.make_normalizer(config.features.normalize)
        if normalizer != "passthrough":
            X, X_val = normalizer.fit_transform(X), normalizer.transform(X_val)
        for name, scored in score_features(missing, X, y, X_val, y_val, seed=config.seed).items():
            found[name] = scored
            if store is not None:
                _record(store, {**key, "score": name}, scored.value)
    return {name: found[name] for name in names if name in found}


def _score_store(cut: Cut) -> Optional[cache.FeatureCache]:
    """The feature cache entries the cut was read from, where its scores are kept; None without one."""
    try:
        return cache.FeatureCache.at(Path(cut.train.cache_folder)) if cut.train.cache_folder else None
    except (OSError, ValueError) as err:
        log.warning("scores not read from or recorded in %s (%s)", cut.train.cache_folder, err)
        return None


def _record(store: cache.FeatureCache, key: dict, value: float) -> None:
    """Keep a score for later jobs; a cache that cannot be written costs them the recomputation, not this job."""
    try:
        store.record_score(key, value)
    except OSError as err:
        log.warning("score %s not recorded in %s (%s); later jobs compute it again", key["score"], store.folder, err)


def _depth(config: TlsweepConfig, train: extraction.Features) -> Optional[float]:
    stages = config.model.stages
    return (model_stages.depth_in(train.layers, config.layer, last_stage=stages[-1])
            if stages and stages[-1] in train.layers else None)


def score_only(config: TlsweepConfig, names: Sequence[str], *, sweep_layers: Sequence[str] = (),
               dataset: Optional[datasets.Dataset] = None) -> CutScores:
    """A cut scored without fitting a probe: what prescreen=K ranks stages by, and logs for those it leaves out."""
    cut = cut_features(config, sweep_layers=sweep_layers, dataset=dataset)
    scored = score_cut(config, names, cut)
    return CutScores.of(dataset=cut.dataset, split=cut.split, train=cut.train, scores=scored,
                        layer_depth=_depth(config, cut.train))


def train_and_evaluate(config: TlsweepConfig, *, sweep_layers: Sequence[str] = (),
                       dataset: Optional[datasets.Dataset] = None) -> JobResult:
    """The stages, top to bottom: data and its split, features, scores, fit (or choose C on val and refit),
    reports; the job's record is built from what they return."""
    start = time.perf_counter()
    cut = cut_features(config, sweep_layers=sweep_layers, dataset=dataset)
    dataset, split, train = cut.dataset, cut.split, cut.train
    test = extraction.extract_features(image_set="test", **_extraction(config, dataset, split, cut.input_size,
                                                                       sweep_layers))
    evaluate = functools.partial(report.classification_reports, labels=list(split.classes), names=split.class_names,
                                 title=f"{config.model.name} {config.layer}: ")
    reports, fit, search, scored = _fit_and_evaluate(config, cut=cut, test=test, evaluate=evaluate)
    backbone = BackboneSource.of(config.model).resolved()  # as the served model finds it, from any folder
    spec = PipelineSpec(backbone=config.model.name, layer=config.layer, input_size=cut.input_size,
                        resize="pillow" if config.data.name == "folder" else "keras",
                        features=dataclasses.asdict(config.features), labels=list(split.classes),
                        class_names=list(split.class_names), weights=backbone.weights, seed=config.seed,
                        preset=backbone.preset, path=backbone.path, preprocess=backbone.preprocess,
                        prefix_tokens=train.prefix_tokens, precision=backbone.precision)
    first = np.arange(min(2, len(test.y)))  # the input examples: two test images, as the data set holds them
    example_images = dataset.test.images[datasets.class_order(dataset.test, split.classes)[first]]
    return JobResult.of(
        dataset=dataset, split=split, train=train, test=test, fit=fit, search=search, reports=reports,
        selected_C=search.selected_C if search else config.classifier.C, scores=scored,
        search_png=report.search_plot(search.Cs, search.val_accuracy, search.selected_C,
                                      title=f"{config.model.name} {config.layer}") if search else None,
        probe=ProbeModel(fit.estimator, test.take(first), spec, example_images),
        pipeline=(PipelineModel(ProbePipeline.build(spec=spec, probe=fit.estimator), example_images)
                  if config.tracking.log_pipeline else None),
        layer_depth=_depth(config, train), total_seconds=time.perf_counter() - start,
    )


def _fit_and_evaluate(config: TlsweepConfig, *, cut: Cut, test: extraction.Features, evaluate) -> tuple:
    """Score the cut, fit with the configured C and report train, val and test; or, with C=auto, choose C on
    val and refit.

    Under C=auto, train and val are reported by the fit that chose C (fitted on train, so val stayed held
    out), and test by the refit, evaluated once: on train+val, or on the k-shot train rows alone under
    data.train_per_class=k, so a k-shot probe is fitted on k images per class. Returns (reports, final fit,
    search or None, scores).
    """
    spec = config.classifier
    probe = classify.probe_for(spec, seed=config.seed)
    held_in = cut.held_in()
    scored = score_cut(config, config.scores, cut, held_in)
    test_split = {"test": (test.X, test.y)}
    if spec.C != classify.AUTO:
        fit = classify.fit_classifier(
            estimator=classify.make_classifier(probe=probe, C=spec.C, normalize=config.features.normalize),
            X=held_in["train"][0], y=held_in["train"][1])
        return evaluate(estimator=fit.estimator, splits={**held_in, **test_split}), fit, None, scored

    (X_train, y_train), (X_val, y_val) = held_in["train"], held_in["val"]
    search = classify.search_C(probe=probe, normalize=config.features.normalize, grid=spec.C_grid, X_train=X_train,
                               y_train=y_train, X_val=X_val, y_val=y_val)
    reports = evaluate(estimator=search.best.estimator, splits=held_in)
    del held_in, X_train, X_val  # before train+val is gathered: the peak stays one copy of the fit rows
    split = cut.split
    fit_rows = split.train if config.data.train_per_class is not None else np.sort(np.concatenate([split.train,
                                                                                                   split.val]))
    fit = classify.fit_classifier(
        estimator=classify.make_classifier(probe=probe, C=search.selected_C, normalize=config.features.normalize),
        X=cut.train.take(fit_rows), y=cut.train.y[fit_rows])
    return reports + evaluate(estimator=fit.estimator, splits=test_split), fit, search, scored
