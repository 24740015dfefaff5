"""Structured config schema, registered with Hydra's ConfigStore so typos fail at composition."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from tlsweep import environment

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the clone, where tlsweep runs from one (git.commit)
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the Hydra config, inside the package: a wheel ships it


@dataclass
class ModelConfig:
    # a keras.applications backbone in snake_case (vgg16, resnet50_v2, ...); for model=hub and model=file, a name
    # for the runs, by default the preset's or the file's (source.display_name)
    name: str = MISSING
    # keras.applications: "imagenet", null (random init) or a path to a weights file; model=hub: "preset" (the
    # preset's own) or null; model=file: "file" (the file's own)
    weights: Optional[str] = "imagenet"
    default_layer: str = MISSING  # the cut used when `layer` is not given; model=hub and file: their last cut
    batch_size: int = 256  # images per forward pass during extraction
    # float32, or bfloat16: Keras mixed precision (policy mixed_bfloat16) for the backbone, features cast to float32
    precision: str = "float32"
    # the layers a researcher would cut at, input to output (stage_layers in tlsweep/stages/model_stages.py);
    # model=hub and file: their blocks, or the last layer at each resolution, when empty
    stages: List[str] = field(default_factory=list)
    # model=hub: a Keras-Hub preset name, an hf:// or kaggle:// handle, or a local preset folder
    preset: Optional[str] = None
    path: Optional[str] = None  # model=file: a saved Keras model (.keras, or a legacy .h5) whose input is an image
    # model=file: caffe, torch, tf or none, as keras.applications.imagenet_utils.preprocess_input names its modes
    preprocess: Optional[str] = None


@dataclass
class DataConfig:
    name: str = MISSING  # cifar10, digits or folder
    path: Optional[str] = None  # null: download through Keras; else a local archive or folder
    # indices into the class names; null: every class (data=folder's default: every class folder)
    classes: Optional[List[int]] = field(default_factory=lambda: [4, 5, 6, 7, 8, 9])
    val_fraction: float = 0.2
    image_size: Optional[int] = None  # null keeps the native size (32x32 for CIFAR-10)
    train_per_class: Optional[int] = None  # few-shot: k seeded training images per class; null: all
    test_fraction: float = 0.2  # folder without train/ and test/: stratified share held out for test, fixed seed
    skip_bad_images: bool = False  # folder: skip files that do not decode (Dataset.skipped) instead of stopping


def _default_C_grid() -> list[float]:
    # Kornblith et al. 2019 and DINOv2's linear probe: 45 values, log-spaced from 1e-6 to 1e5
    return [float(f"{C:.6g}") for C in np.logspace(-6, 5, 45)]


@dataclass
class ClassifierConfig:
    # the probe's class (tlsweep.stages.probe.probes): each conf/classifier/NAME.yaml names its own
    _target_: str = "tlsweep.stages.probe.probes.LinearSVCProbe"
    name: str = "linear_svc"  # the probe's name in the registry (tlsweep/stages/probe/probes.py)
    C: Any = 0.1  # a positive number, or auto: chosen on validation over C_grid, then refit on train+val
    C_grid: List[float] = field(default_factory=_default_C_grid)
    loss: str = "squared_hinge"
    max_iter: int = 1000
    tol: float = 1e-4
    dual: str = "auto"  # LinearSVC's dual: auto, true or false


@dataclass
class FeaturesConfig:
    # flatten (the original study), avg, max, grid (VISSL's bounded size), avgmax; token sequences: cls, mean,
    # cls_mean, flatten (tlsweep/stages/features/pooling.py says which applies to which kind of cut)
    pooling: str = "flatten"
    grid_size: int = 2  # grid: adaptive average pooling of each channel to grid_size x grid_size
    normalize: str = "none"  # none, l2 (each row) or standardize (statistics from the fit rows only)


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "tlsweep"
    machine: Optional[str] = None  # a name for this machine in comparisons; null: the host name
    stale_after: str = "5m"  # a RUNNING run whose heartbeat is older is marked KILLED: seconds, or 90s, 5m, 1h
    log_pipeline: bool = False  # also log this job's whole pipeline (raw images -> class names) as model `model`


@dataclass
class CkaConfig:
    debiased: bool = True  # linear CKA with the unbiased HSIC estimator; false: the plain (biased) estimate


@dataclass
class TlsweepConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    classifier: ClassifierConfig = MISSING
    tracking: TrackingConfig = MISSING
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    layer: str = "${model.default_layer}"
    seed: int = 0
    cache_dir: Optional[str] = None  # null: $TLSWEEP_CACHE_DIR, else ~/.cache/tlsweep
    resume: bool = False  # skip configurations that already FINISHED in the experiment
    demo: bool = False  # tags runs as a demo (random weights, stand-in images)
    # transferability scores each job logs from its features (tlsweep.scores.SCORES): [] for none
    scores: List[str] = field(default_factory=lambda: ["logme", "knn"])
    prescreen: Optional[int] = None  # layer=stages: score every stage, fit probes only for this many best
    prescreen_score: str = "logme"  # the score that ranks the stages for prescreen
    cka: CkaConfig = field(default_factory=CkaConfig)  # the sweep's layer similarity


def _registry_names(registry: str) -> str:
    """`flatten | avg | ...`: a registry's entries, for the help page (`${tlsweep.names:poolings}`)."""
    if registry == "poolings":
        from tlsweep.stages.features.pooling import POOLINGS as entries
    else:
        from tlsweep.stages.probe.probes import PROBES as entries
    return " | ".join(entries)


def _backbone_name(source: Optional[str], fallback: str) -> str:
    """`${tlsweep.backbone_name:${model.preset},hub}`: a run's model name from its preset or file."""
    from tlsweep.stages.backbone.source import display_name

    return display_name(source, fallback=fallback)


def register_configs() -> None:
    """Register the schemas (each group's yaml files extend theirs via `defaults`), the resolver that lists a
    registry on the help page, the one that places Hydra's folders under the cache folder, and the one that
    names a Keras-Hub preset's or a file's runs."""
    if not OmegaConf.has_resolver("tlsweep.names"):
        OmegaConf.register_new_resolver("tlsweep.names", _registry_names)
    if not OmegaConf.has_resolver("tlsweep.cache_home"):  # where Hydra's own folders go (conf/config.yaml)
        OmegaConf.register_new_resolver("tlsweep.cache_home", lambda: default_cache_dir(None).as_posix())
    if not OmegaConf.has_resolver("tlsweep.backbone_name"):
        OmegaConf.register_new_resolver("tlsweep.backbone_name", _backbone_name)
    cs = ConfigStore.instance()
    cs.store(name="tlsweep_schema", node=TlsweepConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="classifier", name="classifier_schema", node=ClassifierConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)


def default_tracking_uri(uri: Optional[str], cwd: Path) -> str:
    """An absolute tracking URI: the configured one, $MLFLOW_TRACKING_URI, or ./mlflow.db."""
    uri = uri or environment.read().tracking_uri
    if uri:
        return uri
    return f"sqlite:///{(cwd / 'mlflow.db').resolve().as_posix()}"


def default_cache_dir(cache_dir: Optional[str]) -> Path:
    """An absolute cache folder: the configured one, $TLSWEEP_CACHE_DIR, or ~/.cache/tlsweep."""
    found = environment.read()
    chosen = cache_dir or found.cache_dir
    if not chosen:
        base = found.xdg_cache_home or Path.home() / ".cache"
        chosen = Path(base) / "tlsweep"
    return Path(chosen).expanduser().resolve()
