"""The feature sets `benchmarks.fits` fits: generated ReLU-like features, and random-init VGG16 cuts of
generated images. Each set is written once under the output folder as .npy files and reused.

    .venv/bin/python -m benchmarks.fit_data --out benchmarks/results/fits --train 24000 --test 4000

VGG16 is built with `weights=None` (seeded), so no download is needed; the images are 32x32, six classes
that differ by mean colour, plus noise. The cuts are block3_pool (4x4x256 = 4096), block4_pool (2x2x512 =
2048) and block5_pool (512), flattened, float32, as tlsweep caches them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

CLASSES = 6
VGG_CUTS = {"block3_pool": 4096, "block4_pool": 2048, "block5_pool": 512}

log = logging.getLogger(__name__)


def relu_like(n: int, d: int, *, seed: int = 0, rank: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n x d float32 features like a CNN cut after a ReLU: correlated through a low-rank factor, about
    half zero, with a weak class signal (six classes) in the factor."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    centres = rng.standard_normal((CLASSES, rank), dtype=np.float32)
    factor = 0.5 * centres[y] + rng.standard_normal((n, rank), dtype=np.float32)
    X = factor @ (rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(rank)))
    X += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    np.maximum(X, 0, out=X)
    return X, y


def coloured_images(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 32x32 RGB images (float32, 0-255), six classes by mean colour, with per-pixel noise.

    The colours are close and the noise strong, so a linear probe on these cuts is far from perfect (about
    0.8 test accuracy with 2400 training images): agreement between two fits then means something.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    colours = rng.uniform(100, 155, (CLASSES, 3)).astype(np.float32)
    images = colours[y][:, None, None, :] + rng.normal(0, 60, (n, 32, 32, 3)).astype(np.float32)
    return np.clip(images, 0, 255), y


def vgg16_cuts(images: np.ndarray, *, seed: int = 0, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Flattened block3/4/5_pool features of random-init VGG16 (one forward pass for the three cuts)."""
    import keras
    from keras.applications.vgg16 import VGG16, preprocess_input

    keras.utils.set_random_seed(seed)
    backbone = VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    model = keras.Model(backbone.input, [backbone.get_layer(name).output for name in VGG_CUTS])
    outputs = model.predict(preprocess_input(images.copy()), batch_size=batch_size, verbose=0)
    return {name: out.reshape(len(images), -1).astype(np.float32) for name, out in zip(VGG_CUTS, outputs)}


def prepare(out: Path, *, train: int, test: int, seed: int = 0) -> Path:
    """Write (or reuse) out/{vgg16-<cut>,relu}-{train,test}-{X,y}.npy for `train` + `test` rows."""
    out.mkdir(parents=True, exist_ok=True)
    stamp, wanted = out / "data.json", {"train": train, "test": test, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return out
    images, labels = coloured_images(train + test, seed=seed)
    log.info("VGG16 (random init) forward pass on %d generated images", len(images))
    for name, X in vgg16_cuts(images, seed=seed).items():
        _save(out, f"vgg16-{name}", X, labels, train)
    X, y = relu_like(train + test, max(VGG_CUTS.values()), seed=seed)
    _save(out, "relu", X, y, train)
    stamp.write_text(json.dumps(wanted))
    return out


def _save(out: Path, name: str, X: np.ndarray, y: np.ndarray, train: int) -> None:
    for split, rows in (("train", slice(0, train)), ("test", slice(train, None))):
        np.save(out / f"{name}-{split}-X.npy", np.ascontiguousarray(X[rows]))
        np.save(out / f"{name}-{split}-y.npy", y[rows])


def load(out: Path, name: str, *, n_train: int, d: int) -> tuple[np.ndarray, ...]:
    """X_train (n_train x d), y_train, X_test, y_test of set `name`; relu sets keep their first d columns."""
    X, y = np.load(out / f"{name}-train-X.npy", mmap_mode="r"), np.load(out / f"{name}-train-y.npy")
    X_test, y_test = np.load(out / f"{name}-test-X.npy", mmap_mode="r"), np.load(out / f"{name}-test-y.npy")
    if n_train > len(X) or d > X.shape[1]:
        raise ValueError(f"set {name!r} holds {len(X)} x {X.shape[1]} train features; received {n_train} x {d}")
    return (np.ascontiguousarray(X[:n_train, :d]), y[:n_train], np.ascontiguousarray(X_test[:, :d]), y_test)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=24000)
    parser.add_argument("--test", type=int, default=4000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(prepare(args.out, train=args.train, test=args.test))
