"""A transformer's blocks as cuts: one functional graph in which every block's output is a named `Cut` layer.

Keras-Hub builds the blocks of a vision transformer either as layers of its functional graph (CLIP's image
encoder) or inside one layer that calls them in turn (ViT's and DINOv2's encoders), whose block outputs are
then no tensors of the graph. `tap_model` finds the blocks, the largest group of two or more layers of one
Keras-Hub class, at the top of the graph or inside one of its layers, and for nested blocks rebuilds the graph
with that layer's own `call` run on the graph's tensors (`keras.models.clone_model`'s `call_function`, with
the layers, and so the weights, shared rather than copied). Every block's output is then a tensor of the
graph, and the forward pass is the model's own, to the last bit (tests/test_hub.py checks it).

The cuts are `block0` .. `block{N-1}`, counted from 0 as the blocks run, and `output`: the model's own output,
the last block's through the final normalisation (left out when there is none). A token sequence's cut
records how many tokens come before the patch tokens (`prefix_tokens`: the class token and any registers),
which the token poolings read. This module imports Keras; `models` reads the marks without it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

BLOCK, OUTPUT = "block", "output"


@keras.saving.register_keras_serializable(package="tlsweep")
class Cut(keras.layers.Identity):
    """Marks a cut of a model built for cutting (`tap_model`): its output is the tensor it names."""

    def __init__(self, prefix_tokens: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.prefix_tokens = int(prefix_tokens)  # tokens before the patch tokens: class token, registers

    def get_config(self) -> dict:
        return {**super().get_config(), "prefix_tokens": self.prefix_tokens}


def block_name(index: int) -> str:
    return f"{BLOCK}{index}"


def _is_block_class(layer) -> bool:
    """A model's own layer class (Keras-Hub's, or the user's), not one of Keras' built-in layers."""
    return not type(layer).__module__.startswith("keras.")


def find_blocks(layers: Sequence) -> list:
    """The largest group of two or more layers of one model-specific class, in call order; [] when none."""
    groups: dict[type, list] = {}
    for layer in layers:
        if _is_block_class(layer):
            groups.setdefault(type(layer), []).append(layer)
    found = max((group for group in groups.values() if len(group) >= 2), key=len, default=[])
    return list(found)


def _sublayers(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _located(model) -> tuple[Optional[object], list]:
    """(the layer that calls the blocks, or None when they are layers of the graph; the blocks)."""
    top = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    blocks = find_blocks(top)
    if blocks:
        return None, blocks
    for layer in top:
        nested = find_blocks(_sublayers(layer))
        if nested:
            return layer, nested
    return None, []


def _unrolled(model, container):
    """`model` rebuilt with `container`'s call run on the graph's tensors, so that each layer it calls is a node."""
    def call(layer, *args, **kwargs):
        return layer.call(*args, **kwargs) if layer is container else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _latest_output(layer):
    """The layer's output in the graph built last (the rebuild just made its node)."""
    return layer._inbound_nodes[-1].output_tensors[0]


def patch_count(model, image_size: Sequence[int]) -> Optional[int]:
    """How many patch tokens an image of `image_size` (H, W) makes, from the model's `patch_size`; None if unknown."""
    patch = getattr(model, "patch_size", None)
    if patch is None:
        return None
    height, width = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
    return (int(image_size[0]) // int(height)) * (int(image_size[1]) // int(width))


def tap_model(model) -> Optional[keras.Model]:
    """A model from `model`'s image input to one `Cut` per block and its output; None when it has no blocks."""
    container, blocks = _located(model)
    if not blocks:
        return None
    graph = model if container is None else _unrolled(model, container)
    (image,) = graph.inputs
    tensors = [_latest_output(block) for block in blocks]
    final = graph.outputs[0]
    patches = patch_count(model, image.shape[1:3])

    def cut(tensor, name: str):
        prefix = 0
        if len(tensor.shape) == 3 and patches is not None:  # (batch, tokens, width)
            prefix = max(int(tensor.shape[1]) - patches, 0)
        return Cut(prefix_tokens=prefix, name=name)(tensor)

    outputs = [cut(tensor, block_name(index)) for index, tensor in enumerate(tensors)]
    if final is not tensors[-1]:
        outputs.append(cut(final, OUTPUT))
    return keras.Model(image, outputs, name=f"{model.name}_cuts")
