"""`python -m tlsweep.layers [KEY=VALUE ...]`: every layer a backbone can be cut at, and what each cut costs.

It takes the overrides `python -m tlsweep` takes and prints, for the configured model at its input size
(data.image_size, or the data's own size), each layer's output shape, its flattened feature size and its
size after each pooling (features.pooling: avg and max keep the channels, grid keeps channels x
features.grid_size^2). The backbone is built without weights, and no image goes through it.

Examples:
  python -m tlsweep.layers model=resnet50 data.image_size=224
  python -m tlsweep.layers model=efficientnet_b0 data=folder data.path=/data/flowers data.image_size=128
  python -m tlsweep.layers model=vgg16 classifier=lbfgs_svc 'data.classes=[0,1,2,3,4,5,6,7,8,9]'

A line with `^` under a layer marks the end of a stage (model.stages, the cuts of a depth profile), with its
layer_depth: its position in the model's layer list over the last stage's, 0 at the input and 1 at the last stage.

A `*` marks the layers whose flattened features would not fit a linear probe in this machine's memory.
The estimate is rows x features x bytes per value. Rows are the training images of the configured data and
classes (all of them, before the val split, since C=auto refits on train+val; with data.train_per_class,
k per class plus the val share). Bytes per value are what the fit holds, as measured in the README's
Performance section: 28 for linear_svc (the float32 features, scikit-learn's float64 copy and liblinear's
16-byte node per value), 4 for lbfgs_svc and logreg (they fit on the float32 features), plus 4 when
features.normalize copies them. The budget is the machine's physical memory, or its cgroup limit when
lower. For a marked layer, pool it (features.pooling=avg), cut later, or use classifier=lbfgs_svc.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from tabulate import tabulate

from tlsweep.config import PROJECT_ROOT, TlsweepConfig, register_configs
from tlsweep.errors import ConfigError, TlsweepError

log = logging.getLogger("tlsweep.layers")

FIT_BYTES_PER_VALUE = {"linear_svc": 4 + 8 + 16, "lbfgs_svc": 4, "logreg": 4}
NORMALIZE_COPY_BYTES = {"none": 0, "l2": 4, "standardize": 4}
CIFAR10_TRAIN_PER_CLASS = 5000
GIB = 1 << 30


def compose_config(overrides: Sequence[str]):
    """The config `python -m tlsweep OVERRIDES` would run, composed with Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def machine_memory() -> int:
    """Bytes this process may use: physical memory, or the cgroup's limit when lower."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limits.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return min(limits)


def training_rows(config: TlsweepConfig) -> int:
    """How many rows the probe is fitted on at most, from a listing of the data (nothing is decoded)."""
    from tlsweep.stages.data import datasets, folder

    spec, classes = config.data, list(config.data.classes)
    if spec.name == "folder":
        layout = folder.scan(spec.path)
        share = 1.0 if layout.has_test_folder else 1.0 - spec.test_fraction
        per_class = [len(layout.files["train"][c]) * share for c in classes]
    elif spec.name == "digits":
        labels = datasets.load_dataset(name="digits", path=None).train.labels
        per_class = [int((labels == c).sum()) for c in classes]
    else:
        per_class = [CIFAR10_TRAIN_PER_CLASS] * len(classes)
    rows = sum(per_class)
    if spec.train_per_class is not None:
        rows = min(rows, spec.train_per_class * len(classes) + rows * spec.val_fraction)
    return int(round(rows))


def layer_rows(config: TlsweepConfig, input_size: int, *, budget: int, n_rows: int) -> list[list]:
    """One row per cut layer: index, name, output shape, flattened and pooled sizes, fit memory, mark."""
    from tlsweep.stages.backbone import models
    from tlsweep.stages.features import extraction

    model = models.build_backbone(name=config.model.name, weights=None, input_size=input_size, seed=0)
    per_value = FIT_BYTES_PER_VALUE[config.classifier.name] + NORMALIZE_COPY_BYTES[config.features.normalize]
    rows = []
    for index, (name, shape) in enumerate(models.cut_shapes(model).items(), start=1):
        flat = extraction.pooled_dim(shape, pooling="flatten", grid_size=config.features.grid_size)
        pooled = [extraction.pooled_dim(shape, pooling=p, grid_size=config.features.grid_size) for p in ("avg", "max", "grid")]
        need = n_rows * flat * per_value
        rows.append([index, name, "x".join(map(str, shape)), flat, *pooled, f"{need / GIB:.2f}",
                     "*" if need > budget else ""])
    return rows


def check_stage_memory(config: TlsweepConfig, stages: Sequence[str]) -> None:
    """Before `layer=stages`: refuse, in one line, a stage whose features (as pooled) would not fit a linear
    probe in this machine's memory; warn when one would take more than half of it."""
    from tlsweep.stages.backbone import models
    from tlsweep.stages.data import datasets
    from tlsweep.stages.features import extraction

    input_size = datasets.input_size(name=config.data.name, path=config.data.path, image_size=config.data.image_size)
    models.check_input_size(config.model.name, input_size)
    shapes = models.cut_shapes(models.build_backbone(name=config.model.name, weights=None, input_size=input_size,
                                                     seed=0))
    models.check_layer_names(list(shapes), stages, model_name=config.model.name)
    budget, n_rows = machine_memory(), training_rows(config)
    per_value = FIT_BYTES_PER_VALUE[config.classifier.name] + NORMALIZE_COPY_BYTES[config.features.normalize]
    pooling, grid = config.features.pooling, config.features.grid_size
    for stage in stages:
        dim = extraction.pooled_dim(shapes[stage], pooling=pooling, grid_size=grid)
        need = n_rows * dim * per_value
        what = (f"stage {stage} of {config.model.name} gives {dim} features per image at {input_size}x{input_size} "
                f"with features.pooling={pooling}: fitting {config.classifier.name} on {n_rows} training images "
                f"needs about {need / GIB:.1f} GiB")
        if need > budget:
            raise ConfigError(f"layer=stages cannot fit in memory: {what}, more than this machine's "
                              f"{budget / GIB:.1f} GiB; set features.pooling=grid (features.grid_size=2 bounds "
                              "each stage to 4 x its channels) or avg")
        if need > budget / 2:
            log.warning("%s, over half of this machine's %.1f GiB; features.pooling=grid bounds it", what,
                        budget / GIB)


