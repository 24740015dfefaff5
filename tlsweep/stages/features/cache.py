"""On-disk feature store: float32 .npy entries, written atomically, checked on every load.

One folder per feature key holds `key.json` (what the features depend on), `layers.json` (the backbone's
cut layers, input first), `shapes.json` (each cut's output shape, H x W x C or T x D, so any pooling can be
computed from the flattened output; a joined cut's too), `tokens.json` (for a token sequence's cut, the tokens
before its patch tokens) and one entry per (image set, layer, class). Each entry is `<name>.npy` plus a
`<name>.json` sidecar holding its shape, dtype and sha256; `<image set>-class<k>-ids.json` names the image
of each row. An entry counts only when both agree; a torn, truncated or corrupt file is logged, removed and
recomputed. `score-<hash>.json` holds a transferability score of the features with what else it depends on
(one that does not read back is computed again). `FeatureCache` is the only reader and writer of this layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from filelock import FileLock

from tlsweep.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 6 * 3600  # a cold extraction of a large image set can take hours on a CPU


def ensure_writable(root: Path) -> Path:
    """Create the cache folder, or fail with one line naming it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"cache_dir should be a writable folder; received cache_dir={str(root)!r} ({err.strerror or err})"
        ) from None
    return root


def key_digest(key: Mapping[str, Any]) -> str:
    """A short hash of what an entry depends on: names its folder, or its file."""
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_atomically(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a shared cache must stay readable
    os.replace(tmp, final)


def write_json(path: Path, value) -> None:
    """Write JSON by rename, so a process reading it without the lock never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, indent=2)
    _replace_atomically(Path(tmp), path)


def load_entry(folder: Path, name: str) -> Optional[np.ndarray]:
    """A memory-mapped entry, or None when it is missing or fails its checks (then it is removed)."""
    data, meta = folder / f"{name}.npy", folder / f"{name}.json"
    if not meta.exists():
        return None
    problem = None
    try:
        expected = json.loads(meta.read_text())
        array = np.load(data, mmap_mode="r")
        if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
            problem = f"shape/dtype {array.shape}/{array.dtype} != {expected['shape']}/{expected['dtype']}"
        elif file_sha256(data) != expected["sha256"]:
            problem = "checksum mismatch"
    except (OSError, ValueError, KeyError, EOFError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem is None:
        return array
    log.warning("cache entry %s is corrupt (%s); removing it so it is recomputed", data, problem)
    for path in (meta, data):
        path.unlink(missing_ok=True)
    return None


@contextmanager
def new_entry(folder: Path, name: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """A writable float32 memmap that becomes entry `name` only if the block finishes."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".npy.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        yield array
        array.flush()
        del array
        meta = {"shape": list(shape), "dtype": "float32", "sha256": file_sha256(tmp)}
        _replace_atomically(tmp, folder / f"{name}.npy")
        meta_tmp = folder / f".{name}.{os.getpid()}.json.tmp"
        meta_tmp.write_text(json.dumps(meta))
        _replace_atomically(meta_tmp, folder / f"{name}.json")
    finally:
        tmp.unlink(missing_ok=True)


def lock(folder: Path, name: str) -> FileLock:
    """One process computes a feature set; others with the same key wait, then read it."""
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{name}.lock"), timeout=LOCK_TIMEOUT_S)


class FeatureCache:
    """The entries of one feature key, under `root`: what `features` reads, writes, locks and cleans."""

    def __init__(self, root: Path, key: Mapping[str, Any], *, label: str):
        self.key = dict(key)
        self.folder = root / f"{label}-{key_digest(key)}"

    @classmethod
    def at(cls, folder: Path) -> "FeatureCache":
        """The cache entries in `folder`, as a run recorded it (its key.json says what they depend on)."""
        found = cls.__new__(cls)
        found.folder, found.key = Path(folder), json.loads((Path(folder) / "key.json").read_text())
        return found

    @staticmethod
    def _name(image_set: str, layer: str, label: int) -> str:
        return f"{image_set}-{layer}-class{label}"

    def load(self, image_set: str, layer: str, classes: Sequence[int]) -> Optional[list[np.ndarray]]:
        """One memory-mapped array per class, or None when any class is missing or corrupt."""
        parts = []
        for label in classes:
            entry = load_entry(self.folder, self._name(image_set, layer, label))
            if entry is None:
                return None
            parts.append(entry)
        return parts

    def rows(self, image_set: str, layer: str, classes: Sequence[int], rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (positions in class order) of a cut's cached features, as float32, read class by class;
        FileNotFoundError when any class is missing or corrupt."""
        parts = self.load(image_set, layer, classes)
        if parts is None:
            raise FileNotFoundError(f"{self.folder} holds no {image_set} features of {layer} for classes "
                                    f"{list(classes)}")
        bounds = np.cumsum([0] + [len(part) for part in parts])
        return np.concatenate([np.asarray(part[rows[(rows >= lo) & (rows < hi)] - lo], dtype=np.float32)
                               for part, lo, hi in zip(parts, bounds[:-1], bounds[1:])])

    def count(self, image_set: str, layer: str, classes: Sequence[int]) -> int:
        """How many images of `classes` the cut's entries hold (0 when any class is missing)."""
        parts = self.load(image_set, layer, classes)
        return sum(len(part) for part in parts) if parts is not None else 0

    def has(self, image_set: str, layer: str, label: int) -> bool:
        """Whether the entry was committed (its checks run when it is loaded)."""
        return (self.folder / f"{self._name(image_set, layer, label)}.json").exists()

    def new_entry(self, image_set: str, layer: str, label: int, shape: tuple[int, ...]):
        return new_entry(self.folder, self._name(image_set, layer, label), shape)

    def lock(self, image_set: str) -> FileLock:
        return lock(self.folder, image_set)

    def record_layers(self, layers: Sequence[str], shapes: Mapping[str, Sequence[int]],
                      prefix_tokens: Optional[Mapping[str, int]] = None) -> None:
        """Write the key (once), the backbone's cut layers, their output shapes and, for token sequences, the
        tokens before the patch tokens; cache hits read them unlocked."""
        if not (self.folder / "key.json").exists():
            write_json(self.folder / "key.json", self.key)
        write_json(self.folder / "layers.json", list(layers))
        write_json(self.folder / "shapes.json", {name: list(shape) for name, shape in shapes.items()})
        if prefix_tokens:
            write_json(self.folder / "tokens.json", dict(prefix_tokens))

    def record_ids(self, image_set: str, label: int, ids: Sequence[str]) -> None:
        """The image ids of a class's rows, in row order, beside its entries: which image each row is."""
        write_json(self.folder / f"{image_set}-class{label}-ids.json", list(ids))

    def ids(self, image_set: str, label: int) -> Optional[list[str]]:
        path = self.folder / f"{image_set}-class{label}-ids.json"
        return json.loads(path.read_text()) if path.exists() else None

    def layers(self) -> list[str]:
        return json.loads((self.folder / "layers.json").read_text())

    def map_shape(self, layer: str) -> Optional[list[int]]:
        """The cut's output shape per image, (H, W, C) for a map; None where an older entry lacks it."""
        path = self.folder / "shapes.json"
        return json.loads(path.read_text()).get(layer) if path.exists() else None

    def recorded_shapes(self) -> list[str]:
        """The cuts whose shapes are recorded (the backbone's, and joined cuts extracted before)."""
        path = self.folder / "shapes.json"
        return list(json.loads(path.read_text())) if path.exists() else []

    def prefix_tokens(self, layer: str) -> int:
        """The tokens before a token sequence's patch tokens (its class token, registers); 0 for other cuts."""
        path = self.folder / "tokens.json"
        return int(json.loads(path.read_text()).get(layer, 0)) if path.exists() else 0

    def _score_path(self, key: Mapping[str, Any]) -> Path:
        return self.folder / f"score-{key_digest(key)}.json"

    def score(self, key: Mapping[str, Any]) -> Optional[float]:
        """A score recorded for these features under `key` (the score, the rows, the normalisation), or None
        when there is none, or the file is unreadable or holds another key."""
        try:
            found = json.loads(self._score_path(key).read_text())
            return float(found["value"]) if found.get("key") == json.loads(json.dumps(key)) else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def record_score(self, key: Mapping[str, Any], value: float) -> None:
        """Keep a score beside the features it was computed from, written by rename (`write_json`)."""
        write_json(self._score_path(key), {"key": dict(key), "value": float(value)})

    def clear_unfinished(self, image_set: str) -> None:
        """Remove what a killed extraction left half-written; call it holding the image set's lock."""
        for stale in self.folder.glob(f".{image_set}-*.tmp"):
            stale.unlink(missing_ok=True)
