"""Where a backbone comes from, as the model config names it, and the one face the stages see of any of them.

- keras.applications by name (`model=vgg16`; `models`, `model_stages`);
- a Keras-Hub preset (`model=hub model.preset=...`; `hub`, and `blocks` for a transformer's blocks);
- a saved Keras model (`model=file model.path=... model.preprocess=...`; `file`).

`BackboneSource` holds the model config's keys and answers, for whichever kind, what the rest of tlsweep
asks: the model to cut with its weights, its cuts and their shapes without weights, the input sizes it takes,
its preprocessing, its stages, and its weights' fingerprint; `build` builds it at the precision it names
(`precision`). A cut of a transformer is a token sequence, T x D; of a CNN a map, H x W x C (`features.pooling`
says which poolings fit which).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from tlsweep.errors import ConfigError
from tlsweep.stages.backbone import models, precision as precisions

APPLICATIONS, HUB, FILE = "applications", "hub", "file"
HUB_WEIGHTS, FILE_WEIGHTS = "preset", "file"  # model.weights for the preset's own weights, and the file's
FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def display_name(source: Optional[str], *, fallback: str) -> str:
    """A run's model name from a preset or a file: kaggle://keras/dinov2/keras/dinov2_small/1 -> dinov2_small,
    hf://org/name -> name, /data/my_vit/ -> my_vit, /models/cnn.keras -> cnn; `fallback` when there is none."""
    if not source:
        return fallback
    segments = [part for part in str(source).split("://", 1)[-1].split("/") if part and not part.isdigit()]
    last = segments[-1] if segments else fallback
    for suffix in FILE_SUFFIXES:
        last = last[:-len(suffix)] if last.endswith(suffix) else last
    return re.sub(r"[^A-Za-z0-9._-]", "_", last) or fallback


