"""What the two reference scripts (seed_style.py, one_pass.py) share: options, data, backbone, result line.

Each script is one `sweep` function that `main` runs on the chosen classes of a cifar-10-batches-py
folder; `main` prints one JSON line whose `total_s` counts from before the heavy imports, as tlsweep's own
wall time does.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.applications.vgg16 import VGG16, preprocess_input  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from tlsweep.stages.data import cifar10  # noqa: E402

# sweep(args, x_train, y_train, x_test, y_test) -> (extraction seconds, fit seconds, figures per layer)
Sweep = Callable[..., tuple[float, float, dict]]


def reference_args(description: str) -> argparse.Namespace:
    """The options of both reference scripts."""
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


def load_classes(folder: Path, classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of a cifar-10-batches-py folder, keeping only `classes`."""
    x_train, y_train, x_test, y_test = cifar10.read_batches(folder)
    keep, keep_test = np.isin(y_train, classes), np.isin(y_test, classes)
    return x_train[keep], y_train[keep], x_test[keep_test], y_test[keep_test]


def vgg16() -> keras.Model:
    """The same random-init VGG16 in every script and every call."""
    keras.utils.set_random_seed(0)
    return VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))


def predict(model: keras.Model, images: np.ndarray, batch_size: int):
    return model.predict(preprocess_input(images.astype("float32")), batch_size=batch_size, verbose=0)


def linear_svc(X: np.ndarray, y: np.ndarray, C: float) -> tuple[LinearSVC, float]:
    """A fitted LinearSVC and the seconds its fit took."""
    t0 = time.perf_counter()
    svc = LinearSVC(C=C, random_state=0).fit(X, y)
    return svc, time.perf_counter() - t0


def main(description: str, sweep: Sweep) -> None:
    args = reference_args(description.splitlines()[0])
    x_train, y_train, x_test, y_test = load_classes(args.data, args.classes)
    extraction, fitting, per_layer = sweep(args, x_train, y_train, x_test, y_test)
    print(json.dumps({"images": len(x_train) + len(x_test), "extraction_s": extraction, "fit_s": fitting,
                      "total_s": time.perf_counter() - STARTED, "layers": per_layer}))
