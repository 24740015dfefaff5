"""Write conf/model/<name>.yaml for every CNN in keras.applications (`python scripts/model_configs.py`).

Each file names the backbone as users type it (`model=resnet50_v2`), its ImageNet weights, and as
`default_layer` the last layer of the include_top=False model: the output of the last convolutional stage,
and as `stages` the layers a researcher would cut at, input to output (tlsweep.stages.backbone.model_stages.stage_layers).
`--check` writes nothing and exits 1 when a file is missing, stale or left over (e.g. after a Keras upgrade).
Building every model takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "tlsweep" / "conf" / "model"
BATCH_SIZE = 256  # images per forward pass; lower it (model.batch_size=...) for large inputs


def config_text(name: str) -> str:
    from tlsweep.stages.backbone import model_stages, models

    module, constructor = models.backbones()[name]
    default_layer = models.architecture_layer_names(name)[-1]
    smallest = models.min_input_size(name)
    stages = "".join(f"  - {layer}\n" for layer in model_stages.stage_layers(name))
    return (
        f"# keras.applications.{constructor} (preprocess_input: keras.applications.{module}), inputs of at least "
        f"{smallest}x{smallest}.\n"
        "# Written by scripts/model_configs.py; default_layer is the last layer of the include_top=False model.\n"
        "defaults:\n  - model_schema\n  - _self_\n\n"
        f"name: {name}\nweights: imagenet\ndefault_layer: {default_layer}\nbatch_size: {BATCH_SIZE}\n"
        "# the end of each stage, input to output (tlsweep.stages.backbone.model_stages.stage_layers): where a depth profile cuts\n"
        f"stages:\n{stages}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/model_configs.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with conf/model/ instead of writing")
    args = parser.parse_args(argv)
    from tlsweep import console
    from tlsweep.stages.backbone import models

    console.start_backend_quietly()
    wanted = {name: config_text(name) for name in models.backbones()}
    # conf/model/ also holds model=hub's and model=file's configs (and Keras-Hub presets'), which name a preset or a path
    present = {path.stem: path.read_text() for path in CONF.glob("*.yaml")
               if not re.search(r"^(preset|path):", path.read_text(), re.MULTILINE)}
    stale = sorted(name for name, text in wanted.items() if present.get(name) != text)
    extra = sorted(set(present) - set(wanted))
    if args.check:
        for name in stale:
            print(f"conf/model/{name}.yaml is missing or stale")
        for name in extra:
            print(f"conf/model/{name}.yaml names no keras.applications backbone")
        return 1 if stale or extra else 0
    for name in stale:
        (CONF / f"{name}.yaml").write_text(wanted[name])
        print(f"wrote conf/model/{name}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