def stage_marks(model: str, stages: Sequence[str]) -> dict[str, str]:
    """The line shown under each stage's row: which stage it ends, and its layer_depth.

    The stages are the config's model.stages, or the model's own (stage_layers) when the config names none.
    """
    from tlsweep.stages.backbone import model_stages

    stages = list(stages) or list(model_stages.stage_layers(model))
    return {layer: f"    ^ stage {number} of {len(stages)}, layer_depth "
                   f"{model_stages.layer_depth(model, layer, stages=stages):.2f}"
            for number, layer in enumerate(stages, start=1)}


def report(config: TlsweepConfig) -> str:
    """The table and the lines around it that say what it assumed."""
    from tlsweep.stages.backbone import models
    from tlsweep.stages.data import datasets

    input_size = datasets.input_size(name=config.data.name, path=config.data.path, image_size=config.data.image_size)
    models.check_input_size(config.model.name, input_size, received=(
        f"data.image_size={config.data.image_size}" if config.data.image_size is not None else
        f"data.image_size=null, which keeps the {input_size}x{input_size} images of data={config.data.name}"))
    budget, n_rows = machine_memory(), training_rows(config)
    rows = layer_rows(config, input_size, budget=budget, n_rows=n_rows)
    grid = config.features.grid_size
    headers = ["#", "layer", "output", "flatten", "avg", "max", f"grid {grid}x{grid}", "fit GiB", ""]
    marked = sum(row[-1] == "*" for row in rows)
    chosen = next((row[0] for row in rows if row[1] == config.layer), None)
    stages = stage_marks(config.model.name, list(config.model.stages))
    lines = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True).splitlines()
    table = lines[:2]  # the header and its rule, then a row per layer, each stage's followed by its mark
    for row, line in zip(rows, lines[2:]):
        table += [line, stages[row[1]]] if row[1] in stages else [line]
    return "\n".join([
        f"{config.model.name} at {input_size}x{input_size}: {len(rows)} layers to cut (built without weights)",
        *table,
        f"layer={config.layer} is #{chosen}. fit GiB: the flattened features of {n_rows} training images for "
        f"{config.classifier.name} (features.normalize={config.features.normalize}).",
        f"^ {len(stages)} stages (model.stages), each with its layer_depth; see python -m tlsweep.layers --help",
        f"* {marked} layer(s) would need more than this machine's {budget / GIB:.1f} GiB; "
        "see python -m tlsweep.layers --help",
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        sys.stdout.write(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tlsweep import console
    from tlsweep.validate import validate

    console.start_backend_quietly()
    try:
        config = validate(compose_config(argv))
        text = report(config)
    except (TlsweepError, HydraException, OmegaConfBaseException) as err:
        log.error("%s", str(err).strip().splitlines()[0])
        return 1
    sys.stdout.write(text + "\n")  # the command's result, for a terminal or a pipe
    return 0


if __name__ == "__main__":
    sys.exit(main())
