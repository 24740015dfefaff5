"""How the config travels from the entry point to the logged params: which modules it passes, how often it climbs
back up a layer, and how often each module is entered again.

    python -m scripts.config_flow            # one cut
    python -m scripts.config_flow stages     # layer=stages: every stage of VGG16, one CNN pass

It runs one job in-process (tlsweep's own @hydra.main function, on small generated CIFAR-10 files, random-init
VGG16, a throwaway SQLite store), tracing every call into tlsweep whose arguments hold the composed config or
any part of it (the DictConfig, the typed TlsweepConfig or one of its sections). The calls, in order, give a
sequence of modules. Layers, top down: the entry point; the job and the sweep; the checks, the identity and
the stage runner; the stages; tracking. A climb is a call into a higher layer than the call before it; a
re-entry is a module entered again after the config left it.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, open_dict

LAYERS = (("tlsweep.__main__",), ("tlsweep.job", "tlsweep.sweep"),
          ("tlsweep.validate", "tlsweep.identity", "tlsweep.config", "tlsweep.preflight", "tlsweep.train",
           "tlsweep.layers"), ("tlsweep.stages",), ("tlsweep.tracking", "tlsweep.provenance", "tlsweep.redact"))


def layer(module: str) -> int:
    return next((i for i, prefixes in enumerate(LAYERS) if module.startswith(prefixes)), len(LAYERS))


def holds_config(value, config_types: tuple) -> bool:
    return isinstance(value, (DictConfig, *config_types))


def main() -> int:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import tlsweep.__main__ as entry
    from tlsweep import config as schema
    try:
        from tlsweep.stages.data import cifar10
    except ImportError:  # the layout before the stages were grouped by role, to compare with
        from tlsweep.stages import cifar10

    work = Path(tempfile.mkdtemp(prefix="tlsweep-flow-"))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    images = np.clip((labels[:, None, None, None] * 23 % 256) + rng.integers(-40, 40, (60, 32, 32, 3)), 0, 255)
    data = cifar10.write_batches(work / "data", x_train=images.astype(np.uint8), y_train=labels,
                                 x_test=images[:40].astype(np.uint8), y_test=labels[:40])
    overrides = [f"data.path={data}", "model.weights=null", "model.batch_size=16", "data.val_fraction=0.25",
                 f"layer={'stages' if 'stages' in sys.argv[1:] else 'block5_pool'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"cache_dir={work / 'cache'}"]
    schema.register_configs()
    conf = getattr(schema, "CONF_DIR", Path(schema.__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    sections = tuple(value for value in vars(schema).values()
                     if isinstance(value, type) and dataclasses.is_dataclass(value))
    calls: list[str] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("tlsweep"):
            return
        code = frame.f_code
        values = [frame.f_locals.get(name) for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]
        if any(holds_config(value, sections) for value in values):
            calls.append(module)

    sys.setprofile(profile)
    try:
        entry.main.__wrapped__(task)
    finally:
        sys.setprofile(None)
    visits = [module for i, module in enumerate(calls) if i == 0 or calls[i - 1] != module]
    climbs = sum(layer(after) < layer(before) for before, after in zip(visits, visits[1:]))
    entries = {module: visits.count(module) for module in dict.fromkeys(visits)}
    print(f"calls holding the config: {len(calls)}, modules passed: {len(entries)}, climbs back up: {climbs}")
    print("module visits in order: " + " > ".join(visits))
    print("entries per module: " + ", ".join(f"{module} {count}" for module, count in entries.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
