"""A user's own images: DIR/<class>/..., or DIR/train/<class>/... and DIR/test/<class>/...: their layout, listed.

Class names are the class folder names, sorted. Files whose extension is not an image's, hidden files and
folders (`.DS_Store`, `._x.jpg`, `.git/`) and `__MACOSX/` are ignored; images may sit in nested folders
inside a class folder. Each image's id is its path relative to DIR (posix). Without train/ and test/, a
stratified test split of the file list is drawn with a fixed seed, so the test images never change with the
run's `seed` (a skipped file leaves its split).

Nothing here decodes an image (`images` does, once each): a listing and the image headers are enough to check
a folder before any run is opened. The fingerprint covers each split's ids, labels and file bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from tlsweep.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# torchvision's ImageFolder extensions, plus GIF
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
IGNORED_FOLDERS = ("__MACOSX",)  # resource forks that macOS zips carry next to the real folders
TEST_SPLIT_SEED = 0


class SkippedImage(NamedTuple):
    """A file with an image extension that did not decode, left out under `data.skip_bad_images=true`."""

    id: str  # path relative to data.path
    reason: str


@dataclass(frozen=True)
class Layout:
    """The class folders of DIR and the image files in each, before anything is decoded."""

    root: Path
    class_names: tuple[str, ...]
    files: dict  # "train" (and "test" with a test/ folder) -> one tuple of ids per class

    @property
    def has_test_folder(self) -> bool:
        return "test" in self.files


@dataclass(frozen=True)
class Part:
    """The decoded images of one split, with their labels and ids in the same order."""

    images: np.ndarray  # uint8, (n, size, size, 3)
    labels: np.ndarray  # int64, (n,)
    ids: tuple[str, ...]


@dataclass(frozen=True)
class FolderImages:
    class_names: tuple[str, ...]
    train: Part
    test: Part
    fingerprint: str
    skipped: tuple[SkippedImage, ...]


def _visible(entry: Path) -> bool:
    return not entry.name.startswith(".") and entry.name not in IGNORED_FOLDERS


def _is_image(path: Path) -> bool:
    return _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def _subfolders(folder: Path) -> list[Path]:
    return sorted((entry for entry in folder.iterdir() if entry.is_dir() and _visible(entry)), key=lambda p: p.name)


def where(root: Path) -> str:
    return f"data.path={str(root)!r}"


def class_folder_names(path: Optional[str]) -> tuple[str, ...]:
    """The class names a folder would have (sorted subfolders, of train/ when split), or () when unreadable."""
    try:
        root = Path(path).expanduser()
        folders = _subfolders(root)
        names = [folder.name for folder in folders]
        if "train" in names and "test" in names:
            folders = _subfolders(root / "train")
        return tuple(folder.name for folder in folders)
    except (OSError, TypeError):
        return ()


def scan(path: str) -> Layout:
    """The layout of `path`, or one line saying what is wrong with it (missing, empty class, one class, ...)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        state = "which is not a folder" if root.exists() else "which does not exist"
        raise DataError(f"data.path should be a folder with one subfolder per class; received {where(root)}, {state}")
    root = root.resolve()
    top = _subfolders(root)
    names = [folder.name for folder in top]
    if "train" in names and "test" in names:
        extra = [name for name in names if name not in SPLITS]
        if extra:
            raise DataError(f"{where(root)} holds train/ and test/ and also {extra}; expected only train/ and "
                            "test/ (each with one subfolder per class), or one subfolder per class")
        per_split = {split: {folder.name: folder for folder in _subfolders(root / split)} for split in SPLITS}
        train, test = set(per_split["train"]), set(per_split["test"])
        if train != test:
            missing = "; ".join(f"{split}/ lacks {sorted(other - own)}" for split, own, other in
                                (("test", test, train), ("train", train, test)) if other - own)
            raise DataError(f"{where(root)}: train/ and test/ should hold the same class folders; {missing}")
        class_names = tuple(sorted(train))
        folders = {split: [per_split[split][name] for name in class_names] for split in SPLITS}
    else:
        class_names = tuple(names)
        folders = {"train": top}
    if len(class_names) < 2:
        hint = " (a split layout needs both train/ and test/)" if set(class_names) & set(SPLITS) else ""
        found = f"one class folder, {class_names[0]!r}" if class_names else "no class folder"
        raise DataError(f"{where(root)} holds {found}{hint}; expected one subfolder per class, at least two")
    files = {}
    for split, class_folders in folders.items():
        files[split] = tuple(_images_in(root, folder) for folder in class_folders)
        for folder, ids in zip(class_folders, files[split]):
            if not ids:
                raise DataError(f"{where(root)}: class folder {folder.relative_to(root).as_posix()!r} holds no "
                                f"images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return Layout(root, class_names, files)


def _images_in(root: Path, folder: Path) -> tuple[str, ...]:
    found = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if _visible(Path(name))]
        found += [(Path(current) / name).relative_to(root).as_posix() for name in names if _is_image(Path(name))]
    return tuple(sorted(found))


