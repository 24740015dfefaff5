"""The poolings: how a cut's output becomes one row of features, one registry entry each.

`POOLINGS` maps each `features.pooling` value to what it does to a cut's outputs, the size of the row it makes,
and the kinds of cut it applies to. Validation, the layers table, the extraction, the served pipeline, the help
page and the docs all read this registry, so a pooling is one entry here (a parameter of its own is one more
field of `features` in the schema, which reaches it as `settings`).

A cut is one of three kinds, by its output per image:

- a map, H x W x C (a CNN's layer): flatten, avg, max, grid, avgmax;
- a token sequence, T x D (a transformer's block; its first `prefix_tokens` tokens are the class token and
  any registers, the rest its patches): cls, mean, cls_mean, and flatten (T x D values: only where the
  probe's fit stays in memory, as `python -m tlsweep.layers` marks);
- a vector, D (a global pooling layer's output): taken as it is by every pooling.

A pooling of another kind of cut is one line at validation (`check_applies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tlsweep.config import FeaturesConfig
from tlsweep.errors import ConfigError

MAP, TOKENS, VECTOR = "map", "tokens", "vector"
KINDS = {MAP: "a feature map, H x W x C", TOKENS: "a token sequence, T x D", VECTOR: "a vector, D"}
PLURALS = {MAP: "feature maps", TOKENS: "token sequences"}


@dataclass(frozen=True)
class Pooling:
    """One `features.pooling` value: what it does, the size of its rows, which cuts it fits, a line for people."""

    # (n, *shape) float32 outputs, the settings, the tokens before the patch tokens -> (n, size)
    apply: Callable[[np.ndarray, FeaturesConfig, int], np.ndarray]
    size: Callable[[Sequence[int], FeaturesConfig], int]  # the output shape per image -> features per image
    about: str
    kinds: tuple[str, ...] = (MAP,)  # MAP and/or TOKENS; every pooling takes a VECTOR as it is
    class_token: bool = False  # reads the class token (the first token), which a sequence must have


def _grid(maps: np.ndarray, settings: FeaturesConfig, prefix: int = 0) -> np.ndarray:
    """Adaptive average pooling (PyTorch's bins, as VISSL uses them): bin i of N spans floor(i*H/N) to
    ceil((i+1)*H/N), so a cut yields C*N*N features whatever its size."""
    n, height, width, channels = maps.shape
    size = settings.grid_size
    bins_h = [(i * height // size, -(-(i + 1) * height // size)) for i in range(size)]
    bins_w = [(j * width // size, -(-(j + 1) * width // size)) for j in range(size)]
    out = np.empty((n, size, size, channels), dtype=np.float32)
    for i, (top, bottom) in enumerate(bins_h):
        for j, (left, right) in enumerate(bins_w):
            out[:, i, j] = maps[:, top:bottom, left:right].mean(axis=(1, 2), dtype=np.float32)
    return out.reshape(n, -1)


def _avg(maps: np.ndarray, settings: FeaturesConfig, prefix: int = 0) -> np.ndarray:
    return maps.mean(axis=(1, 2), dtype=np.float32)


def _max(maps: np.ndarray, settings: FeaturesConfig, prefix: int = 0) -> np.ndarray:
    return maps.max(axis=(1, 2))


def _cls(tokens: np.ndarray, settings: FeaturesConfig, prefix: int) -> np.ndarray:
    return np.ascontiguousarray(tokens[:, 0], dtype=np.float32)


def _mean(tokens: np.ndarray, settings: FeaturesConfig, prefix: int) -> np.ndarray:
    return tokens[:, prefix:].mean(axis=1, dtype=np.float32)


def _flatten(values: np.ndarray, settings: FeaturesConfig, prefix: int = 0) -> np.ndarray:
    return values.reshape(len(values), -1)


POOLINGS: dict[str, Pooling] = {
    "flatten": Pooling(_flatten, lambda shape, settings: math.prod(shape),
                       "every value: H x W x C of a map (the original study), T x D of a token sequence",
                       kinds=(MAP, TOKENS)),
    "avg": Pooling(_avg, lambda shape, settings: shape[-1], "the mean of each channel over space: C"),
    "max": Pooling(_max, lambda shape, settings: shape[-1], "the largest value of each channel: C"),
    "grid": Pooling(_grid, lambda shape, settings: shape[-1] * settings.grid_size ** 2,
                    "adaptive average pooling to features.grid_size x features.grid_size: C x grid_size^2 (VISSL)"),
    "avgmax": Pooling(lambda maps, settings, prefix=0: np.concatenate([_avg(maps, settings), _max(maps, settings)],
                                                                      axis=1),
                      lambda shape, settings: 2 * shape[-1], "the channel means and maxima side by side: 2 x C"),
    "cls": Pooling(_cls, lambda shape, settings: shape[-1], "the class token of a token sequence: D",
                   kinds=(TOKENS,), class_token=True),
    "mean": Pooling(_mean, lambda shape, settings: shape[-1],
                    "the mean of the patch tokens (class token and registers left out): D", kinds=(TOKENS,)),
    "cls_mean": Pooling(lambda tokens, settings, prefix: np.concatenate(
                            [_cls(tokens, settings, prefix), _mean(tokens, settings, prefix)], axis=1),
                        lambda shape, settings: 2 * shape[-1],
                        "the class token and the patch tokens' mean side by side, as DINOv2's linear evaluation "
                        "takes them: 2 x D", kinds=(TOKENS,), class_token=True),
}


def kind_of(map_shape: Sequence) -> str:
    """MAP for H x W x C, TOKENS for T x D, VECTOR for anything else (taken as it is)."""
    return {3: MAP, 2: TOKENS}.get(len(map_shape), VECTOR)


def for_kind(kind: str) -> list[str]:
    """The poolings that apply to a kind of cut (every one takes a vector as it is)."""
    return [name for name, entry in POOLINGS.items() if kind == VECTOR or kind in entry.kinds]


def check_applies(name: str, map_shape: Sequence, *, prefix_tokens: int = 0, layer: str, model_name: str) -> None:
    """One line when pooling `name` does not fit the cut: the kind of cut it is, and the poolings that fit it."""
    kind = kind_of(map_shape)
    entry = POOLINGS[name]
    shown = "x".join("?" if d is None else str(d) for d in map_shape)
    if kind != VECTOR and kind not in entry.kinds:
        raise ConfigError(
            f"features.pooling should be one of {for_kind(kind)} for layer={layer} of {model_name}, {KINDS[kind]} "
            f"({shown}); received features.pooling={name!r}, which applies to "
            f"{' and '.join(PLURALS[k] for k in entry.kinds)}"
        )
    if kind == TOKENS and entry.class_token and prefix_tokens < 1:
        raise ConfigError(
            f"features.pooling should be one of {[p for p in for_kind(kind) if not POOLINGS[p].class_token]} for "
            f"layer={layer} of {model_name}, a token sequence without a class token; received "
            f"features.pooling={name!r}, which reads the class token"
        )


def pooled_dim(map_shape: Sequence[int], settings: FeaturesConfig) -> int:
    """Features per image of a cut after pooling."""
    if kind_of(map_shape) == VECTOR:
        return math.prod(map_shape)
    return int(POOLINGS[settings.pooling].size(tuple(int(d) for d in map_shape), settings))


def pool(flat: np.ndarray, *, map_shape: Sequence[int], settings: FeaturesConfig, prefix_tokens: int = 0
         ) -> np.ndarray:
    """Pool flattened (n, H*W*C or T*D) cut outputs, as `settings.pooling` says."""
    kind = kind_of(map_shape)
    if kind == VECTOR:
        return flat
    if kind not in POOLINGS[settings.pooling].kinds:  # validation says so first, naming the layer
        check_applies(settings.pooling, map_shape, prefix_tokens=prefix_tokens, layer="this cut", model_name="its model")
    return POOLINGS[settings.pooling].apply(flat.reshape(len(flat), *map_shape), settings, prefix_tokens)


def describe() -> str:
    """The poolings for the help page: `flatten | avg | ...`."""
    return " | ".join(POOLINGS)
