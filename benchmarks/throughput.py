"""Extraction throughput: tlsweep's one-pass extraction vs plain `model.predict`, against the FLOP limit.

Times, on the same images and the same VGG16: `predict` on a single cut model (block5_pool, the deepest
cut, so the most work per image), `predict` on the three-output model, and tlsweep's
`extraction.extract_features` filling a fresh cache for the three cuts. The MACs per image are counted from
the model's Conv2D layers; the machine's peak is estimated with a large float32 matmul. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras.applications.vgg16 import VGG16, preprocess_input

from tlsweep.stages.data import datasets
from tlsweep.stages.features import extraction

LAYERS = ("block3_pool", "block4_pool", "block5_pool")


def macs_to(model, layer: str) -> int:
    """Multiply-accumulates of every Conv2D and Dense layer up to and including `layer`, per image."""
    total = 0
    for item in model.layers:
        if type(item).__name__ == "Conv2D":
            h, w, c_out = item.output.shape[1:]
            kh, kw, c_in, _ = item.kernel.shape
            total += h * w * kh * kw * c_in * c_out
        if item.name == layer:
            return int(total)
    raise ValueError(f"layer should be a layer of the model; received layer={layer!r}")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Best float32 matmul rate through numpy's BLAS and through the Keras backend, in GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    rates = {}
    for name, matmul in (("numpy", np.matmul), ("keras", lambda x, y: keras.ops.convert_to_numpy(keras.ops.matmul(x, y)))):
        matmul(a, a)  # warm-up
        best = min(_timed(matmul, a, a) for _ in range(repeats))
        rates[name] = 2 * n**3 / best / 1e9
    return rates


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def nominal_gflops() -> dict:
    """Cores x clock x 64 FLOP/cycle (two AVX-512 FMA units, 16 float32 lanes each): an upper bound."""
    mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")]
    cores = os.cpu_count() or 1
    flags = Path("/proc/cpuinfo").read_text()
    lanes = 16 if "avx512f" in flags else 8
    return {"cores": cores, "mhz": max(mhz) if mhz else None,
            "gflops": cores * (max(mhz) if mhz else 0) * 1e-3 * 2 * 2 * lanes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a cifar-10-batches-py folder")
    parser.add_argument("--images", type=int, default=6000, help="test images to push through (classes 4-9 first)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    dataset = datasets.load_cifar10(str(args.data))
    classes = [4, 5, 6, 7, 8, 9]
    rows = np.concatenate([dataset.test.indices_of(c) for c in classes])[: args.images]
    subset = datasets.Dataset(
        name=dataset.name, class_names=dataset.class_names, train=dataset.train,
        test=datasets.ImageSet("test", dataset.test.images[rows], dataset.test.labels[rows]),
        fingerprint=f"{dataset.fingerprint}-bench{len(rows)}", source=dataset.source,
    )
    n = len(rows)
    present = sorted(set(subset.test.labels.tolist()))
    keras.utils.set_random_seed(0)
    base = VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    x = preprocess_input(subset.test.images.astype("float32"))
    results = {"images": n, "batch_size": args.batch_size, "keras_backend": keras.backend.backend(),
               "gmac_per_image": {layer: macs_to(base, layer) / 1e9 for layer in ("block2_pool", *LAYERS)}}

    cut = keras.Model(base.inputs, base.get_layer("block5_pool").output)
    cut.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)  # compile outside the timing
    results["predict_block5_pool_s"] = _timed(cut.predict, x, batch_size=args.batch_size, verbose=0)
    multi = keras.Model(base.inputs, [base.get_layer(layer).output for layer in LAYERS])
    # first call includes compiling, as tlsweep's own first pass does
    results["predict_three_outputs_cold_s"] = _timed(multi.predict, x, batch_size=args.batch_size, verbose=0)
    results["predict_three_outputs_s"] = _timed(multi.predict, x, batch_size=args.batch_size, verbose=0)

    scratch = Path(__file__).parent / "results"  # git-ignored; may not exist yet when run.py writes elsewhere
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as cache_root:
        found = extraction.extract_features(
            dataset=subset, image_set="test", layer="block5_pool", classes=present, backbone="vgg16",
            weights=None, seed=0, input_size=32, batch_size=args.batch_size, cache_root=Path(cache_root),
            sweep_layers=list(LAYERS),
        )
    assert found.cnn_images == n, (found.cnn_images, n)
    results["tlsweep_extraction_s"] = found.extraction_seconds  # includes building its VGG16 and compiling its 3-output model

    gmac5 = results["gmac_per_image"]["block5_pool"]
    peak = matmul_gflops()
    results["matmul_gflops"] = peak
    results["nominal"] = nominal_gflops()
    for name in ("predict_block5_pool", "predict_three_outputs_cold", "predict_three_outputs", "tlsweep_extraction"):
        rate = n / results[f"{name}_s"]
        results[f"{name}_images_per_s"] = rate
        results[f"{name}_gflops"] = rate * gmac5 * 2
    best = max(peak.values())
    results["share_of_matmul_peak"] = results["tlsweep_extraction_gflops"] / best
    results["share_of_nominal_peak"] = results["tlsweep_extraction_gflops"] / results["nominal"]["gflops"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