def check_test_fraction(layout: Layout, test_fraction: float) -> None:
    """Every class must give at least one image to test and keep one for train, or one line says so."""
    if not layout.has_test_folder:
        _check_split_counts(layout.root, layout.class_names, [len(ids) for ids in layout.files["train"]],
                            test_fraction)


def _check_split_counts(root: Path, class_names: Sequence[str], counts: Sequence[int], fraction: float) -> None:
    smallest = int(np.argmin(counts))
    n = counts[smallest]
    # the same bounds as data.split_train_val: the 1e-9 keeps 0.1 and 0.9 allowed for ten images
    if np.floor(n * fraction + 1e-9) < 1 or n - np.ceil(n * fraction - 1e-9) < 1:
        bounds = f"[{1 / n:.3g}, {1 - 1 / n:.3g}]" if n >= 2 else "nowhere (two images are the least)"
        raise ConfigError(
            f"data.test_fraction should lie in {bounds} for {where(root)}: class {class_names[smallest]!r} has {n} "
            f"image(s), and a value outside leaves it with no test or no train image (or add a test/ folder "
            f"next to train/); received data.test_fraction={fraction}"
        )


def common_size(layout: Layout) -> int:
    """The one square size every image has, read from the headers; else a line asking for data.image_size."""
    from PIL import Image

    first = None
    for ids in (ids for split in layout.files.values() for ids in split):
        for image_id in ids:
            try:
                with Image.open(layout.root / image_id) as image:
                    size = image.size
            except Exception:  # noqa: BLE001 - an unreadable file is reported when the images are decoded
                continue
            first = first or (image_id, size)
            check_same_size(layout.root, first, (image_id, size))
    if first is None:
        raise DataError(f"{where(layout.root)}: none of its images can be read")
    return square_size(layout.root, first[1])


def check_same_size(root: Path, first: tuple, current: tuple) -> None:
    (first_id, (width, height)), (image_id, size) = first, current
    if size != (width, height):
        raise ConfigError(
            f"data.image_size is required for {where(root)}: its images differ in size ({first_id!r} is "
            f"{width}x{height}, {image_id!r} is {size[0]}x{size[1]}); set data.image_size=SIZE to resize each "
            "to SIZE x SIZE"
        )


def square_size(root: Path, size: tuple) -> int:
    """The side of the images' one size (width, height), once all are known to share it."""
    if size[0] != size[1]:
        raise ConfigError(
            f"data.image_size is required for {where(root)}: its images are {size[0]}x{size[1]}, not square; "
            "set data.image_size=SIZE to resize each to SIZE x SIZE"
        )
    return size[0]


def split(layout: Layout, test_fraction: float) -> dict:
    """split -> one tuple of ids per class: the folders', or a stratified draw with a fixed seed."""
    if layout.has_test_folder:
        return layout.files
    labels = np.concatenate([np.full(len(ids), label) for label, ids in enumerate(layout.files["train"])])
    ids = np.array([image_id for ids in layout.files["train"] for image_id in ids], dtype=object)
    train, test = train_test_split(np.arange(len(ids)), test_size=test_fraction, stratify=labels,
                                   random_state=TEST_SPLIT_SEED)
    return {split: tuple(tuple(ids[np.sort(rows[labels[rows] == label])]) for label in range(len(layout.class_names)))
            for split, rows in (("train", train), ("test", test))}
