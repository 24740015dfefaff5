"""Extraction throughput of a vision transformer: tlsweep's one pass over every block vs plain `predict`.

A ViT-B/16-sized Keras-Hub backbone (12 blocks of width 768, 224x224 images in 16x16 patches), random init
(no network here), is saved as a local preset folder with an ImageConverter and read back as
`model=hub model.preset=<folder>` reads it. On the same few hundred generated 224x224 images it times:

- `predict` on the backbone itself (its output only), the images already converted: the floor;
- `predict` on the model cut at all 12 blocks and the output (`hub.cut_model`), one pass for 13 cuts;
- tlsweep's `extraction.extract_features` filling a fresh cache for those 13 cuts, from raw pixels: building
  the model from the preset, the converter, the pass, and writing 13 flattened entries per class.

Run it from the repository root (a few minutes on 2 cores):

    .venv/bin/python -m benchmarks.vit_throughput                  # 256 images, batches of 32
    .venv/bin/python -m benchmarks.vit_throughput --images 512

Results go to benchmarks/results/vit_throughput.{json,md} (git-ignored). Other load on the machine adds
noise to the times; the ratios come from one run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.run import HERE, machine, scratch, table, write_results

SIZE, PATCH, BLOCKS, WIDTH, HEADS, MLP = 224, 16, 12, 768, 12, 3072  # ViT-B/16
CLASSES = 2

log = logging.getLogger(__name__)


def write_preset(folder: Path) -> Path:
    """A random-init ViT-B/16-sized backbone and an ImageNet-style converter, saved as a Keras-Hub preset."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=PATCH, num_layers=BLOCKS,
                                            num_heads=HEADS, hidden_dim=WIDTH, mlp_dim=MLP)
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0).save_to_preset(
        str(folder))
    return folder


def images_dataset(n: int):
    """`n` generated 224x224 test images in CLASSES classes, as a data set tlsweep extracts from."""
    from tlsweep.stages.data import datasets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(n) % CLASSES
    empty = datasets.ImageSet("train", images[:0], labels[:0])
    return datasets.Dataset(name="generated", class_names=tuple(f"c{k}" for k in range(CLASSES)), train=empty,
                            test=datasets.ImageSet("test", images, labels), fingerprint=f"vit-bench-{n}",
                            source="generated")


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def measure(n: int, batch_size: int, work: Path) -> dict:
    import keras

    from tlsweep.stages.backbone import hub, models
    from tlsweep.stages.features import extraction

    preset = str(write_preset(work / "vit_b16_random"))
    dataset = images_dataset(n)
    encoder = hub.load_encoder(preset, weights="preset", input_size=SIZE, seed=0)
    converted = hub.preprocess_with(hub.converter(preset, SIZE))(dataset.test.images.astype("float32"))
    cuts = hub.cut_model(encoder)
    names = models.cut_layer_names(cuts)
    results = {"images": n, "batch_size": batch_size, "keras_backend": keras.backend.backend(), "cuts": len(names),
               "machine": machine()}
    encoder.predict(converted[:batch_size], batch_size=batch_size, verbose=0)  # compile outside the timing
    results["predict_output_s"] = _timed(encoder.predict, converted, batch_size=batch_size, verbose=0)
    cuts.predict(converted[:batch_size], batch_size=batch_size, verbose=0)
    results["predict_all_cuts_s"] = _timed(cuts.predict, converted, batch_size=batch_size, verbose=0)
    with tempfile.TemporaryDirectory(dir=work) as cache_root:
        found = extraction.extract_features(
            dataset=dataset, image_set="test", layer=names[-1], classes=list(range(CLASSES)), backbone="vit_b16",
            weights="preset", seed=0, input_size=SIZE, batch_size=batch_size, cache_root=Path(cache_root),
            sweep_layers=names, preset=preset)
        assert found.cnn_images == n, (found.cnn_images, n)
        results["tlsweep_extraction_s"] = found.extraction_seconds
        results["cache_bytes"] = sum(path.stat().st_size for path in Path(cache_root).rglob("*.npy"))
    for name in ("predict_output", "predict_all_cuts", "tlsweep_extraction"):
        results[f"{name}_images_per_s"] = n / results[f"{name}_s"]
    return results


ROWS = {"predict_output": "`predict`, the backbone's output only, converted images, warm",
        "predict_all_cuts": "`predict`, cut at 12 blocks + output (13 outputs), warm",
        "tlsweep_extraction": "tlsweep `extract_features`, 13 cuts, cold cache, raw pixels"}


def report(results: dict) -> str:
    host = results["machine"]
    rows = [{"what": label, "seconds": results[f"{key}_s"], "images/s": results[f"{key}_images_per_s"],
             "vs predict": results["predict_output_s"] / results[f"{key}_s"]} for key, label in ROWS.items()]
    return "\n".join([
        f"# ViT-B/16-sized backbone (random init), {results['images']} images at {SIZE}x{SIZE}, batches of "
        f"{results['batch_size']}",
        "",
        f"{host['cpu']}, {host['nproc']} cores, {host['mem_gib']} GiB, Keras backend {results['keras_backend']}.",
        "",
        *table(rows, floatfmt=".2f"),
        "",
        f"The cold extraction includes building the model from the preset and writing "
        f"{results['cache_bytes'] / 1e9:.2f} GB of cache ({results['cuts']} cuts, each flattened to 197 x 768).",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tlsweep import console

    console.start_backend_quietly()
    with scratch(args.out, "vit-") as work:
        results = measure(args.images, args.batch_size, work)
    write_results(args.out, "vit_throughput", results, report(results))


if __name__ == "__main__":
    main()
