"""Config composition in-process with hydra.compose: defaults, overrides, presets and schema errors."""

from __future__ import annotations

import os

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tlsweep.config import default_cache_dir, default_tracking_uri


def test_defaults_are_the_seed_protocol(compose):
    cfg = compose(hydra=True)
    assert cfg.model.name == "vgg16" and cfg.model.weights == "imagenet"
    assert cfg.layer == "block5_pool"
    assert cfg.data.name == "cifar10" and cfg.data.path is None
    assert list(cfg.data.classes) == [4, 5, 6, 7, 8, 9]
    assert cfg.data.val_fraction == 0.2 and cfg.data.image_size is None
    assert (cfg.classifier.name, cfg.classifier.C, cfg.classifier.loss, cfg.classifier.max_iter) == (
        "linear_svc", 0.1, "squared_hinge", 1000)
    assert cfg.tracking.experiment == "tlsweep" and cfg.tracking.uri is None
    assert cfg.seed == 0 and cfg.resume is False
    assert cfg.hydra.job.chdir is False
    assert "tlsweep.sweep.callback.MLflowSweepCallback" in OmegaConf.to_yaml(cfg.hydra.callbacks)


@pytest.mark.parametrize(
    "overrides, key, expected",
    [
        (["model=vgg19"], "model.name", "vgg19"),
        (["model=resnet50"], "layer", "conv5_block3_out"),
        (["model=mobilenet_v2"], "layer", "out_relu"),
        (["model.weights=null"], "model.weights", None),
        (["model.weights=/w/vgg16_notop.h5"], "model.weights", "/w/vgg16_notop.h5"),
        (["layer=block3_pool"], "layer", "block3_pool"),
        (["data.classes=[0,1,2]"], "data.classes", [0, 1, 2]),
        (["data.val_fraction=0.1"], "data.val_fraction", 0.1),
        (["data.path=/d/cifar-10-python.tar.gz"], "data.path", "/d/cifar-10-python.tar.gz"),
        (["data=digits"], "data.image_size", 32),
        (["classifier.C=1"], "classifier.C", 1.0),
        (["classifier.loss=hinge"], "classifier.loss", "hinge"),
        (["classifier.max_iter=50"], "classifier.max_iter", 50),
        (["seed=7"], "seed", 7),
        (["tracking.experiment=mine"], "tracking.experiment", "mine"),
        (["tracking.uri=http://127.0.0.1:5000"], "tracking.uri", "http://127.0.0.1:5000"),
    ],
)
def test_overrides(compose, overrides, key, expected):
    value = OmegaConf.select(compose(overrides, hydra=True), key)
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    assert value == expected


@pytest.mark.parametrize(
    "overrides",
    [
        ["classifer.C=1"],  # typo in a group name
        ["classifier.CC=1"],  # typo in a key
        ["features.grid_size=big"],  # wrong type (classifier.C takes a number or auto: see test_reliability)
        ["classifier.max_iter=1.5"],
        ["data.classes=abc"],
        ["model=alexnet"],  # not a config option
    ],
)
def test_schema_rejects_typos_and_wrong_types_at_composition(compose, overrides):
    with pytest.raises(ConfigCompositionException):
        compose(overrides, hydra=True)


@pytest.mark.parametrize(
    "preset, swept",
    [
        ("seed_study", {"layer": "block3_pool,block4_pool,block5_pool"}),
        ("c_grid", {"layer": "block3_pool,block4_pool,block5_pool", "classifier.C": "0.001,0.01,0.1,1.0"}),
        ("class_subsets", {"layer": "block3_pool,block4_pool,block5_pool",
                           "data.classes": "[4,5,6,7,8,9],[2,3,4,5,6,7],[0,1,8,9]"}),
        ("demo", {"layer": "block3_pool,block4_pool,block5_pool"}),
        ("protocols", {"layer": "block3_pool,block4_pool,block5_pool", "features.normalize": "none,l2,standardize"}),
        ("depth_profile", {"model": "vgg16,resnet50,convnext_tiny", "layer": "stages"}),
    ],
)
def test_presets_compose_and_name_their_command(compose, project_root, preset, swept):
    cfg = compose([f"preset={preset}"], hydra=True)  # `tlsweep preset=NAME`, from any folder
    assert dict(cfg.hydra.sweeper.params) == swept
    assert cfg.hydra.mode.name == "MULTIRUN"
    # the package header Hydra reads first, then the command; sweeps/ at the top shows the same files
    header, command = (project_root / "sweeps" / f"{preset}.yaml").read_text().splitlines()[:2]
    assert (header, command) == ("# @package _global_", f"# tlsweep preset={preset}")
    if preset in ("demo", "protocols"):  # offline: bundled images, random-init weights
        assert cfg.data.name == "digits" and cfg.model.weights is None and cfg.demo is True
    else:
        assert cfg.data.name == "cifar10" and cfg.model.weights == "imagenet"


def test_tracking_uri_and_cache_dir_are_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert default_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert default_tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"
    monkeypatch.delenv("TLSWEEP_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir(None) == tmp_path.resolve() / ".cache" / "tlsweep"
    assert default_cache_dir("rel/cache").is_absolute()


def test_an_empty_variable_counts_as_unset_and_a_users_library_setting_wins(tmp_path, monkeypatch):
    from tlsweep import environment
    from tlsweep.sweep import context

    monkeypatch.setenv("TLSWEEP_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_RUN_ID", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert default_cache_dir(None) == tmp_path.resolve() / "tlsweep"
    assert context.outer_run_id() is None
    assert default_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123abcd")
    assert context.outer_run_id() == "0123abcd"
    # library settings: tlsweep's default only where the user set none
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    environment.set_library_defaults()
    assert environment.read().native_logs
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["MLFLOW_LOGGING_LEVEL"]) == ("0", "WARNING")


def test_the_original_studys_config_keeps_the_hash_its_runs_were_logged_with(compose):
    """Keys added later (pooling, normalisation, few-shot, folder data) are left out of the hash at the value
    runs had before them, so `resume=true` still finds those runs. The value is what the release before
    them computed for the default config."""
    from tlsweep import identity

    cfg = compose()
    assert identity.config_hash(OmegaConf.to_container(cfg, resolve=True)) == "ba0a6b6860eab86e"
    changed = compose(["features.pooling=grid"])
    assert identity.config_hash(OmegaConf.to_container(changed, resolve=True)) != "ba0a6b6860eab86e"
