"""One job: its configurations checked and named, their stages run, each logged once as one MLflow run.

    job_specs (validate, expand layer=stages) -> where_to_log -> for each spec: resume? -> train_and_evaluate
        (data -> features -> fit, or choose C on val and refit -> reports) -> runs.log_job (once)

A job of a sweep receives a `SweepContext` (the store, the experiment, the parent run, the layers to
extract ahead); a single run has none and connects on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from tlsweep import console, identity, preflight, provenance, train
from tlsweep.config import TlsweepConfig, default_tracking_uri
from tlsweep.errors import ConfigError, TlsweepError
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data import datasets
from tlsweep.sweep import context
from tlsweep.sweep.context import SweepContext
from tlsweep.tracking import runs
from tlsweep.tracking.names import Tag
from tlsweep.tracking.record import CutScores, JobRecord, error_line
from tlsweep.tracking.store import Store
from tlsweep.validate import check_stage_memory, stale_after_seconds, validate, with_backbone_defaults

log = logging.getLogger("tlsweep")

STAGES = "stages"  # layer=stages: one run per stage of model.stages, every stage from one CNN pass


@dataclass(frozen=True)
class JobSpec:
    """One configuration, checked: what it is, and the record its run starts from."""

    config: TlsweepConfig
    record: JobRecord  # params, config YAML and the tags that find it again (its config hash)
    prescored: Optional[CutScores] = None  # prescreen kept it: its scoring pass counts in its run

    @property
    def config_hash(self) -> str:
        return self.record.tags[Tag.CONFIG_HASH]


@dataclass(frozen=True)
class LogTarget:
    """Where a job's runs go: the store, the experiment, and the parent (a sweep's) or the run opened for it."""

    store: Store
    experiment_id: str
    parent_run_id: Optional[str] = None
    run_id: Optional[str] = None  # the run `mlflow run` opened for a single run
    cache_dir: Optional[str] = None  # as resolved where a sweep started
    seal_key: str = field(default="", repr=False)  # the sweep's secret: seals each run as its own

    def seal(self, *, run_id: str, config_hash: str, val_accuracy: Optional[float]) -> None:
        """Mark a run on the parent as one this sweep logged or reused (`runs.mark_own`)."""
        if self.parent_run_id and self.seal_key:
            runs.mark_own(self.store, self.parent_run_id, key=self.seal_key, run_id=run_id, config_hash=config_hash,
                          val_accuracy=val_accuracy)


def job_configs(cfg: DictConfig) -> list[tuple[TlsweepConfig, str]]:
    """(checked config, config hash) of each run the job makes; one line for the first config error."""
    return [(spec.config, spec.config_hash) for spec in job_specs(cfg)]


def job_specs(cfg: DictConfig) -> list[JobSpec]:
    """The configurations a job runs, each checked before anything is opened: one, or with `layer=stages`
    one per stage of model.stages (the memory each stage's fit needs checked too)."""
    cfg = with_backbone_defaults(_canonical(cfg))
    if cfg.layer != STAGES:
        config = validate(cfg)
        if config.prescreen is not None:
            raise ConfigError(f"prescreen={config.prescreen} ranks the stages of layer=stages, and this job cuts one "
                              f"layer; received layer={cfg.layer!r}: set layer=stages, or prescreen=null")
        return [JobSpec(config, job_record(_resolved(cfg, config)))]
    stages = list(cfg.model.stages)
    if not stages:
        raise ConfigError(f"layer=stages needs model.stages, the stage layers of model={cfg.model.name}, and its "
                          "config names none; set model.stages=[LAYER,...] or name one layer")
    staged = []
    for stage in stages:
        one = cfg.copy()
        one.layer = stage
        config = validate(one)
        staged.append(JobSpec(config, job_record(_resolved(one, config))))
    check_stage_memory(staged[0].config, stages)
    return staged


def _resolved(cfg: DictConfig, config: TlsweepConfig) -> DictConfig:
    """The config as logged and hashed: `data.classes=null` (every class) as the classes it resolved to."""
    if cfg.data.classes is None:
        cfg = cfg.copy()
        cfg.data.classes = list(config.data.classes)
    return cfg


def _canonical(cfg: DictConfig) -> DictConfig:
    """The config as logged and hashed: `classifier.C=1` is the number 1.0, as `classifier.C: float` made it."""
    C = cfg.classifier.C
    if isinstance(C, int) and not isinstance(C, bool):
        cfg = cfg.copy()
        cfg.classifier.C = float(C)
    return cfg


def job_record(cfg: DictConfig) -> JobRecord:
    """What a job is, before it runs: its config as params and YAML, and the tags that find it again."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = {
        Tag.CONFIG_HASH: identity.config_hash(resolved),
        Tag.LAYER: cfg.layer,
        Tag.MODEL: cfg.model.name,
        Tag.CLASSES: datasets.describe_classes(cfg.data.name, list(cfg.data.classes), cfg.data.path),
        Tag.DEMO: str(cfg.demo).lower(),
    }
    return JobRecord(params=dict(identity.flatten(resolved)), config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
                     tags=tags)


def where_to_log(config: TlsweepConfig, sweep: Optional[SweepContext]) -> LogTarget:
    """The sweep's store and parent; or, for a single run, its own store (and the run `mlflow run` opened)."""
    if sweep is not None:
        return LogTarget(Store(sweep.tracking_uri), sweep.experiment_id, parent_run_id=sweep.parent_run_id,
                         cache_dir=sweep.cache_dir, seal_key=sweep.seal_key)
    store, experiment_id = runs.connect(default_tracking_uri(config.tracking.uri, Path.cwd()),
                                        config.tracking.experiment,
                                        stale_after=stale_after_seconds(config.tracking.stale_after))
    outer = context.outer_run_id()
    return LogTarget(store, experiment_id, run_id=outer and runs.outer_run(store, outer, experiment_id=experiment_id))


def run(cfg: DictConfig, sweep: Optional[SweepContext] = None) -> float:
    """Run a job's configurations and return the best validation accuracy (the sweep's target).

    Under `layer=stages` a stage that fails is logged FAILED and the others still run; the first error is
    raised at the end.
    """
    try:
        specs = job_specs(cfg)  # every config-only check, before any store, data or model is touched
    except TlsweepError as err:
        if sweep is not None:  # it opens no run: the sweep's end lists it from its parent's tag
            runs.mark_failed(Store(sweep.tracking_uri), sweep.parent_run_id, line=failure_line(cfg, err))
        raise
    first = specs[0].config
    if sweep is None:  # a sweep fetched once for all its jobs, in its callback
        preflight.fetch([first])
    target = where_to_log(first, sweep)
    swept = [layer for layer in (sweep.sweep_layers if sweep else ()) if layer != STAGES]  # one pass for them all
    ahead = tuple(dict.fromkeys([*(spec.config.layer for spec in specs if len(specs) > 1), *swept]))
    dataset = None
    if first.prescreen is not None:
        dataset = datasets.load_dataset(name=first.data.name, path=first.data.path, image_size=first.data.image_size,
                                        test_fraction=first.data.test_fraction,
                                        skip_bad_images=first.data.skip_bad_images)
        specs = prescreen(specs, target, extract_ahead=ahead, dataset=dataset)
    scores, errors = [], []
    for spec in specs:
        try:
            scores.append(run_one(spec, target, extract_ahead=ahead, dataset=dataset))
        except TlsweepError as err:
            if len(specs) == 1:
                raise
            log.error("%s %s: %s", spec.config.model.name, spec.config.layer, err)
            errors.append(err)
    if errors:
        raise errors[0]
    return max(scores)


def prescreen(specs: Sequence[JobSpec], target: LogTarget, *, extract_ahead: Sequence[str],
              dataset: datasets.Dataset) -> list[JobSpec]:
    """prescreen=K: score every stage from the one CNN pass, and keep the K best by prescreen_score to fit. Each
    stage left out is logged with its scores and the tag `tlsweep.prescreen: skipped by prescreen`, no probe."""
    first = specs[0].config
    names = list(dict.fromkeys([first.prescreen_score, *first.scores]))
    scored = []
    for spec in specs:
        started = time.time()
        cut = train.score_only(spec.config, names, sweep_layers=extract_ahead, dataset=dataset)
        scored.append((cut.scores[first.prescreen_score].value, spec, cut, started))
    ranked = sorted(range(len(scored)), key=lambda i: -scored[i][0])  # ties keep the stages' order
    keep = set(ranked[:first.prescreen])
    log.info("prescreen: fitting %d of %d stages of %s, the best by %s: %s", len(keep), len(specs),
             first.model.name, first.prescreen_score, ", ".join(scored[i][1].config.layer for i in sorted(keep)))
    kept = []
    for index, (_, spec, cut, started) in enumerate(scored):
        if index in keep:
            kept.append(dataclasses.replace(spec, prescored=cut, record=dataclasses.replace(
                spec.record, tags={**spec.record.tags, Tag.PRESCREEN: Tag.PRESCREEN_KEPT})))
            continue
        record = dataclasses.replace(spec.record, tags={**provenance.machine_tags(spec.config.tracking.machine),
                                                        **spec.record.tags}, result=cut)
        logged = runs.log_job(target.store, experiment_id=target.experiment_id, run_name=run_name(spec),
                              payload=record.payload(), started=started, parent_run_id=target.parent_run_id)
        target.seal(run_id=logged, config_hash=spec.config_hash, val_accuracy=None)
    return kept


def run_one(spec: JobSpec, target: LogTarget, *, extract_ahead: Sequence[str] = (),
            dataset: Optional[datasets.Dataset] = None) -> float:
    """One configuration: reuse a finished run of it (resume=true, same content), or run it and log it once,
    with its result or the error that stopped it (KILLED for Ctrl-C)."""
    started = time.time()
    config = spec.config
    if target.cache_dir and config.cache_dir is None:  # as resolved where the sweep started
        config = dataclasses.replace(config, cache_dir=target.cache_dir)
    record = dataclasses.replace(spec.record, tags={**provenance.machine_tags(config.tracking.machine),
                                                    **spec.record.tags})
    try:
        console.raise_pending_interrupt()  # a Ctrl-C that landed in a garbage-collector callback
        if config.resume:
            dataset, reused = _reusable(spec, config, target, dataset)
            if reused is not None:
                return reused
        result = train.train_and_evaluate(config, sweep_layers=extract_ahead, dataset=dataset)
        console.raise_pending_interrupt()
        work_seconds = result.work_seconds  # the prescreen's CNN pass ran before `started`
        if spec.prescored is not None:  # the CNN pass and the scoring that ranked it are this run's too
            result = dataclasses.replace(
                result, cnn_forward_images=result.cnn_forward_images + spec.prescored.cnn_forward_images,
                extraction_seconds=result.extraction_seconds + spec.prescored.extraction_seconds,
                scores={name: spec.prescored.scores.get(name, scored) for name, scored in result.scores.items()})
    except BaseException as err:
        stopped = console.as_interrupt(err)  # a Ctrl-C that a library turned into another error is still one
        runs.log_job(target.store, experiment_id=target.experiment_id, run_name=run_name(spec),
                     payload=dataclasses.replace(record, error=stopped).payload(), started=started,
                     parent_run_id=target.parent_run_id, run_id=target.run_id,
                     interrupted=isinstance(stopped, KeyboardInterrupt))
        if stopped is err:
            raise
        raise stopped
    logged = runs.log_job(target.store, experiment_id=target.experiment_id, run_name=run_name(spec),
                          payload=dataclasses.replace(record, result=result).payload(), started=started,
                          parent_run_id=target.parent_run_id, run_id=target.run_id, work_seconds=work_seconds)
    target.seal(run_id=logged, config_hash=spec.config_hash, val_accuracy=result.accuracy("val"))
    log.info("%s %s: train %.3f, val %.3f, test %.3f", config.model.name, config.layer, result.accuracy("train"),
             result.accuracy("val"), result.accuracy("test"))
    if target.parent_run_id is None:  # a sweep says where it logged once, at its end
        log.info("logged run %s to %s; browse it with: mlflow ui --backend-store-uri %s", logged,
                 target.store.display_uri, target.store.display_uri)
    return result.accuracy("val")


def _reusable(spec: JobSpec, config: TlsweepConfig, target: LogTarget, dataset: Optional[datasets.Dataset]
              ) -> tuple[Optional[datasets.Dataset], Optional[float]]:
    """resume=true: (the data set, as given or loaded to check it; the val accuracy of a FINISHED run of the same
    configuration on the same data and weights, or None to run it). A run whose data or weights fingerprint
    differs from what they hold now is not reused, and a line says why."""
    done = runs.finished_job(target.store, target.experiment_id, spec.config_hash)
    if done is None:
        return dataset, None
    if dataset is None:
        dataset = datasets.load_dataset(name=config.data.name, path=config.data.path, image_size=config.data.image_size,
                                        test_fraction=config.data.test_fraction,
                                        skip_bad_images=config.data.skip_bad_images)
    current = {identity.DATA_FINGERPRINT: dataset.fingerprint,
               identity.WEIGHTS_FINGERPRINT: BackboneSource.of(config.model).fingerprint(config.seed)}
    changed = identity.same_content(done.fingerprints, current)
    if changed:
        log.info("resume: running %s again: its %s changed since run %s", describe(config),
                 " and ".join(key.split(".")[0] for key in changed), done.run_id)
        return dataset, None
    log.info("resume: skipping %s, FINISHED as run %s", describe(config), done.run_id)
    if target.parent_run_id:
        runs.mark_resumed(target.store, target.parent_run_id, config_hash=done.config_hash, run_id=done.run_id)
        target.seal(run_id=done.run_id, config_hash=spec.config_hash, val_accuracy=done.val_accuracy)
    return dataset, math.nan if done.val_accuracy is None else done.val_accuracy


def describe(config: TlsweepConfig) -> str:
    """The settings a person tells configurations apart by, for log lines."""
    return f"layer={config.layer} classes={list(config.data.classes)} C={config.classifier.C}"


def run_name(spec: JobSpec) -> str:
    """`vgg16/block5_pool C=0.1 deer,dog,frog`: the cut, its C and its classes by name, as the terminal's table
    shows them (a long list shortened: `datasets.brief_classes`)."""
    config = spec.config
    C = config.classifier.C
    return (f"{config.model.name}/{config.layer} C={C if isinstance(C, str) else format(C, 'g')} "
            f"{datasets.brief_classes(spec.record.tags[Tag.CLASSES])}")[:250]


def failure_line(cfg: DictConfig, err: BaseException) -> str:
    """What a sweep's parent records of a job that failed its checks: which job, and what was wrong."""
    return f"layer={cfg.layer} classes={list(cfg.data.classes)} C={cfg.classifier.C}: {error_line(err)}"

