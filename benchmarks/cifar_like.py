"""Generated 32x32 uint8 images written in the genuine CIFAR-10 python format (cifar-10-batches-py/).

Speed does not depend on what the pixels show, so the benchmark can run at full CIFAR-10 size without a
download. Each class gets its own mean colour plus noise, so the linear fits have something to learn.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _batch(labels: np.ndarray, rng: np.random.Generator, name: str) -> dict:
    base = (labels[:, None] * 23 % 256).astype(np.int16)
    pixels = np.clip(base + rng.integers(-60, 60, size=(len(labels), 3072), dtype=np.int16), 0, 255)
    return {
        b"batch_label": name.encode(),
        b"labels": labels.tolist(),
        b"data": pixels.astype(np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }


def write_cifar_like(folder: Path, *, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write (or reuse) cifar-10-batches-py/ with `train_per_class` images per class over 5 batches."""
    batches = folder / "cifar-10-batches-py"
    stamp = batches / "benchmark.json"
    wanted = {"train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return batches
    if train_per_class % 5:
        raise ValueError(f"train_per_class should be a multiple of 5 (five batches); received {train_per_class}")
    rng = np.random.default_rng(seed)
    batches.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = np.repeat(np.arange(10), train_per_class // 5)
        rng.shuffle(labels)
        (batches / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(labels, rng, f"training batch {i} of 5")))
    labels = np.repeat(np.arange(10), test_per_class)
    rng.shuffle(labels)
    (batches / "test_batch").write_bytes(pickle.dumps(_batch(labels, rng, "testing batch 1 of 1")))
    meta = {b"label_names": [name.encode() for name in CLASS_NAMES]}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta))
    stamp.write_text(json.dumps(wanted))
    return batches


def load_cifar_batches(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a cifar-10-batches-py folder, as keras.datasets returns them."""
    def read(name):
        entry = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), np.asarray(entry[b"labels"], dtype=np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def load_classes(folder: Path, classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`load_cifar_batches`, keeping only `classes`."""
    x_train, y_train, x_test, y_test = load_cifar_batches(folder)
    keep, keep_test = np.isin(y_train, classes), np.isin(y_test, classes)
    return x_train[keep], y_train[keep], x_test[keep_test], y_test[keep_test]


def reference_args(description: str) -> argparse.Namespace:
    """The options of both reference scripts (benchmarks/seed_style.py and one_pass.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True, help="a cifar-10-batches-py folder")
    parser.add_argument("--layers", default="block3_pool,block4_pool,block5_pool")
    parser.add_argument("--classes", default="4,5,6,7,8,9")
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    args.classes = [int(c) for c in args.classes.split(",")]
    args.layers = args.layers.split(",")
    return args


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    args = parser.parse_args()
    print(write_cifar_like(args.folder, train_per_class=args.train_per_class, test_per_class=args.test_per_class))
