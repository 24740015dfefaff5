"""Keras-Hub backbones (`model=hub model.preset=...`): a preset loaded with or without its weights at the run's
input size, its image encoder, its own ImageConverter, and what its files hold.

A preset is a built-in name (`dinov2_small`), a `kaggle://` or `hf://` handle, or a local folder, as
`keras_hub.models.Backbone.from_preset` takes them. A backbone whose input is not an image (CLIP's, which holds
a text encoder too) gives its `vision_encoder`. The preprocessing is the preset's own ImageConverter, asked
for the run's input size; nothing of it is written here. Keras-Hub is an extra: `pip install "tlsweep[hub]"`.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from tlsweep.errors import ConfigError, DataError, FetchError, TlsweepError
from tlsweep.stages.backbone import content, models

INSTALL = 'pip install "tlsweep[hub]"'
CONFIG_FILE, CONVERTER_FILE = "config.json", "image_converter.json"  # what Keras-Hub's save_to_preset writes
ALLOWED = "a Keras-Hub preset name (dinov2_small, ...), an hf:// or kaggle:// handle, or a local preset folder"
LOCAL_COPY = ("model.preset=/path/to/<preset folder> (a copy of the preset: its config.json, model.weights.h5 and "
              "image_converter.json, e.g. from ~/.cache/kagglehub/models/ on a machine with internet)")


def _keras_hub(preset: str):
    try:
        import keras_hub
    except ImportError:
        raise ConfigError(f"model=hub needs Keras-Hub, which is not installed here ({INSTALL}); received "
                          f"model.preset={preset!r}") from None
    return keras_hub


def is_local(preset: str) -> bool:
    """A folder on this machine (what Keras-Hub also takes a preset that names an existing path for)."""
    return "://" not in preset and Path(preset).expanduser().exists()


def resolved(preset: str) -> str:
    """The preset as another process in another folder finds it: a local folder's absolute path."""
    return str(Path(preset).expanduser().resolve()) if is_local(preset) else preset


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


@contextmanager
def _errors(preset: str) -> Iterator[None]:
    """Keras-Hub's and the network's errors as one line: what was received, what is allowed, what to do."""
    try:
        yield
    except TlsweepError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"model.preset should be {ALLOWED}; received model.preset={preset!r}, which lacks a file "
                        f"a preset holds ({_first_line(err)})") from None
    except OSError as err:  # requests' and Kaggle's connection errors are OSErrors
        if is_local(preset):
            raise DataError(f"model.preset should be {ALLOWED}; received model.preset={preset!r}, which does not "
                            f"load ({type(err).__name__}: {_first_line(err)})") from None
        raise FetchError(what=f"the Keras-Hub preset {preset}", reason=_first_line(err), remedy=LOCAL_COPY) from None
    except ValueError as err:
        where = "" if "://" in preset or "/" not in preset else ", which is no folder here"
        raise ConfigError(f"model.preset should be {ALLOWED}; received model.preset={preset!r}{where} "
                          f"({_first_line(err)})") from None


def image_encoder(backbone, preset: str):
    """The part of `backbone` that takes images: itself, or its `vision_encoder` (CLIP)."""
    inputs = backbone.inputs
    if len(inputs) == 1 and len(inputs[0].shape) == 4:
        return backbone
    encoder = getattr(backbone, "vision_encoder", None)
    if encoder is not None:
        return encoder
    raise ConfigError(f"model.preset should be an image backbone; received model.preset={preset!r}, a "
                      f"{type(backbone).__name__} whose input is not an image")


def _takes_image_shape(backbone) -> bool:
    return "image_shape" in inspect.signature(type(backbone).__init__).parameters


class SizeError(ValueError):
    """The image encoder does not build at the size asked for."""


class OneSizeError(SizeError):
    """The image encoder takes one size only (its backbone takes no image shape)."""


@functools.lru_cache(maxsize=16)
def _own(preset: str) -> tuple[bool, int]:
    """(whether the backbone takes an image shape, the square size its image encoder is built for)."""
    keras_hub = _keras_hub(preset)
    with _errors(preset):
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=False)
    return _takes_image_shape(backbone), own_size(image_encoder(backbone, preset))


def _load(preset: str, *, load_weights: bool, input_size: Optional[int], dtype: Optional[str] = None):
    """The preset's image encoder, at its own size or at `input_size`, in Keras dtype policy `dtype` (None: the
    preset's own); SizeError when it cannot take that size."""
    keras_hub = _keras_hub(preset)
    takes_shape, size = _own(preset)
    own_dtype = {} if dtype is None else {"dtype": dtype}
    if input_size is None or input_size == size:
        with _errors(preset):
            return image_encoder(keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights,
                                                                       **own_dtype), preset)
    if not takes_shape:
        raise OneSizeError(f"its image encoder is built for {size}x{size} images")
    shape = (input_size, input_size, 3)
    if not load_weights:
        try:
            return image_encoder(keras_hub.models.Backbone.from_preset(preset, load_weights=False, image_shape=shape,
                                                                       **own_dtype), preset)
        except ValueError as err:  # Keras-Hub's own check of the shape, e.g. a patch size that does not divide it
            raise SizeError(_first_line(err)) from None
    with _errors(preset):
        return image_encoder(keras_hub.models.Backbone.from_preset(preset, load_weights=True, image_shape=shape,
                                                                   **own_dtype), preset)


def own_size(encoder) -> int:
    """The square image size an encoder was built for."""
    return int(encoder.inputs[0].shape[1])


