"""`python -m tlsweep.layers [KEY=VALUE ...]`: every layer a backbone can be cut at, and what each cut costs.

It takes the overrides `python -m tlsweep` takes and prints, for the configured model at its input size
(data.image_size, or the data's own size), each layer's output shape, its flattened feature size and its
size after each pooling (features.pooling: avg and max keep the channels, grid keeps channels x
features.grid_size^2). The backbone is built without weights, and no image goes through it.

Examples:
  python -m tlsweep.layers model=resnet50 data.image_size=224
  python -m tlsweep.layers model=efficientnet_b0 data=folder data.path=/data/flowers data.image_size=128
  python -m tlsweep.layers model=vgg16 classifier=lbfgs_svc 'data.classes=[0,1,2,3,4,5,6,7,8,9]'
  python -m tlsweep.layers model=dinov2_small data.image_size=224        # a transformer: its blocks, T x D
  python -m tlsweep.layers model=hub model.preset=/data/my_preset data.image_size=224
  python -m tlsweep.layers model=file model.path=my_cnn.keras model.preprocess=torch

A transformer's cuts are its blocks, block0 .. block{N-1}, and output (after its final normalisation); each
output is a token sequence, T x D (tokens x width), and the pooling columns are the token poolings (cls, mean,
cls_mean, flatten). A CNN's cuts are maps, H x W x C, with the map poolings.

A line with `^` under a layer marks the end of a stage (model.stages, the cuts of a depth profile), with its
layer_depth: its position in the model's layer list over the last stage's, 0 at the input and 1 at the last stage.

A `*` marks the layers whose flattened features would not fit a linear probe in this machine's memory.
The estimate is rows x features x bytes per value. Rows are the training images of the configured data and
classes (all of them, before the val split, since C=auto refits on train+val; with data.train_per_class,
k per class plus the val share). Bytes per value are what the fit holds, as measured in the README's
Performance section: 28 for linear_svc (the float32 features, scikit-learn's float64 copy and liblinear's
16-byte node per value), 4 for lbfgs_svc and logreg (they fit on the float32 features), 9 for
line_search_svc (the features and up to 1.2 times their size in row copies or Gram matrices), plus 4 when
features.normalize copies them. The budget is the machine's physical memory, or its cgroup limit when
lower. For a marked layer, pool it (features.pooling=avg), cut later, or use classifier=lbfgs_svc.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Optional, Sequence

from tabulate import tabulate

from tlsweep import console
from tlsweep.config import CONF_DIR, TlsweepConfig, register_configs
from tlsweep.errors import TlsweepError
from tlsweep.stages.features.pooling import POOLINGS
from tlsweep.stages.probe import memory

log = logging.getLogger("tlsweep.layers")

def compose_config(overrides: Sequence[str]):
    """The config `python -m tlsweep OVERRIDES` would run, composed with Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def table_poolings(shapes) -> list[str]:
    """The poolings that fit some cut of the model (a column each): a CNN's map poolings, a transformer's token
    poolings."""
    from tlsweep.stages.features import pooling

    kinds = {pooling.kind_of(shape) for shape in shapes} - {pooling.VECTOR}
    return [name for name, entry in POOLINGS.items() if kinds & set(entry.kinds)] or list(POOLINGS)


def layer_rows(config: TlsweepConfig, input_size: int, *, budget: int, n_rows: int) -> list[list]:
    """One row per cut layer: index, name, output shape, flattened and pooled sizes (- where a pooling does not
    fit the cut), fit memory, mark."""
    from tlsweep.stages.backbone.source import BackboneSource
    from tlsweep.stages.features import pooling

    shapes = BackboneSource.of(config.model).shapes_at(input_size)
    per_value = memory.bytes_per_value(config)
    columns = table_poolings(shapes.values())
    rows = []
    for index, (name, shape) in enumerate(shapes.items(), start=1):
        fits = pooling.for_kind(pooling.kind_of(shape))
        sizes = [pooling.pooled_dim(shape, dataclasses.replace(config.features, pooling=p)) if p in fits else "-"
                 for p in columns]
        need = n_rows * math.prod(shape) * per_value
        rows.append([index, name, "x".join(map(str, shape)), *sizes, f"{need / memory.GIB:.2f}",
                     "*" if need > budget else ""])
    return rows


