"""A folder's images decoded: each file read with Pillow (in a few threads), turned RGB and resized to
data.image_size; a file that does not decode stops the read with one line, or is skipped and listed under
data.skip_bad_images=true. The folder's layout, splits and sizes are `folder`'s.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from tlsweep import console
from tlsweep.errors import DataError
from tlsweep.stages.data import folder

log = logging.getLogger(__name__)


def decode(raw: bytes, size: Optional[int]) -> np.ndarray:
    """One image file's bytes as uint8 RGB (height, width, 3), resized to size x size when a size is given."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(raw)) as opened:
        image = ImageOps.exif_transpose(opened)  # phones store the rotation in EXIF; this also decodes
    if image.mode.startswith("I;16"):  # 16-bit grayscale: Pillow's convert would clip it to 255
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257.0).round().astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:  # Pillow asks for RGBA first
        image = image.convert("RGBA")
    return resize(image.convert("RGB"), size)  # grayscale, palette, RGBA (alpha dropped), CMYK


def resize(image, size: Optional[int]) -> np.ndarray:
    """An RGB image (Pillow's, or uint8 pixels) resized to size x size as every image of a folder is."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _load(path: Path, size: Optional[int]) -> tuple[Optional[np.ndarray], str, str]:
    """(image or None, sha256 of the bytes, why it failed)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, "", f"{type(err).__name__}: {err.strerror or err}"
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return decode(raw, size), digest, ""
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err).splitlines()[0] if str(err) else "")
        return None, digest, f"{type(err).__name__}: {text[:160]}".rstrip(": ")


def read(path: str, *, image_size: Optional[int], test_fraction: float, skip_bad_images: bool) -> folder.FolderImages:
    """Decode every image of `path` into train and test parts; one line for a bad file or a bad layout."""
    layout = folder.scan(path)
    folder.check_test_fraction(layout, test_fraction)
    splits = folder.split(layout, test_fraction)
    # train first, then test, so each part is a view of the one decoded array, never a copy of it
    entries = [(split, label, image_id) for split in folder.SPLITS for label, ids in enumerate(splits[split])
               for image_id in ids]
    images, digests, skipped = _decode_all(layout.root, entries, image_size, skip_bad_images)
    if skipped:
        gone = {item.id for item in skipped}
        entries = [entry for entry in entries if entry[2] not in gone]
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    is_test = np.array([split == "test" for split, _, _ in entries])
    for split, rows in (("train", ~is_test), ("test", is_test)):
        empty = [layout.class_names[c] for c in
                 np.flatnonzero(np.bincount(labels[rows], minlength=len(layout.class_names)) == 0)]
        if empty:
            raise DataError(f"{folder.where(layout.root)}: class(es) {empty} have no readable {split} image once "
                            f"{len(skipped)} unreadable file(s) are skipped")
    n_train = int((~is_test).sum())
    digest = hashlib.sha256("folder\0".encode() + "\0".join(layout.class_names).encode())
    for (split, label, image_id), file_digest in zip(entries, digests):
        digest.update(f"\n{split}\0{image_id}\0{label}\0{file_digest}".encode())
    ids = [image_id for _, _, image_id in entries]
    return folder.FolderImages(layout.class_names, folder.Part(images[:n_train], labels[:n_train], tuple(ids[:n_train])),
                        folder.Part(images[n_train:], labels[n_train:], tuple(ids[n_train:])), digest.hexdigest()[:16],
                        tuple(skipped))


def _decode_all(root: Path, entries: list, size: Optional[int], skip_bad_images: bool):
    """Decode every entry with a few threads (Pillow releases the GIL while decoding); stop at the first bad file.

    Returns the images and file digests of the entries that decoded, in order, and the skipped ones.
    """
    n = len(entries)
    images: Optional[np.ndarray] = None
    digests, kept, skipped = [], [], []
    first = None
    progress = console.Progress(n, description="images", log=log)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        loaded = pool.map(lambda entry: _load(root / entry[2], size), entries)
        for k, ((_, _, image_id), (image, digest, reason)) in enumerate(zip(entries, loaded)):
            progress.update(1)
            if image is None:
                if not skip_bad_images:
                    raise DataError(f"{folder.where(root)}: {image_id!r} is not a readable image ({reason}); remove it, "
                                    "or set data.skip_bad_images=true to skip such files")
                skipped.append(folder.SkippedImage(image_id, reason))
                continue
            if size is None:
                current = (image_id, (image.shape[1], image.shape[0]))
                first = first or current
                folder.check_same_size(root, first, current)
            if images is None:
                images = np.empty((n, *image.shape), dtype=np.uint8)
            images[k] = image
            digests.append(digest)
            kept.append(k)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    if images is None:
        raise DataError(f"{folder.where(root)}: none of its {n} images can be read")
    if size is None:
        folder.square_size(root, first[1])
    if skipped:
        log.warning("skipped %d unreadable image(s) under data.path=%s (data.skip_bad_images=true), e.g. %s",
                    len(skipped), root, skipped[0].id)
        images = images[kept]
    return images, digests, skipped