def cut_model(encoder):
    """The model cut: one `Cut` per transformer block and the output (`blocks.tap_model`), or the encoder itself,
    every layer a cut, when it has no blocks (a convolutional backbone)."""
    from tlsweep.stages.backbone import blocks

    return blocks.tap_model(encoder) or encoder


def architecture(preset: str, input_size: Optional[int] = None) -> tuple:
    """(each cut's output shape per image, the token sequences' prefix tokens, the weights' shapes, the size
    built at) of the preset without its weights: at its own size, or at `input_size`."""
    return _architecture(preset, None if input_size == _own(preset)[1] else input_size)


@functools.lru_cache(maxsize=16)
def _architecture(preset: str, input_size: Optional[int]) -> tuple:
    _own(preset)
    models.fresh_session(0)
    encoder = _load(preset, load_weights=False, input_size=input_size)
    model = cut_model(encoder)
    return (models.cut_shapes(model), models.cut_prefix_tokens(model),
            tuple(tuple(weight.shape) for weight in encoder.weights), own_size(encoder))


def check_input_size(preset: str, input_size: int, *, weights: Optional[str], received: str) -> None:
    """One line when the preset cannot run at `input_size`: a patch size that does not divide it, an encoder
    built for one size, or position embeddings learnt at another size than the weights'."""
    own = architecture(preset)
    if input_size == own[3]:
        return
    try:
        at_size = architecture(preset, input_size)
    except OneSizeError as err:
        raise ConfigError(f"data.image_size should be {own[3]} for model.preset={preset}: {err}; received "
                          f"{received}") from None
    except SizeError as err:
        raise ConfigError(f"data.image_size should be {own[3]} or another size model.preset={preset} accepts; "
                          f"received {received} ({err})") from None
    if weights is not None and at_size[2] != own[2]:
        raise ConfigError(f"data.image_size should be {own[3]} for model.preset={preset} with its weights, learnt at "
                          f"{own[3]}x{own[3]} (its position embeddings fit one size); received {received}")


def load_encoder(preset: str, *, weights: Optional[str], input_size: int, seed: int, dtype: Optional[str] = None):
    """The image encoder at `input_size`: the preset's weights, or (weights=None) a random init seeded by `seed`,
    the same in every process (the seed is set right before the one build); computing in Keras dtype policy
    `dtype` (None: the preset's own)."""
    _own(preset)  # first: a build of its own, which would draw from the seeded generator
    models.fresh_session(seed)
    return _load(preset, load_weights=weights is not None, input_size=input_size, dtype=dtype)


def converter(preset: str, input_size: int):
    """The preset's own ImageConverter, asked for `input_size` x `input_size` images."""
    keras_hub = _keras_hub(preset)
    with _errors(preset):
        try:
            return keras_hub.layers.ImageConverter.from_preset(preset, image_size=(input_size, input_size))
        except FileNotFoundError:
            raise DataError(f"model.preset should hold an image converter ({CONVERTER_FILE}), whose scaling is the "
                            f"preprocessing; received model.preset={preset!r}, which has none") from None


def converter_config(layer) -> dict:
    """An ImageConverter as JSON-ready config, which `converter_from_config` rebuilds without the preset."""
    import keras

    return keras.saving.serialize_keras_object(layer)


def converter_from_config(config: Mapping) -> object:
    import keras

    _keras_hub("<saved pipeline>")  # registers Keras-Hub's classes
    return keras.saving.deserialize_keras_object(dict(config))


def preprocess_with(layer) -> Callable[[np.ndarray], np.ndarray]:
    """Float32 pixels (N, H, W, 3, 0..255) through the converter, as numpy."""
    import keras

    return lambda images: np.asarray(keras.ops.convert_to_numpy(layer(images)), dtype=np.float32)


def local_folder(preset: str) -> Path:
    """Where the preset's files are on this machine: its folder, or Keras-Hub's download of it."""
    if is_local(preset):
        return Path(preset).expanduser().resolve()
    _keras_hub(preset)
    from keras_hub.src.utils.preset_utils import get_file  # the download's path; Keras-Hub has no public call for it

    with _errors(preset):
        return Path(get_file(preset, CONFIG_FILE)).parent


def fingerprint(preset: str, *, weights: Optional[str], seed: int) -> str:
    """The preset by content: every file of it with its weights (`preset-<digest>`), or its architecture and
    converter alone for a random init (`random-seed<k>-<digest>`)."""
    folder = local_folder(preset)
    if weights is None:
        files = [(name, folder / name) for name in (CONFIG_FILE, CONVERTER_FILE) if (folder / name).is_file()]
        return f"random-seed{seed}-{content.digest(files)}"
    return f"preset-{content.digest(content.folder_files(folder))}"


def fetch(preset: str, *, weights: Optional[str]) -> None:
    """Download what a run of a remote preset loads (its config, weights and converter) into Keras-Hub's cache."""
    if is_local(preset):
        return
    _load(preset, load_weights=weights is not None, input_size=None)
    converter(preset, _own(preset)[1])


def save_encoder(encoder, folder: Path) -> None:
    """The image encoder as a preset folder of its own (config and weights), for a saved pipeline."""
    encoder.save_to_preset(str(folder))


def load_saved_encoder(folder: Path):
    keras_hub = _keras_hub(str(folder))
    with _errors(str(folder)):
        return keras_hub.models.Backbone.from_preset(str(folder))
