"""Every check that needs only the config, in one step that runs before any store, data or weights are touched.

The cut layer is checked against the backbone's architecture, built without weights (once per process); a
Keras-Hub preset's or a file's default layer and stages are read from it first (`with_backbone_defaults`).

Hydra's schema already rejects unknown keys and wrong types at composition; this checks the values. Each
error is one line that names the key, the value received and what is allowed. The stages trust what passes.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Optional, Sequence

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from tlsweep.config import TlsweepConfig
from tlsweep.errors import ConfigError
from tlsweep.scores import SCORES
from tlsweep.stages.backbone import composite, file, hub, models, precision
from tlsweep.stages.backbone.source import APPLICATIONS, BackboneSource
from tlsweep.stages.data import datasets, folder
from tlsweep.stages.features import pooling
from tlsweep.stages.probe import classify, memory, probes

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> TlsweepConfig:
    """The config as its typed schema object, once every value is allowed."""
    config: TlsweepConfig = OmegaConf.to_object(with_backbone_defaults(cfg))
    if not 0 <= config.seed < 2**32:  # what numpy, Keras and scikit-learn accept
        raise ConfigError(f"seed should be an integer in [0, 2**32 - 1]; received seed={config.seed}")
    source = _model(config)
    models.check_layer_names(source.layer_names(), [config.layer], model_name=config.model.name,
                             command=source.command)
    input_size = _data(config)
    source.check_input_size(input_size, received=(
        f"data.image_size={config.data.image_size}" if config.data.image_size is not None else
        f"data.image_size=null, which keeps the {input_size}x{input_size} images of data={config.data.name}"))
    _features(config)
    _pooling_fits(config, source, input_size)
    _classifier(config)
    _scores(config)
    stale_after_seconds(config.tracking.stale_after)
    return config


def with_backbone_defaults(cfg: DictConfig) -> DictConfig:
    """The config with model=hub's and model=file's model.default_layer (the last cut) and model.stages (the
    blocks, or the last layer at each resolution) where it leaves them out, read from the architecture built
    without weights; any other config as it is."""
    model = cfg.model
    for key, weights, allowed in (("preset", "preset", hub.ALLOWED), ("path", "file", file.ALLOWED)):
        if OmegaConf.select(model, "weights") == weights and OmegaConf.select(model, key) is None:
            raise ConfigError(f"model.{key} should be {allowed} for model={'hub' if key == 'preset' else 'file'}; "
                              f"received none (add model.{key}=...)")
    source = BackboneSource(OmegaConf.select(model, "name", default=""), OmegaConf.select(model, "weights"),
                            OmegaConf.select(model, "preset"), OmegaConf.select(model, "path"),
                            OmegaConf.select(model, "preprocess"))
    no_default, no_stages = OmegaConf.is_missing(model, "default_layer"), not OmegaConf.select(model, "stages")
    if source.kind == APPLICATIONS and no_default:  # model=hub or model=file, and neither a preset nor a path
        raise ConfigError(f"model.preset should be {hub.ALLOWED} for model=hub (model.path, {file.ALLOWED}, for "
                          "model=file); received neither")
    if source.kind == APPLICATIONS or not (no_default or no_stages):
        return cfg
    source.check()
    cfg = cfg.copy()
    if no_default:
        cfg.model.default_layer = source.layer_names()[-1]
    if no_stages:
        data = cfg.data
        size = datasets.input_size(name=data.name, path=data.path, image_size=data.image_size)
        cfg.model.stages = list(source.stages(size))
    return cfg


def _model(config: TlsweepConfig) -> BackboneSource:
    model = config.model
    source = BackboneSource.of(model)
    source.check()
    if not _positive_int(model.batch_size):
        raise ConfigError(f"model.batch_size should be an integer >= 1; received model.batch_size={model.batch_size!r}")
    precision.check(model.precision)
    return source


def _data(config: TlsweepConfig) -> int:
    """Check the data keys; the backbone's square input size they give."""
    spec = config.data
    if spec.name not in datasets.DATASETS:
        raise ConfigError(f"data.name should be one of {list(datasets.DATASETS)}; received data.name={spec.name!r}")
    if spec.name == "digits" and spec.path is not None:
        raise ConfigError(
            f"data.path should be null for data.name='digits' (bundled with scikit-learn); received data.path={spec.path!r}"
        )
    if spec.image_size is not None and spec.image_size < 1:
        raise ConfigError(
            f"data.image_size should be null or a positive size; received data.image_size={spec.image_size}"
        )
    if not 0.0 < spec.val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction should be in the open interval (0, 1); received data.val_fraction={spec.val_fraction}"
        )
    if spec.name == "folder":
        class_names, native_size = _folder(spec)
    else:
        class_names, native_size = datasets.CLASS_NAMES[spec.name], datasets.NATIVE_SIZES[spec.name]
    if spec.classes is None:  # every class of the data set
        spec.classes = list(range(len(class_names)))
    validate_classes(list(spec.classes), class_names)
    if spec.train_per_class is not None and not _positive_int(spec.train_per_class):
        raise ConfigError(
            f"data.train_per_class should be null (all) or an integer >= 1; received "
            f"data.train_per_class={spec.train_per_class!r}"
        )
    return spec.image_size if spec.image_size is not None else native_size


