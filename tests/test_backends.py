"""The pipeline uses Keras 3 APIs only, so a sweep runs on another backend (KERAS_BACKEND) unchanged."""

from __future__ import annotations

import importlib.util

import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Metric, Param, Status, Tag


@pytest.mark.slow  # a whole job on a second backend
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install -e '.[jax]')")
def test_one_run_end_to_end_on_the_jax_backend(isolated, cifar_dir, cli, tiny, experiment_runs):
    result = cli("layer=block3_pool", f"data.path={cifar_dir}", *tiny, cwd=isolated,
                 env={"KERAS_BACKEND": "jax"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    (run,) = experiment_runs(MlflowClient())
    assert run.info.status == Status.FINISHED
    assert run.data.tags[Tag.KERAS_BACKEND] == "jax"
    assert run.data.params[Param.FEATURE_DIM] == "4096"
    assert run.data.metrics[Metric.CNN_FORWARD_IMAGES] == 84  # 60 train + 24 test went through the JAX model
    assert 0.0 <= run.data.metrics[Metric.accuracy("test")] <= 1.0
