"""On-disk feature store: float32 .npy entries, written atomically, checked on every load.

Each entry is `<name>.npy` plus a `<name>.json` sidecar holding its shape, dtype and sha256. An entry
counts only when both agree; a torn, truncated or corrupt file is logged, removed and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

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
