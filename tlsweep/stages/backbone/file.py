"""Your own saved Keras model (`model=file model.path=FILE`): a `.keras` file, or a legacy `.h5`, whose input is
an image. Every layer but its input is a cut, as for any keras.applications CNN; its weights are the file's,
and its identity is the file's content. Its preprocessing is `model.preprocess`, one of the modes of
`keras.applications.imagenet_utils.preprocess_input` (caffe, torch, tf) or none.

Loading a `.keras` file runs no code of its own, but a legacy `.h5` holding Lambda layers would: load only
files you made or trust.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

from tlsweep.errors import ConfigError, DataError
from tlsweep.stages.backbone import content, models

PREPROCESS_MODES = ("caffe", "torch", "tf", "none")  # as keras.applications.imagenet_utils.preprocess_input names them
ALLOWED = "a saved Keras model (.keras, or a legacy .h5) whose input is an image"


def check_preprocess(mode: Optional[str]) -> None:
    if mode not in PREPROCESS_MODES:
        raise ConfigError(
            f"model.preprocess should be one of {list(PREPROCESS_MODES)} for model=file (the modes of "
            f"keras.applications.imagenet_utils.preprocess_input; none passes pixels 0..255 as they are); "
            f"received model.preprocess={mode!r}"
        )


def preprocess_fn(mode: str) -> Callable:
    """`preprocess_input` in `mode` (caffe: BGR, ImageNet means subtracted; torch: 0..1, ImageNet mean and std;
    tf: -1..1), or nothing for none."""
    check_preprocess(mode)
    if mode == "none":
        return lambda images: images
    from keras.applications import imagenet_utils

    return functools.partial(imagenet_utils.preprocess_input, mode=mode)


def existing(path: str) -> Path:
    found = Path(path).expanduser()
    if not found.is_file():
        raise DataError(f"model.path should be {ALLOWED}; received model.path={path!r}, which does not exist")
    return found


def fingerprint(path: str) -> str:
    """The file by content: `file-<digest>`, as a keras.applications weights file is named."""
    return f"file-{content.file_sha256(existing(path))[:content.DIGEST_CHARS]}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def load(path: str):
    """The saved model, checked: a graph of layers (functional or sequential) with one image input."""
    import keras

    found = existing(path)
    try:
        model = keras.saving.load_model(found, compile=False)
    except Exception as err:  # ValueError: not a Keras file; OSError: h5py, truncated; TypeError: unknown classes
        raise DataError(f"model.path should be {ALLOWED}; received model.path={path!r}, which does not load "
                        f"({type(err).__name__}: {_first_line(err)})") from None
    try:
        inputs = model.inputs
        models.cut_layer_names(model)
    except (AttributeError, ValueError):
        raise DataError(f"model.path should be {ALLOWED}; received model.path={path!r}, a subclassed model, whose "
                        "layers are no graph to cut (save a functional or sequential model)") from None
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] != 3:
        raise DataError(f"model.path should be {ALLOWED}; received model.path={path!r}, whose input is "
                        f"{[tuple(tensor.shape) for tensor in inputs]}, not N x H x W x 3 images")
    return model


def fixed_size(model) -> Optional[int]:
    """The square size the model's input is fixed at; None when it takes any size."""
    height, width = tuple(model.inputs[0].shape[1:3])
    if height is None and width is None:
        return None
    return int(height or width)


class SizeError(ValueError):
    """The model does not take the size asked for."""


def at_size(model, input_size: int):
    """The model at `input_size` x `input_size`: itself when its input is fixed at that size, else rebuilt at
    it with the same weights; SizeError when it cannot take that size."""
    import keras

    size = fixed_size(model)
    if size is not None:
        if size != input_size:
            raise SizeError(f"its input is {size}x{size}")
        return model
    try:
        sized = keras.models.clone_model(model, input_tensors=keras.Input((input_size, input_size, 3)))
    except ValueError as err:  # a layer that cannot take the size: a map pooled below 1x1, a fixed Dense
        raise SizeError(_first_line(err)) from None
    sized.set_weights(model.get_weights())
    return sized


def check_input_size(path: str, input_size: int, *, received: str) -> None:
    """One line when the file's model cannot take `input_size` x `input_size` images."""
    try:
        architecture(path, input_size)
    except SizeError as err:
        raise ConfigError(f"data.image_size should be a size model.path={path} takes; received {received} "
                          f"({err})") from None


def build(path: str, *, input_size: int):
    """The model of the file, with its weights, at `input_size`."""
    check_input_size(path, input_size, received=f"data.image_size={input_size}")
    return at_size(load(path), input_size)


def architecture(path: str, input_size: Optional[int] = None) -> dict:
    """Each cut's output shape per image: as saved (None where it follows the input size), or at `input_size`."""
    found = existing(path)
    return _architecture(str(found.resolve()), found.stat().st_mtime_ns, input_size)


@functools.lru_cache(maxsize=16)
def _architecture(path: str, mtime_ns: int, input_size: Optional[int]) -> dict:
    model = load(path)
    if input_size is None:
        return models.output_shapes(model)
    return models.cut_shapes(at_size(model, input_size))
