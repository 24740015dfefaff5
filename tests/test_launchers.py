"""Hydra launchers that run jobs in other processes: joblib (parallel, local) and submitit (local, SLURM preset).

The parent run id reaches each job inside the pickled callback; the feature cache is shared through its lock.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Kind, Metric, Param, Status, Tag


IMAGES = 60 + 24  # train + test images of the tiny CIFAR-10 files, classes 4-9


@pytest.mark.parametrize(
    "layers, launcher",
    [
        # both at once; the default run has joblib's workers in test_reliability_cli's parallel sweep
        pytest.param(["block4_pool", "block5_pool"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                     marks=pytest.mark.slow),
        pytest.param(["block4_pool", "block5_pool"], ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
                     marks=pytest.mark.slow),  # the same path as joblib's, through submitit's own processes
    ],
    ids=["joblib", "submitit_local"],
)
def test_jobs_in_other_processes_stay_children_of_one_parent_and_share_the_cache(isolated, cifar_dir, cli, tiny,
                                                                                  experiment_runs, layers, launcher):
    result = cli("-m", f"layer={','.join(layers)}", f"data.path={cifar_dir}", *tiny, *launcher, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient()
    runs = experiment_runs(client)
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.JOB]
    assert len(parents) == 1 and parents[0].info.status == Status.FINISHED
    assert sorted(r.data.params[Param.LAYER] for r in children) == layers
    assert {r.data.tags[Tag.PARENT] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == Status.FINISHED for r in children)
    # the jobs ran in worker processes, not in the one that opened the parent run
    processes = {r.data.tags[Tag.PROCESS] for r in children}
    assert parents[0].data.tags[Tag.PROCESS] not in processes
    # one job ran the CNN for every cut of the sweep; the others read the shared cache
    forward = sorted(r.data.metrics[Metric.CNN_FORWARD_IMAGES] for r in children)
    assert forward == [0] * (len(layers) - 1) + [IMAGES]
    table = client.download_artifacts(parents[0].info.run_id, Artifact.summary(Artifact.COMPARISON_CSV), str(isolated))
    assert all(layer in open(table).read() for layer in layers)


def test_slurm_preset_is_submitit_slurm_with_its_defaults_and_takes_overrides(compose):
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"],
                  hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node) == ("gpu", 2)
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb, launcher.nodes) == (120, 8, 32, 1)
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # logs next to the sweep's own
