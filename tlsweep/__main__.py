"""`python -m tlsweep`: one cut of a frozen backbone, one linear classifier, one MLflow run.

validate -> data.load_dataset -> features.extract_features -> classify.fit_classifier
         -> report.classification_reports -> runs.log_job (once, with the result or the error)

Inside a multirun the sweep's callback hands the job a `SweepContext` (store, experiment, parent run,
layers to extract ahead); a single run has none and connects on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import numpy as np
from omegaconf import DictConfig, OmegaConf

from tlsweep import console, layers, preflight, provenance
from tlsweep.config import TlsweepConfig, default_cache_dir, default_tracking_uri, register_configs
from tlsweep.errors import ConfigError, TlsweepError
from tlsweep.stages import cache, classify, data, features, model_stages, models, report
from tlsweep.stages.pipeline import PipelineSpec, ProbePipeline
from tlsweep.sweep import context
from tlsweep.sweep.context import SweepContext
from tlsweep.tracking import runs
from tlsweep.tracking.payload import DatasetRecord, PipelineModel, ProbeModel
from tlsweep.tracking.record import JobRecord, JobResult, Tag, error_line
from tlsweep.tracking.store import Store
from tlsweep.validate import stale_after_seconds, validate

log = logging.getLogger("tlsweep")

register_configs()


STAGES = "stages"  # layer=stages: one run per stage of model.stages, every stage from one CNN pass


def run(cfg: DictConfig, sweep: Optional[SweepContext] = None, *, extract_ahead: Sequence[str] = ()) -> float:
    """Run one configuration and return its validation accuracy (the sweep's target).

    `layer=stages` runs every stage of the model's config instead, one run each; `extract_ahead` names the
    cuts the one CNN pass fills beside this one.
    """
    if cfg.layer == STAGES:
        return run_stages(cfg, sweep)
    started = time.time()
    cfg = _canonical(cfg)
    record = _job_record(cfg)
    try:
        config = validate(cfg)  # every config-only check, before any store, data or model is touched
    except TlsweepError as err:  # a bad value, or a data folder that cannot be listed
        if sweep is not None:  # no run is opened; the sweep's summary still lists the attempt
            runs.mark_failed(Store(sweep.tracking_uri), sweep.parent_run_id, config_hash=record.tags[Tag.CONFIG_HASH],
                             line=f"{_overrides_line(config=cfg)}: {error_line(err)}")
        raise
    if sweep is None:  # a sweep fetched once for all its jobs, in its callback
        preflight.fetch(data_name=config.data.name, data_path=config.data.path, backbones=[config.model.name],
                        weights=config.model.weights, image_size=config.data.image_size)
    store, experiment_id, run_id = _open_store(config, sweep)
    if sweep is not None and sweep.cache_dir and config.cache_dir is None:  # as resolved where the sweep started
        config = dataclasses.replace(config, cache_dir=sweep.cache_dir)
    if config.resume:
        done = runs.finished_job(store, experiment_id, record.tags[Tag.CONFIG_HASH])
        if done is not None:
            log.info("resume: skipping layer=%s classes=%s C=%s, FINISHED as run %s",
                     config.layer, list(config.data.classes), config.classifier.C, done.run_id)
            if sweep is not None:
                runs.mark_resumed(store, sweep.parent_run_id, config_hash=done.config_hash, run_id=done.run_id)
            return math.nan if done.val_accuracy is None else done.val_accuracy
    try:
        result = train_and_evaluate(config, sweep_layers=extract_ahead or (sweep.sweep_layers if sweep else ()))
    except BaseException as err:
        record = dataclasses.replace(record, error=err)
        raise
    else:
        record = dataclasses.replace(record, result=result)
    finally:
        logged = runs.log_job(store, experiment_id=experiment_id, run_name=_run_name(config),
                              payload=record.payload(), started=started,
                              parent_run_id=sweep.parent_run_id if sweep else None, run_id=run_id)
    log.info("%s %s: train %.3f, val %.3f, test %.3f", config.model.name, config.layer, result.accuracy("train"),
             result.accuracy("val"), result.accuracy("test"))
    if sweep is None:  # a sweep says where it logged once, at its end
        log.info("logged run %s to %s; browse it with: mlflow ui --backend-store-uri %s", logged, store.uri,
                 store.uri)
    return result.accuracy("val")


def run_stages(cfg: DictConfig, sweep: Optional[SweepContext]) -> float:
    """Every stage of model.stages as its own run, input to output; the best val accuracy.

    The first stage's CNN pass fills the cache for all of them. A stage that fails is logged FAILED and the
    others still run; the first error is raised at the end.
    """
    stages = list(cfg.model.stages)
    if not stages:
        raise ConfigError(f"layer=stages needs model.stages, the stage layers of model={cfg.model.name}, and its "
                          "config names none; set model.stages=[LAYER,...] or name one layer")
    layers.check_stage_memory(cfg, stages)
    scores, errors = [], []
    for stage in stages:
        staged = cfg.copy()
        staged.layer = stage
        try:
            scores.append(run(staged, sweep, extract_ahead=stages))
        except TlsweepError as err:
            errors.append(err)
    if errors:
        raise errors[0]
    return max(scores)


def train_and_evaluate(config: TlsweepConfig, *, sweep_layers=()) -> JobResult:
    """The stages, top to bottom: data, features, fit (or choose C on val and refit), evaluate."""
    start = time.perf_counter()
    cache_root = cache.ensure_writable(default_cache_dir(config.cache_dir))
    dataset = data.load_dataset(name=config.data.name, path=config.data.path, image_size=config.data.image_size,
                                test_fraction=config.data.test_fraction, skip_bad_images=config.data.skip_bad_images)
    classes = list(config.data.classes)
    names = [dataset.class_names[c] for c in classes]
    # split on the labels alone, so a bad val_fraction or train_per_class fails before the CNN runs
    labels = data.subset_labels(dataset.train, classes)
    train_idx, val_idx = data.split_train_val(labels, val_fraction=config.data.val_fraction, seed=config.seed)
    if config.data.train_per_class is not None:
        train_idx = data.few_shot(train_idx, labels, per_class=config.data.train_per_class, seed=config.seed)
    input_size = dataset.train.images.shape[1] if config.data.image_size is None else config.data.image_size
    common = dict(dataset=dataset, layer=config.layer, classes=classes, backbone=config.model.name,
                  weights=config.model.weights, seed=config.seed, input_size=input_size,
                  batch_size=config.model.batch_size, cache_root=cache_root, sweep_layers=sweep_layers,
                  pooling=config.features.pooling, grid_size=config.features.grid_size)
    train = features.extract_features(image_set="train", **common)
    test = features.extract_features(image_set="test", **common)

    evaluate = functools.partial(report.classification_reports, labels=classes, names=names,
                                 title=f"{config.model.name} {config.layer}: ")
    reports, fit, search = _fit_and_evaluate(config, train=train, test=test, train_idx=train_idx, val_idx=val_idx,
                                             evaluate=evaluate)
    spec = PipelineSpec(backbone=config.model.name, layer=config.layer, input_size=input_size,
                        resize="pillow" if config.data.name == "folder" else "keras", pooling=config.features.pooling,
                        grid_size=config.features.grid_size, labels=classes, class_names=names,
                        weights=models.resolved_weights(config.model.weights), seed=config.seed)
    first = np.arange(min(2, len(test.y)))  # the input examples: two test images, as the data set holds them
    example_images = dataset.test.images[data.class_order(dataset.test, classes)[first]]
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
        total_seconds=time.perf_counter() - start, n_fit=fit.n_fit, selected_C=float(fit.estimator[-1].C),
        split_digest=data.split_digest(train_idx, val_idx),
        search_Cs=search.Cs if search else (), search_val_accuracy=search.val_accuracy if search else (),
        search_png=report.search_plot(search.Cs, search.val_accuracy, search.selected_C,
                                      title=f"{config.model.name} {config.layer}") if search else None,
        labels=classes, split_ids={"train": [train.ids[row] for row in train_idx],
                                   "val": [train.ids[row] for row in val_idx], "test": list(test.ids)},
        skipped=tuple(dataset.skipped),
        datasets=[DatasetRecord(name=f"{dataset.name} {split}", digest=dataset.fingerprint, source=dataset.source,
                                source_type=data.source_type(dataset.source), context=split,
                                profile={"images": count, "classes": names})
                  for split, count in (("train", len(train_idx)), ("val", len(val_idx)), ("test", len(test.y)))],
        probe=probe, pipeline=pipeline, cache_folder=train.cache_folder,
        layer_depth=model_stages.depth_in(train.layers, config.layer, last_stage=config.model.stages[-1])
        if config.model.stages and config.model.stages[-1] in train.layers else None,
    )


def _fit_and_evaluate(config: TlsweepConfig, *, train: features.Features, test: features.Features,
                      train_idx: np.ndarray, val_idx: np.ndarray, evaluate) -> tuple:
    """Fit with the configured C and report train, val and test; or, with C=auto, choose C on val and refit.

    Under C=auto, train and val are reported by the fit that chose C (fitted on train, so val stayed held
    out), and test by the refit on train+val, evaluated once. Returns (reports, final fit, search or None).
    """
    spec = config.classifier
    probe = dict(name=spec.name, loss=spec.loss, max_iter=spec.max_iter, tol=spec.tol, dual=spec.dual,
                 seed=config.seed)
    # gathered straight from the per-class cache files: the whole train set is never in memory twice
    held_in = {"train": (train.take(train_idx), train.y[train_idx]), "val": (train.take(val_idx), train.y[val_idx])}
    test_split = {"test": (test.X, test.y)}
    if spec.C != classify.AUTO:
        fit = classify.fit_classifier(
            estimator=classify.make_classifier(normalize=config.features.normalize, C=spec.C, **probe),
            X=held_in["train"][0], y=held_in["train"][1])
        return evaluate(estimator=fit.estimator, splits={**held_in, **test_split}), fit, None

    (X_train, y_train), (X_val, y_val) = held_in["train"], held_in["val"]
    search = classify.search_C(normalize=config.features.normalize, grid=spec.C_grid, X_train=X_train,
                               y_train=y_train, X_val=X_val, y_val=y_val, **probe)
    reports = evaluate(estimator=search.best.estimator, splits=held_in)
    del held_in, X_train, X_val  # before train+val is gathered: the peak stays one copy of the fit rows
    fit_rows = np.sort(np.concatenate([train_idx, val_idx]))
    fit = classify.fit_classifier(
        estimator=classify.make_classifier(normalize=config.features.normalize, C=search.selected_C, **probe),
        X=train.take(fit_rows), y=train.y[fit_rows])
    return reports + evaluate(estimator=fit.estimator, splits=test_split), fit, search


def _canonical(cfg: DictConfig) -> DictConfig:
    """The config as logged and hashed: `classifier.C=1` is the number 1.0, as `classifier.C: float` made it."""
    C = cfg.classifier.C
    if isinstance(C, int) and not isinstance(C, bool):
        cfg = cfg.copy()
        cfg.classifier.C = float(C)
    return cfg


def _job_record(cfg: DictConfig) -> JobRecord:
    """What this job is, before it runs: its config as params and YAML, and the tags that find it again."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = {
        **provenance.machine_tags(cfg.tracking.machine),
        Tag.CONFIG_HASH: provenance.config_hash(resolved),
        Tag.LAYER: cfg.layer,
        Tag.MODEL: cfg.model.name,
        Tag.CLASSES: data.describe_classes(cfg.data.name, list(cfg.data.classes), cfg.data.path),
        Tag.DEMO: str(cfg.demo).lower(),
    }
    return JobRecord(params=dict(provenance.flatten(resolved)), config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
                     tags=tags)


