"""Backbones from keras.applications: construction, weights, preprocessing and cut layers."""

from __future__ import annotations

import functools
import hashlib
import importlib
import itertools
import logging
import re
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

from tlsweep.errors import ConfigError, DataError, FetchError

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


def _construct(name: str, *, seed: Optional[int] = None, **kwargs):
    """The backbone without its classifier, its auto-named layers (activation_3, layer_normalization) named
    the same in every build: Keras numbers unnamed layers from a process-wide counter, which
    `clear_session` resets, so a cut named in the config finds the same layer in every process."""
    import keras

    _, constructor = _application(name)
    keras.backend.clear_session(free_memory=False)
    if seed is not None:  # after the reset, which forgets the seed
        keras.utils.set_random_seed(seed)
    return constructor(include_top=False, **kwargs)


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
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


def resolved_weights(weights: Optional[str]) -> Optional[str]:
    """model.weights as another process in another folder would find it: a file's absolute path."""
    return weights if weights in (None, "imagenet") else str(Path(weights).expanduser().resolve())


def build_backbone(*, name: str, weights: Optional[str], input_size: int, seed: int):
    """The convolutional part of a keras.applications model (`include_top=False`)."""
    weights_fingerprint(weights, seed)  # validates a path before Keras sees it
    source = weights if weights in (None, "imagenet") else str(Path(weights).expanduser())
    check_input_size(name, input_size)
    try:  # random-init backbones are reproducible: seeded
        return _construct(name, seed=seed, weights=source, input_shape=(input_size, input_size, 3))
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
def architecture_layer_names(name: str) -> tuple[str, ...]:
    """The cut layers of backbone `name`, from its architecture alone: no weights, no data, no forward pass."""
    return tuple(cut_layer_names(_construct(name, weights=None)))


def cut_layer_names(model) -> list[str]:
    """Every layer a feature can be taken from: all but the input."""
    return [layer.name for layer in _cut_layers(model)]


def _cut_layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def cut_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each cut layer's output shape per image: (H, W, C) for a feature map."""
    return {layer.name: tuple(int(d) for d in layer.output.shape[1:]) for layer in _cut_layers(model)}


def validate_layers(model, layers: Sequence[str], *, model_name: str) -> None:
    check_layer_names(cut_layer_names(model), layers, model_name=model_name)


def check_layer_names(valid: Sequence[str], layers: Sequence[str], *, model_name: str) -> None:
    valid = list(valid)
    for layer in layers:
        if layer not in valid:
            raise ConfigError(
                f"layer should be a layer of {model_name}, one of {valid}; received layer={layer!r}"
            )


def multi_output_model(model, layers: Sequence[str]):
    """One model whose outputs are the given cuts, so one forward pass serves every layer."""
    import keras

    return keras.Model(inputs=model.inputs, outputs=[model.get_layer(layer).output for layer in layers])


# Stages: where a researcher would cut, input to output (conf/model/*.yaml `stages`, written from stage_layers)
STAGE_INPUT_SIZE = 224  # resolutions are read at ImageNet's size, where every backbone's stages differ in size
MIN_STAGES = 3
# keras.applications module -> its named block outputs (a regex matching whole names). With a group, a stage
# ends at the last match of each value of the group (a stage number in the name); without, at the last match
# at each spatial resolution.
STAGE_BLOCKS = {
    "vgg16": r"block\d+_pool", "vgg19": r"block\d+_pool",
    "resnet": r"conv(\d+)_block\d+_out",
    "resnet_v2": r"conv(\d+)_block\d+_out",  # by name: v2 downsamples in a stage's last block, not its first
    "densenet": r"conv(\d+)_block\d+_concat",
    "efficientnet": r"block(\d+)[a-z]+_\w+", "efficientnet_v2": r"block(\d+)[a-z]+_\w+",
    "convnext": r"\w+_stage_(\d+)_block_\d+_identity",
    "mobilenet": r"conv_pw_\d+_relu",
    "mobilenet_v2": r"(?:expanded_conv|block_\d+)_(?:project_BN|add)",
    "mobilenet_v3": r"expanded_conv(?:_\d+)?_(?:project_bn|add)",
    "inception_v3": r"mixed\d+",
    "inception_resnet_v2": r"mixed_\w+|block\d+_\d+_ac|conv_7b_ac",
    "xception": r"add(?:_\d+)?",  # the residual sums, which Keras leaves unnamed: add, add_1, ...
    "nasnet": r"normal_concat_\d+|reduction_concat_\w+",
}


@functools.lru_cache(maxsize=None)
def architecture_shapes(name: str) -> Mapping[str, tuple[int, ...]]:
    """Each cut layer's output shape at a concrete input size (STAGE_INPUT_SIZE, or the backbone's minimum if
    larger), built without weights: `architecture_layer_names` has no input size, so no resolutions."""
    size = _stage_input_size(name)
    return MappingProxyType(cut_shapes(_construct(name, weights=None, input_shape=(size, size, 3))))


