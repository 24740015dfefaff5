"""What weights hold, by content: a digest of their files, so that a run's identity and its cache key follow
the bytes (a copy elsewhere is the same weights; a file changed in place is not).

Each file is read once per process while its size and modification time stay the same.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Iterable

DIGEST_CHARS = 16


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def digest(files: Iterable[tuple[str, Path]]) -> str:
    """One short digest of (name, file) pairs: each file's content under its name, in name order."""
    combined = hashlib.sha256()
    for name, path in sorted(files, key=lambda item: item[0]):
        combined.update(f"{name}\0{file_sha256(path)}\n".encode())
    return combined.hexdigest()[:DIGEST_CHARS]


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file under `folder` but hidden ones, by its path relative to the folder (links followed)."""
    root = Path(folder)
    return [(path.relative_to(root).as_posix(), path) for path in sorted(root.rglob("*"))
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)]
