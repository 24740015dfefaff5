"""Frozen-backbone features: one forward pass for every cut a sweep needs, cached per class."""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tlsweep import console
from tlsweep.stages.backbone import composite, models, precision as precisions
from tlsweep.stages.backbone.source import BackboneSource
from tlsweep.stages.data.datasets import Dataset, ImageSet
from tlsweep.config import FeaturesConfig
from tlsweep.stages.features import cache, pooling

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FeatureKey:
    """What decides a feature value: backbone, weights, the images, their input size and the precision the
    backbone computes in."""

    backbone: str
    weights_id: str
    data_fingerprint: str
    input_size: int
    precision: str = precisions.FLOAT32

    def cache(self, root: Path) -> cache.FeatureCache:
        """The entries of this key; float32's key leaves the precision out, so caches written before it existed
        stay found, and bfloat16's never share them."""
        key = dataclasses.asdict(self)
        if self.precision == precisions.FLOAT32:
            del key["precision"]
        return cache.FeatureCache(root, key, label=self.backbone)


@dataclass
class Features:
    """Features and labels of one image set for a class subset, in the order of `classes`.

    The features stay in the cache's per-class files until asked for: `take` gathers rows class by class,
    so a split never holds all classes twice (once joined, once split), which decides the peak memory of
    wide cuts on all of CIFAR-10.
    """

    parts: list  # one memory-mapped (n_class, H*W*C) float32 array per class; their pages are not read here
    y: np.ndarray
    weights_id: str
    layer_index: int  # position of the cut in the backbone, input first
    map_shape: tuple  # the cut's output per image, (H, W, C) for a feature map, (T, D) for a token sequence
    settings: FeaturesConfig = field(default_factory=FeaturesConfig)  # features.pooling and its parameters
    extraction_seconds: float = 0.0
    cnn_images: int = 0  # images that went through the CNN for this call (0 on a warm cache)
    ids: tuple = ()  # each row's image id (data.ImageSet.image_ids), in the same order
    layers: tuple = ()  # the backbone's cut layers, input first (layer_index indexes them)
    cache_folder: str = ""  # where these features are cached (what CKA reads back)
    prefix_tokens: int = 0  # a token sequence's tokens before its patch tokens (class token, registers)

    @property
    def dim(self) -> int:
        """Features per image after pooling."""
        return pooling.pooled_dim(self.map_shape, self.settings)

    @property
    def X(self) -> np.ndarray:
        """Every row, joined in memory."""
        return self.take(np.arange(len(self.y)))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Pooled rows at positions `rows` (class order), read one class file at a time into one new array."""
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        bounds = np.cumsum([0] + [len(part) for part in self.parts])
        for k, part in enumerate(self.parts):
            lo, hi = np.searchsorted(ordered, [bounds[k], bounds[k + 1]])
            if lo < hi:
                # a plain read, not the mapping: the class block is freed once copied, and the mapped
                # pages never become part of this process's resident memory
                block = np.load(part.filename)
                out[order[lo:hi]] = pooling.pool(block[ordered[lo:hi] - bounds[k]], map_shape=self.map_shape,
                                                 settings=self.settings, prefix_tokens=self.prefix_tokens)
                del block
        return out


def extract_features(
    *,
    dataset: Dataset,
    image_set: str,
    layer: str,
    classes: Sequence[int],
    backbone: str,
    weights: Optional[str],
    seed: int,
    input_size: int,
    batch_size: int,
    cache_root: Path,
    sweep_layers: Sequence[str] = (),
    settings: FeaturesConfig = FeaturesConfig(),
    preset: Optional[str] = None,
    path: Optional[str] = None,
    preprocess: Optional[str] = None,
    precision: str = precisions.FLOAT32,
) -> Features:
    """Features of `layer` for `classes`, from the cache or from one pass that fills every sweep layer.

    The backbone is model.name, weights, preset, path, preprocess and precision, as the config names them
    (`BackboneSource`).
    The cache holds each cut's whole output, flattened, so every pooling is computed from the same entries.
    """
    source = BackboneSource(backbone, weights, preset, path, preprocess, precision)
    key = FeatureKey(backbone, source.fingerprint(seed), dataset.fingerprint, input_size, precision)
    store = key.cache(cache_root)
    start = time.perf_counter()
    found = store.load(image_set, layer, classes)
    cnn_images = 0
    if found is None:
        with store.lock(image_set):
            found = store.load(image_set, layer, classes)  # another process may have filled it
            if found is None:
                model = source.build(input_size=input_size, seed=seed)
                valid = models.cut_layer_names(model)
                models.validate_layers(model, [layer], model_name=backbone, command=source.command)
                wanted = [name for name in dict.fromkeys([layer, *sweep_layers])
                          if all(part in valid for part in composite.parts(name))]
                _record(store, model, wanted, model_name=backbone)
                cnn_images = _fill(store=store, images=dataset.image_set(image_set), image_set=image_set,
                                   layers=wanted, classes=classes, model=model,
                                   preprocess=source.preprocess_fn(input_size), batch_size=batch_size,
                                   input_size=input_size)
                found = store.load(image_set, layer, classes)
    map_shape = store.map_shape(layer)
    if map_shape is None:  # an entry cached before map shapes were recorded: the built model knows it
        _record(store, source.build(input_size=input_size, seed=seed), [layer], model_name=backbone)
        map_shape = store.map_shape(layer)
    y = np.concatenate([np.full(len(part), label, dtype=np.int64) for part, label in zip(found, classes)])
    images = dataset.image_set(image_set)
    ids = tuple(image_id for label in classes for image_id in images.image_ids(images.indices_of(label)))
    layers = store.layers()
    return Features(found, y, key.weights_id, layers.index(composite.deepest(layer, layers)), tuple(map_shape),
                    settings, time.perf_counter() - start, cnn_images, ids, tuple(layers), str(store.folder),
                    store.prefix_tokens(layer))


def _record(store: cache.FeatureCache, model, wanted: Sequence[str], *, model_name: str) -> None:
    """The backbone's cut layers, their shapes and token prefixes, with those of the joined cuts among `wanted`
    added to what earlier passes recorded."""
    shapes, prefix = models.cut_shapes(model), models.cut_prefix_tokens(model)
    joined = composite.joined_shapes(wanted, shapes, model_name=model_name)
    joined_prefix = {name: prefix[composite.parts(name)[0]] for name in joined if composite.parts(name)[0] in prefix}
    earlier = {name: store.map_shape(name) for name in store.recorded_shapes() if composite.is_joined(name)}
    store.record_layers(models.cut_layer_names(model), {**shapes, **earlier, **joined},
                        {**{name: store.prefix_tokens(name) for name in earlier if store.prefix_tokens(name)},
                         **prefix, **joined_prefix})


def _fill(*, store: cache.FeatureCache, images: ImageSet, image_set: str, layers: Sequence[str],
          classes: Sequence[int], model, preprocess: Callable, input_size: int, batch_size: int) -> int:
    """Run the backbone once over every image of the classes that miss any wanted layer; returns the image count."""
    layers = [layer for layer in layers if not all(store.has(image_set, layer, label) for label in classes)]
    missing = [label for label in classes if not all(store.has(image_set, layer, label) for layer in layers)]
    extractor = models.multi_output_model(model, layers)
    dims = [int(np.prod(out.shape[1:])) for out in extractor.outputs]
    per_class = [images.indices_of(label) for label in missing]
    order = np.concatenate(per_class)
    bounds = np.cumsum([0] + [len(rows) for rows in per_class])
    total = len(order)
    log.info("extracting %s for %d %s images of classes %s in one pass", layers, total, image_set, missing)
    store.clear_unfinished(image_set)  # left by a killed process; we hold the lock
    with ExitStack() as stack:  # every entry commits together, only if the whole pass finishes
        outputs = [
            [stack.enter_context(store.new_entry(image_set, layer, label, (len(rows), dim)))
             for layer, dim in zip(layers, dims)]
            for label, rows in zip(missing, per_class)
        ]
        progress = console.Progress(total, description=f"features ({image_set})", log=log)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            values = forward(extractor, preprocess, images.images[order[start:stop]], input_size, batch_size)
            for k in range(len(missing)):
                lo, hi = max(start, bounds[k]), min(stop, bounds[k + 1])
                for out, value in zip(outputs[k], values):
                    if lo < hi:
                        out[lo - bounds[k] : hi - bounds[k]] = value[lo - start : hi - start].reshape(hi - lo, -1)
            progress.update(stop - start)
        progress.close()
        for label, rows in zip(missing, per_class):
            store.record_ids(image_set, label, images.image_ids(rows))
    return total


def forward(extractor, preprocess, batch: np.ndarray, input_size: int, batch_size: int) -> list[np.ndarray]:
    """Preprocess one batch and run it; pads to a fixed batch so the compiled graph is reused. The outputs are
    float32 whatever the backbone computes in (bfloat16 under model.precision=bfloat16)."""
    import keras

    n = len(batch)
    x = batch.astype("float32")
    if x.shape[1] != input_size or x.shape[2] != input_size:
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (input_size, input_size)))
    x = preprocess(x)
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), dtype=x.dtype)])
    outputs = extractor.predict_on_batch(x)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(keras.ops.convert_to_numpy(out)[:n], dtype=np.float32) for out in outputs]
