"""The chosen probe as one predictor of raw images: class names out of uint8 pixels.

A `ProbePipeline` does to a new image what training did to the images it learnt from: it resizes it the
same way (Pillow's bilinear resize on load for a folder's images; Keras' batch resize for CIFAR-10 and
digits), preprocesses it as the backbone does (its `preprocess_input`; a Keras-Hub preset's own
ImageConverter; a file's `model.preprocess`), runs the cut backbone, pools its output, then normalises and
classifies with the fitted probe (a scikit-learn Pipeline). It saves to and loads from a folder: `spec.json`
(with a Keras-Hub preset's converter config), the backbone (`backbone.keras`, up to the cut only; a Keras-Hub
image encoder as a preset folder, `preset/`, cut again on load) and `probe.joblib`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import joblib
import numpy as np

from tlsweep.errors import DataError
from tlsweep.stages.backbone import hub, models, precision as precisions
from tlsweep.stages.backbone.source import HUB, BackboneSource
from tlsweep.stages.data.images import resize
from tlsweep.config import FeaturesConfig
from tlsweep.stages.features import extraction, pooling

SPEC, BACKBONE, PROBE, PRESET = "spec.json", "backbone.keras", "probe.joblib", "preset"
RESIZES = ("keras", "pillow")  # how training resized: per batch in extraction.forward, or on load in images.decode


@dataclass(frozen=True)
class PipelineSpec:
    """Everything but the weights that turns raw images into the probe's input, as the job that fitted it did."""

    backbone: str
    layer: str
    input_size: int
    resize: str  # one of RESIZES
    features: dict  # the features config (features.pooling and its parameters, features.normalize)
    labels: Sequence[int]  # the probe's classes, as data set indices
    class_names: Sequence[str]  # the names of `labels`, in the same order
    weights: Optional[str] = None  # what built the backbone: "imagenet", null (random init, seeded) or a file
    seed: int = 0
    batch_size: int = 64
    preset: Optional[str] = None  # model.preset, model.path and model.preprocess, as the run named them
    path: Optional[str] = None
    preprocess: Optional[str] = None
    converter: Optional[dict] = None  # a Keras-Hub preset's ImageConverter, as config
    prefix_tokens: int = 0  # a token sequence's tokens before its patch tokens
    precision: str = precisions.FLOAT32  # model.precision: what the backbone computes in (a spec saved before it: float32)

    @property
    def name(self) -> str:  # what BackboneSource.of reads
        return self.backbone

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PipelineSpec":
        values = dict(values)
        if "features" not in values:  # a spec saved before it held the features config whole
            values["features"] = {key: values[key] for key in ("pooling", "grid_size") if key in values}
        return cls(**{key: values[key] for key in (item.name for item in dataclasses.fields(cls)) if key in values})

    @property
    def settings(self) -> FeaturesConfig:
        return FeaturesConfig(**self.features)


class ProbePipeline:
    """Raw uint8 images (N x H x W x 3, any size) in, class names out."""

    def __init__(self, *, spec: PipelineSpec, extractor, probe, encoder=None):
        self.spec = spec
        self.extractor = extractor  # a keras.Model from the backbone's input to the cut
        self.probe = probe  # normalisation, then the linear classifier
        self.encoder = encoder  # a Keras-Hub preset's image encoder, which the extractor cuts (saved as a preset)

    @classmethod
    def build(cls, *, spec: PipelineSpec, probe) -> "ProbePipeline":
        """Rebuild the cut backbone from the spec (the same weights: ImageNet, a file, a preset, or the seeded
        init; the same precision)."""
        source = BackboneSource.of(spec)
        if source.kind == HUB:
            source.check_input_size(spec.input_size)
            encoder = source.load_encoder(input_size=spec.input_size, seed=spec.seed)
            converter = hub.converter_config(hub.converter(spec.preset, spec.input_size))
            return cls(spec=dataclasses.replace(spec, converter=converter), extractor=models.multi_output_model(
                hub.cut_model(encoder), [spec.layer]), probe=probe, encoder=encoder)
        model = source.build(input_size=spec.input_size, seed=spec.seed)
        return cls(spec=spec, extractor=models.multi_output_model(model, [spec.layer]), probe=probe)

    def _preprocess(self):
        if self.spec.converter is not None:
            return hub.preprocess_with(hub.converter_from_config(self.spec.converter))
        return BackboneSource.of(self.spec).preprocess_fn(self.spec.input_size)

    def features(self, images: np.ndarray) -> np.ndarray:
        """The probe's input for `images`: resized, preprocessed, cut, pooled (float32, one row per image)."""
        images = _check_images(images)
        spec = self.spec
        if spec.resize == "pillow":
            images = np.stack([resize(image, spec.input_size) for image in images]) if len(images) else \
                np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
        preprocess = self._preprocess()
        map_shape = tuple(int(d) for d in self.extractor.outputs[0].shape[1:])
        rows = []
        for start in range(0, len(images), spec.batch_size):
            (value,) = extraction.forward(self.extractor, preprocess, images[start:start + spec.batch_size],
                                        spec.input_size, spec.batch_size)
            rows.append(pooling.pool(value.reshape(len(value), -1), map_shape=map_shape, settings=spec.settings,
                                     prefix_tokens=spec.prefix_tokens))
        dim = pooling.pooled_dim(map_shape, spec.settings)
        return np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class names, one per image."""
        names = dict(zip(self.spec.labels, self.spec.class_names))
        X = self.features(images)
        if not len(X):
            return np.array([], dtype=object)
        return np.array([names[int(label)] for label in self.probe.predict(X)], dtype=object)

    def save(self, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        (target / SPEC).write_text(self.spec.to_json())
        if self.encoder is not None:  # Keras-Hub's inner layers do not each save alone: the encoder saves whole
            hub.save_encoder(self.encoder, target / PRESET)
        else:
            self.extractor.save(target / BACKBONE)
        joblib.dump(self.probe, target / PROBE)
        return target

    @classmethod
    def load(cls, source: Path) -> "ProbePipeline":
        import keras

        spec = PipelineSpec.from_dict(json.loads((source / SPEC).read_text()))
        if (source / PRESET).is_dir():
            encoder = hub.load_saved_encoder(source / PRESET)
            return cls(spec=spec, extractor=models.multi_output_model(hub.cut_model(encoder), [spec.layer]),
                       probe=joblib.load(source / PROBE), encoder=encoder)
        extractor = keras.saving.load_model(source / BACKBONE, compile=False)
        return cls(spec=spec, extractor=extractor, probe=joblib.load(source / PROBE))


def _check_images(images) -> np.ndarray:
    """N x H x W x 3 uint8 pixels (lists, as a REST request brings them, are converted); one line otherwise."""
    array = np.asarray(images)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DataError(f"images should be an N x H x W x 3 array of RGB pixels; received shape {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (np.min(array) < 0 or np.max(array) > 255 or not np.all(np.equal(np.mod(array, 1), 0))):
            raise DataError(f"images should hold uint8 pixel values (whole numbers 0..255); received {array.dtype} "
                            f"values from {np.min(array)} to {np.max(array)}")
        array = array.astype(np.uint8)
    return array
