"""The probe and the whole pipeline as MLflow models: what a job and a sweep's parent log at name `probe` and
`model`.

- `probe`: scikit-learn flavour: the fitted normalisation + classifier on the cut's pooled features, with a
  signature and two feature rows as input example. It also carries `pipeline.json` (how its features were
  made) and two raw training-size images, so a sweep's parent can rebuild the whole pipeline from it.
- `model`: pyfunc: raw uint8 images (N x H x W x 3, any size) in, class names out (`ProbePipeline`, served
  by `pyfunc_model.py`). It carries tlsweep's own code, so it loads where tlsweep is not installed.

Both are written to a folder here and uploaded by `Store.log_model`, which links them to their run, so
`runs:/<run id>/model` resolves to them.
"""


import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import tlsweep
from tlsweep.stages.probe.pipeline import PipelineSpec, ProbePipeline
from tlsweep.tracking import payload

PROBE, PIPELINE = "probe", "model"  # logged model names: runs:/<run id>/probe, runs:/<run id>/model
SPEC_FILE, EXAMPLE_FILE = "pipeline.json", "example_images.npy"  # beside the probe's MLmodel


def _pinned(*distributions: str) -> list[str]:
    """`name==version` of what is installed here: the model's requirements, without MLflow's slow inference."""
    found = []
    for name in distributions:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:  # e.g. tensorflow under KERAS_BACKEND=jax
            continue
    return found


def _backend() -> str:
    """The distribution behind Keras here: tensorflow, jax or torch."""
    import keras

    return keras.backend.backend()


def save_probe(target: Path, *, estimator, example_rows: np.ndarray, spec: PipelineSpec,
               example_images: np.ndarray) -> None:
    """The fitted probe in MLflow's scikit-learn flavour, with what rebuilds its pipeline beside it."""
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, example_rows.shape[1]))]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
    with tempfile.TemporaryDirectory(prefix="tlsweep-probe-") as folder:
        extra = [Path(folder) / SPEC_FILE, Path(folder) / EXAMPLE_FILE]
        extra[0].write_text(spec.to_json())
        np.save(extra[1], example_images)
        mlflow.sklearn.save_model(estimator, str(target), signature=signature, input_example=example_rows,
                                  pip_requirements=_pinned("scikit-learn", "numpy", "scipy"),
                                  code_paths=[str(Path(tlsweep.__file__).parent)]  # LbfgsSVC is tlsweep's
                                  if type(estimator[-1]).__module__.startswith("tlsweep") else None,
                                  extra_files=[str(path) for path in extra])


def load_probe(source: Path) -> tuple:
    """(the fitted probe, its PipelineSpec, its example images) from a downloaded `probe` model."""
    extra = source / "extra_files"
    return (mlflow.sklearn.load_model(str(source)),
            PipelineSpec.from_dict(json.loads((extra / SPEC_FILE).read_text())), np.load(extra / EXAMPLE_FILE))


def save_pipeline(target: Path, *, pipeline: ProbePipeline, example_images: np.ndarray) -> None:
    """The whole pipeline as a pyfunc model: raw uint8 images of any size in, class names out."""
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([ColSpec("string")]))
    with tempfile.TemporaryDirectory(prefix="tlsweep-pipeline-") as folder:
        saved = pipeline.save(Path(folder) / "pipeline")
        mlflow.pyfunc.save_model(  # a model from code: pyfunc_model.py, not a pickled object
            str(target), python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts={"pipeline": str(saved)}, signature=signature,
            input_example=example_images, code_paths=[str(Path(tlsweep.__file__).parent)],
            pip_requirements=_pinned(_backend(), "keras", "scikit-learn", "numpy", "scipy", "pillow", "joblib",
                                     "filelock", "tqdm"),
        )


def save(target: Path, *, model) -> None:
    """Save a `payload.ProbeModel` or `payload.PipelineModel` as its MLflow model."""
    if isinstance(model, payload.ProbeModel):
        save_probe(target, estimator=model.estimator, example_rows=model.example_rows, spec=model.spec,
                   example_images=model.example_images)
    else:
        save_pipeline(target, pipeline=model.pipeline, example_images=model.example_images)
