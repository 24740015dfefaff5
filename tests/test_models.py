"""The probe and the pipeline as MLflow models, the run's datasets and its predictions, on images the tests write.

A sweep over two cuts of a random-init VGG16 on a folder of PNG, JPEG, BMP and GIF images (grayscale, palette
and RGBA among them, of several sizes) runs once for the module; its parent's `model` must predict what the
best run logged, from raw images of any size, in-process and behind `mlflow models serve`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlsweep.tracking.names import Artifact, Metric, Param, Tag

KINDS = (("png", "RGB"), ("jpg", "L"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGBA"))
SIZES = ((32, 32), (40, 28), (24, 36))


@pytest.fixture(scope="module")
def folder_sweep(tmp_path_factory, image_folder_writer, image_saver, cli, tiny):
    """A two-cut sweep on a folder with one undecodable file skipped; (uri, client, parent run, folder)."""
    work = tmp_path_factory.mktemp("models")
    root = image_folder_writer(work / "images", per_class=10, kinds=KINDS, sizes=SIZES)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = cli("-m", "data=folder", f"data.path={root}", "data.image_size=32", "data.skip_bad_images=true",
                 "layer=block3_pool,block5_pool", *tiny, cwd=work,
                 env={"MLFLOW_TRACKING_URI": uri, "TLSWEEP_CACHE_DIR": str(work / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tlsweep")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`tlsweep.kind` = 'sweep'")
    return uri, client, parent, root


def _artifact_text(client, run_id: str, path: str) -> str:
    return Path(client.download_artifacts(run_id, path)).read_text()


def _predictions(client, run_id: str, split: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(_artifact_text(client, run_id, Artifact.predictions(split)))))


def _raw(root: Path, image_id: str) -> np.ndarray:
    """An image file as a user holds it: its own size, RGB pixels, never resized."""
    from PIL import Image

    with Image.open(root / image_id) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def test_the_parents_model_predicts_from_raw_images_of_any_size_what_the_best_run_logged(folder_sweep,
                                                                                          monkeypatch):
    import mlflow.pyfunc

    uri, client, parent, root = folder_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    best = parent.data.tags[Tag.BEST_RUN_ID]
    logged = _predictions(client, best, "test")
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    sizes = {_raw(root, row["id"]).shape[:2] for row in logged}
    assert len(sizes) > 1  # the test images come in several sizes, as the files do
    predicted = [str(model.predict(_raw(root, row["id"])[None])[0]) for row in logged]
    assert predicted == [row["predicted"] for row in logged]
    signature = model.metadata.signature
    spec = signature.inputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "uint8" and list(spec["shape"]) == [-1, -1, -1, 3]
    assert signature.outputs.to_dict() == [{"type": "string", "required": True}]
    example = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{parent.info.run_id}/model/serving_input_example.json")).read_text())
    assert np.asarray(example["inputs"]).dtype.kind in "iu" and np.asarray(example["inputs"]).shape[-1] == 3


def test_the_parents_model_carries_its_runs_accuracies_and_datasets_and_the_parent_no_val_accuracy(folder_sweep):
    _, client, parent, _ = folder_sweep
    best = client.get_run(parent.data.tags[Tag.BEST_RUN_ID])
    (output,) = client.get_run(parent.info.run_id).outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    linked = {m.key: (m.value, m.dataset_name) for m in model.metrics}
    assert linked == {Metric.pipeline(split): (best.data.metrics[Metric.accuracy(split)], f"folder {split}")
                      for split in ("val", "test")}
    assert Metric.accuracy("val") not in parent.data.metrics  # the runs table sorts it after its jobs


def test_each_job_logs_its_probe_as_a_scikit_learn_model_with_signature_and_example(folder_sweep, monkeypatch):
    import mlflow.models
    import mlflow.sklearn

    uri, client, parent, _ = folder_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    jobs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(jobs) == 2
    for job in jobs:
        info = mlflow.models.get_model_info(f"runs:/{job.info.run_id}/probe")
        assert "sklearn" in info.flavors
        shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
        assert list(shape) == [-1, int(job.data.params[Param.FEATURE_DIM])]
        probe = mlflow.sklearn.load_model(f"runs:/{job.info.run_id}/probe")
        example = np.asarray(json.loads(Path(mlflow.artifacts.download_artifacts(
            f"runs:/{job.info.run_id}/probe/input_example.json")).read_text()), dtype=np.float32)
        assert example.shape == (2, int(job.data.params[Param.FEATURE_DIM]))
        assert probe.predict(example).shape == (len(example),)


def test_each_job_logs_its_datasets_predictions_and_skipped_files(folder_sweep):
    _, client, parent, root = folder_sweep
    job = client.get_run(parent.data.tags[Tag.BEST_RUN_ID])
    inputs = {item.tags[0].value: item.dataset for item in job.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train", "val"]
    for split, dataset in inputs.items():
        assert dataset.digest == job.data.tags[Tag.DATA_FINGERPRINT]
        assert json.loads(dataset.source)["uri"] == str(root.resolve()) and dataset.source_type == "local"
        assert json.loads(dataset.profile)["images"] == int(job.data.params[f"n_{split}"])
    for split in ("train", "val", "test"):
        rows = _predictions(client, job.info.run_id, split)
        assert len(rows) == int(job.data.params[f"n_{split}"])
        assert all((root / row["id"]).is_file() and row["id"].split("/")[0] == row["true"] for row in rows)
        accuracy = np.mean([row["true"] == row["predicted"] for row in rows])
        assert accuracy == pytest.approx(job.data.metrics[f"{split}_accuracy"])
    skipped = list(csv.DictReader(io.StringIO(_artifact_text(client, job.info.run_id, Artifact.SKIPPED_IMAGES))))
    assert [row["id"] for row in skipped] == ["dog/broken.png"] and skipped[0]["reason"]


def test_mlflow_models_serve_answers_raw_images_with_class_names(folder_sweep, free_port, tmp_path):
    uri, client, parent, root = folder_sweep
    logged = _predictions(client, parent.data.tags[Tag.BEST_RUN_ID], "test")
    same_size = [row for row in logged if _raw(root, row["id"]).shape[:2] == (32, 32)][:3]
    images = np.stack([_raw(root, row["id"]) for row in same_size])
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{parent.info.run_id}/model",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        # mlflow runs `uvicorn` from PATH: the environment's bin folder, as an activated venv has it
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        server = subprocess.Popen(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["predictions"] == [row["predicted"] for row in same_size]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def test_a_job_logs_its_own_pipeline_on_request_and_it_resizes_as_training_did(isolated, cifar_dir, cli, tiny):
    """mobilenet_v2 on CIFAR-10 files resized from 32 to 40 by Keras: the job's own `model` predicts its test split."""
    import mlflow.pyfunc

    from tlsweep.stages.data import cifar10

    result = cli("model=mobilenet_v2", "layer=block_5_add", "data.image_size=40", "data.classes=[4,5,6]",
                 f"data.path={cifar_dir}", "tracking.log_pipeline=true", *tiny, cwd=isolated)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (job,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    logged = _predictions(client, job.info.run_id, "test")
    _, _, x_test, _ = cifar10.read_batches(cifar_dir)
    images = x_test[[int(row["id"].split("/")[1]) for row in logged]]
    model = mlflow.pyfunc.load_model(f"runs:/{job.info.run_id}/model")
    assert list(model.predict(images)) == [row["predicted"] for row in logged]


def test_bad_images_for_a_pipeline_get_one_line(isolated):
    from tlsweep.errors import DataError
    from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline

    pipeline = ProbePipeline(spec=PipelineSpec("vgg16", "block1_pool", 32, "keras", {"pooling": "avg"}, [0], ["a"]),
                             extractor=None, probe=None)
    with pytest.raises(DataError, match=r"N x H x W x 3 .* received shape \(4, 4\)"):
        pipeline.predict(np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="whole numbers 0..255"):
        pipeline.predict(np.full((1, 4, 4, 3), 300.0))
