"""Frozen-backbone features: one forward pass for every cut a sweep needs, cached per class."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tlsweep import cache, models
from tlsweep.data import Dataset
from tlsweep.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureKey:
    """What decides a feature value: backbone, weights, the images and their input size."""

    backbone: str
    weights_id: str
    data_fingerprint: str
    input_size: int

    def folder(self, root: Path) -> Path:
        text = json.dumps(self.__dict__, sort_keys=True)
        return root / f"{self.backbone}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass
class Features:
    """Features and labels of one image set for a class subset, in the order of `classes`.

    The features stay in the cache's per-class files until asked for: `take` gathers rows class by class,
    so a split never holds all classes twice (once joined, once split), which decides the peak memory of
    wide cuts on all of CIFAR-10.
    """

    parts: list  # one memory-mapped (n_class, dim) float32 array per class; their pages are not read here
    y: np.ndarray
    weights_id: str
    layer_index: int  # position of the cut in the backbone, input first
    extraction_seconds: float = 0.0
    cnn_images: int = 0  # images that went through the CNN for this call (0 on a warm cache)
    layers_computed: list = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.parts[0].shape[1])

    @property
    def X(self) -> np.ndarray:
        """Every row, joined in memory."""
        return self.take(np.arange(len(self.y)))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at positions `rows` (class order), read one class file at a time into one new array."""
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
                out[order[lo:hi]] = block[ordered[lo:hi] - bounds[k]]
                del block
        return out


def _entry_name(image_set: str, layer: str, label: int) -> str:
    return f"{image_set}-{layer}-class{label}"


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
    model=None,
) -> Features:
    """Features of `layer` for `classes`, from the cache or from one pass that fills every sweep layer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"model.batch_size should be an integer >= 1; received model.batch_size={batch_size!r}")
    images = dataset.image_set(image_set)
    key = FeatureKey(backbone, models.weights_fingerprint(weights, seed), dataset.fingerprint, input_size)
    folder = key.folder(cache_root)
    start = time.perf_counter()
    found = _load(folder, image_set, layer, classes)
    cnn_images, computed = 0, []
    if found is None:
        with cache.lock(folder, image_set):
            found = _load(folder, image_set, layer, classes)  # another process may have filled it
            if found is None:
                wanted = list(dict.fromkeys([layer, *sweep_layers]))
                if model is None:
                    model = models.build_backbone(name=backbone, weights=weights, input_size=input_size, seed=seed)
                valid = models.cut_layer_names(model)
                models.validate_layers(model, [layer], model_name=backbone)
                if not (folder / "key.json").exists():  # written once the key is known to be good
                    cache.write_json(folder / "key.json", key.__dict__)
                cache.write_json(folder / "layers.json", valid)  # read without the lock by cache hits
                wanted = [name for name in wanted if name in valid]
                cnn_images, computed = _fill(
                    folder, images, image_set, wanted, classes, model, backbone, input_size, batch_size
                )
                found = _load(folder, image_set, layer, classes)
    y = np.concatenate([np.full(len(part), label, dtype=np.int64) for part, label in zip(found, classes)])
    layer_index = json.loads((folder / "layers.json").read_text()).index(layer)
    return Features(found, y, key.weights_id, layer_index, time.perf_counter() - start, cnn_images, computed)


def _load(folder: Path, image_set: str, layer: str, classes: Sequence[int]) -> Optional[list[np.ndarray]]:
    parts = []
    for label in classes:
        entry = cache.load_entry(folder, _entry_name(image_set, layer, label))
        if entry is None:
            return None
        parts.append(entry)
    return parts


def _fill(folder, images, image_set, layers, classes, model, backbone, input_size, batch_size):
    """Run the CNN once over every image of the classes that miss any wanted layer."""
    def cached(layer: str, label: int) -> bool:
        return (folder / f"{_entry_name(image_set, layer, label)}.json").exists()

    layers = [layer for layer in layers if not all(cached(layer, label) for label in classes)]
    missing = [label for label in classes if not all(cached(layer, label) for layer in layers)]
    extractor = models.multi_output_model(model, layers)
    preprocess = models.preprocess_fn(backbone)
    dims = [int(np.prod(out.shape[1:])) for out in extractor.outputs]
    per_class = [images.indices_of(label) for label in missing]
    order = np.concatenate(per_class)
    bounds = np.cumsum([0] + [len(rows) for rows in per_class])
    total = len(order)
    log.info("extracting %s for %d %s images of classes %s in one pass", layers, total, image_set, missing)
    for stale in folder.glob(f".{image_set}-*.tmp"):  # left by a killed process; we hold the lock
        stale.unlink(missing_ok=True)
    with ExitStack() as stack:  # every entry commits together, only if the whole pass finishes
        outputs = [
            [
                stack.enter_context(cache.new_entry(folder, _entry_name(image_set, layer, label), (len(rows), dim)))
                for layer, dim in zip(layers, dims)
            ]
            for label, rows in zip(missing, per_class)
        ]
        next_report = 0.1
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            values = _forward(extractor, preprocess, images.images[order[start:stop]], input_size, batch_size)
            for k in range(len(missing)):
                lo, hi = max(start, bounds[k]), min(stop, bounds[k + 1])
                for out, value in zip(outputs[k], values):
                    if lo < hi:
                        out[lo - bounds[k] : hi - bounds[k]] = value[lo - start : hi - start].reshape(hi - lo, -1)
            if stop / total >= next_report or stop == total:
                log.info("features: %d/%d %s images", stop, total, image_set)
                next_report = stop / total + 0.1
    done = total
    return done, list(layers)


def _forward(extractor, preprocess, batch: np.ndarray, input_size: int, batch_size: int) -> list[np.ndarray]:
    """Preprocess one batch and run it; pads to a fixed batch so the compiled graph is reused."""
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
    return [np.asarray(keras.ops.convert_to_numpy(out))[:n] for out in outputs]
