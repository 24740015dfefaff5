"""The poolings: how a cut's output becomes one row of features, one registry entry each.

`POOLINGS` maps each `features.pooling` value to what it does to a feature map (n, H, W, C) and the size of
the row it makes. Validation, the layers table, the extraction, the served pipeline, the help page and the
docs all read this registry, so a pooling is one entry here (a parameter of its own is one more field of
`features` in the schema, which reaches it as `settings`). A cut that is not a map (a vector, such as a
global pooling layer's output) is taken as it is by every pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tlsweep.config import FeaturesConfig


@dataclass(frozen=True)
class Pooling:
    """One `features.pooling` value: what it does to maps, the size of its rows, and a line for people."""

    apply: Callable[[np.ndarray, FeaturesConfig], np.ndarray]  # (n, H, W, C) float32 maps -> (n, size)
    size: Callable[[Sequence[int], FeaturesConfig], int]  # (H, W, C) -> features per image
    about: str


def _grid(maps: np.ndarray, settings: FeaturesConfig) -> np.ndarray:
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


def _avg(maps: np.ndarray, settings: FeaturesConfig) -> np.ndarray:
    return maps.mean(axis=(1, 2), dtype=np.float32)


def _max(maps: np.ndarray, settings: FeaturesConfig) -> np.ndarray:
    return maps.max(axis=(1, 2))


POOLINGS: dict[str, Pooling] = {
    "flatten": Pooling(lambda maps, settings: maps.reshape(len(maps), -1), lambda shape, settings: math.prod(shape),
                       "every value of the map, H x W x C (the original study)"),
    "avg": Pooling(_avg, lambda shape, settings: shape[-1], "the mean of each channel over space: C"),
    "max": Pooling(_max, lambda shape, settings: shape[-1], "the largest value of each channel: C"),
    "grid": Pooling(_grid, lambda shape, settings: shape[-1] * settings.grid_size ** 2,
                    "adaptive average pooling to features.grid_size x features.grid_size: C x grid_size^2 (VISSL)"),
    "avgmax": Pooling(lambda maps, settings: np.concatenate([_avg(maps, settings), _max(maps, settings)], axis=1),
                      lambda shape, settings: 2 * shape[-1], "the channel means and maxima side by side: 2 x C"),
}


def _is_map(map_shape: Sequence[int]) -> bool:
    return len(map_shape) == 3


def pooled_dim(map_shape: Sequence[int], settings: FeaturesConfig) -> int:
    """Features per image of a cut after pooling."""
    if not _is_map(map_shape):
        return math.prod(map_shape)
    return int(POOLINGS[settings.pooling].size(tuple(int(d) for d in map_shape), settings))


def pool(flat: np.ndarray, *, map_shape: Sequence[int], settings: FeaturesConfig) -> np.ndarray:
    """Pool flattened (n, H*W*C) cut outputs, as `settings.pooling` says."""
    if not _is_map(map_shape):
        return flat
    return POOLINGS[settings.pooling].apply(flat.reshape(len(flat), *map_shape), settings)


def describe() -> str:
    """The poolings for the help page: `flatten | avg | ...`."""
    return " | ".join(POOLINGS)
