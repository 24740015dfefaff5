"""Depth profiles: `layer=stages` across two backbones in one command, layer_depth, the parent's figures and CKA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlsweep.tracking.names import Artifact, Metric, Param, Status

MODELS = ("vgg16", "mobilenet_v2")


@pytest.fixture(scope="module")
def stage_sweep(tmp_path_factory, cifar_writer, cli, tiny, sweep_runs):
    """`-m model=vgg16,mobilenet_v2 layer=stages` on tiny CIFAR-10 files: (client, parent, children)."""
    work = tmp_path_factory.mktemp("depth")
    data = cifar_writer(work / "data")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", f"model={','.join(MODELS)}", "layer=stages", f"data.path={data}", "data.classes=[4,5,6]",
                 *tiny, cwd=work, env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = sweep_runs(uri)
    return client, parent, children


def _stages(compose, model: str) -> list[str]:
    return list(compose([f"model={model}"]).model.stages)


def test_one_child_per_model_and_stage_from_one_cnn_pass_per_model(stage_sweep, compose):
    _, _, children = stage_sweep
    for model in MODELS:
        runs = [run for run in children if run.data.params[Param.MODEL] == model]
        assert [run.data.params[Param.LAYER] for run in runs] == _stages(compose, model)
        assert all(run.info.status == Status.FINISHED for run in runs)
        passes = [run.data.metrics[Metric.CNN_FORWARD_IMAGES] for run in runs]
        assert passes[0] > 0 and passes[1:] == [0] * (len(runs) - 1)  # the first stage filled the cache for all


def test_each_child_logs_its_layer_depth_from_0_to_1(stage_sweep):
    _, _, children = stage_sweep
    for model in MODELS:
        depths = [run.data.metrics[Metric.LAYER_DEPTH] for run in children if run.data.params[Param.MODEL] == model]
        assert all(0 < d for d in depths) and depths == sorted(depths) and len(set(depths)) == len(depths)
        assert depths[-1] == 1.0


def test_the_parent_plots_accuracy_by_depth_and_logs_one_cka_matrix_over_every_cut(stage_sweep, compose):
    client, parent, _ = stage_sweep
    run_id = parent.info.run_id
    artifacts = {item.path for item in client.list_artifacts(run_id, "summary")}
    assert any(path.startswith(Artifact.summary(f"{Artifact.DEPTH_PROFILE}-")) and path.endswith(".png") for path in artifacts)
    assert {Artifact.summary(f"{Artifact.CKA}.csv"), Artifact.summary(f"{Artifact.CKA}.png")} <= artifacts and not any("-vs-" in path for path in artifacts)
    matrix = pd.read_csv(io.StringIO(Path(client.download_artifacts(run_id, Artifact.summary(f"{Artifact.CKA}.csv"))).read_text()),
                         index_col=0)
    cuts = [f"{model}/{stage}" for model in sorted(MODELS) for stage in _stages(compose, model)]
    assert list(matrix.index) == cuts and list(matrix.columns) == cuts  # by model, then input to output
    values = matrix.to_numpy()
    np.testing.assert_allclose(values, values.T, atol=1e-9)
    np.testing.assert_allclose(np.diag(values), 1.0, atol=1e-9)
    assert np.all(values < 1 + 1e-9) and np.all(values > -0.5)  # debiased: near 0 may fall slightly below


def test_layer_stages_without_stages_in_the_model_config_is_one_line(isolated, cifar_dir, cli, tiny):
    result = cli("layer=stages", "model.stages=[]", f"data.path={cifar_dir}", *tiny, cwd=isolated)
    assert result.returncode == 1
    output = result.stderr.splitlines() + result.stdout.splitlines()
    lines = [line for line in output if "layer=stages needs model.stages" in line]
    assert len(lines) == 1 and "model=vgg16" in lines[0]
    assert not [line for line in output if "Warning" in line], output


def test_a_stage_that_would_not_fit_in_memory_is_refused_with_grid_pooling_suggested(compose, cifar_dir,
                                                                                     monkeypatch, caplog):
    from omegaconf import OmegaConf

    from tlsweep.errors import ConfigError
    from tlsweep.stages.probe import memory
    from tlsweep.validate import check_stage_memory

    def typed(cfg):
        return OmegaConf.to_object(cfg)

    cfg = typed(compose(["layer=stages", f"data.path={cifar_dir}", "model.weights=null"]))
    stages = list(cfg.model.stages)
    budget = 30000 * 12000 * 28  # 30000 training images: between block2_pool's 8192 features and block1_pool's 16384
    monkeypatch.setattr(memory, "machine_memory", lambda: budget)
    with pytest.raises(ConfigError, match=r"stage block1_pool of vgg16 gives 16384 features .* features\.pooling=grid"):
        check_stage_memory(cfg, stages)
    check_stage_memory(typed(compose(["layer=stages", f"data.path={cifar_dir}", "features.pooling=grid"])), stages)
    monkeypatch.setattr(memory, "machine_memory", lambda: 30000 * 16384 * 28 * 1.5)  # block1_pool: over half
    with caplog.at_level("WARNING", logger="tlsweep.validate"):
        check_stage_memory(cfg, stages)
    assert "block1_pool" in caplog.text and "over half" in caplog.text
