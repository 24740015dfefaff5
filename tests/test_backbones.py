"""Every keras.applications CNN as `model=NAME`: the registry, its committed configs, stable layer names, input
sizes, the offline weights line, whole jobs on other backbones, and `python -m tlsweep.layers`."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import keras
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tlsweep import layers
from tlsweep.errors import ConfigError, FetchError
from tlsweep.stages.backbone import models
from tlsweep.stages.probe import memory
from tlsweep.tracking.names import Metric, Param, Status, Tag
from tlsweep.validate import validate

TYPED_NAMES = ["vgg16", "vgg19", "resnet50", "resnet101_v2", "inception_v3", "inception_resnet_v2", "xception",
               "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "densenet121",
               "nasnet_mobile", "nasnet_large", "efficientnet_b0", "efficientnet_b7", "efficientnet_v2_b0",
               "efficientnet_v2_s", "convnext_tiny", "convnext_xlarge"]


def test_the_registry_is_every_keras_applications_cnn_by_its_snake_case_name():
    registry = models.backbones()
    constructors = sorted(name for name in dir(keras.applications) if name[0].isupper())
    assert sorted(constructor for _, constructor in registry.values()) == constructors
    assert set(TYPED_NAMES) <= set(registry) and len(registry) == len(constructors) == 40
    assert registry["resnet50_v2"] == ("resnet_v2", "ResNet50V2")
    assert models.preprocess_fn("resnet50_v2") is keras.applications.resnet_v2.preprocess_input
    assert models.preprocess_fn("densenet121") is keras.applications.densenet.preprocess_input


def test_every_backbone_has_a_committed_config(project_root, compose):
    files = {path.stem: yaml.safe_load(path.read_text()) for path in (project_root / "conf" / "model").glob("*.yaml")}
    files = {name: spec for name, spec in files.items() if not {"preset", "path"} & set(spec)}  # not Keras-Hub's, a file
    assert set(files) == set(models.backbones())
    for name, spec in files.items():
        assert spec["name"] == name and spec["weights"] == "imagenet" and spec["default_layer"]
    # the original four keep their cuts
    assert {name: files[name]["default_layer"] for name in ("vgg16", "vgg19", "resnet50", "mobilenet_v2")} == {
        "vgg16": "block5_pool", "vgg19": "block5_pool", "resnet50": "conv5_block3_out", "mobilenet_v2": "out_relu"}
    cfg = compose(["model=efficientnet_v2_b0"])
    assert (cfg.model.name, cfg.layer) == ("efficientnet_v2_b0", "top_activation")


@pytest.mark.slow
def test_committed_configs_match_what_the_generator_writes(project_root):
    """Builds all 40 models (minutes): the default layers are each model's last layer, e.g. after a Keras upgrade."""
    result = subprocess.run([sys.executable, str(project_root / "scripts" / "model_configs.py"), "--check"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout


def test_auto_named_layers_keep_their_names_in_every_build():
    names = models.architecture_layer_names("mobilenet_v3_small")
    keras.layers.Activation("relu")  # moves Keras' process-wide counter of unnamed layers
    keras.layers.Rescaling(1.0)
    built = models.build_backbone(name="mobilenet_v3_small", weights=None, input_size=32, seed=0)
    assert models.cut_layer_names(built) == list(names) and names[-1] == "activation_17"


def test_an_input_below_the_models_minimum_is_one_line_naming_both_sizes(isolated, cifar_dir, compose, tiny):
    assert (models.min_input_size("inception_v3"), models.min_input_size("xception"),
            models.min_input_size("convnext_tiny")) == (75, 71, 32)
    with pytest.raises(ConfigError) as err:  # checked before Keras builds a layer
        models.build_backbone(name="inception_resnet_v2", weights=None, input_size=74, seed=0)
    assert str(err.value) == ("data.image_size should be at least 75x75 for inception_resnet_v2, its smallest "
                              "input; received data.image_size=74")
    with pytest.raises(ConfigError, match=r"at least 71x71 for xception, its smallest input; received "
                                          r"data.image_size=null, which keeps the 32x32 images of data=cifar10$"):
        run_job(compose([*tiny, f"data.path={cifar_dir}", "model=xception", "data.classes=[4,5]"]))


@pytest.mark.parametrize("name, filename", [
    ("resnet50_v2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("mobilenet_v3_small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
])
def test_offline_imagenet_weights_name_the_file_keras_would_fetch(monkeypatch, name, filename):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen builds its opener, proxies and all, again
    with pytest.raises(FetchError) as err:
        models.build_backbone(name=name, weights="imagenet", input_size=32, seed=0)
    assert f"the ImageNet weights for {name}" in str(err.value)
    assert f"pass a local copy with model.weights=/path/to/{filename}" in str(err.value)


def test_the_weights_file_is_named_even_without_a_url():
    assert models.weights_file("convnext_tiny", OSError("proxy refused")).startswith(
        "model.weights=/path/to/<convnext_tiny weights .h5>")


@pytest.mark.parametrize("name, layer", [("mobilenet_v3_small", "activation_17"), ("resnet50_v2", "post_relu")])
def test_a_whole_job_on_another_backbone_and_a_folder(isolated, image_folder_writer, compose, experiment_runs, name,
                                                       layer):
    root = image_folder_writer(isolated / "imgs", per_class=8)
    accuracy = run_job(compose(["data=folder", f"data.path={root}", f"model={name}", "model.weights=null",
                                "model.batch_size=16", "data.val_fraction=0.25"]))
    (logged,) = experiment_runs(MlflowClient())
    assert logged.info.status == Status.FINISHED and 0.0 <= accuracy <= 1.0
    assert (logged.data.params[Param.MODEL], logged.data.params[Param.LAYER]) == (name, layer)
    assert logged.data.params[Param.CLASSES] == "[0, 1, 2]" and logged.data.tags[Tag.CLASSES] == "cat,dog,eel"
    assert logged.data.metrics[Metric.CNN_FORWARD_IMAGES] == 24 and int(logged.data.params[Param.FEATURE_DIM]) > 0


def run_job(cfg) -> float:
    from tlsweep.job import run

    return run(cfg)


def test_layers_lists_every_cut_with_its_sizes_and_marks_what_would_not_fit(capsys, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: 4 << 30)  # a 4 GiB machine
    assert layers.main(["model=vgg16", "model.weights=imagenet", "data.image_size=64"]) == 0  # weights never load
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line[:1].isdigit()}
    assert list(rows) == list(models.architecture_layer_names("vgg16"))
    # layer: output, then a column per pooling (flatten, avg, max, grid 2x2, avgmax), fit GiB (30000 CIFAR-10
    # images, linear_svc: 28 bytes a value)
    assert rows["block5_pool"][2:9] == ["2x2x512", "2048", "512", "512", "2048", "1024",
                                        f"{30000 * 2048 * 28 / 2**30:.2f}"]
    assert len(rows["block5_pool"]) == 9  # 1.60 GiB fits in 4: not marked
    assert rows["block1_conv1"][2:4] == ["64x64x64", "262144"] and rows["block1_conv1"][-1] == "*"  # 205 GiB
    assert "layer=block5_pool is #18" in out and "this machine's 4.0 GiB" in out


def test_layers_counts_a_folders_training_images_and_takes_the_classifier(tmp_path, image_folder_writer, compose):
    root = image_folder_writer(tmp_path / "imgs", per_class=10)
    config = validate(compose(["data=folder", f"data.path={root}", "data.classes=[0,2]", "data.test_fraction=0.3"]))
    assert memory.training_rows(config) == 14  # 7 training images in each of the two classes
    assert memory.training_rows(validate(compose(["data=digits"]))) == 1437


def test_layers_help_and_errors_as_a_user_sees_them(project_root):
    shown = subprocess.run([sys.executable, "-m", "tlsweep.layers", "--help"], capture_output=True, text=True,
                           cwd=project_root, timeout=120)
    assert shown.returncode == 0 and "python -m tlsweep.layers model=resnet50 data.image_size=224" in shown.stdout
    assert "bytes per value" in shown.stdout and "machine's physical memory" in shown.stdout
    failed = subprocess.run([sys.executable, "-m", "tlsweep.layers", "model=resnet50", "data.image_size=16"],
                            capture_output=True, text=True, cwd=project_root, timeout=300)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if "data.image_size should be" in line]
    assert "at least 32x32 for resnet50" in line and line.endswith("received data.image_size=16")