def _folder(spec) -> tuple[tuple[str, ...], Optional[int]]:
    """A folder's own keys, then its layout, listed (not decoded) so that a bad folder opens no run; its
    classes, and its images' one square size when data.image_size is null."""
    if spec.path is None:
        raise ConfigError("data.path should be a folder with one subfolder per class for data.name='folder'; "
                          "received data.path=None")
    if not 0.0 < spec.test_fraction < 1.0:
        raise ConfigError(
            f"data.test_fraction should be in the open interval (0, 1); received data.test_fraction={spec.test_fraction}"
        )
    layout = folder.scan(spec.path)
    folder.check_test_fraction(layout, spec.test_fraction)
    # read from the image headers: one square size, or a line asking for one
    return layout.class_names, folder.common_size(layout) if spec.image_size is None else None


def _features(config: TlsweepConfig) -> None:
    spec = config.features
    if spec.pooling not in pooling.POOLINGS:
        raise ConfigError(
            f"features.pooling should be one of {list(pooling.POOLINGS)}; received features.pooling={spec.pooling!r}"
        )
    if not _positive_int(spec.grid_size):
        raise ConfigError(f"features.grid_size should be an integer >= 1; received features.grid_size={spec.grid_size!r}")
    if spec.normalize not in classify.NORMALIZERS:
        raise ConfigError(
            f"features.normalize should be one of {list(classify.NORMALIZERS)}; received "
            f"features.normalize={spec.normalize!r}"
        )


def _pooling_fits(config: TlsweepConfig, source: BackboneSource, input_size: int) -> None:
    """features.pooling against the kind of cut `layer` is (map, token sequence, vector), a joined cut's parts
    against each other, and a token sequence's flattened features against memory."""
    if config.layer == "stages":
        return
    parts = composite.parts(config.layer)
    shape = source.output_shapes()[parts[0]]
    if composite.is_joined(config.layer):
        shape = composite.shape(config.layer, source.shapes_at(input_size), model_name=config.model.name)
    pooling.check_applies(config.features.pooling, shape, prefix_tokens=source.prefix_tokens().get(parts[0], 0),
                          layer=config.layer, model_name=config.model.name)
    if pooling.kind_of(shape) == pooling.TOKENS and config.features.pooling == "flatten":
        check_stage_memory(config, [config.layer])


def validate_classes(classes: Sequence[Any], class_names: Sequence[str]) -> None:
    """A class subset must name at least two distinct, valid classes."""
    allowed = f"integers 0..{len(class_names) - 1}"
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < len(class_names)]
    if bad:
        raise ConfigError(f"data.classes should hold {allowed}; received data.classes={classes} ({bad} out of range)")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ConfigError(f"data.classes should not repeat a class; received data.classes={classes} ({dupes} repeated)")
    if len(classes) < 2:
        raise ConfigError(f"data.classes should hold at least two of {allowed}; received data.classes={classes}")


def _classifier(config: TlsweepConfig) -> None:
    spec = config.classifier
    probe = probe_class(spec)
    if spec.name != probe.name:
        raise ConfigError(f"classifier.name should be {probe.name!r} for classifier._target_={spec._target_}; "
                          f"received classifier.name={spec.name!r}")
    if spec.C != classify.AUTO and not _positive_number(spec.C):
        raise ConfigError(f"classifier.C should be a positive number or 'auto'; received classifier.C={spec.C!r}")
    bad = [C for C in spec.C_grid if not _positive_number(C)]
    if spec.C == classify.AUTO and (bad or not spec.C_grid):
        raise ConfigError(
            f"classifier.C_grid should be a non-empty list of positive numbers for classifier.C=auto; received "
            f"classifier.C_grid={list(spec.C_grid)}" + (f" ({bad} not allowed)" if bad else "")
        )
    losses = probe.losses
    if spec.loss not in losses:
        raise ConfigError(
            f"classifier.loss should be one of {list(losses)} for {spec.name}; received classifier.loss={spec.loss!r}"
        )
    if not _positive_int(spec.max_iter):
        raise ConfigError(f"classifier.max_iter should be an integer >= 1; received classifier.max_iter={spec.max_iter!r}")
    if not spec.tol > 0:
        raise ConfigError(f"classifier.tol should be a positive number; received classifier.tol={spec.tol!r}")
    if str(spec.dual).lower() not in probes.DUAL:
        raise ConfigError(f"classifier.dual should be one of {list(probes.DUAL)}; received classifier.dual={spec.dual!r}")


