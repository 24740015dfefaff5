"""The code of a logged pipeline model (MLflow's models from code): `mlflow.pyfunc.load_model` runs this file.

It is saved into each `model` by `tracking.store.save_model`, beside tlsweep's code; nothing imports it.
"""

from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import numpy as np


class PipelinePyfunc(mlflow.pyfunc.PythonModel):
    """A saved `ProbePipeline` (the model's `pipeline` artifact): raw uint8 images in, class names out."""

    def load_context(self, context):
        from tlsweep import console
        from tlsweep.stages.probe.pipeline import ProbePipeline

        console.start_backend_quietly()
        self.pipeline = ProbePipeline.load(Path(context.artifacts["pipeline"]))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.pipeline.predict(np.asarray(model_input))


mlflow.models.set_model(PipelinePyfunc())
