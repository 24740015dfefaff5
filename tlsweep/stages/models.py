"""Backbones from keras.applications: construction, weights, preprocessing and cut layers."""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from tlsweep.errors import ConfigError, DataError, FetchError

log = logging.getLogger(__name__)

# name -> (keras.applications module, constructor, ImageNet weights file Keras would fetch)
BACKBONES = {
    "vgg16": ("vgg16", "VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg19": ("vgg19", "VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": ("resnet", "ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": (
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
}


def _application(name: str):
    module_name, constructor, _ = BACKBONES[name]
    return importlib.import_module(f"keras.applications.{module_name}"), constructor


def preprocess_fn(name: str) -> Callable:
    """The backbone's own ImageNet `preprocess_input` (caffe BGR mean subtraction for VGG)."""
    module, _ = _application(name)
    return module.preprocess_input


def weights_fingerprint(weights: Optional[str], seed: int) -> str:
    """Identifies the weights in cache keys and tags: a file's content hash, or the init seed."""
    if weights is None:
        return f"random-seed{seed}"
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(
            f"model.weights should be 'imagenet', null or a path to a weights file; "
            f"received model.weights={weights!r}, which does not exist"
        )
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


def build_backbone(*, name: str, weights: Optional[str], input_size: int, seed: int):
    """The convolutional part of a keras.applications model (`include_top=False`)."""
    import keras

    module, constructor = _application(name)
    weights_fingerprint(weights, seed)  # validates a path before Keras sees it
    keras.utils.set_random_seed(seed)  # random-init backbones are reproducible
    source = weights if weights in (None, "imagenet") else str(Path(weights).expanduser())
    try:
        return getattr(module, constructor)(
            include_top=False, weights=source, input_shape=(input_size, input_size, 3)
        )
    except Exception as err:
        if weights not in (None, "imagenet"):  # ValueError: another model's file; OSError: h5py, truncated
            raise DataError(
                f"model.weights should be 'imagenet', null or a weights file of {name}; received model.weights="
                f"{weights!r}, which does not load ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
        if isinstance(err, ValueError):
            raise ConfigError(
                f"data.image_size should be null or a size {name} accepts; received data.image_size={input_size} "
                f"({str(err).splitlines()[0][:200]})"
            ) from None
        if weights is None:
            raise
        filename = BACKBONES[name][2]
        raise FetchError(
            f"could not download the ImageNet weights for {name} ({str(err).splitlines()[0][:200] or type(err).__name__}); "
            f"pass a local file with model.weights=/path/to/{filename}"
        ) from None


def cut_layer_names(model) -> list[str]:
    """Every layer a feature can be taken from: all but the input."""
    return list(cut_shapes(model))


def cut_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each cut layer's output shape per image: (H, W, C) for a feature map."""
    return {layer.name: tuple(int(d) for d in layer.output.shape[1:]) for layer in model.layers
            if type(layer).__name__ != "InputLayer"}


def validate_layers(model, layers: Sequence[str], *, model_name: str) -> None:
    valid = cut_layer_names(model)
    for layer in layers:
        if layer not in valid:
            raise ConfigError(
                f"layer should be a layer of {model_name}, one of {valid}; received layer={layer!r}"
            )


def multi_output_model(model, layers: Sequence[str]):
    """One model whose outputs are the given cuts, so one forward pass serves every layer."""
    import keras

    return keras.Model(inputs=model.inputs, outputs=[model.get_layer(layer).output for layer in layers])
