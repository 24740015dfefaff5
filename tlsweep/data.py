"""Image sets: CIFAR-10 (Keras download or a local copy) and scikit-learn's digits, plus the split."""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from tlsweep.errors import ConfigError, DataError, FetchError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))
CLASS_NAMES = {"cifar10": CIFAR10_CLASSES, "digits": DIGITS_CLASSES}
DATASETS = tuple(CLASS_NAMES)
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"


@dataclass(frozen=True)
class ImageSet:
    """One fixed set of images (the data set's own train or test part) with integer labels."""

    name: str
    images: np.ndarray  # uint8, (n, height, width, 3)
    labels: np.ndarray  # int64, (n,)

    def indices_of(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple
    train: ImageSet
    test: ImageSet
    fingerprint: str  # content hash: the same images give the same features on every machine
    source: str

    def image_set(self, name: str) -> ImageSet:
        return {"train": self.train, "test": self.test}[name]


def load_dataset(*, name: str, path: Optional[str]) -> Dataset:
    """Load a data set by name; `path` points to a local copy instead of a download."""
    loaders: dict[str, Callable[[Optional[str]], Dataset]] = {
        "cifar10": load_cifar10,
        "digits": load_digits,
    }
    if name not in loaders:
        raise ConfigError(f"data.name should be one of {list(DATASETS)}; received data.name={name!r}")
    return loaders[name](path)


def validate_classes(classes: Sequence[int], class_names: Sequence[str]) -> list[int]:
    """A class subset must name at least two distinct, valid classes."""
    classes = list(classes)
    allowed = f"integers 0..{len(class_names) - 1}"
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < len(class_names)]
    if bad:
        raise ConfigError(f"data.classes should hold {allowed}; received data.classes={classes} ({bad} out of range)")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ConfigError(f"data.classes should not repeat a class; received data.classes={classes} ({dupes} repeated)")
    if len(classes) < 2:
        raise ConfigError(f"data.classes should hold at least two of {allowed}; received data.classes={classes}")
    return classes


def subset_labels(images: ImageSet, classes: Sequence[int]) -> np.ndarray:
    """Labels of `classes`, class by class: the order `features.extract_features` returns them in."""
    return np.concatenate([np.full(len(images.indices_of(c)), c, dtype=np.int64) for c in classes])


def describe_classes(name: str, classes: Sequence[int]) -> str:
    """Class names for tags ("deer,dog,..."); indices that are not valid stay as given."""
    names = CLASS_NAMES.get(name, ())
    return ",".join(names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in classes)


