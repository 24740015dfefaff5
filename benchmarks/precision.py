"""model.precision: extraction throughput and probe accuracy, float32 against bfloat16, in one run.

- Throughput: a random-init VGG16 (no network here) cut at block3_pool, block4_pool and block5_pool, built as
  `BackboneSource.build` builds it at each precision, runs `extraction.forward` (preprocessing, the pass, the
  float32 cast) over generated images: 2000 at 32x32 in batches of 256, and 64 at 224x224 in batches of 16.
  The two precisions take turns, twice each; each one's best pass counts.
- Accuracy: the same backbone on scikit-learn's digits (10 classes, 1437 train and 360 test images at
  32x32), features through tlsweep's `extract_features` into a fresh cache per precision, then the same
  linear probe (the default classifier: LinearSVC, C=0.1, no normalisation) fitted on every training image
  and scored on the test images, per cut; with the share of test images both precisions label alike.

Run it from the repository root (a few minutes on 2 cores):

    .venv/bin/python -m benchmarks.precision
    .venv/bin/python -m benchmarks.precision --images 4000 --images-224 128

Results go to benchmarks/results/precision.{json,md} (git-ignored). Other load on the machine adds noise to
the times; the ratios come from one run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from benchmarks.run import HERE, machine, scratch, table, write_results

LAYERS = ("block3_pool", "block4_pool", "block5_pool")
PRECISIONS = ("float32", "bfloat16")
ROUNDS = 2

log = logging.getLogger(__name__)


def throughput(n: int, size: int, batch_size: int) -> dict:
    """Images per second through the three-cut extractor at each precision, best of ROUNDS turns each."""
    from tlsweep.stages.backbone import models
    from tlsweep.stages.backbone.source import BackboneSource
    from tlsweep.stages.features import extraction

    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    runs = {}
    for precision in PRECISIONS:
        source = BackboneSource("vgg16", None, precision=precision)
        extractor = models.multi_output_model(source.build(input_size=size, seed=0), list(LAYERS))
        preprocess = source.preprocess_fn(size)
        extraction.forward(extractor, preprocess, images[:batch_size], size, batch_size)  # compile outside the timing
        runs[precision] = (extractor, preprocess)
    best = {precision: float("inf") for precision in PRECISIONS}
    for _ in range(ROUNDS):
        for precision, (extractor, preprocess) in runs.items():
            start = time.perf_counter()
            for first in range(0, n, batch_size):
                extraction.forward(extractor, preprocess, images[first:first + batch_size], size, batch_size)
            best[precision] = min(best[precision], time.perf_counter() - start)
            log.info("%s at %dx%d: %.1f images/s", precision, size, size, n / best[precision])
    return {"images": n, "size": size, "batch_size": batch_size,
            **{f"{precision}_images_per_s": n / best[precision] for precision in PRECISIONS}}


def accuracy(work: Path) -> dict:
    """Test accuracy per cut on digits at each precision, the same probe; and how often the two agree."""
    from tlsweep.config import ClassifierConfig
    from tlsweep.stages.data import datasets
    from tlsweep.stages.features import extraction
    from tlsweep.stages.probe import classify

    dataset = datasets.load_dataset(name="digits", path=None)
    classes = list(range(len(dataset.class_names)))
    found: dict = {}
    for precision in PRECISIONS:
        for layer in LAYERS:
            sets = {image_set: extraction.extract_features(
                dataset=dataset, image_set=image_set, layer=layer, classes=classes, backbone="vgg16", weights=None,
                seed=0, input_size=32, batch_size=256, cache_root=work / precision, sweep_layers=LAYERS,
                precision=precision) for image_set in ("train", "test")}
            probe = classify.probe_for(ClassifierConfig(), seed=0)
            fit = classify.fit_classifier(estimator=classify.make_classifier(probe=probe, C=ClassifierConfig.C),
                                          X=sets["train"].X, y=sets["train"].y)
            predicted = fit.estimator.predict(sets["test"].X)
            found[precision, layer] = {"accuracy": float(np.mean(predicted == sets["test"].y)),
                                       "predicted": predicted, "fit_seconds": fit.fit_seconds, "converged": fit.converged,
                                       "dim": sets["train"].dim, "n_train": len(sets["train"].y),
                                       "n_test": len(sets["test"].y)}
    rows = {}
    for layer in LAYERS:
        f32, bf16 = found["float32", layer], found["bfloat16", layer]
        rows[layer] = {"dim": f32["dim"], "n_train": f32["n_train"], "n_test": f32["n_test"],
                       "float32_accuracy": f32["accuracy"], "bfloat16_accuracy": bf16["accuracy"],
                       "agreement": float(np.mean(f32["predicted"] == bf16["predicted"])),
                       "float32_fit_s": f32["fit_seconds"], "bfloat16_fit_s": bf16["fit_seconds"]}
    return rows


def report(results: dict) -> str:
    host = results["machine"]
    speed = [{"input": f"{case['size']}x{case['size']}", "images": case["images"], "batch": case["batch_size"],
              "float32 images/s": case["float32_images_per_s"], "bfloat16 images/s": case["bfloat16_images_per_s"],
              "bfloat16 / float32": case["bfloat16_images_per_s"] / case["float32_images_per_s"]}
             for case in results["throughput"]]
    accuracy_rows = [{"cut": layer, "features": row["dim"], "float32 test acc": row["float32_accuracy"],
                      "bfloat16 test acc": row["bfloat16_accuracy"],
                      "change": row["bfloat16_accuracy"] - row["float32_accuracy"],
                      "same label": row["agreement"]} for layer, row in results["accuracy"].items()]
    first = next(iter(results["accuracy"].values()))
    return "\n".join([
        "# model.precision: float32 against bfloat16 (random-init VGG16, cuts block3_pool, block4_pool, block5_pool)",
        "",
        f"{host['cpu']}, {host['nproc']} cores, {host['mem_gib']} GiB, Keras backend {results['keras_backend']}; "
        f"bfloat16 hardware: {results['bf16_hardware']}.",
        "",
        "Extraction throughput (`extraction.forward`, three cuts in one pass, best of "
        f"{ROUNDS} turns each):",
        "",
        *table(speed, floatfmt=".2f"),
        "",
        f"Test accuracy on digits ({first['n_train']} train, {first['n_test']} test images, 10 classes, 32x32), "
        "the same probe (LinearSVC, C=0.1) at each precision:",
        "",
        *table(accuracy_rows, floatfmt=".4f"),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="32x32 images for the throughput")
    parser.add_argument("--images-224", type=int, default=64, help="224x224 images for the throughput (0: none)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tlsweep import console

    console.start_backend_quietly()
    import keras

    from tlsweep.stages.backbone import precision

    with scratch(args.out, "precision-") as work:
        results = {"machine": machine(), "keras_backend": keras.backend.backend(),
                   "bf16_hardware": precision.hardware_gap() or "native (AVX512_BF16, AMX or BF16 found)",
                   "throughput": [throughput(args.images, 32, 256)]}
        if args.images_224:
            results["throughput"].append(throughput(args.images_224, 224, 16))
        results["accuracy"] = accuracy(work)
    write_results(args.out, "precision", results, report(results))


if __name__ == "__main__":
    main()
