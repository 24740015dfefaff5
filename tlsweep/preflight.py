"""What a command must download, fetched once before any run is opened; everything missing named in one line.

Offline, every job of a sweep would fail the same way. Fetching first means the user reads one line that
names all that is missing (the data, each model's weights, each Keras-Hub preset), how to give local copies,
and the demo that needs nothing; and the experiment holds no failed runs. Online, the downloads land in Keras'
and Keras-Hub's caches, where the jobs find them.
"""

from __future__ import annotations

import logging
from typing import Sequence

from tlsweep.config import TlsweepConfig
from tlsweep.errors import FetchError
from tlsweep.stages.backbone import hub, models
from tlsweep.stages.data import datasets

log = logging.getLogger(__name__)

DEMO = "tlsweep preset=demo"


def fetch(configs: Sequence[TlsweepConfig]) -> None:
    """Download what the configurations need and Keras has not cached; raise one FetchError for all that fails."""
    missing: list[FetchError] = []
    if any(config.data.name == "cifar10" and config.data.path is None for config in configs):
        try:
            datasets.load_dataset(name="cifar10", path=None)
        except FetchError as err:
            missing.append(err)
    # the download does not depend on the size; a folder's own size is not known here
    sizes = {config.model.name: config.data.image_size or 32 for config in configs
             if config.model.weights == "imagenet" and config.model.preset is None and config.model.path is None}
    for name, image_size in sizes.items():
        try:
            models.build_backbone(name=name, weights="imagenet", input_size=max(image_size, models.min_input_size(name)),
                                  seed=0)
        except FetchError as err:
            missing.append(err)
    presets = {config.model.preset: config.model.weights for config in configs if config.model.preset is not None}
    for preset, weights in presets.items():
        try:
            hub.fetch(preset, weights=weights)
        except FetchError as err:
            missing.append(err)
    if missing:
        raise FetchError(
            what=" and ".join(err.what for err in missing),
            reason="; ".join(dict.fromkeys(err.reason for err in missing)),
            remedy=" and ".join(err.remedy for err in missing) + f", or run the offline demo: {DEMO}",
        )
