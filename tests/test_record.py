"""The run record: what a job writes is what summary, compare and resume read back, under the same names."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tlsweep import provenance
from tlsweep.config import TlsweepConfig
from tlsweep.job import job_record
from tlsweep.stages.analysis import report
from tlsweep.sweep import summary
from tlsweep.tracking import names, stored
from tlsweep.tracking.names import Artifact, Param, Status, Tag
from tlsweep.tracking.payload import Payload
from tlsweep.tracking.record import JobResult
from tlsweep.tracking.stored import COLUMNS, RecordError, RunRecord, StoredRun


@pytest.fixture(scope="module")
def job_result() -> JobResult:
    """A small real result: a fitted classifier's reports on three splits of two classes."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(2, 1, (20, 3))]).astype(np.float32)
    y = np.repeat([4, 5], 20)
    estimator = LogisticRegression().fit(X, y)
    splits = report.classification_reports(estimator=estimator, splits={s: (X, y) for s in names.SPLITS},
                                           labels=[4, 5], names=["deer", "dog"])
    return JobResult(splits=splits, class_names=["deer", "dog"], feature_dim=3, n_train=40, n_val=40, n_test=40,
                     layer_index=14, data_fingerprint="d" * 16, weights_fingerprint="random-seed0",
                     extraction_seconds=1.5, cnn_forward_images=0, fit_seconds=0.1, n_iter=7, converged=True,
                     fit_warnings=[], total_seconds=2.0, n_fit=40, selected_C=0.5, split_digest="s" * 16,
                     labels=[4, 5], split_ids={s: [f"{s}/{i}" for i in range(40)] for s in names.SPLITS},
                     layer_depth=0.75, cache_folder="/cache/vgg16-0123")


def _stored(payload: Payload, status: str = Status.FINISHED) -> StoredRun:
    """The run as the store hands it back: params and tags as strings."""
    return StoredRun(run_id="r1", status=status, start_time=0,
                     params={key: str(value) for key, value in payload.params.items()},
                     metrics={key: float(value) for key, value in payload.metrics.items()},
                     tags={key: str(value) for key, value in payload.tags.items()})


def test_what_a_job_writes_reads_back_into_every_comparison_column(compose, job_result):
    cfg = compose(["model.weights=null", "layer=block4_pool", "classifier.C=0.5", "data.classes=[4,5]"])
    started = job_record(cfg)  # as a job runs it: with the tags of the machine it runs on
    job = dataclasses.replace(started, tags={**provenance.machine_tags(None), **started.tags}, result=job_result)
    parsed = RunRecord.parse(_stored(job.payload()))
    assert (parsed.model, parsed.layer, parsed.C, parsed.classes) == ("vgg16", "block4_pool", "0.5", "deer,dog")
    assert parsed.test_accuracy == job_result.accuracy("test") and parsed.layer_index == 14
    assert parsed.config_hash == job.tags[Tag.CONFIG_HASH] and parsed.feature_dim == "3"
    assert parsed.layer_depth == 0.75 and parsed.cache == "/cache/vgg16-0123" and parsed.data_classes == "[4, 5]"
    rows = job.payload().files[Artifact.predictions("test")].splitlines()
    assert rows[0] == "id,true,predicted" and len(rows) == 41 and rows[1].startswith("test/0,deer,")
    table = summary.comparison_table([parsed])
    assert list(summary.public(table).columns) == list(COLUMNS)
    empty = [column for column in COLUMNS if column != "error" and table[column].isna().any()]
    assert empty == []  # every column the job fills comes back filled


def test_a_failed_job_carries_its_config_error_and_traceback(compose):
    cfg = compose(["classifier.C=-1"])
    try:
        raise ValueError("classifier.C should be a positive number; received classifier.C=-1.0")
    except ValueError as err:
        payload = dataclasses.replace(job_record(cfg), error=err).payload()
    assert payload.tags[Tag.ERROR].startswith("ValueError: classifier.C should be")
    assert "Traceback" in payload.files[Artifact.ERROR] and Artifact.CONFIG in payload.files
    assert RunRecord.parse(_stored(payload, Status.FAILED)).error == payload.tags[Tag.ERROR]


@pytest.mark.parametrize("key", Param.CONFIG_KEYS)
def test_a_run_without_a_config_key_is_an_error_not_an_empty_column(compose, job_result, key):
    payload = dataclasses.replace(job_record(compose()), result=job_result).payload()
    renamed = dataclasses.replace(payload, params={k: v for k, v in payload.params.items() if k != key} |
                                  {f"{key}_renamed": payload.params[key]})
    with pytest.raises(RecordError, match=key):
        RunRecord.parse(_stored(renamed))


@dataclasses.dataclass
class _RenamedClassifier:
    name: str = "linear_svc"
    C_value: float = 0.1  # was `C`


@dataclasses.dataclass
class _RenamedConfig(TlsweepConfig):
    classifier: _RenamedClassifier = dataclasses.field(default_factory=_RenamedClassifier)


def test_renaming_a_config_key_in_the_schema_is_caught_on_import():
    assert stored.config_keys_missing_from(TlsweepConfig) == []
    assert stored.config_keys_missing_from(_RenamedConfig) == ["classifier.C"]
