"""Shared fixtures: an isolated MLflow store and cache per test, tiny genuine-format CIFAR-10 files, tiny Keras-Hub
presets, and the helpers tests share (composing the config, running the CLI, finding runs, free ports, cached
extraction).

Test files ask for these by fixture name and never import this module. The stateless helpers are
session-scoped, so module- and session-scoped fixtures in test files can use them too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tlsweep.stages.data import cifar10

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own SQLite tracking store, feature cache, Keras home and working folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TLSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def cifar_arrays(*, train_per_class_per_batch: int = 2, test_per_class: int = 4, seed: int = 0) -> dict:
    """x_train, y_train, x_test, y_test for the CIFAR-10 writer: five shuffled train batches, then the test batch.

    Each class gets its own mean colour, so a linear classifier has something to learn.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for n_per_class in [train_per_class_per_batch] * 5 + [test_per_class]:
        labels = np.repeat(np.arange(10), n_per_class)
        rng.shuffle(labels)
        base = (labels[:, None] * 23 % 256).astype(np.int16)
        rows = np.clip(base + rng.integers(-40, 40, size=(len(labels), 3072)), 0, 255).astype(np.uint8)
        parts.append((cifar10.images_from_rows(rows), labels))
    (x_test, y_test), train = parts.pop(), parts
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def _write_cifar(folder: Path, *, train_per_class_per_batch: int = 2, test_per_class: int = 4, seed: int = 0):
    """Write cifar-10-batches-py/ (5 train batches, 1 test batch, batches.meta); returns its path."""
    return cifar10.write_batches(folder, **cifar_arrays(
        train_per_class_per_batch=train_per_class_per_batch, test_per_class=test_per_class, seed=seed))


def _write_cifar_archive(folder: Path, **kwargs) -> Path:
    """cifar-10-python.tar.gz with the same layout as the official archive."""
    return cifar10.write_archive(folder, **cifar_arrays(**kwargs))


@pytest.fixture(scope="session")
def cifar_writer():
    """`cifar_writer(folder, train_per_class_per_batch=2, test_per_class=4, seed=0)`: writes
    folder/cifar-10-batches-py/ (5 train batches, 1 test batch, batches.meta) and returns its path."""
    return _write_cifar


@pytest.fixture(scope="session")
def cifar_archive_writer():
    """`cifar_archive_writer(folder, **cifar_writer's options)`: writes folder/cifar-10-python.tar.gz, laid out
    as the official archive, and returns its path."""
    return _write_cifar_archive


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return _write_cifar(tmp_path / "data")


@pytest.fixture
def cifar_archive(tmp_path) -> Path:
    return _write_cifar_archive(tmp_path / "data")


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root: conf/, sweeps/, MLproject."""
    return ROOT


@pytest.fixture(scope="session")
def tiny() -> tuple[str, ...]:
    """The smallest useful runs: random-init weights, small batches, classes that the tiny files hold."""
    return ("model.weights=null", "model.batch_size=16", "data.val_fraction=0.25")


@pytest.fixture(scope="session")
def cli():
    """`cli(*ARGS, cwd=..., timeout=600, env=None)`: `python -m tlsweep ARGS` as a user runs it, in cwd, with
    os.environ (as it is at the call) updated by env; returns the CompletedProcess, output captured as text."""

    def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tlsweep", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run_cli


@pytest.fixture(scope="session")
def cli_in_background():
    """`cli_in_background(*ARGS, cwd=..., until=TEXT, timeout=300)`: start `python -m tlsweep ARGS` as a user would,
    its output in cwd/background.log, and return (process, log path) once the log shows TEXT. The caller ends it."""

    def start(*args: str, cwd: Path, until: str, timeout: float = 300) -> tuple[subprocess.Popen, Path]:
        log_path = cwd / "background.log"
        # a shell starts a background job (`pytest ... &`) with Ctrl-C ignored, and a child inherits that; the
        # child gets the terminal's Ctrl-C, whatever way pytest was started
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(log_path, "w") as log:
                process = subprocess.Popen([sys.executable, "-m", "tlsweep", *args], cwd=cwd, stdout=log,
                                           stderr=subprocess.STDOUT)
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        deadline = time.monotonic() + timeout
        while until not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"`{until}` never showed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return process, log_path

    return start


@pytest.fixture(scope="session")
def lines_with():
    """`lines_with(result, TEXT)`: the lines of a finished command's output (stdout, then stderr) that hold TEXT."""

    def found(result: subprocess.CompletedProcess, text: str) -> list[str]:
        return [line for line in (result.stdout + result.stderr).splitlines() if text in line]

    return found


