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
from tlsweep.stages.backbone import model_stages, models
from tlsweep.stages.data import datasets
from tlsweep.stages.features import cache, extraction
from tlsweep.stages.probe import classify
from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline
from tlsweep.tracking.payload import DatasetRecord, PipelineModel, ProbeModel
from tlsweep.tracking.record import JobResult


def train_and_evaluate(config: TlsweepConfig, *, sweep_layers: Sequence[str] = (),
                       dataset: Optional[datasets.Dataset] = None) -> JobResult:
    """The stages, top to bottom: data (unless given), features, fit (or choose C on val and refit), evaluate."""
    start = time.perf_counter()
    cache_root = cache.ensure_writable(default_cache_dir(config.cache_dir))
    if dataset is None:
        dataset = datasets.load_dataset(name=config.data.name, path=config.data.path, image_size=config.data.image_size,
                                    test_fraction=config.data.test_fraction,
                                    skip_bad_images=config.data.skip_bad_images)
    classes = list(config.data.classes)
    names = [dataset.class_names[c] for c in classes]
    # split on the labels alone, so a bad val_fraction or train_per_class fails before the CNN runs
    labels = datasets.subset_labels(dataset.train, classes)
    train_idx, val_idx = datasets.split_train_val(labels, val_fraction=config.data.val_fraction, seed=config.seed)
    if config.data.train_per_class is not None:
        train_idx = datasets.few_shot(train_idx, labels, per_class=config.data.train_per_class, seed=config.seed)
    input_size = dataset.train.images.shape[1] if config.data.image_size is None else config.data.image_size
    common = dict(dataset=dataset, layer=config.layer, classes=classes, backbone=config.model.name,
                  weights=config.model.weights, seed=config.seed, input_size=input_size,
                  batch_size=config.model.batch_size, cache_root=cache_root, sweep_layers=sweep_layers,
                  settings=config.features)
    train = extraction.extract_features(image_set="train", **common)
    test = extraction.extract_features(image_set="test", **common)

    evaluate = functools.partial(report.classification_reports, labels=classes, names=names,
                                 title=f"{config.model.name} {config.layer}: ")
    reports, fit, search = _fit_and_evaluate(config, train=train, test=test, train_idx=train_idx, val_idx=val_idx,
                                             evaluate=evaluate)
    spec = PipelineSpec(backbone=config.model.name, layer=config.layer, input_size=input_size,
                        resize="pillow" if config.data.name == "folder" else "keras",
                        features=dataclasses.asdict(config.features), labels=classes, class_names=names,
                        weights=models.resolved_weights(config.model.weights), seed=config.seed)
    first = np.arange(min(2, len(test.y)))  # the input examples: two test images, as the data set holds them
    example_images = dataset.test.images[datasets.class_order(dataset.test, classes)[first]]
    probe = ProbeModel(fit.estimator, test.take(first), spec, example_images)
    pipeline = (PipelineModel(ProbePipeline.build(spec=spec, probe=fit.estimator), example_images)
                if config.tracking.log_pipeline else None)
    return JobResult(
        splits=reports, class_names=names, feature_dim=train.dim, n_train=len(train_idx), n_val=len(val_idx),
        n_test=len(test.y), layer_index=train.layer_index, data_fingerprint=dataset.fingerprint,
        weights_fingerprint=train.weights_id, extraction_seconds=train.extraction_seconds + test.extraction_seconds,
        cnn_forward_images=train.cnn_images + test.cnn_images,
        fit_seconds=fit.fit_seconds + (search.search_seconds if search else 0.0), n_iter=fit.n_iter,
        converged=fit.converged, fit_warnings=(search.best.warnings if search else []) + fit.warnings,
        total_seconds=time.perf_counter() - start, n_fit=fit.n_fit,
        selected_C=float(search.selected_C if search else config.classifier.C),
        split_digest=datasets.split_digest(train_idx, val_idx),
        search_Cs=search.Cs if search else (), search_val_accuracy=search.val_accuracy if search else (),
        search_png=report.search_plot(search.Cs, search.val_accuracy, search.selected_C,
                                      title=f"{config.model.name} {config.layer}") if search else None,
        labels=classes, split_ids={"train": [train.ids[row] for row in train_idx],
                                   "val": [train.ids[row] for row in val_idx], "test": list(test.ids)},
        skipped=tuple(dataset.skipped),
        datasets=[DatasetRecord(name=f"{dataset.name} {split}", digest=dataset.fingerprint, source=dataset.source,
                                source_type=datasets.source_type(dataset.source), context=split,
                                profile={"images": count, "classes": names})
                  for split, count in (("train", len(train_idx)), ("val", len(val_idx)), ("test", len(test.y)))],
        probe=probe, pipeline=pipeline, cache_folder=train.cache_folder,
        layer_depth=model_stages.depth_in(train.layers, config.layer, last_stage=config.model.stages[-1])
        if config.model.stages and config.model.stages[-1] in train.layers else None,
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
