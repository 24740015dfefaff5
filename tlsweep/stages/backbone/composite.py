"""Several cuts joined into one: `layer=block8+block9+block10+block11`.

A joined cut is its parts' outputs side by side on their last axis: token sequences of one length give T x
(D1 + D2 + ...), so `features.pooling=cls` of DINOv2's last four blocks is their four class tokens in a row,
as DINOv2's linear evaluation takes them; maps of one size give H x W x (C1 + C2 + ...). Its parts must agree
on every other axis. The cut is computed in the same forward pass as every other and cached as one entry
under its own name; its depth and position are its deepest part's.

`+` needs no quoting on a Hydra command line (`layer=a+b`, and in a sweep `layer=a+b,stages`); no Keras
layer name holds one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from tlsweep.errors import ConfigError

JOIN = "+"


def parts(layer: str) -> list[str]:
    """The cuts `layer` joins, in order: itself when it joins none."""
    return str(layer).split(JOIN)


def is_joined(layer: str) -> bool:
    return JOIN in str(layer)


def deepest(layer: str, layers: Sequence[str]) -> str:
    """The part of `layer` that comes last in the backbone's cut layers `layers` (`layer` itself when plain)."""
    order = list(layers)
    return max(parts(layer), key=order.index)


def shape(layer: str, shapes: Mapping[str, Sequence[int]], *, model_name: str = "the model") -> tuple[int, ...]:
    """The joined cut's output shape per image; one line when its parts' shapes cannot be joined."""
    found = [tuple(int(d) for d in shapes[part]) for part in parts(layer)]
    if len({item[:-1] for item in found}) > 1:
        described = " and ".join("x".join(map(str, item)) for item in found)
        raise ConfigError(
            f"layer should join cuts that agree on every axis but the last ({JOIN} joins them side by side); "
            f"received layer={layer!r}, whose parts of {model_name} give {described}"
        )
    return (*found[0][:-1], sum(item[-1] for item in found))


def joined_shapes(layers: Sequence[str], shapes: Mapping[str, Sequence[int]], *,
                  model_name: str = "the model") -> dict[str, tuple[int, ...]]:
    """The shapes of the joined cuts among `layers`, by name."""
    return {layer: shape(layer, shapes, model_name=model_name) for layer in layers if is_joined(layer)}