def _stage_input_size(name: str) -> int:
    return max(STAGE_INPUT_SIZE, min_input_size(name))


@functools.lru_cache(maxsize=None)
def stage_layers(name: str) -> tuple[str, ...]:
    """The layers a researcher would cut backbone `name` at, input to output: the end of each stage.

    A family with named block outputs (STAGE_BLOCKS, by keras.applications module) ends a stage at the last of
    them in each numbered group (ResNet's conv2..conv5, DenseNet's dense blocks, EfficientNet's block1..,
    ConvNeXt's stages) or at each spatial resolution (VGG's pools, MobileNet's, Inception's, Xception's and
    NASNet's blocks). Any other backbone, or a family whose names no longer match, gets `resolution_ends`.
    The model's output ends the last stage: it takes the place of the last block output when only a
    normalisation or an activation follows that (the same output shape: ResNetV2's post_relu, DenseNet's relu,
    ConvNeXt's final layer_normalization), else it is added (EfficientNet's top_activation).

    Only layers named alike in a build without an input size (what a config's layers are checked against)
    and at a concrete size (what a run builds) count; NASNetLarge's unnamed layers differ between the two.
    """
    names, shapes = architecture_layer_names(name), architecture_shapes(name)
    common = [layer for layer in names if layer in shapes]
    output = names[-1] if names[-1] == next(reversed(shapes)) else None
    pattern = STAGE_BLOCKS.get(backbones()[name][0])
    stages = _ending_at(output, _block_ends(common, shapes, re.compile(pattern)), shapes) if pattern else []
    if len(stages) < MIN_STAGES:
        if pattern:
            log.warning("%s: only %d stage(s) from its block names (%s); using the last layer at each resolution",
                        name, len(stages), pattern)
        stages = _ending_at(output, resolution_ends(common, shapes, input_size=_stage_input_size(name)), shapes)
    return tuple(stages)


def _block_ends(layers: Sequence[str], shapes: Mapping[str, tuple[int, ...]], pattern: re.Pattern) -> list[str]:
    matches = [(layer, found) for layer in layers if (found := pattern.fullmatch(layer))]
    key = (lambda match: match[1].group(1)) if pattern.groups else (lambda match: shapes[match[0]][:2])
    return [list(group)[-1][0] for _, group in itertools.groupby(matches, key=key)]


def _ending_at(output: Optional[str], stages: list[str], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """`stages` with the model's output as the last: in place of a last stage of the same shape, else added."""
    if output is None or stages[-1:] == [output]:
        return stages
    if stages and shapes[stages[-1]] == shapes[output]:
        return stages[:-1] + [output]
    return stages + [output]


def resolution_ends(layers: Sequence[str], shapes: Mapping[str, tuple[int, ...]], *, input_size: int) -> list[str]:
    """The last layer at each spatial resolution: the stage rule for an architecture without named blocks.

    A CNN's stages end where it downsamples. Only the feature maps of the main path count: not padding
    (larger than the maps before it), not squeeze-and-excitation vectors (smaller than the model's output),
    and not the input's own resolution (preprocessing, or the first convolutions).
    """
    maps = [layer for layer in layers if len(shapes[layer]) == 3]
    if not maps:
        return []
    final, current, path = shapes[maps[-1]][:2], (input_size, input_size), []
    for layer in maps:
        size = shapes[layer][:2]
        if all(low <= side <= high for low, side, high in zip(final, size, current)):
            current = size
            if size != (input_size, input_size):
                path.append(layer)
    return [list(group)[-1] for _, group in itertools.groupby(path, key=lambda layer: shapes[layer][:2])]


def layer_depth(name: str, layer: str, *, stages: Optional[Sequence[str]] = None) -> float:
    """Where cut `layer` sits in backbone `name`, as a fraction of its depth: 0 at the input, 1 at the last stage.

    A layer's position is its place in the model's layer list (`architecture_layer_names`, topological
    order), counting the input as 0 and the first layer after it as 1. The depth is that position divided by
    the last stage's (`stages`, by default `stage_layers(name)`, whose last stage is the model's output).
    Layers after a shorter list's last stage get depths above 1. Counting layers, not convolutions, keeps the
    definition the same for every architecture, so depths of different backbones can share one axis. Pass
    the config's model.stages: without them, the stages are derived from one more build without weights.
    """
    names = architecture_layer_names(name)
    last = list(stages or stage_layers(name))[-1]
    check_layer_names(names, [layer, last], model_name=name)
    return depth_in(names, layer, last_stage=last)


def depth_in(layers: Sequence[str], layer: str, *, last_stage: str) -> float:
    """`layer_depth` from the cut layers in order (input excluded), as the feature cache records them."""
    return (list(layers).index(layer) + 1) / (list(layers).index(last_stage) + 1)