def _run_name(config) -> str:
    classes = ",".join(map(str, config.data.classes))
    C = config.classifier.C
    return f"{config.model.name}/{config.layer} C={C if isinstance(C, str) else format(C, 'g')} classes={classes}"


def _open_store(config, sweep: Optional[SweepContext]) -> tuple[Store, str, Optional[str]]:
    """The sweep's store, or for a single run its own (and the run `mlflow run` opened for it, if any)."""
    if sweep is not None:
        return Store(sweep.tracking_uri), sweep.experiment_id, None
    store, experiment_id = runs.connect(default_tracking_uri(config.tracking.uri, Path.cwd()),
                                        config.tracking.experiment,
                                        stale_after=stale_after_seconds(config.tracking.stale_after))
    outer = context.outer_run_id()
    return store, experiment_id, outer and runs.outer_run(store, outer, experiment_id=experiment_id)


def _overrides_line(*, config) -> str:
    return f"layer={config.layer} classes={list(config.data.classes)} C={config.classifier.C}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg, sweep=context.received())
    except TlsweepError as err:
        log.error("%s", err)
        if multirun:  # the run is marked FAILED; the sweep goes on and exits non-zero at its end
            return math.nan
        sys.exit(1)
    except Exception:
        if multirun:
            log.exception("job failed")
            return math.nan
        raise


if __name__ == "__main__":
    if not {"--help", "-h", "--hydra-help"} & set(sys.argv):  # help needs no backend
        console.start_backend_quietly()
    main()
