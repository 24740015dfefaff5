"""`python -m tlsweep`: one cut of a frozen backbone, one linear classifier, one MLflow run.

cfg (Hydra) -> data.load_dataset -> features.extract_features -> classify.fit_classifier
            -> report.classification_reports -> tracking (the run's params, metrics and artifacts)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tlsweep import cache, classify, data, features, provenance, report, tracking
from tlsweep.callbacks import LAYERS_ENV, PARENT_ENV, RESUMED_TAG_PREFIX
from tlsweep.config import default_cache_dir, default_tracking_uri, register_configs
from tlsweep.errors import ConfigError, TlsweepError

log = logging.getLogger("tlsweep")

register_configs()


def run(cfg: DictConfig) -> float:
    """Run one configuration and return its validation accuracy (the sweep's target)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_id = provenance.config_hash(resolved)
    experiment_id = tracking.connect(default_tracking_uri(cfg.tracking.uri, Path.cwd()), cfg.tracking.experiment)
    parent_run_id = os.environ.get(PARENT_ENV)
    if parent_run_id is None:
        tracking.close_stale_runs(experiment_id)  # a sweep does this once, in its callback
        tracking.project_run_id(experiment_id)  # under `mlflow run` this run logs into its run: same experiment
    if cfg.resume:
        done = tracking.finished_run(experiment_id, config_id)
        if done is not None:
            log.info("resume: skipping layer=%s classes=%s C=%s, FINISHED as run %s",
                     cfg.layer, list(cfg.data.classes), cfg.classifier.C, done["run_id"])
            if parent_run_id:
                tracking.set_run_tag(parent_run_id, f"{RESUMED_TAG_PREFIX}{config_id}", done["run_id"])
            return done["metrics"].get("val_accuracy", math.nan)

    tags = {
        **provenance.machine_tags(cfg.tracking.machine),
        tracking.HASH_TAG: config_id,
        "layer": cfg.layer,
        "model": cfg.model.name,
        "classes": data.describe_classes(cfg.data.name, list(cfg.data.classes)),
        "demo": str(cfg.demo).lower(),
    }
    run_name = f"{cfg.model.name}/{cfg.layer} C={cfg.classifier.C:g} classes={','.join(map(str, cfg.data.classes))}"
    with tracking.job_run(experiment_id=experiment_id, run_name=run_name, parent_run_id=parent_run_id,
                          tags=tags) as mlrun:
        mlrun.log_params(dict(provenance.flatten(resolved)))
        mlrun.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        return _train_and_evaluate(cfg, mlrun)


def _train_and_evaluate(cfg: DictConfig, mlrun: tracking.RunLog) -> float:
    start = time.perf_counter()
    if not 0 <= cfg.seed < 2**32:  # what numpy, Keras and scikit-learn accept
        raise ConfigError(f"seed should be an integer in [0, 2**32 - 1]; received seed={cfg.seed}")
    if cfg.data.image_size is not None and cfg.data.image_size < 1:
        raise ConfigError(f"data.image_size should be null or a positive size; received data.image_size={cfg.data.image_size}")
    classify.validate_classifier(**_classifier_args(cfg))
    cache_root = cache.ensure_writable(default_cache_dir(cfg.cache_dir))
    dataset = data.load_dataset(name=cfg.data.name, path=cfg.data.path)
    classes = data.validate_classes(cfg.data.classes, dataset.class_names)
    names = [dataset.class_names[c] for c in classes]
    # split on the labels alone, so a bad val_fraction fails before the CNN runs
    train_idx, val_idx = data.split_train_val(data.subset_labels(dataset.train, classes),
                                              val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    sweep_layers = [layer for layer in os.environ.get(LAYERS_ENV, "").split(",") if layer]
    common = dict(
        dataset=dataset, layer=cfg.layer, classes=classes, backbone=cfg.model.name, weights=cfg.model.weights,
        seed=cfg.seed,
        input_size=dataset.train.images.shape[1] if cfg.data.image_size is None else cfg.data.image_size,
        batch_size=cfg.model.batch_size, cache_root=cache_root, sweep_layers=sweep_layers,
    )
    train = features.extract_features(image_set="train", **common)
    test = features.extract_features(image_set="test", **common)
    mlrun.set_tags({"data.fingerprint": dataset.fingerprint, "weights.fingerprint": train.weights_id})
    mlrun.log_params({"feature_dim": train.dim, "n_train": len(train_idx), "n_val": len(val_idx),
                      "n_test": len(test.y)})

    estimator = classify.make_classifier(seed=cfg.seed, **_classifier_args(cfg))
    # gathered straight from the per-class cache files: the whole train set is never in memory twice
    splits = {"train": (train.take(train_idx), train.y[train_idx]), "val": (train.take(val_idx), train.y[val_idx]),
              "test": (test.X, test.y)}
    fit = classify.fit_classifier(estimator=estimator, X=splits["train"][0], y=splits["train"][1])
    reports = report.classification_reports(estimator=fit.estimator, splits=splits, labels=classes, names=names)

    metrics = report.report_metrics(reports, names)
    metrics.update(
        extraction_seconds=train.extraction_seconds + test.extraction_seconds,
        cnn_forward_images=train.cnn_images + test.cnn_images,
        fit_seconds=fit.fit_seconds, n_iter=fit.n_iter, converged=float(fit.converged),
        layer_index=train.layer_index, total_seconds=time.perf_counter() - start,
    )
    mlrun.log_metrics(metrics)
    for item in reports:
        mlrun.log_text(item.text, f"reports/{item.split}_classification_report.txt")
        mlrun.log_dict(item.table, f"reports/{item.split}_classification_report.json")
        mlrun.log_figure(item.confusion, f"confusion/{item.split}_confusion_matrix.png")
    if fit.warnings:
        mlrun.log_text("\n".join(fit.warnings) + "\n", "fit_warnings.txt")
    log.info("%s %s: train %.3f, val %.3f, test %.3f", cfg.model.name, cfg.layer, metrics["train_accuracy"],
             metrics["val_accuracy"], metrics["test_accuracy"])
    return metrics["val_accuracy"]


def _classifier_args(cfg: DictConfig) -> dict:
    c = cfg.classifier
    return dict(name=c.name, C=c.C, loss=c.loss, max_iter=c.max_iter, tol=c.tol, dual=c.dual)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
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
    main()
