"""Backbones from keras.applications: construction, weights, preprocessing and cut layers."""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import re
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

from tlsweep.errors import ConfigError, DataError, FetchError
from tlsweep.stages.backbone import composite, content

log = logging.getLogger(__name__)


def snake_name(constructor: str, module: str) -> str:
    """The name users type for a keras.applications constructor: ResNet50V2 (module resnet_v2) -> resnet50_v2.

    The module name gives the words (mobilenet_v3 + MobileNetV3Small -> mobilenet_v3_small); a model number
    stays joined (densenet121, resnet50), as Keras' own module and weight file names have it.
    """
    lower, joined = constructor.lower(), module.replace("_", "")
    if lower == joined:
        return module
    if lower.startswith(joined):
        suffix = lower[len(joined):]
        return module + suffix if suffix.isdigit() else f"{module}_{suffix}"
    return re.sub(r"(?<=\d)v(?=\d)", "_v", lower)  # ResNet50V2 in resnet_v2


@functools.lru_cache(maxsize=None)
def backbones() -> dict[str, tuple[str, str]]:
    """Every CNN in keras.applications, read from the package: snake_case name -> (module, constructor)."""
    import keras

    found = {}
    for constructor in dir(keras.applications):
        if constructor[:1].isupper() and callable(getattr(keras.applications, constructor)):
            module = getattr(keras.applications, constructor).__module__.rsplit(".", 1)[-1]
            found[snake_name(constructor, module)] = (module, constructor)
    return dict(sorted(found.items()))


def _application(name: str) -> tuple:
    """(its public module, which holds `preprocess_input`; its constructor, from keras.applications)."""
    import keras

    module_name, constructor = backbones()[name]
    return importlib.import_module(f"keras.applications.{module_name}"), getattr(keras.applications, constructor)


def construct(name: str, *, seed: Optional[int] = None, **kwargs):
    """The backbone without its classifier, its auto-named layers (activation_3, layer_normalization) named
    the same in every build: Keras numbers unnamed layers from a process-wide counter, which
    `clear_session` resets, so a cut named in the config finds the same layer in every process."""
    _, constructor = _application(name)
    fresh_session(seed)
    return constructor(include_top=False, **kwargs)


def fresh_session(seed: Optional[int] = None) -> None:
    """Reset Keras' counter of unnamed layers (so auto-named layers are named alike in every build), then seed
    the random init (after the reset, which forgets the seed). The dtype policy the reset also forgets is kept:
    a backbone built under `precision.policy` computes in it."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.backend.clear_session(free_memory=False)
    keras.mixed_precision.set_global_policy(policy)
    if seed is not None:
        keras.utils.set_random_seed(seed)


@functools.lru_cache(maxsize=None)
def min_input_size(name: str) -> int:
    """The smallest square input backbone `name` accepts (75 for Inception, 71 for Xception, else 32).

    Keras checks it before building any layer, so a 1x1 request costs nothing and its message has the answer.
    """
    _, constructor = _application(name)
    try:
        constructor(include_top=False, weights=None, input_shape=(1, 1, 3))
    except ValueError as err:
        found = re.search(r"at least (\d+)x(\d+)", str(err))
        if found:
            return max(int(found.group(1)), int(found.group(2)))
    return 32  # keras.applications' usual minimum, if a future model words its check differently


def check_input_size(name: str, input_size: int, *, received: str = "") -> None:
    """One line naming both sizes when the input is smaller than the backbone accepts.

    `received` says where the size came from; by default data.image_size, which a null resolves to the
    images' own size.
    """
    smallest = min_input_size(name)
    if input_size < smallest:
        raise ConfigError(
            f"data.image_size should be at least {smallest}x{smallest} for {name}, its smallest input; "
            f"received {received or f'data.image_size={input_size}'}"
        )


def weights_file(name: str, error: BaseException) -> str:
    """The ImageNet weights file Keras tried to fetch, as the override that passes a local copy.

    Keras' download error quotes the URL; its last part is the file name (each model names its own).
    """
    found = re.search(r"https?://\S+/([^/\s:]+\.h5)", str(error))
    if found:
        return f"model.weights=/path/to/{found.group(1)}"
    return f"model.weights=/path/to/<{name} weights .h5> (the include_top=False ImageNet weights file of {name})"


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
    return f"file-{content.file_sha256(path)[:content.DIGEST_CHARS]}"


def resolved_weights(weights: Optional[str]) -> Optional[str]:
    """model.weights as another process in another folder would find it: a file's absolute path."""
    return weights if weights in (None, "imagenet") else str(Path(weights).expanduser().resolve())


