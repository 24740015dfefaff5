"""One MLflow tracking store, reached through one client bound to its URI.

Nothing here sets MLflow's process-wide tracking URI or active run: a store is an object, so a process (or a
test) can hold several. A server is probed before use; a new SQLite file's schema is made under a file lock.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow.entities import (Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric, Param,
                              RunStatus, RunTag)
from mlflow.artifacts import download_artifacts
from mlflow.environment_variables import MLFLOW_TRACKING_USERNAME
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from tlsweep.errors import ConfigError
from tlsweep.redact import redact, redact_mapping
from tlsweep.tracking import connection, prepared
from tlsweep.tracking.names import SPLITS, Metric as MetricName, Status
from tlsweep.tracking.payload import DatasetRecord, Payload, PipelineModel, ProbeModel, requirements, write_files
from tlsweep.tracking.stored import StoredRun

SEARCH_LIMIT, DATASET_ATTEMPTS = 50000, 3
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's input tag: train, val or test
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))
if (FINISHED, FAILED, KILLED) != (Status.FINISHED, Status.FAILED, Status.KILLED):  # names.Status spells them
    raise ImportError(f"mlflow's run statuses {FINISHED, FAILED, KILLED} are not the ones tlsweep.tracking.names declares")


class Store:
    """A tracking store: experiments, runs, and the payloads written into them."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    @property
    def display_uri(self) -> str:
        """The URI as logs and error lines show it: credentials masked."""
        return redact(self.uri)

    @classmethod
    def open(cls, uri: str) -> "Store":
        """A store to read and write; a server is checked first, and a SQLite schema is created once."""
        if uri.startswith(("http://", "https://")):
            connection.probe_server(uri)
        try:
            with connection.sqlite_lock(uri):  # the first process creates the schema; the others wait instead of racing it
                prepared.adopt(uri)  # a new store's schema, made beside the backend's start
                store = cls(uri)
                with store._refusals():  # a server with authentication answers this one 401 without credentials
                    store.client.search_experiments(max_results=1)
        except (MlflowException, OSError) as err:  # OSError: the SQLite file's folder cannot be made
            raise ConfigError(f"tracking.uri={redact(uri)!r} cannot be used: {_reason(err)}") from None
        return store

    def experiment_id(self, name: str, *, create: bool = False) -> Optional[str]:
        """The id of experiment `name`; with `create`, made on first use."""
        found = self.client.get_experiment_by_name(name)
        if found is not None or not create:
            return found.experiment_id if found else None
        try:
            with self._refusals(experiment=name):  # MLflow's UI opens this kind on its training runs, not GenAI
                return self.client.create_experiment(name, tags={EXPERIMENT_KIND: TRAINING_KIND})
        except MlflowException:  # another machine created it a moment before (a server has no lock)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def experiment_name(self, experiment_id: str) -> str:
        return self.client.get_experiment(experiment_id).name

    def experiment_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.experiment_id

    def search(self, experiment_ids: Sequence[str], filter_string: str = "") -> list[StoredRun]:
        found = self.client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=SEARCH_LIMIT)
        return [_stored(run) for run in found]

    def get(self, run_id: str) -> StoredRun:
        return _stored(self.client.get_run(run_id))

    def find(self, experiment_ids: Sequence[str], filter_string: str) -> list[StoredRun]:
        """`search` for a filter a user typed: a malformed one is a ConfigError that quotes it."""
        try:
            return self.search(experiment_ids, filter_string)
        except MlflowException as err:
            raise ConfigError(f"cannot search runs with {filter_string!r}: {_reason(err)}") from None

    def create_run(self, experiment_id: str, *, run_name: str, tags: dict[str, str],
                   start_time: Optional[int] = None) -> str:
        with self._refusals(experiment_id=experiment_id):
            run = self.client.create_run(experiment_id, start_time=start_time, tags=redact_mapping(tags),
                                         run_name=redact(run_name))
        return run.info.run_id

    def write(self, run_id: str, payload: Payload, *, under: Optional[str] = None) -> None:
        """Store params, metrics and tags in one batch, the files as artifacts (below `under`), then the
        datasets as the run's inputs and the models as logged models linked to it.

        A run's models are registered first, so its split accuracies are logged linked to its first model
        and to that split's dataset: the model's page shows its metrics and the datasets they were measured on.
        """
        now = int(time.time() * 1000)
        models = {}
        with self._refusals(run_id=run_id):
            for name in payload.models:
                models[name] = self.client.create_logged_model(self.experiment_of(run_id), name=name,
                                                               source_run_id=run_id).model_id
        linked = _linked_metrics(next(iter(models.values()), None), payload.inputs)
        metrics = [Metric(key, float(value), now, 0, **linked.get(key, {})) for key, value in payload.metrics.items()]
        metrics += [Metric(key, float(value), now, step) for key, values in payload.series.items()
                    for step, value in enumerate(values)]
        if payload.params or metrics or payload.tags:
            with self._refusals(run_id=run_id):
                self.client.log_batch(
                    run_id,
                    metrics=metrics,
                    params=[Param(key, str(value)) for key, value in redact_mapping(payload.params).items()],
                    tags=[RunTag(key, str(value)) for key, value in redact_mapping(payload.tags).items()],
                )
        if payload.files:
            with tempfile.TemporaryDirectory(prefix="tlsweep-artifacts-") as folder:
                write_files(Path(folder), payload.files)
                self.client.log_artifacts(run_id, folder, under)
        if payload.inputs:
            self.log_datasets(run_id, payload.inputs)
        for name, model in payload.models.items():
            self._upload_model(run_id, models[name], name, model)

    def _upload_model(self, run_id: str, model_id: str, name: str, model: ProbeModel | PipelineModel) -> None:
        """Save a registered model's files and upload them (runs:/<run id>/<name>): READY once uploaded, FAILED
        if saving or uploading fails (and the error goes on)."""
        try:
            with tempfile.TemporaryDirectory(prefix="tlsweep-model-") as folder:
                save_model(Path(folder) / name, model)
                self.client.log_model_artifacts(model_id, str(Path(folder) / name))
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        except BaseException:
            self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)

    def datasets_of(self, run_id: str) -> list[DatasetRecord]:
        """The datasets a run logged as its inputs, as `payload.DatasetRecord`s."""
        found = []
        for item in self.client.get_run(run_id).inputs.dataset_inputs:
            context = next((tag.value for tag in item.tags if tag.key == DATASET_CONTEXT), "")
            dataset = item.dataset
            found.append(DatasetRecord(name=dataset.name, digest=dataset.digest,
                                       source=json.loads(dataset.source).get("uri", dataset.source),
                                       source_type=dataset.source_type, context=context,
                                       profile=json.loads(dataset.profile or "{}"), schema=dataset.schema))
        return found

    def has_model(self, run_id: str, name: str) -> bool:
        """Whether run `run_id` logged a model called `name`."""
        found = self.client.search_logged_models([self.experiment_of(run_id)], filter_string=f"name = '{name}'")
        return any(model.source_run_id == run_id for model in found)

    def load_probe(self, run_id: str, name: str) -> tuple:
        """(the fitted probe, its PipelineSpec, its example images) of the `probe` model `name` of run `run_id`.
        Loading unpickles the probe: only for runs of stores whose writers are trusted."""
        from tlsweep.stages.probe.pipeline import PipelineSpec  # here, not at import: see `prepared`'s child

        with tempfile.TemporaryDirectory(prefix="tlsweep-probe-") as folder:
            source = Path(download_artifacts(artifact_uri=f"runs:/{run_id}/{name}", dst_path=folder,
                                             tracking_uri=self.uri))
            extra = source / "extra_files"
            return (mlflow.sklearn.load_model(str(source)),
                    PipelineSpec.from_dict(json.loads((extra / SPEC_FILE).read_text())),
                    np.load(extra / EXAMPLE_FILE))

    def log_datasets(self, run_id: str, datasets: Sequence) -> None:
        """Each `payload.DatasetRecord` as an input of the run (MLflow's Dataset column), with its context."""
        inputs = [DatasetInput(Dataset(name=item.name, digest=item.digest, source_type=item.source_type,
                                       source=json.dumps({"uri": item.source}), schema=item.schema,
                                       profile=json.dumps(item.profile)),
                               tags=[InputTag(DATASET_CONTEXT, item.context)]) for item in datasets]
        for attempt in range(DATASET_ATTEMPTS):
            try:
                with self._refusals(run_id=run_id):
                    self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException:
                # another process logged the same dataset (name, digest) into the experiment between the
                # store's check and its insert (a unique-key race, seen on PostgreSQL): the retry reuses it
                if attempt == DATASET_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        with self._refusals(run_id=run_id):
            self.client.set_tag(run_id, key, redact_mapping({key: value})[key])

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        with self._refusals(experiment_id=experiment_id):
            self.client.set_experiment_tag(experiment_id, key, redact_mapping({key: value})[key])

    def end(self, run_id: str, status: str, *, end_time: Optional[datetime] = None) -> None:
        """Close a run: FINISHED, FAILED or KILLED; `end_time` when it ended before now."""
        with self._refusals(run_id=run_id):
            self.client.set_terminated(run_id, status, None if end_time is None else int(end_time.timestamp() * 1000))

    @contextmanager
    def _refusals(self, *, experiment: Optional[str] = None, experiment_id: Optional[str] = None,
                  run_id: Optional[str] = None):
        """A server that refuses the credentials (401) or a write (403) becomes one line saying what to do."""
        try:
            yield
        except MlflowException as err:
            status = err.get_http_status_code()
            if status == 401:
                user = MLFLOW_TRACKING_USERNAME.get()
                who = f"the credentials of user {user!r}" if user else "a request without credentials"
                raise ConfigError(
                    f"tracking server {self.display_uri} refused {who} (401 Unauthorized); set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD to a user of that server and its password"
                ) from None
            if status == 403:
                where = experiment or self._experiment_name_or_id(experiment_id, run_id)
                raise ConfigError(
                    f"tracking server {self.display_uri} refused user {MLFLOW_TRACKING_USERNAME.get()!r} permission to "
                    f"write to experiment {where!r} (403 Permission denied); ask its admin for EDIT permission on "
                    "it, or set tracking.experiment to an experiment you may write to"
                ) from None
            raise

    def _experiment_name_or_id(self, experiment_id: Optional[str], run_id: Optional[str]) -> Optional[str]:
        try:
            return self.experiment_name(experiment_id or self.experiment_of(run_id))
        except MlflowException:
            return experiment_id


