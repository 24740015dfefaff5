"""What a probe's fit holds in memory, against what this machine has: rows x features x bytes per value.

Bytes per value are the probe's own (`probes.Probe.bytes_per_value`, measured as the README's Performance
section says), plus the copy `features.normalize` makes. Rows are the most a fit sees: all training images of
the configured classes (C=auto refits on train+val), or k per class under few-shot `data.train_per_class=k`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlsweep.config import TlsweepConfig
from tlsweep.stages.probe import probes

NORMALIZE_COPY_BYTES = {"none": 0, "l2": 4, "standardize": 4}
CIFAR10_TRAIN_PER_CLASS = 5000
GIB = 1 << 30


def machine_memory() -> int:
    """Bytes this process may use: physical memory, or the cgroup's limit when lower."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limits.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return min(limits)


def bytes_per_value(config: TlsweepConfig) -> int:
    """What the configured probe's fit holds per feature value, normalisation's copy included."""
    return probes.PROBES[config.classifier.name].bytes_per_value + NORMALIZE_COPY_BYTES[config.features.normalize]


def training_rows(config: TlsweepConfig) -> int:
    """How many rows the probe is fitted on at most, from a listing of the data (nothing is decoded)."""
    from tlsweep.stages.data import datasets, folder

    spec, classes = config.data, list(config.data.classes)
    if spec.train_per_class is not None:
        return spec.train_per_class * len(classes)
    if spec.name == "folder":
        layout = folder.scan(spec.path)
        share = 1.0 if layout.has_test_folder else 1.0 - spec.test_fraction
        per_class = [len(layout.files["train"][c]) * share for c in classes]
    elif spec.name == "digits":
        labels = datasets.load_dataset(name="digits", path=None).train.labels
        per_class = [int((labels == c).sum()) for c in classes]
    else:
        per_class = [CIFAR10_TRAIN_PER_CLASS] * len(classes)
    return int(round(sum(per_class)))
