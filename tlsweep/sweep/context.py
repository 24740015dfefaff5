"""What a sweep hands each of its jobs, declared once: the store, the experiment, the parent run, the layers.

The Hydra callback builds a `SweepContext` when the multirun starts. Hydra pickles the callback into every
job, under every launcher (basic, joblib, submitit, Ray), and calls its `on_job_start` in the job's own
process just before the task function; there the callback hands the context over (`hand_over`), and the
task function takes it (`received`). A single run (no `-m`) receives none.

The one value that comes from outside is the run `mlflow run` opens for this process (MLFLOW_RUN_ID, read
through `tlsweep.environment`). This module is where a job asks for it, so none looks at the environment for
sweep state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tlsweep import environment


@dataclass(frozen=True)
class SweepContext:
    """Everything a job of a sweep needs from the sweep: where to log, under which run, what to extract."""

    tracking_uri: str  # absolute, so every job logs to the store the parent lives in, whatever its folder
    experiment_id: str
    parent_run_id: str
    sweep_layers: tuple[str, ...] = ()  # every layer the sweep names: one CNN pass extracts them all
    # absolute, resolved where the sweep started: jobs on other nodes (Ray, SLURM) share the features even
    # where their environment lacks TLSWEEP_CACHE_DIR; a job whose config names a cache_dir uses that
    cache_dir: Optional[str] = None
    # a secret of this sweep alone: each job seals the runs it logs or reuses with it, on the parent
    # (`runs.mark_own`), so the parent serves a model only from runs its own launcher started
    seal_key: str = field(default="", repr=False)


_received: Optional[SweepContext] = None


def hand_over(context: Optional[SweepContext]) -> None:
    """Give the job about to run in this process its sweep's context (None once it has ended)."""
    global _received
    _received = context


def received() -> Optional[SweepContext]:
    """The context of the sweep this job belongs to, or None for a single run."""
    return _received


def outer_run_id() -> Optional[str]:
    """The run `mlflow run` opened for this process, if any: a single run logs into it, a sweep parents it."""
    return environment.read().outer_run_id
