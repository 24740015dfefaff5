"""Generated 32x32 uint8 images written in the genuine CIFAR-10 python format (cifar-10-batches-py/).

Speed does not depend on what the pixels show, so the benchmark can run at full CIFAR-10 size without a
download. Each class gets its own mean colour plus noise, so the linear fits have something to learn.

    .venv/bin/python -m benchmarks.cifar_like FOLDER --train-per-class 5000 --test-per-class 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tlsweep.stages.data import cifar10


def _images(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    base = (labels[:, None] * 23 % 256).astype(np.int16)
    rows = np.clip(base + rng.integers(-60, 60, size=(len(labels), 3072), dtype=np.int16), 0, 255)
    return cifar10.images_from_rows(rows.astype(np.uint8)), labels


def write_cifar_like(folder: Path, *, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write (or reuse) cifar-10-batches-py/ with `train_per_class` images per class over 5 batches."""
    batches = folder / cifar10.FOLDER
    stamp = batches / "benchmark.json"
    wanted = {"train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return batches
    if train_per_class % 5:
        raise ValueError(f"train_per_class should be a multiple of 5 (five batches); received {train_per_class}")
    rng = np.random.default_rng(seed)
    train = [_images(train_per_class // 5, rng) for _ in cifar10.TRAIN_BATCHES]  # each batch holds every class
    x_test, y_test = _images(test_per_class, rng)
    cifar10.write_batches(folder, x_train=np.concatenate([x for x, _ in train]),
                          y_train=np.concatenate([y for _, y in train]), x_test=x_test, y_test=y_test)
    stamp.write_text(json.dumps(wanted))
    return batches


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    args = parser.parse_args()
    print(write_cifar_like(args.folder, train_per_class=args.train_per_class, test_per_class=args.test_per_class))