def build_backbone(*, name: str, weights: Optional[str], input_size: int, seed: int):
    """The convolutional part of a keras.applications model (`include_top=False`)."""
    weights_fingerprint(weights, seed)  # validates a path before Keras sees it
    source = weights if weights in (None, "imagenet") else str(Path(weights).expanduser())
    check_input_size(name, input_size)
    try:  # random-init backbones are reproducible: seeded
        return construct(name, seed=seed, weights=source, input_shape=(input_size, input_size, 3))
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
        raise FetchError(
            what=f"the ImageNet weights for {name}", reason=str(err).splitlines()[0][:200] or type(err).__name__,
            remedy=weights_file(name, err),
        ) from None


@functools.lru_cache(maxsize=None)
def architecture_cuts(name: str) -> Mapping[str, tuple[Optional[int], ...]]:
    """Each cut layer of backbone `name` and its output shape per image (None where it follows the input size),
    from its architecture alone: no weights, no data, no forward pass."""
    return MappingProxyType(output_shapes(construct(name, weights=None)))


def architecture_layer_names(name: str) -> tuple[str, ...]:
    """The cut layers of backbone `name`, from its architecture alone: no weights, no data, no forward pass."""
    return tuple(architecture_cuts(name))


def cut_layer_names(model) -> list[str]:
    """Every layer a feature can be taken from: all but the input, or the cuts a model built for cutting marks."""
    return [layer.name for layer in _cut_layers(model)]


def _cut_layers(model) -> list:
    """All layers but the input; a model with `Cut` layers (a transformer's blocks: `blocks.tap_model`) is cut
    at those alone."""
    marked = [layer for layer in model.layers if type(layer).__name__ == "Cut" and hasattr(layer, "prefix_tokens")]
    return marked or [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def cut_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each cut layer's output shape per image: (H, W, C) for a feature map, (T, D) for a token sequence."""
    return {layer.name: tuple(int(d) for d in layer.output.shape[1:]) for layer in _cut_layers(model)}


def output_shapes(model) -> dict[str, tuple[Optional[int], ...]]:
    """Each cut layer's output shape per image as built, None where it follows an input size left open."""
    return {layer.name: tuple(layer.output.shape[1:]) for layer in _cut_layers(model)}


def cut_prefix_tokens(model) -> dict[str, int]:
    """The token sequences' cuts and how many tokens come before their patch tokens (class token, registers)."""
    return {layer.name: layer.prefix_tokens for layer in _cut_layers(model) if getattr(layer, "prefix_tokens", 0)}


def validate_layers(model, layers: Sequence[str], *, model_name: str, command: str = "") -> None:
    check_layer_names(cut_layer_names(model), layers, model_name=model_name, command=command)


def check_layer_names(valid: Sequence[str], layers: Sequence[str], *, model_name: str, command: str = "") -> None:
    """One line for a layer the backbone lacks (each part of a joined cut, `composite`): the closest names it
    has, and the command that lists them all (`python -m tlsweep.layers` and `command`, model=NAME by default)."""
    valid = list(valid)
    for layer in (part for name in layers for part in composite.parts(name)):
        if layer not in valid:
            close = difflib.get_close_matches(str(layer), valid, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ConfigError(
                f"layer should be a layer of {model_name}; received layer={layer!r}; {hint}every layer of "
                f"{model_name} is listed by: python -m tlsweep.layers {command or f'model={model_name}'}"
            )


def multi_output_model(model, layers: Sequence[str]):
    """One model whose outputs are the given cuts, so one forward pass serves every layer; a joined cut
    (`composite`) is its parts' outputs concatenated on the last axis."""
    import keras

    def output(layer: str):
        tensors = [model.get_layer(part).output for part in composite.parts(layer)]
        if len(tensors) == 1:
            return tensors[0]  # a Keras name holds no "+"
        return keras.layers.Concatenate(axis=-1, name="joined_" + "__".join(composite.parts(layer)))(tensors)

    return keras.Model(inputs=model.inputs, outputs=[output(layer) for layer in layers])
