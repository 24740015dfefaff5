"""The stages of one configuration, top to bottom: data, features, fit (or choose C on val and refit),
evaluate, and what the run logs of them (`JobResult`). Nothing here talks to MLflow."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Optional, Sequence

import numpy as np

from tlsweep.config import TlsweepConfig, default_cache_dir
from tlsweep.stages.analysis import report
from tlsweep.stages.backbone import model_stages
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data import datasets
from tlsweep.stages.features import cache, extraction
from tlsweep.stages.probe import classify
from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline
from tlsweep.tracking.payload import PipelineModel, ProbeModel
from tlsweep.tracking.record import JobResult


def train_and_evaluate(config: TlsweepConfig, *, sweep_layers: Sequence[str] = (),
                       dataset: Optional[datasets.Dataset] = None) -> JobResult:
    """The stages, top to bottom: data (unless given) and its split, features, fit (or choose C on val and refit),
    reports; the job's record is built from what they return."""
    start = time.perf_counter()
    cache_root = cache.ensure_writable(default_cache_dir(config.cache_dir))
    if dataset is None:
        dataset = datasets.load_dataset(name=config.data.name, path=config.data.path, image_size=config.data.image_size,
                                        test_fraction=config.data.test_fraction,
                                        skip_bad_images=config.data.skip_bad_images)
    split = datasets.split_classes(dataset, list(config.data.classes), val_fraction=config.data.val_fraction,
                                   seed=config.seed, train_per_class=config.data.train_per_class)
    input_size = dataset.train.images.shape[1] if config.data.image_size is None else config.data.image_size
    common = dict(dataset=dataset, layer=config.layer, classes=list(split.classes), backbone=config.model.name,
                  weights=config.model.weights, seed=config.seed, input_size=input_size,
                  batch_size=config.model.batch_size, cache_root=cache_root, sweep_layers=sweep_layers,
                  settings=config.features, preset=config.model.preset, path=config.model.path,
                  preprocess=config.model.preprocess)
    train = extraction.extract_features(image_set="train", **common)
    test = extraction.extract_features(image_set="test", **common)
    evaluate = functools.partial(report.classification_reports, labels=list(split.classes), names=split.class_names,
                                 title=f"{config.model.name} {config.layer}: ")
    reports, fit, search = _fit_and_evaluate(config, train=train, test=test, train_idx=split.train,
                                             val_idx=split.val, evaluate=evaluate)
    backbone = BackboneSource.of(config.model).resolved()  # as the served model finds it, from any folder
    spec = PipelineSpec(backbone=config.model.name, layer=config.layer, input_size=input_size,
                        resize="pillow" if config.data.name == "folder" else "keras",
                        features=dataclasses.asdict(config.features), labels=list(split.classes),
                        class_names=list(split.class_names), weights=backbone.weights, seed=config.seed,
                        preset=backbone.preset, path=backbone.path, preprocess=backbone.preprocess,
                        prefix_tokens=train.prefix_tokens)
    first = np.arange(min(2, len(test.y)))  # the input examples: two test images, as the data set holds them
    example_images = dataset.test.images[datasets.class_order(dataset.test, split.classes)[first]]
    stages = config.model.stages
    return JobResult.of(
        dataset=dataset, split=split, train=train, test=test, fit=fit, search=search, reports=reports,
        selected_C=search.selected_C if search else config.classifier.C,
        search_png=report.search_plot(search.Cs, search.val_accuracy, search.selected_C,
                                      title=f"{config.model.name} {config.layer}") if search else None,
        probe=ProbeModel(fit.estimator, test.take(first), spec, example_images),
        pipeline=(PipelineModel(ProbePipeline.build(spec=spec, probe=fit.estimator), example_images)
                  if config.tracking.log_pipeline else None),
        layer_depth=model_stages.depth_in(train.layers, config.layer, last_stage=stages[-1])
        if stages and stages[-1] in train.layers else None,
        total_seconds=time.perf_counter() - start,
    )


def _fit_and_evaluate(config: TlsweepConfig, *, train: extraction.Features, test: extraction.Features,
                      train_idx: np.ndarray, val_idx: np.ndarray, evaluate) -> tuple:
    """Fit with the configured C and report train, val and test; or, with C=auto, choose C on val and refit.

    Under C=auto, train and val are reported by the fit that chose C (fitted on train, so val stayed held
    out), and test by the refit, evaluated once: on train+val, or on the k-shot train rows alone under
    data.train_per_class=k, so a k-shot probe is fitted on k images per class. Returns (reports, final fit,
    search or None).
    """
    spec = config.classifier
    probe = classify.probe_for(spec, seed=config.seed)
    # gathered straight from the per-class cache files: the whole train set is never in memory twice
    held_in = {"train": (train.take(train_idx), train.y[train_idx]), "val": (train.take(val_idx), train.y[val_idx])}
    test_split = {"test": (test.X, test.y)}
    if spec.C != classify.AUTO:
        fit = classify.fit_classifier(
            estimator=classify.make_classifier(probe=probe, C=spec.C, normalize=config.features.normalize),
            X=held_in["train"][0], y=held_in["train"][1])
        return evaluate(estimator=fit.estimator, splits={**held_in, **test_split}), fit, None

    (X_train, y_train), (X_val, y_val) = held_in["train"], held_in["val"]
    search = classify.search_C(probe=probe, normalize=config.features.normalize, grid=spec.C_grid, X_train=X_train,
                               y_train=y_train, X_val=X_val, y_val=y_val)
    reports = evaluate(estimator=search.best.estimator, splits=held_in)
    del held_in, X_train, X_val  # before train+val is gathered: the peak stays one copy of the fit rows
    few_shot = config.data.train_per_class is not None
    fit_rows = train_idx if few_shot else np.sort(np.concatenate([train_idx, val_idx]))
    fit = classify.fit_classifier(
        estimator=classify.make_classifier(probe=probe, C=search.selected_C, normalize=config.features.normalize),
        X=train.take(fit_rows), y=train.y[fit_rows])
    return reports + evaluate(estimator=fit.estimator, splits=test_split), fit, search