@dataclass(frozen=True)
class BackboneSource:
    """The model config's keys that say which backbone, with which weights and preprocessing, computing at which
    precision."""

    name: str
    weights: Optional[str] = "imagenet"
    preset: Optional[str] = None
    path: Optional[str] = None
    preprocess: Optional[str] = None
    precision: str = precisions.FLOAT32  # model.precision: what `build` computes in

    @classmethod
    def of(cls, model) -> "BackboneSource":
        """From anything with the model config's keys (`ModelConfig`, a pipeline's spec)."""
        return cls(model.name, model.weights, getattr(model, "preset", None), getattr(model, "path", None),
                   getattr(model, "preprocess", None), getattr(model, "precision", precisions.FLOAT32))

    @property
    def kind(self) -> str:
        return HUB if self.preset is not None else FILE if self.path is not None else APPLICATIONS

    @property
    def command(self) -> str:
        """The overrides that name this backbone, as `python -m tlsweep.layers` takes them."""
        if self.kind == HUB:
            return f"model=hub model.preset={self.preset}"
        if self.kind == FILE:
            return f"model=file model.path={self.path} model.preprocess={self.preprocess}"
        return f"model={self.name}"

    def check(self) -> None:
        """The model keys alone, before anything is loaded: one line for a value its kind does not take."""
        from tlsweep.stages.backbone import file

        if self.preset is not None and self.path is not None:
            raise ConfigError(f"model.preset and model.path should not both be set (model=hub takes a preset, "
                              f"model=file a path); received model.preset={self.preset!r} model.path={self.path!r}")
        if self.kind == HUB and self.weights not in (HUB_WEIGHTS, None):
            raise ConfigError(f"model.weights should be {HUB_WEIGHTS!r} (the preset's own) or null (random init) for "
                              f"model=hub; received model.weights={self.weights!r}")
        if self.kind == FILE and self.weights != FILE_WEIGHTS:
            raise ConfigError(f"model.weights should be {FILE_WEIGHTS!r} (the file's own) for model=file; received "
                              f"model.weights={self.weights!r}")
        if self.kind == FILE:
            file.check_preprocess(self.preprocess)
        elif self.preprocess is not None:
            raise ConfigError(f"model.preprocess should be null for {self.command.split()[0]}, which preprocesses as "
                              f"its {'preset' if self.kind == HUB else 'keras.applications module'} says; received "
                              f"model.preprocess={self.preprocess!r}")
        if self.kind == APPLICATIONS and self.name not in models.backbones():
            raise ConfigError(f"model.name should be one of {list(models.backbones())}; received "
                              f"model.name={self.name!r}")

    def resolved(self) -> "BackboneSource":
        """The same backbone as another process in another folder finds it: local paths made absolute."""
        from tlsweep.stages.backbone import hub

        return BackboneSource(self.name, models.resolved_weights(self.weights) if self.kind == APPLICATIONS
                              else self.weights, hub.resolved(self.preset) if self.preset else None,
                              str(Path(self.path).expanduser().resolve()) if self.path else None, self.preprocess,
                              self.precision)

    def fingerprint(self, seed: int) -> str:
        """The weights by content (or the seed of a random init): what cache keys and resume compare."""
        from tlsweep.stages.backbone import file, hub

        if self.kind == HUB:
            return hub.fingerprint(self.preset, weights=self.weights, seed=seed)
        if self.kind == FILE:
            return file.fingerprint(self.path)
        return models.weights_fingerprint(self.weights, seed)

    def build(self, *, input_size: int, seed: int):
        """The model to cut, with its weights, at `input_size`, its layers computing at `precision`."""
        with precisions.policy(self.precision):
            model = self._build(input_size=input_size, seed=seed)
        precisions.check_applied(model, self.precision, what=self.command)
        return model

    def load_encoder(self, *, input_size: int, seed: int):
        """A Keras-Hub preset's image encoder, with its weights, at `input_size` and `precision` (its config
        names its own dtype, which a Keras dtype policy does not override; float32 keeps the preset's own)."""
        from tlsweep.stages.backbone import hub

        return hub.load_encoder(self.preset, weights=self.weights, input_size=input_size, seed=seed,
                                dtype=None if self.precision == precisions.FLOAT32 else
                                precisions.POLICIES[self.precision])

    def _build(self, *, input_size: int, seed: int):
        from tlsweep.stages.backbone import file, hub

        if self.kind == HUB:
            self.check_input_size(input_size)
            return hub.cut_model(self.load_encoder(input_size=input_size, seed=seed))
        if self.kind == FILE:
            return precisions.recast(file.build(self.path, input_size=input_size), self.precision)
        return models.build_backbone(name=self.name, weights=self.weights, input_size=input_size, seed=seed)

    def output_shapes(self) -> Mapping[str, tuple]:
        """Each cut and its output per image, without weights or an input size (None where a size would go)."""
        from tlsweep.stages.backbone import file, hub

        if self.kind == HUB:
            return hub.architecture(self.preset)[0]
        if self.kind == FILE:
            return file.architecture(self.path)
        return models.architecture_cuts(self.name)

    def layer_names(self) -> tuple[str, ...]:
        """The cuts, input to output: what `layer` is checked against."""
        return tuple(self.output_shapes())

    def prefix_tokens(self) -> Mapping[str, int]:
        """The token sequences' cuts and the tokens before their patch tokens (class token, registers)."""
        from tlsweep.stages.backbone import hub

        return hub.architecture(self.preset)[1] if self.kind == HUB else {}

    def shapes_at(self, input_size: int) -> Mapping[str, tuple[int, ...]]:
        """Each cut's output shape per image at `input_size`, built without weights."""
        from tlsweep.stages.backbone import file, hub, model_stages

        self.check_input_size(input_size)
        if self.kind == HUB:
            return hub.architecture(self.preset, input_size)[0]
        if self.kind == FILE:
            return file.architecture(self.path, input_size)
        if input_size == model_stages.STAGE_INPUT_SIZE:
            return model_stages.architecture_shapes(self.name)
        return models.cut_shapes(models.build_backbone(name=self.name, weights=None, input_size=input_size, seed=0))

    def check_input_size(self, input_size: int, *, received: str = "") -> None:
        """One line when the backbone cannot take `input_size` x `input_size` images (with these weights)."""
        from tlsweep.stages.backbone import file, hub

        received = received or f"data.image_size={input_size}"
        if self.kind == HUB:
            hub.check_input_size(self.preset, input_size, weights=self.weights, received=received)
        elif self.kind == FILE:
            file.check_input_size(self.path, input_size, received=received)
        else:
            models.check_input_size(self.name, input_size, received=received)

    def preprocess_fn(self, input_size: int) -> Callable:
        """What turns float32 pixels (0..255) into the backbone's input."""
        from tlsweep.stages.backbone import file, hub

        if self.kind == HUB:
            return hub.preprocess_with(hub.converter(self.preset, input_size))
        if self.kind == FILE:
            return file.preprocess_fn(self.preprocess)
        return models.preprocess_fn(self.name)

    def stages(self, input_size: int) -> tuple[str, ...]:
        """The cuts a depth profile runs, input to output: a transformer's blocks, else the last layer at each
        spatial resolution (`model_stages.resolution_ends`); keras.applications' from their family's rule."""
        from tlsweep.stages.backbone import blocks, model_stages

        if self.kind == APPLICATIONS:
            return model_stages.stage_layers(self.name)
        names = self.layer_names()
        if self.kind == HUB and blocks.block_name(0) in names:
            return tuple(name for name in names if name.startswith(blocks.BLOCK))
        return tuple(model_stages.resolution_ends(names, self.shapes_at(input_size), input_size=input_size))