def stage_marks(model: str, stages: Sequence[str], *, layers: Sequence[str] = ()) -> dict[str, str]:
    """The line shown under each stage's row: which stage it ends, and its layer_depth.

    The stages are the config's model.stages, or the model's own (stage_layers) when the config names none;
    `layers`, the model's cuts in order, when it is no keras.applications backbone.
    """
    from tlsweep.stages.backbone import model_stages

    stages = list(stages) or list(model_stages.stage_layers(model))
    depth = (lambda layer: model_stages.depth_in(layers, layer, last_stage=stages[-1])) if layers else (
        lambda layer: model_stages.layer_depth(model, layer, stages=stages))
    return {layer: f"    ^ stage {number} of {len(stages)}, layer_depth {depth(layer):.2f}"
            for number, layer in enumerate(stages, start=1)}


def token_line(config: TlsweepConfig, input_size: int) -> list[str]:
    """What a token sequence's T x D holds, for a transformer's table: its class token and registers, its patches."""
    from tlsweep.stages.backbone.source import BackboneSource

    source = BackboneSource.of(config.model)
    shapes, prefix = source.shapes_at(input_size), source.prefix_tokens()
    tokens = [(shape[0], prefix.get(name, 0)) for name, shape in shapes.items() if len(shape) == 2]
    if not tokens:
        return []
    count, before = tokens[0]
    return [f"T x D: {count} tokens of width D, {before} before the patches (the class token, and registers if any), "
            f"then {count - before} patch tokens; features.pooling for them: cls, mean, cls_mean, flatten"]


def report(config: TlsweepConfig) -> str:
    """The table and the lines around it that say what it assumed."""
    from tlsweep.stages.backbone.source import APPLICATIONS, BackboneSource
    from tlsweep.stages.data import datasets

    source = BackboneSource.of(config.model)
    input_size = datasets.input_size(name=config.data.name, path=config.data.path, image_size=config.data.image_size)
    source.check_input_size(input_size, received=(
        f"data.image_size={config.data.image_size}" if config.data.image_size is not None else
        f"data.image_size=null, which keeps the {input_size}x{input_size} images of data={config.data.name}"))
    budget, n_rows = memory.machine_memory(), memory.training_rows(config)
    rows = layer_rows(config, input_size, budget=budget, n_rows=n_rows)
    grid = config.features.grid_size
    columns = table_poolings(source.shapes_at(input_size).values())
    headers = ["#", "layer", "output", *(f"grid {grid}x{grid}" if name == "grid" else name for name in columns),
               "fit GiB", "mark"]
    marked = sum(row[-1] == "*" for row in rows)
    chosen = next((row[0] for row in rows if row[1] == config.layer), None)
    stages = stage_marks(config.model.name, list(config.model.stages),
                         layers=() if source.kind == APPLICATIONS else [row[1] for row in rows])
    lines = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True).splitlines()
    table = lines[:2]  # the header and its rule, then a row per layer, each stage's followed by its mark
    for row, line in zip(rows, lines[2:]):
        table += [line, stages[row[1]]] if row[1] in stages else [line]
    return "\n".join([
        f"{config.model.name} at {input_size}x{input_size}: {len(rows)} layers to cut (built without weights)",
        *table,
        *token_line(config, input_size),
        f"layer={config.layer} is #{chosen}. fit GiB: the flattened features of {n_rows} training images for "
        f"{config.classifier.name} (features.normalize={config.features.normalize}).",
        f"^ {len(stages)} stages (model.stages), each with its layer_depth; see python -m tlsweep.layers --help",
        f"* {marked} layer(s) would need more than this machine's {budget / memory.GIB:.1f} GiB; "
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


def cli() -> None:
    """The `tlsweep-layers` command (and `python -m tlsweep.layers`)."""
    try:
        sys.exit(main())
    finally:
        console.leave_heap_to_the_os()


if __name__ == "__main__":
    cli()