@pytest.fixture(scope="session")
def free_port():
    """`free_port()`: a 127.0.0.1 TCP port that nothing listens on (bound once, then released)."""

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return port


@pytest.fixture(scope="session")
def experiment_runs():
    """`experiment_runs(client, experiment="tlsweep")`: every run of the experiment ([] if there is none)."""

    def runs(client, experiment: str = "tlsweep") -> list:
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id], max_results=1000) if found else []

    return runs


@pytest.fixture(scope="session")
def sweep_runs():
    """`sweep_runs(uri)`: (client, the one sweep's parent, its children by start time) in the store at `uri`."""

    def runs(uri: str) -> tuple:
        from mlflow.tracking import MlflowClient

        from tlsweep.tracking.names import Kind, Tag

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tlsweep").experiment_id
        (parent,) = client.search_runs([experiment], f"tags.`{Tag.KIND}` = '{Kind.SWEEP}'")
        children = client.search_runs([experiment], f"tags.`{Tag.PARENT}` = '{parent.info.run_id}'",
                                      order_by=["attributes.start_time ASC"])
        return client, parent, children

    return runs


@pytest.fixture(scope="session")
def extract():
    """`extract(dataset, cache_root, layer="block5_pool", classes=(4, 5, 6), sweep_layers=(), image_set="train")`:
    features of a random-init (seed 0) VGG16 at 32x32, batches of 8, through the cache at cache_root."""
    from tlsweep.stages.features import extraction

    def extracted(dataset, cache_root, layer="block5_pool", classes=(4, 5, 6), sweep_layers=(), image_set="train"):
        return extraction.extract_features(
            dataset=dataset, image_set=image_set, layer=layer, classes=list(classes), backbone="vgg16",
            weights=None, seed=0, input_size=32, batch_size=8, cache_root=cache_root, sweep_layers=sweep_layers,
        )

    return extracted


@pytest.fixture(scope="session")
def compose():
    """Compose tlsweep's config in-process, as `tlsweep OVERRIDES` would (presets: `preset=NAME`)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from tlsweep.config import CONF_DIR, register_configs

    register_configs()

    def composed(overrides=(), *, name="config", config_dir=CONF_DIR, hydra=False):
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)

    return composed


# A folder of one's own images, as data=folder reads it
FOLDER_COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}


def save_image(rgb: np.ndarray, path: Path, mode: str = "RGB") -> Path:
    """Save uint8 RGB pixels as `mode` (RGB, L, P, RGBA or I;16 for 16-bit grayscale) in the format of the suffix."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(128)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _write_image_folder(root: Path, *, classes=tuple(FOLDER_COLOURS), per_class: int = 6,
                        kinds=(("png", "RGB"),), sizes=((32, 32),), seed: int = 0) -> Path:
    """Write root/<class>/<i>.<ext> images: class c's pixels are FOLDER_COLOURS[c] (for another name, a colour of
    its own) plus noise; image i is saved as kinds[i % len(kinds)] (extension, mode) at sizes[i % len(sizes)]
    (width, height). Returns root."""
    rng = np.random.default_rng(seed)
    for number, name in enumerate(classes):
        colour = FOLDER_COLOURS.get(name, ((number * 97) % 256, (number * 57 + 80) % 256, (255 - number * 73) % 256))
        for i in range(per_class):
            (ext, mode), (width, height) = kinds[i % len(kinds)], sizes[i % len(sizes)]
            noise = rng.integers(-20, 21, size=(height, width, 3))
            rgb = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            save_image(rgb, root / name / f"{i:02d}.{ext}", mode)
    return root


