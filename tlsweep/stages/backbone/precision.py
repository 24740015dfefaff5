"""The precision a backbone computes its features in: `model.precision`, float32 or bfloat16.

bfloat16 is Keras' mixed precision (`keras.mixed_precision`, the dtype policy "mixed_bfloat16"): weights stay
float32, each layer computes in bfloat16. The policy is set only while the backbone is built (`policy`), so the
layers built then carry it and nothing built later does; the features come out of `extraction.forward` as
float32 whatever the backbone computed in, so the cache, the pooling and the probes see one dtype.

bfloat16 pays only where the hardware multiplies in it: AVX512_BF16 or AMX on an x86 CPU, BF16 on an Arm CPU,
a GPU of compute capability 8.0 or above. Elsewhere it is emulated, slower than float32, and `check` says so
in one warning line before any run is opened.
"""

from __future__ import annotations

import logging
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from tlsweep.errors import ConfigError

log = logging.getLogger(__name__)

FLOAT32, BFLOAT16 = "float32", "bfloat16"
POLICIES = {FLOAT32: "float32", BFLOAT16: "mixed_bfloat16"}  # model.precision -> Keras dtype policy
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo: x86's two, Arm's one
GPU_BF16_CAPABILITY = (8, 0)  # NVIDIA Ampere and later


def check(precision: str) -> None:
    """One line for a value that is not a precision; one warning line where bfloat16 would run emulated."""
    if precision not in POLICIES:
        raise ConfigError(f"model.precision should be one of {list(POLICIES)}; received model.precision={precision!r}")
    if precision == BFLOAT16:
        missing = hardware_gap()
        if missing:
            log.warning("model.precision=bfloat16: %s, so bfloat16 is emulated and extraction is likely slower than "
                        "with float32", missing)


@contextmanager
def policy(precision: str) -> Iterator[None]:
    """Keras' dtype policy for `precision` while the block runs, restored after it: the layers built inside
    compute in it, no others do."""
    from keras import mixed_precision

    before = mixed_precision.global_policy()
    mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        mixed_precision.set_global_policy(before)


def recast(model, precision: str):
    """A saved model's graph with each layer rebuilt in `precision`'s policy and the same weights: a saved layer
    names its own dtype, which the policy in force when it loads does not override."""
    import keras

    if precision == FLOAT32:
        return model

    def rebuilt(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": POLICIES[precision]})

    cast = keras.models.clone_model(model, clone_function=rebuilt)
    cast.set_weights(model.get_weights())
    return cast


def check_applied(model, precision: str, *, what: str) -> None:
    """Refuse a backbone whose layers kept another precision (a Keras-Hub image encoder nested in a larger
    backbone, as CLIP's, keeps the dtype its preset names), rather than run it at a precision the run does not
    record."""
    if precision == FLOAT32:
        return
    computing = {layer.compute_dtype for layer in model._flatten_layers(include_self=False, recursive=True)
                 if layer.weights}
    if precision not in computing:
        raise ConfigError(f"model.precision should be float32 for {what}, whose layers keep their own dtype "
                          f"({sorted(computing)}); received model.precision={precision!r}")


def hardware_gap() -> Optional[str]:
    """What this machine lacks to compute in bfloat16 natively, or None when it has it: a GPU that takes it
    where one is visible to Keras, else the CPU's instructions."""
    capability = _gpu_capability()
    if capability is not None:
        if capability >= GPU_BF16_CAPABILITY:
            return None
        return (f"this GPU has compute capability {capability[0]}.{capability[1]}, below the "
                f"{GPU_BF16_CAPABILITY[0]}.{GPU_BF16_CAPABILITY[1]} that computes in bfloat16")
    flags = cpu_flags()
    if flags is None:
        return f"tlsweep cannot tell whether this {platform.machine()} CPU computes in bfloat16 (no /proc/cpuinfo)"
    if not flags.intersection(CPU_BF16_FLAGS):
        return "this CPU has neither AVX512_BF16 nor AMX_BF16 (nor Arm's BF16)"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[set[str]]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); None where it does not."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def _gpu_capability() -> Optional[tuple[int, int]]:
    """The compute capability of the first GPU the Keras backend sees; None without one."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        found = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        return tuple(found) if found else None
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        found = getattr(gpus[0], "compute_capability", None) if gpus else None
        return tuple(int(part) for part in str(found).split(".")[:2]) if found else None
    if backend == "torch":
        import torch

        return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    return None
