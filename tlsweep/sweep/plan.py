"""A multirun's jobs, composed and checked before the first one runs.

Hydra's basic sweeper expands the sweep into one override list per job and composes each job's config only
as it launches it. `plan` does the same expansion and composition up front, with Hydra's own parser and
config loader, and runs every config-only check (`validate`) on each job, `layer=stages` expanded into its
stages. A sweep with a config error anywhere then stops before any store, data or model is touched, with
one line per bad job. The plan also names each job's configuration (`identity.config_hash`): the parent
builds its served model only from children of its own plan.

Another sweeper (Optuna, Ax, ...) chooses its jobs as it goes: `plan` returns None, and each job is
checked as it starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from tlsweep.config import TlsweepConfig
from tlsweep.errors import ConfigError, TlsweepError

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass(frozen=True)
class PlannedJob:
    """One job of the sweep, as it will run: its overrides, its config, and the configurations it logs."""

    overrides: tuple[str, ...]
    config: TlsweepConfig
    config_hashes: tuple[str, ...]  # one per run the job logs: each stage of a `layer=stages` job


@dataclass(frozen=True)
class Plan:
    jobs: tuple[PlannedJob, ...]
    failed: tuple[tuple[str, str], ...]  # (the job's overrides, what is wrong) for each job that fails its checks

    @property
    def config_hashes(self) -> frozenset[str]:
        return frozenset(h for job in self.jobs for h in job.config_hashes)

    @property
    def errors(self) -> list[str]:
        """One line per distinct error: the jobs it concerns (none named when it is every job's), then it."""
        by_error: dict[str, list[str]] = {}
        for overrides, error in self.failed:
            by_error.setdefault(error, []).append(overrides)
        total = len(self.jobs) + len(self.failed)
        lines = []
        for error, jobs in by_error.items():
            if len(jobs) == total and total > 1:
                lines.append(error)
                continue
            named = "; ".join(jobs[:3]) + (f"; and {len(jobs) - 3} more" if len(jobs) > 3 else "")
            lines.append(f"{named}: {error}")
        return lines


def job_overrides(config: DictConfig, overrides: list[str]) -> Optional[list[list[str]]]:
    """Each job's overrides, as the basic sweeper will launch them; None under another sweeper."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep as the basic sweeper expands it: `hydra.sweeper.params`, then the command line."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def swept_values(overrides: list[str], key: str) -> list[str]:
    """Every value `key` takes in the sweep, parsed by Hydra's own grammar; the last override wins."""
    values: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.get_key_element().lstrip("+~") != key:
            continue
        if override.is_sweep_override():
            values = [str(value) for value in override.sweep_string_iterator()]
        else:
            values = [str(override.value())]
    return list(dict.fromkeys(values))


def sweep_size(overrides: list[str]) -> int:
    """How many jobs the basic sweeper makes of `overrides`: the product of each swept key's value count."""
    counts = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # a later override of a key wins
        swept = override.is_sweep_override()
        counts[override.get_key_element()] = len(list(override.sweep_string_iterator())) if swept else 1
    return math.prod(counts.values())


def sweep_name(model: str, overrides: list[str], data: str = "") -> str:
    """A parent run named after its data and what the sweep varies: `vgg16 cifar10 layer=block3_pool,block4_pool`."""
    swept: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # a later override of a key wins
        key = override.get_key_element()
        swept.pop(key, None)
        if override.is_sweep_override():
            swept[key] = f"{key}={','.join(map(str, override.sweep_string_iterator()))}"
    varied = list(swept.values())
    prefix = [] if any(item.startswith("model=") for item in varied) else [model]
    prefix += [] if not data or any(item.startswith(("data=", "data.path=")) for item in varied) else [data]
    return " ".join(prefix + (varied or ["sweep"]))[:250]


def compose_job(config: DictConfig, overrides: list[str]) -> DictConfig:
    """A job's task config, composed by Hydra's config loader as the launcher will compose it."""
    loader = GlobalHydra.instance().config_loader()
    composed = loader.load_sweep_config(config, list(overrides))
    with read_write(composed), open_dict(composed):
        del composed["hydra"]
    return composed


def _varying(expanded: list[list[str]]) -> set[str]:
    """The keys whose value differs between jobs: what names a job among its sweep's."""
    values: dict[str, set[str]] = {}
    for job in expanded:
        for item in job:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def primary(config: DictConfig) -> TlsweepConfig:
    """The sweep's primary config (its command line's, before any sweep value), as a typed object."""
    task = config.copy()
    with read_write(task), open_dict(task):
        del task["hydra"]
    return OmegaConf.to_object(task)


def plan(config: DictConfig, overrides: list[str]) -> Optional[Plan]:
    """Compose and check every job of the sweep; None when the sweeper is not the basic one."""
    from tlsweep.job import job_configs  # the job's own view of its config: the same checks, the same hash

    expanded = job_overrides(config, overrides)
    if expanded is None:
        return None
    varying = _varying(expanded)
    jobs, failed = [], []
    for job in expanded:
        try:
            cfg = compose_job(config, job)
            checked = job_configs(cfg)
        except (TlsweepError, HydraException) as err:
            label = " ".join(item for item in job if item.split("=", 1)[0] in varying) or " ".join(job)
            failed.append((label, str(err).strip().splitlines()[0]))
            continue
        jobs.append(PlannedJob(tuple(job), checked[0][0], tuple(config_hash for _, config_hash in checked)))
    if not expanded:
        raise ConfigError("the sweep has no jobs")
    return Plan(tuple(jobs), tuple(failed))
