"""CIFAR-10's python-version files (cifar-10-python.tar.gz, cifar-10-batches-py/): read them, and write them.

The writer gives the official layout, so generated images (tests, benchmarks) go through the same reader
as the real data set: five training batches and a test batch, each a pickled dict with `batch_label`,
`labels` (a list), `data` (uint8 rows of 3072: 1024 red, then 1024 green, then 1024 blue values) and
`filenames`, plus `batches.meta` with the `label_names`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from tlsweep.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
_SIDE = 32


def images_from_rows(rows: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) images from the format's (n, 3072) rows of red, green and blue planes."""
    return np.ascontiguousarray(np.asarray(rows, dtype=np.uint8).reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))


def rows_from_images(images: np.ndarray) -> np.ndarray:
    """The format's (n, 3072) uint8 rows from (n, 32, 32, 3) images: the inverse of `images_from_rows`."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1))


def read_batches(location: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from cifar-10-python.tar.gz or a cifar-10-batches-py folder.

    Images are uint8 (n, 32, 32, 3), as `keras.datasets.cifar10` returns them; labels are int64 (n,).
    A folder that holds cifar-10-batches-py/ is read too. A missing, torn or corrupt batch raises a
    `DataError` that names `data.path`, the setting the location comes from.
    """
    location = Path(location)
    batches = {name: _decode_batch(name, blob, location) for name, blob in _batch_blobs(location).items()}
    x_train = np.concatenate([batches[name][0] for name in TRAIN_BATCHES])
    y_train = np.concatenate([batches[name][1] for name in TRAIN_BATCHES])
    x_test, y_test = batches[TEST_BATCH]
    return x_train, y_train, x_test, y_test


def _batch_blobs(location: Path) -> dict[str, bytes]:
    wanted = (*TRAIN_BATCHES, TEST_BATCH)
    raw: dict[str, bytes] = {}
    try:
        if location.is_dir():
            folder = location / FOLDER if (location / FOLDER).is_dir() else location
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
    return raw


def _decode_batch(name: str, blob: bytes, location: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = pickle.loads(blob, encoding="bytes")
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
        images = images_from_rows(entry[b"data"])
    except Exception as err:  # a torn pickle can raise almost anything
        raise DataError(
            f"data.path={str(location)!r}: batch {name!r} is truncated or corrupt ({type(err).__name__}); "
            "re-download cifar-10-python.tar.gz"
        ) from None
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"data.path={str(location)!r}: batch {name!r} has labels that do not match its images")
    return images, labels


def write_batches(folder: Path, *, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray) -> Path:
    """Write `folder`/cifar-10-batches-py/ in the official layout; returns its path.

    The training images are split in order into five batches (of equal size when their number allows).
    Images are uint8 (n, 32, 32, 3), labels integers 0-9, as `read_batches` returns them.
    """
    batches = Path(folder) / FOLDER
    batches.mkdir(parents=True, exist_ok=True)
    for name, blob in _batch_files(x_train, y_train, x_test, y_test).items():
        (batches / name).write_bytes(blob)
    return batches


def write_archive(folder: Path, *, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray) -> Path:
    """Write `folder`/cifar-10-python.tar.gz, holding cifar-10-batches-py/ as the official archive does."""
    path = Path(folder) / ARCHIVE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        directory = tarfile.TarInfo(FOLDER)
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(directory)
        for name, blob in _batch_files(x_train, y_train, x_test, y_test).items():
            member = tarfile.TarInfo(f"{FOLDER}/{name}")
            member.size, member.mode = len(blob), 0o644
            archive.addfile(member, io.BytesIO(blob))
    return path


def _batch_files(x_train, y_train, x_test, y_test) -> dict[str, bytes]:
    """The pickled content of each file of cifar-10-batches-py/, by file name."""
    x_train, y_train = _checked("train", x_train, y_train)
    x_test, y_test = _checked("test", x_test, y_test)
    parts = np.array_split(np.arange(len(x_train)), len(TRAIN_BATCHES))
    files = {name: _batch(f"training batch {i} of {len(parts)}", x_train[rows], y_train[rows], numbers=rows)
             for i, (name, rows) in enumerate(zip(TRAIN_BATCHES, parts), start=1)}
    files[TEST_BATCH] = _batch("testing batch 1 of 1", x_test, y_test, numbers=np.arange(len(x_test)))
    files[META] = pickle.dumps({
        b"num_cases_per_batch": len(parts[0]),
        b"label_names": [name.encode() for name in CLASSES],
        b"num_vis": 3 * _SIDE * _SIDE,
    })
    return files


def _batch(batch_label: str, images: np.ndarray, labels: np.ndarray, *, numbers: np.ndarray) -> bytes:
    """One pickled batch; `numbers` make each image's file name unique across the batches."""
    return pickle.dumps({
        b"batch_label": batch_label.encode(),
        b"labels": labels.tolist(),
        b"data": rows_from_images(images),
        b"filenames": [f"{CLASSES[c]}_s_{n:06d}.png".encode() for c, n in zip(labels.tolist(), numbers.tolist())],
    })


def _checked(part: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (_SIDE, _SIDE, 3):
        raise ValueError(f"x_{part} should be uint8 images of shape (n, 32, 32, 3); "
                         f"received dtype {images.dtype}, shape {images.shape}")
    if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y_{part} should hold one integer label per image ({len(images)}); "
                         f"received {len(labels)} labels of dtype {labels.dtype}")
    outside = sorted(set(labels[(labels < 0) | (labels >= len(CLASSES))].tolist()))
    if outside:
        raise ValueError(f"y_{part} should hold labels 0-{len(CLASSES) - 1}; received {outside}")
    return images, labels
