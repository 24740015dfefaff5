"""What one call stores in a run: params, metrics, tags, files, datasets and models (`Payload`).

`record.JobRecord.payload` and the sweep's summary build payloads; `store.Store.write` stores them. The
folder sink, `write_files`, writes the same files where `python -m tlsweep.compare --out` asks. No mlflow here.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # annotations only, so that importing `store` (the schema child in `prepared`) loads no stage
    from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline

Files = Mapping[str, Union[str, bytes]]  # artifact path -> text, or PNG bytes


def write_files(folder: Path, files: Files) -> None:
    """Write `files` under `folder`; the folder sink of anything that is also logged to MLflow."""
    for path, content in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def csv_text(header: Sequence[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass(frozen=True)
class DatasetRecord:
    """One split's data as a run input (MLflow's Dataset column): which images, from where, in what context."""

    name: str
    digest: str  # the data fingerprint
    source: str  # a URL, a local path, or the Python call that loads it
    source_type: str  # MLflow's: "http", "local" or "code"
    context: str  # train, val or test
    profile: Mapping[str, Any]
    schema: Optional[str] = None


def requirements(*distributions: str) -> list[str]:
    """`name==version` of what is installed here: a model's requirements, without MLflow's slow inference."""
    found = []
    for name in distributions:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:  # e.g. tensorflow under KERAS_BACKEND=jax
            continue
    return found


@dataclass(frozen=True)
class ProbeModel:
    """What the `probe` model is saved from: the fitted probe, and how its features were made."""

    estimator: Any  # sklearn Pipeline: normalisation, then the classifier
    example_rows: Any  # float32 feature rows: the input example
    spec: PipelineSpec
    example_images: Any  # raw uint8 images of the data set, for the pipeline's input example
    requirements: tuple = ("scikit-learn", "numpy", "scipy")  # the distributions it loads with


@dataclass(frozen=True)
class PipelineModel:
    """What a `model` is saved from: the whole pipeline, raw images to class names."""

    pipeline: ProbePipeline
    example_images: Any

    @property
    def requirements(self) -> tuple:
        """The distributions it loads with: Keras and the backend behind it here, and the probe's."""
        import keras

        hub = ("keras-hub",) if self.pipeline.encoder is not None else ()  # a Keras-Hub preset's image encoder
        return (keras.backend.backend(), "keras", *hub, "scikit-learn", "numpy", "scipy", "pillow", "joblib",
                "filelock", "tqdm")


@dataclass(frozen=True)
class Payload:
    """What one call stores in a run."""

    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    series: Mapping[str, Sequence[float]] = field(default_factory=dict)  # metrics logged at steps 0, 1, ...
    tags: Mapping[str, str] = field(default_factory=dict)
    files: Files = field(default_factory=dict)
    inputs: Sequence[DatasetRecord] = ()
    models: Mapping[str, Union[ProbeModel, PipelineModel]] = field(default_factory=dict)  # logged model name ->
