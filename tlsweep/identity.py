"""One identity per configuration: every setting that can change a result, plus what the data and weights hold.

A job's identity is its config, less what only says where results go or how fast they come
(`NON_SEMANTIC_KEYS`) or describes the backbone rather than the run (`DESCRIPTIVE_KEYS`), plus the content
fingerprints of its data and weights. Everything that compares runs asks this module:

- `config_hash`: the tag `tlsweep.config_hash`, which `resume=true` looks up. It hashes the config keys only
  (the fingerprints are compared beside it, `same_content`), and keeps its value across releases: a key
  added after runs were first logged (`ADDED_KEYS`) is left out at its schema default, so older runs of
  the same configuration still resume.
- `configuration`: what a run's summary row stands for, read back from its params and tags. Data and
  weights count by content (two paths to the same files are one configuration); the seed is left out,
  so runs that differ in their seed alone are repeats of one configuration, and nothing else is.

Defaults come from the schema (`tlsweep.config`) and nowhere else: `schema_defaults`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from typing import Any, Iterator, Mapping, Optional

from omegaconf import OmegaConf

from tlsweep.config import TlsweepConfig

# keys that change where results go or how fast they come, or what is measured beside them (scores, CKA),
# never what they are
NON_SEMANTIC_KEYS = ("tracking", "cache_dir", "resume", "model.batch_size", "scores", "prescreen",
                     "prescreen_score", "cka")
# keys that describe the backbone or the classifier, not the run: a run's cut is `layer`, whichever stages its
# model lists; a classifier's class follows from its name
DESCRIPTIVE_KEYS = ("model.stages", "model.default_layer", "classifier._target_")
# keys added after runs were first logged: left out of the hash at their schema default, so a configuration
# keeps its hash (and `resume=true` finds its earlier runs) across the addition
ADDED_KEYS = ("features.pooling", "features.grid_size", "features.normalize", "data.train_per_class",
              "data.test_fraction", "data.skip_bad_images", "model.preset", "model.path", "model.preprocess",
              "model.precision")
# keys the hash has always held although they cannot change a result: kept in it so that hashes stay put
HASHED_DESCRIPTIVE_KEYS = ("model.default_layer", "demo")
SEED = "seed"  # runs that differ in this alone are repeats of one configuration
DATA_PATH, WEIGHTS = "data.path", "model.weights"
BACKBONE_PATHS = ("model.preset", "model.path")  # where a preset's or a file's weights are: counted by content
DATA_FINGERPRINT, WEIGHTS_FINGERPRINT = "data.fingerprint", "weights.fingerprint"
RANDOM_WEIGHTS = "random"  # the seed-free form of a random init's fingerprint (`random-seed<k>`)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted.key, value) pairs; lists stay whole."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


@functools.lru_cache(maxsize=None)
def _defaults() -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(TlsweepConfig)
    tree: dict[str, Any] = {}
    for item in dataclasses.fields(TlsweepConfig):
        if dataclasses.is_dataclass(hints[item.name]):  # a config group: its own schema's defaults
            tree[item.name] = OmegaConf.to_container(OmegaConf.structured(hints[item.name]), resolve=False)
        elif item.default is not dataclasses.MISSING:
            tree[item.name] = item.default
        else:
            tree[item.name] = item.default_factory()
    return tuple(flatten(tree))


def schema_defaults() -> dict[str, Any]:
    """Every key of the schema with its default, flattened (`???` where a config group must set it)."""
    return dict(_defaults())


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in prefixes)


def hashed_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a flattened config that `config_hash` covers."""
    defaults = schema_defaults()
    kept = {}
    for key, value in flat.items():
        if _is_under(key, NON_SEMANTIC_KEYS) or (_is_under(key, DESCRIPTIVE_KEYS)
                                                 and key not in HASHED_DESCRIPTIVE_KEYS):
            continue
        if key in ADDED_KEYS and value in (defaults[key], str(defaults[key])):
            continue
        if key == "classifier.C_grid" and flat.get("classifier.C") != "auto":  # used only by C=auto
            continue
        kept[key] = value
    return kept


def result_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a flattened config that can change a result (the hashed ones, less those only kept for the
    hash's sake)."""
    return {key: value for key, value in hashed_keys(flat).items() if key not in HASHED_DESCRIPTIVE_KEYS}


def config_hash(resolved: Mapping[str, Any]) -> str:
    """A stable id of the configuration's keys: runs with equal hashes and equal content fingerprints
    (`same_content`) give equal results."""
    flat = hashed_keys(dict(flatten(resolved)))
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_content(logged: Mapping[str, Optional[str]], current: Mapping[str, str]) -> list[str]:
    """The fingerprints (`data.fingerprint`, `weights.fingerprint`) that differ between a logged run's tags and
    what the data and weights hold now; [] when the run may be reused."""
    return [key for key in (DATA_FINGERPRINT, WEIGHTS_FINGERPRINT) if logged.get(key) != current.get(key)]


def seed_free_weights(fingerprint: Optional[str]) -> Optional[str]:
    """A weights fingerprint with the seed of a random init left out: other seeds are repeats, not other weights
    (`random-seed3` -> `random`; a preset's random init keeps its architecture: `random-seed3-<digest>` ->
    `random-<digest>`)."""
    return re.sub(r"^random-seed\d+", RANDOM_WEIGHTS, fingerprint) if fingerprint else fingerprint


def configuration(params: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str]:
    """What a logged run's row stands for: the config keys that can change its result (strings, as stored;
    a key the run predates at its schema default), without its seed, and with its data and weights by
    content where the run recorded their fingerprints."""
    defaults = schema_defaults()
    config = {key: value for key, value in params.items() if key in defaults}
    found = result_keys({**{key: str(defaults[key]) for key in ADDED_KEYS}, **config})
    found.pop(SEED, None)
    if tags.get(DATA_FINGERPRINT):
        found.pop(DATA_PATH, None)
        found[DATA_FINGERPRINT] = tags[DATA_FINGERPRINT]
    if tags.get(WEIGHTS_FINGERPRINT):
        found.pop(WEIGHTS, None)
        for key in BACKBONE_PATHS:
            found.pop(key, None)
        found[WEIGHTS_FINGERPRINT] = seed_free_weights(tags[WEIGHTS_FINGERPRINT])
    return found


def configuration_id(configuration_keys: Mapping[str, str]) -> str:
    """A short id of a `configuration`: equal for repeats of one configuration, and only for them."""
    return hashlib.sha256(json.dumps(dict(configuration_keys), sort_keys=True).encode()).hexdigest()[:12]
