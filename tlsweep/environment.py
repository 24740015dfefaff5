"""The environment variables tlsweep reads, and the library settings it gives a default, declared once.

A job learns what it runs from its config, and what its sweep shares from the sweep's `SweepContext`. From
the environment come only the user's own defaults for where runs and features go, the run that `mlflow run`
opened for this process, and whether TensorFlow's native start-up lines are wanted. `read` takes them as they
are at the call, so a launcher or a test that changes the environment is seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

TRACKING_URI = "MLFLOW_TRACKING_URI"  # where runs go when tracking.uri is null (else ./mlflow.db)
CACHE_DIR = "TLSWEEP_CACHE_DIR"  # the feature cache when cache_dir is null
XDG_CACHE_HOME = "XDG_CACHE_HOME"  # else $XDG_CACHE_HOME/tlsweep, else ~/.cache/tlsweep
OUTER_RUN = "MLFLOW_RUN_ID"  # `mlflow run` sets it for the command it starts (mlflow.projects)
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # 0 also shows the start-up lines `console.quiet_native_startup` holds back

# What tlsweep sets where the user set nothing; a user's own setting wins
LIBRARY_DEFAULTS = {
    TF_LOG_LEVEL: "1",  # TensorFlow's C++ INFO lines (oneDNN notices, CUDA probing) bury tlsweep's own log
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar for every artifact copy, several per logged model
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow says at INFO what it checks as it logs a model
}


@dataclass(frozen=True)
class Environment:
    """What tlsweep reads from the environment; None where a variable is unset or empty."""

    tracking_uri: Optional[str]
    cache_dir: Optional[str]
    xdg_cache_home: Optional[str]
    outer_run_id: Optional[str]
    native_logs: bool  # TF_CPP_MIN_LOG_LEVEL=0, as the user set it


def read() -> Environment:
    """The environment as it is now."""
    return Environment(tracking_uri=_get(TRACKING_URI), cache_dir=_get(CACHE_DIR), xdg_cache_home=_get(XDG_CACHE_HOME),
                       outer_run_id=_get(OUTER_RUN), native_logs=os.environ.get(TF_LOG_LEVEL) == "0")


def set_library_defaults() -> None:
    """Set each of LIBRARY_DEFAULTS that the user left unset."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _get(name: str) -> Optional[str]:
    return os.environ.get(name) or None
