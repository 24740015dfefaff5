"""What a command must download, fetched once before any run is opened; everything missing named in one line.

Offline, every job of a sweep would fail the same way. Fetching first means the user reads one line that
names all that is missing (the data and each model's weights), how to give local copies, and the demo that
needs nothing; and the experiment holds no failed runs. Online, the downloads land in Keras' cache, where
the jobs find them.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from tlsweep.errors import FetchError
from tlsweep.stages import data, models

log = logging.getLogger(__name__)

DEMO = "python -m tlsweep -cd sweeps -cn demo"


def fetch(*, data_name: str, data_path: Optional[str], backbones: Sequence[str], weights: Optional[str],
          image_size: Optional[int]) -> None:
    """Download what the configuration needs and Keras has not cached; raise one FetchError for all that fails."""
    missing: list[FetchError] = []
    if data_name == "cifar10" and data_path is None:
        try:
            data.load_dataset(name=data_name, path=None)
        except FetchError as err:
            missing.append(err)
    if weights == "imagenet":
        for name in dict.fromkeys(backbones):
            try:
                # the download does not depend on the size; a folder's own size is not known here
                size = max(image_size or 32, models.min_input_size(name))
                models.build_backbone(name=name, weights=weights, input_size=size, seed=0)
            except FetchError as err:
                missing.append(err)
    if missing:
        raise FetchError(
            what=" and ".join(err.what for err in missing),
            reason="; ".join(dict.fromkeys(err.reason for err in missing)),
            remedy=" and ".join(err.remedy for err in missing) + f", or run the offline demo: {DEMO}",
        )
