"""Image sets: CIFAR-10 (Keras download or a local copy), scikit-learn's digits and a folder of your own
images, plus the split."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from tlsweep.errors import ConfigError, DataError, FetchError
from tlsweep.stages.data import cifar10, folder, images
from tlsweep.stages.data.cifar10 import CLASSES as CIFAR10_CLASSES

log = logging.getLogger(__name__)

DIGITS_CLASSES = tuple(str(d) for d in range(10))
CLASS_NAMES = {"cifar10": CIFAR10_CLASSES, "digits": DIGITS_CLASSES}
DATASETS = (*CLASS_NAMES, "folder")  # a folder's class names are its sorted subfolders (stages.folder)
CLASSES_SHOWN = 60  # characters of a class list in the terminal's table, run names, figures and their files
NATIVE_SIZES = {"cifar10": 32, "digits": 8}  # the input size when data.image_size is null; a folder's: its images'


@dataclass(frozen=True)
class ImageSet:
    """One fixed set of images (the data set's own train or test part) with integer labels."""

    name: str
    images: np.ndarray  # uint8, (n, height, width, 3)
    labels: np.ndarray  # int64, (n,)
    ids: tuple = ()  # a folder's images: each one's path relative to data.path, in the order of `images`

    def indices_of(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def image_ids(self, rows: np.ndarray) -> list[str]:
        """Ids of the images at `rows`: a folder image's relative path, else `<set>/<index in the set>`."""
        if self.ids:
            return [self.ids[row] for row in rows]
        return [f"{self.name}/{row}" for row in rows]


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple
    train: ImageSet
    test: ImageSet
    fingerprint: str  # content hash: the same images give the same features on every machine
    source: str
    skipped: tuple = ()  # a folder's files that did not decode (folder.SkippedImage: id, reason), when skipping

    def image_set(self, name: str) -> ImageSet:
        return {"train": self.train, "test": self.test}[name]


_LOADED: dict[tuple, Dataset] = {}  # the last data set this process loaded, by what it was loaded from
_REMEMBERED = 1


def load_dataset(*, name: str, path: Optional[str], image_size: Optional[int] = None, test_fraction: float = 0.2,
                 skip_bad_images: bool = False) -> Dataset:
    """Load a data set by name; `path` points to a local copy instead of a download, or to a folder of images.

    The other options are a folder's: CIFAR-10 and digits keep their native size (the CNN's input is resized
    batch by batch) and their own test sets. The jobs of a sweep that run in one process load it once: the
    same request for files whose names, sizes and modification times have not changed since is the same
    data set.
    """
    key = (name, path, image_size, test_fraction, skip_bad_images, _files_stamp(path))
    if key not in _LOADED:
        if len(_LOADED) >= _REMEMBERED:
            _LOADED.clear()
        _LOADED[key] = _load(name=name, path=path, image_size=image_size, test_fraction=test_fraction,
                             skip_bad_images=skip_bad_images)
    return _LOADED[key]


def _files_stamp(path: Optional[str]) -> tuple:
    """Every file under `path` with its size and modification time: what says a local copy is unchanged."""
    if path is None:
        return ()
    root = Path(path).expanduser()
    if root.is_file():
        found = [root]
    elif root.is_dir():
        found = sorted(item for item in root.rglob("*") if item.is_file())
    else:
        return ("missing",)
    stamp = []
    for item in found:
        info = item.stat()
        stamp.append((str(item), info.st_size, info.st_mtime_ns))
    return tuple(stamp)


def _load(*, name: str, path: Optional[str], image_size: Optional[int], test_fraction: float,
          skip_bad_images: bool) -> Dataset:
    if name == "folder":
        return load_folder(path, image_size=image_size, test_fraction=test_fraction, skip_bad_images=skip_bad_images)
    loaders: dict[str, Callable[[Optional[str]], Dataset]] = {
        "cifar10": load_cifar10,
        "digits": load_digits,
    }
    return loaders[name](path)


def load_folder(path: str, *, image_size: Optional[int], test_fraction: float, skip_bad_images: bool) -> Dataset:
    """A folder of one subfolder per class (or train/ and test/ holding them), decoded and resized to image_size."""
    found = images.read(path, image_size=image_size, test_fraction=test_fraction, skip_bad_images=skip_bad_images)
    return Dataset(
        name="folder", class_names=found.class_names,
        train=ImageSet("train", found.train.images, found.train.labels, found.train.ids),
        test=ImageSet("test", found.test.images, found.test.labels, found.test.ids),
        fingerprint=found.fingerprint, source=str(Path(path).expanduser().resolve()), skipped=found.skipped,
    )


def input_size(*, name: str, path: Optional[str], image_size: Optional[int]) -> int:
    """The CNN's square input size: data.image_size, else the images' own (a folder's: their one square size)."""
    if image_size is not None:
        return image_size
    return NATIVE_SIZES.get(name) or folder.common_size(folder.scan(path))


def subset_labels(images: ImageSet, classes: Sequence[int]) -> np.ndarray:
    """Labels of `classes`, class by class: the order `features.extract_features` returns them in."""
    return np.concatenate([np.full(len(images.indices_of(c)), c, dtype=np.int64) for c in classes])


def class_order(images: ImageSet, classes: Sequence[int]) -> np.ndarray:
    """The image set's row of each feature row: class by class, as `subset_labels` orders them."""
    return np.concatenate([images.indices_of(c) for c in classes])


def describe_classes(name: str, classes: Sequence[int], path: Optional[str] = None) -> str:
    """Class names for tags ("deer,dog,..."); indices that are not valid stay as given."""
    names = folder.class_folder_names(path) if name == "folder" else CLASS_NAMES.get(name, ())
    return ",".join(names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in classes)


def brief_classes(classes: str, width: int = CLASSES_SHOWN, ellipsis: str = "…") -> str:
    """`describe_classes`' text as the terminal's table, run names and figures show it: whole up to `width`
    characters, else the classes that fit, an ellipsis and the last class ("class_000,class_001,…,class_099"),
    or the first `width` characters when not even the first class fits beside the last. It splits at commas,
    so a name that holds one may be cut inside. File and metric names take ellipsis="..."."""
    if len(classes) <= width:
        return classes
    head, _, last = classes.rpartition(",")
    room = max(width - len(last) - 2, 0)
    kept = head[:room] if head[room:room + 1] in ("", ",") else head[:room].rpartition(",")[0]  # whole names
    return f"{kept},{ellipsis},{last}" if kept else f"{classes[:width - 1]}{ellipsis}"


def split_train_val(labels: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of positions 0..n-1 into train and val."""
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


def few_shot(rows: np.ndarray, labels: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """`per_class` seeded rows of each class, drawn from `rows` (positions into `labels`), sorted."""
    counts = {int(label): int(np.sum(labels[rows] == label)) for label in np.unique(labels[rows])}
    if per_class > min(counts.values()):
        raise ConfigError(
            f"data.train_per_class should be at most {min(counts.values())}, the training images of the smallest "
            f"class after the val split; received data.train_per_class={per_class}"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(rows[labels[rows] == label], size=per_class, replace=False) for label in counts]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class Split:
    """The data stage's answer for one configuration: the classes, and which of their training rows (positions in
    class order, as `extract_features` returns them) train the probe and which validate it."""

    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    labels: np.ndarray  # of every training row of `classes`, class by class
    train: np.ndarray
    val: np.ndarray

    @property
    def digest(self) -> str:
        return split_digest(self.train, self.val)


def split_classes(dataset: Dataset, classes: Sequence[int], *, val_fraction: float, seed: int,
                  train_per_class: Optional[int] = None) -> Split:
    """Split `classes`' training images into train and val, on the labels alone (so a bad val_fraction or
    train_per_class fails before the CNN runs); few-shot, `train_per_class` seeded rows of each class train."""
    labels = subset_labels(dataset.train, classes)
    train, val = split_train_val(labels, val_fraction=val_fraction, seed=seed)
    if train_per_class is not None:
        train = few_shot(train, labels, per_class=train_per_class, seed=seed)
    return Split(tuple(classes), tuple(dataset.class_names[c] for c in classes), labels, train, val)


def split_digest(*splits: np.ndarray) -> str:
    """A short hash of the row indices of each split, so two runs can show they fitted on the same rows."""
    digest = hashlib.sha256()
    for rows in splits:
        digest.update(np.asarray(rows, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:16]


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


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # what keras.datasets.cifar10 fetches


def source_type(source: str) -> str:
    """MLflow's dataset source type of `Dataset.source`: http (a download), local (a path) or code."""
    if source.startswith(("http://", "https://")):
        return "http"
    return "local" if Path(source).is_absolute() else "code"


def load_cifar10(path: Optional[str] = None) -> Dataset:
    """CIFAR-10 from Keras (download or its cache), or from a local python-version copy."""
    if path is None:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        except Exception as err:  # keras raises a bare Exception for URL failures
            raise FetchError(
                what="CIFAR-10 through Keras", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}",
                remedy="data.path=/path/to/cifar-10-python.tar.gz (or its cifar-10-batches-py folder)",
            ) from None
        return _dataset("cifar10", CIFAR10_CLASSES, x_train, y_train, x_test, y_test, CIFAR10_URL)

    location = Path(path).expanduser()
    if not location.exists():
        raise DataError(
            f"data.path should be a cifar-10-python.tar.gz file or a cifar-10-batches-py folder; "
            f"received data.path={path!r}, which does not exist"
        )
    x_train, y_train, x_test, y_test = cifar10.read_batches(location)
    return _dataset("cifar10", CIFAR10_CLASSES, x_train, y_train, x_test, y_test, str(location.resolve()))


def load_digits(path: Optional[str] = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits as RGB uint8 images; a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    gray = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    # a fixed split, independent of `seed`, so the test images never change between runs
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return _dataset("digits", DIGITS_CLASSES, x_train, y_train, x_test, y_test, "sklearn.datasets.load_digits")