def split_train_val(labels: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of positions 0..n-1 into train and val."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction should be in the open interval (0, 1); received data.val_fraction={val_fraction}")
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    # stratified: the smallest class gives about smallest * val_fraction images to val and must keep one
    # for train; the 1e-9 keeps the bounds quoted below (0.1 and 0.9 for ten images) allowed
    n_val = smallest * val_fraction
    if np.floor(n_val + 1e-9) < 1 or smallest - np.ceil(n_val - 1e-9) < 1:
        raise ConfigError(
            f"data.val_fraction should lie in [{1 / smallest:.3g}, {1 - 1 / smallest:.3g}] for these classes: the "
            f"smallest has {smallest} training images, and a value outside leaves it with no val or no train "
            f"image; received data.val_fraction={val_fraction}"
        )
    positions = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(
            positions, test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        raise ConfigError(f"data.val_fraction={val_fraction} cannot split these classes: {err}") from err
    return np.sort(train_idx), np.sort(val_idx)


def _fingerprint(name: str, *arrays: np.ndarray) -> str:
    digest = hashlib.sha256(name.encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def _dataset(name, class_names, x_train, y_train, x_test, y_test, source) -> Dataset:
    y_train = np.asarray(y_train, dtype=np.int64).reshape(-1)
    y_test = np.asarray(y_test, dtype=np.int64).reshape(-1)
    return Dataset(
        name=name,
        class_names=tuple(class_names),
        train=ImageSet("train", x_train, y_train),
        test=ImageSet("test", x_test, y_test),
        fingerprint=_fingerprint(name, x_train, y_train, x_test, y_test),
        source=source,
    )


def load_cifar10(path: Optional[str] = None) -> Dataset:
    """CIFAR-10 from Keras (download or its cache), or from a local python-version copy."""
    if path is None:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        except Exception as err:  # keras raises a bare Exception for URL failures
            raise FetchError(
                f"could not download CIFAR-10 through Keras ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                "pass a local copy with data.path=/path/to/cifar-10-python.tar.gz (or its cifar-10-batches-py folder)"
            ) from None
        return _dataset("cifar10", CIFAR10_CLASSES, x_train, y_train, x_test, y_test, "keras.datasets.cifar10")

    location = Path(path).expanduser()
    if not location.exists():
        raise DataError(
            f"data.path should be a cifar-10-python.tar.gz file or a cifar-10-batches-py folder; "
            f"received data.path={path!r}, which does not exist"
        )
    batches = _read_cifar_batches(location)
    x_train = np.concatenate([batches[b][0] for b in _CIFAR_TRAIN_BATCHES])
    y_train = np.concatenate([batches[b][1] for b in _CIFAR_TRAIN_BATCHES])
    x_test, y_test = batches[_CIFAR_TEST_BATCH]
    return _dataset("cifar10", CIFAR10_CLASSES, x_train, y_train, x_test, y_test, str(location.resolve()))


def _read_cifar_batches(location: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    wanted = (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)
    raw: dict[str, bytes] = {}
    try:
        if location.is_dir():
            folder = location / "cifar-10-batches-py" if (location / "cifar-10-batches-py").is_dir() else location
            for name in wanted:
                if (folder / name).is_file():
                    raw[name] = (folder / name).read_bytes()
        else:
            with tarfile.open(location, "r:*") as archive:
                for member in archive:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        raw[base] = archive.extractfile(member).read()
                # read to the end of the compressed stream, so gzip checks its CRC and length: a flipped
                # byte can otherwise decode to garbage that merely ends the member listing early
                while archive.fileobj.read(1 << 22):
                    pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        reason = str(err).splitlines()[0].rstrip(":") if str(err) else ""
        raise DataError(
            f"data.path={str(location)!r} is not a readable CIFAR-10 archive, or is truncated or corrupt "
            f"({type(err).__name__}: {reason}); expected cifar-10-python.tar.gz or its cifar-10-batches-py folder"
        ) from None
    missing = [name for name in wanted if name not in raw]
    if missing:
        raise DataError(
            f"data.path={str(location)!r} is not a CIFAR-10 python-version copy: missing {missing}; "
            "expected cifar-10-python.tar.gz or its cifar-10-batches-py folder"
        )
    return {name: _decode_cifar_batch(name, blob, location) for name, blob in raw.items()}


def _decode_cifar_batch(name: str, blob: bytes, location: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = pickle.loads(blob, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except Exception as err:  # a torn pickle can raise almost anything
        raise DataError(
            f"data.path={str(location)!r}: batch {name!r} is truncated or corrupt ({type(err).__name__}); "
            "re-download cifar-10-python.tar.gz"
        ) from None
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"data.path={str(location)!r}: batch {name!r} has labels that do not match its images")
    return np.ascontiguousarray(images), labels


def load_digits(path: Optional[str] = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits as RGB uint8 images; a fixed 80/20 train/test split."""
    if path is not None:
        raise ConfigError(f"data.path should be null for data.name='digits' (bundled with scikit-learn); received data.path={path!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    gray = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    # a fixed split, independent of `seed`, so the test images never change between runs
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return _dataset("digits", DIGITS_CLASSES, x_train, y_train, x_test, y_test, "sklearn.datasets.load_digits")