def _linked_metrics(model_id: Optional[str], inputs) -> dict[str, dict]:
    """{accuracy metric of a split (a job's `val_accuracy`, a parent's `pipeline/val_accuracy`): the model and
    that split's dataset it is linked to}."""
    if model_id is None:
        return {}
    return {key: {"model_id": model_id, "dataset_name": item.name, "dataset_digest": item.digest[:36]}
            for item in inputs if item.context in SPLITS
            for key in (MetricName.accuracy(item.context), MetricName.pipeline(item.context))}


def _stored(run) -> StoredRun:
    return StoredRun(run_id=run.info.run_id, status=run.info.status, start_time=run.info.start_time,
                     params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags))


def _reason(err: BaseException) -> str:
    return redact(str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__)


SPEC_FILE, EXAMPLE_FILE = "pipeline.json", "example_images.npy"  # beside a probe's MLmodel
PACKAGE = Path(__file__).resolve().parents[1]  # tlsweep's code, which a logged model carries (code_paths)


def save_model(target: Path, model: ProbeModel | PipelineModel) -> None:
    """A `ProbeModel` in MLflow's scikit-learn flavour, with what rebuilds its pipeline beside it; a
    `PipelineModel` as a pyfunc model from code (`pyfunc_model.py`, not a pickled object)."""
    with tempfile.TemporaryDirectory(prefix="tlsweep-model-") as folder:
        if isinstance(model, ProbeModel):
            rows = model.example_rows
            signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, rows.shape[1]))]),
                                       outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
            extra = [Path(folder) / SPEC_FILE, Path(folder) / EXAMPLE_FILE]
            extra[0].write_text(model.spec.to_json())
            np.save(extra[1], model.example_images)
            probe, skops = type(model.estimator[-1]), "skops_trusted_types"
            ours = {"code_paths": [str(PACKAGE)]} if probe.__module__.startswith("tlsweep") else {}  # LbfgsSVC's
            if ours and skops in inspect.signature(mlflow.sklearn.save_model).parameters:  # MLflow's skops format
                ours[skops] = [f"{probe.__module__}.{probe.__qualname__}"]  # loads only the types it is told to trust
            mlflow.sklearn.save_model(model.estimator, str(target), signature=signature, input_example=rows,
                                      pip_requirements=requirements(*model.requirements),
                                      extra_files=[str(path) for path in extra], **ours)
            return
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                                   outputs=Schema([ColSpec("string")]))
        saved = model.pipeline.save(Path(folder) / "pipeline")
        mlflow.pyfunc.save_model(str(target), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={"pipeline": str(saved)}, signature=signature,
                                 input_example=model.example_images, code_paths=[str(PACKAGE)],
                                 pip_requirements=requirements(*model.requirements))
