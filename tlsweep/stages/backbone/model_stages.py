"""The stages of each backbone: the layers a researcher would cut at, input to output, and each cut's depth.

`stage_layers` derives them from the architecture, one rule per keras.applications family (its named block
outputs), else the last layer at each spatial resolution; `scripts/model_configs.py` writes them into
conf/model/*.yaml as `model.stages`. `layer_depth` places a cut between the input (0) and the last stage (1).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

from tlsweep.stages.backbone import composite, models

log = logging.getLogger(__name__)

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
    return MappingProxyType(models.cut_shapes(models.construct(name, weights=None, input_shape=(size, size, 3))))


def _stage_input_size(name: str) -> int:
    return max(STAGE_INPUT_SIZE, models.min_input_size(name))


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
    names, shapes = models.architecture_layer_names(name), architecture_shapes(name)
    common = [layer for layer in names if layer in shapes]
    output = names[-1] if names[-1] == next(reversed(shapes)) else None
    pattern = STAGE_BLOCKS.get(models.backbones()[name][0])
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
    names = models.architecture_layer_names(name)
    last = list(stages or stage_layers(name))[-1]
    models.check_layer_names(names, [layer, last], model_name=name)
    return depth_in(names, layer, last_stage=last)


def depth_in(layers: Sequence[str], layer: str, *, last_stage: str) -> float:
    """`layer_depth` from the cut layers in order (input excluded), as the feature cache records them; a
    joined cut's is its deepest part's (`composite`)."""
    deepest = composite.deepest(layer, layers)
    return (list(layers).index(deepest) + 1) / (list(layers).index(last_stage) + 1)