def _scores(config: TlsweepConfig) -> None:
    unknown = [name for name in config.scores if name not in SCORES]
    if unknown:
        raise ConfigError(f"scores should be a list of {list(SCORES)} ([] for none); received scores="
                          f"{list(config.scores)} ({unknown} unknown)")
    if config.prescreen_score not in SCORES:
        raise ConfigError(f"prescreen_score should be one of {list(SCORES)}; received "
                          f"prescreen_score={config.prescreen_score!r}")
    if config.prescreen is not None and not _positive_int(config.prescreen):
        raise ConfigError(f"prescreen should be null or an integer >= 1 (the stages to fit); received "
                          f"prescreen={config.prescreen!r}")


def probe_class(spec) -> type:
    """The probe class classifier._target_ names: one of the registry's (`probes.PROBES`), or a subclass of
    `probes.Probe` elsewhere."""
    try:
        found = get_class(spec._target_)
    except Exception:  # Hydra raises ImportError, AttributeError or its own for a path that does not resolve
        found = None
    if not (isinstance(found, type) and issubclass(found, probes.Probe) and hasattr(found, "name")):
        raise ConfigError(
            f"classifier._target_ should name a probe class, one of "
            f"{[f'{cls.__module__}.{cls.__name__}' for cls in probes.PROBES.values()]} (classifier="
            f"{'|'.join(probes.PROBES)}); received classifier._target_={spec._target_!r}"
        )
    return found


def check_stage_memory(config: TlsweepConfig, stages: Sequence[str]) -> None:
    """Before `layer=stages` (or a token sequence flattened): refuse, in one line, a cut whose features (as
    pooled) would not fit a linear probe in this machine's memory; warn when one would take more than half of it."""
    input_size = datasets.input_size(name=config.data.name, path=config.data.path, image_size=config.data.image_size)
    source = BackboneSource.of(config.model)
    shapes = dict(source.shapes_at(input_size))
    models.check_layer_names(list(shapes), stages, model_name=config.model.name, command=source.command)
    shapes.update(composite.joined_shapes(stages, shapes, model_name=config.model.name))
    budget, n_rows, per_value = memory.machine_memory(), memory.training_rows(config), memory.bytes_per_value(config)
    for stage in stages:
        dim = pooling.pooled_dim(shapes[stage], config.features)
        need = n_rows * dim * per_value
        what = (f"stage {stage} of {config.model.name} gives {dim} features per image at {input_size}x{input_size} "
                f"with features.pooling={config.features.pooling}: fitting {config.classifier.name} on {n_rows} "
                f"training images needs about {need / memory.GIB:.1f} GiB")
        tokens = pooling.kind_of(shapes[stage]) == pooling.TOKENS
        remedy = ("features.pooling=cls, mean or cls_mean (D or 2 x D features a token sequence)" if tokens else
                  "features.pooling=grid (features.grid_size=2 bounds each stage to 4 x its channels) or avg")
        if need > budget:
            raise ConfigError(f"{'layer=stages' if len(stages) > 1 or not tokens else f'layer={stage}'} cannot fit "
                              f"in memory: {what}, more than this machine's {budget / memory.GIB:.1f} GiB; set "
                              f"{remedy}")
        if need > budget / 2:
            log.warning("%s, over half of this machine's %.1f GiB; %s bounds it", what, budget / memory.GIB,
                        remedy.split(" (")[0] if tokens else "features.pooling=grid")


MIN_STALE_AFTER_S = 10.0  # the heartbeat beats a tenth of this: more often would only load the server
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(s|m|h)?\s*")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600}


def stale_after_seconds(value: Any) -> float:
    """tracking.stale_after in seconds: a number of seconds, or a duration such as 90s, 5m or 1h."""
    found = _DURATION.fullmatch(str(value))
    seconds = float(found[1]) * _UNIT_SECONDS[found[2]] if found else math.nan
    if not seconds >= MIN_STALE_AFTER_S:
        raise ConfigError(
            f"tracking.stale_after should be a duration of at least {MIN_STALE_AFTER_S:g}s, in seconds or with "
            f"a unit (300, 90s, 5m, 1h); received tracking.stale_after={value!r}"
        )
    return seconds


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