@pytest.fixture(scope="session")
def image_folder_writer():
    """`image_folder_writer(root, classes=("cat", "dog", "eel"), per_class=6, kinds=(("png", "RGB"),),
    sizes=((32, 32),), seed=0)`: writes root/<class>/NN.<ext> images with one mean colour per class (see
    FOLDER_COLOURS in conftest) and returns root; each image's (extension, mode) and (width, height) cycle
    through kinds and sizes."""
    return _write_image_folder


@pytest.fixture(scope="session")
def image_saver():
    """`image_saver(rgb, path, mode="RGB")`: saves uint8 RGB pixels as mode (RGB, L, P, RGBA, I;16) in the format
    the suffix names; returns the path."""
    return save_image


@pytest.fixture(scope="session")
def mlflow_server():
    """`with mlflow_server(folder, port, backend_store_uri, *options, env=None) as url:` a real `mlflow server`
    on 127.0.0.1:port serving artifacts from folder/mlartifacts, healthy on entry; on exit its whole process
    group (the workers it forks) is stopped. `options` go before the rest (e.g. `--app-name basic-auth`)."""
    import contextlib
    import signal
    import time
    import urllib.request

    @contextlib.contextmanager
    def serve(folder: Path, port: int, backend_store_uri: str, *options: str, env: dict | None = None,
              start_timeout_s: float = 180):
        log = folder / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", *options, "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1", "--backend-store-uri", backend_store_uri,
                   "--serve-artifacts", "--artifacts-destination", str(folder / "mlartifacts")]
        with open(log, "w") as out:  # its own process group, so the stop reaches the workers it forks
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if process.poll() is not None:
                    pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not healthy after {start_timeout_s}s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):  # whatever of the group is left: workers, consumers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    return serve


# Keras-Hub backbones as local preset folders: tiny random-init transformers, as `model=hub model.preset=` reads them
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _write_hub_presets(root: Path, *, image_size: int = 32) -> dict[str, Path]:
    """root/tiny_vit (ViT, 3 blocks, patch 8), root/tiny_dinov2 (DINOv2, 2 blocks, 2 register tokens) and
    root/tiny_clip (CLIP: a 2-block image encoder beside a text encoder): width 32, random init (seed 0), each with
    its ImageConverter, saved with Keras-Hub's own save_to_preset. Returns {name: folder}."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    shape, size = (image_size, image_size, 3), (image_size, image_size)
    folders = {name: root / name for name in ("tiny_vit", "tiny_dinov2", "tiny_clip")}
    vit = keras_hub.models.ViTBackbone(image_shape=shape, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                                       mlp_dim=64)
    converters = {"tiny_vit": keras_hub.layers.ViTImageConverter(image_size=size, scale=1 / 127.5, offset=-1.0)}
    dinov2 = keras_hub.models.DINOV2Backbone(patch_size=8, num_layers=2, hidden_dim=32, num_heads=2,
                                             intermediate_dim=64, image_shape=shape, position_embedding_shape=shape,
                                             num_register_tokens=2)
    converters["tiny_dinov2"] = keras_hub.layers.DINOV2ImageConverter(
        image_size=size, scale=[1 / (255 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=32, num_layers=2, num_heads=2,
                                                intermediate_dim=64, image_shape=shape)
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1,
                                            num_heads=2, intermediate_dim=64, max_sequence_length=8)
    clip = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=16)
    converters["tiny_clip"] = keras_hub.layers.CLIPImageConverter(image_size=size, scale=1 / 255.0)
    for name, backbone in (("tiny_vit", vit), ("tiny_dinov2", dinov2), ("tiny_clip", clip)):
        backbone.save_to_preset(str(folders[name]))
        converters[name].save_to_preset(str(folders[name]))
    return folders


@pytest.fixture(scope="session")
def hub_presets(tmp_path_factory) -> dict[str, Path]:
    """{"tiny_vit" | "tiny_dinov2" | "tiny_clip": preset folder}, written once for the session (skipped without
    Keras-Hub, the `hub` extra)."""
    pytest.importorskip("keras_hub")
    return _write_hub_presets(tmp_path_factory.mktemp("presets"))
