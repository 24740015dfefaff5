"""An answer you can trust: one identity per configuration, so repeats are only ever seeds; exactly one best;
failed runs listed apart; odd class names; few-shot probes fitted on k images; heartbeats; secrets masked.

The summary is checked here on records as the store returns them; the sweeps that reproduce each fault end
to end are in test_trust_cli.py.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tlsweep import identity
from tlsweep.job import JobSpec, run_name
from tlsweep.redact import redact, redact_mapping
from tlsweep.sweep import depth, figures, summary
from tlsweep.tracking import heartbeat, runs
from tlsweep.tracking.names import Artifact, Status, Tag, class_keys
from tlsweep.tracking.store import Store
from tlsweep.tracking.stored import RunRecord, StoredRun

BASE = {"model.name": "vgg16", "model.weights": "imagenet", "layer": "block4_pool", "data.name": "cifar10",
        "data.path": "None", "data.classes": "[4, 5]", "data.val_fraction": "0.2", "data.image_size": "None",
        "classifier.name": "linear_svc", "classifier.C": "0.1", "classifier.loss": "squared_hinge",
        "classifier.max_iter": "1000", "classifier.tol": "0.0001", "classifier.dual": "auto",
        "features.pooling": "flatten", "features.grid_size": "2", "features.normalize": "none", "seed": "0",
        "model.batch_size": "256", "tracking.machine": "None", "feature_dim": "2048"}
TAGS = {Tag.CLASSES: "deer,dog", Tag.DATA_FINGERPRINT: "d" * 16, Tag.WEIGHTS_FINGERPRINT: "imagenet",
        Tag.CONFIG_HASH: "h"}


def _run(run_id: str, val: float, *, test: float = 0.5, layer_index: int = 14, status: str = Status.FINISHED,
         tags: dict | None = None, **params: str) -> RunRecord:
    """A job run as the store hands it back, differing from BASE in `params` (dots spelt as `__`)."""
    changed = {key.replace("__", "."): value for key, value in params.items()}
    metrics = {"train_accuracy": 1.0, "val_accuracy": val, "test_accuracy": test, "layer_index": layer_index}
    return RunRecord.parse(StoredRun(run_id, status, 0, {**BASE, **changed}, metrics, {**TAGS, **(tags or {})}))


# the settings the summary once left out of a row's identity, so runs that differ in them were averaged as seeds
DIFFERENT = {
    "data.image_size": ({"data__image_size": "40"}, {"data__image_size": "48"}),
    "model.weights": ({"model__weights": "imagenet"}, {"model__weights": "/w/mine.h5"}),
    "features.grid_size": ({"features__pooling": "grid", "features__grid_size": "2"},
                           {"features__pooling": "grid", "features__grid_size": "3"}),
    "classifier.loss": ({"classifier__loss": "squared_hinge"}, {"classifier__loss": "hinge"}),
    "classifier.tol": ({"classifier__tol": "0.0001"}, {"classifier__tol": "0.01"}),
    "classifier.max_iter": ({"classifier__max_iter": "1000"}, {"classifier__max_iter": "50"}),
    "data.val_fraction": ({"data__val_fraction": "0.2"}, {"data__val_fraction": "0.3"}),
}


@pytest.mark.parametrize("key", list(DIFFERENT))
def test_runs_that_differ_in_any_setting_are_two_rows_never_one_averaged_as_seeds(key):
    first, second = DIFFERENT[key]
    tags = {"model.weights": ({}, {Tag.WEIGHTS_FINGERPRINT: "file-0123456789abcdef"})}.get(key, ({}, {}))
    records = [_run("a", 0.60, tags=tags[0], **first), _run("b", 0.90, tags=tags[1], **second)]
    view = summary.configurations(summary.comparison_table(records))
    assert len(view) == 2 and list(view["seeds"]) == [1, 1]
    assert sorted(view["val_mean"]) == [0.60, 0.90]  # never their mean, 0.75
    rows, best = summary.selection(summary.comparison_table(records))
    assert best["run_id"] == "b" and best["val_mean"] == 0.90  # the row shown is the run served


def test_the_data_set_itself_is_part_of_the_identity_by_content():
    same_content = [_run("a", 0.6, data__path="/x/cifar.tar.gz"), _run("b", 0.8, data__path="/y/cifar.tar.gz")]
    view = summary.configurations(summary.comparison_table(same_content))
    assert len(view) == 1  # two paths to the same files (equal fingerprints): one configuration
    other_content = [_run("a", 0.6), _run("b", 0.8, tags={Tag.DATA_FINGERPRINT: "e" * 16})]
    assert len(summary.configurations(summary.comparison_table(other_content))) == 2


def test_runs_that_differ_only_in_their_seed_are_repeats_of_one_row():
    records = [_run("a", 0.60, seed="0"), _run("b", 0.70, seed="1"), _run("c", 0.80, seed="2")]
    view = summary.configurations(summary.comparison_table(records))
    assert len(view) == 1 and view["seeds"].item() == 3 and view["val_mean"].item() == pytest.approx(0.70)
    assert view["run_id"].item() == "c"  # the repeat with the best val accuracy


def test_random_weights_of_other_seeds_are_repeats_not_other_weights():
    records = [_run("a", 0.6, seed="0", model__weights="None", tags={Tag.WEIGHTS_FINGERPRINT: "random-seed0"}),
               _run("b", 0.8, seed="1", model__weights="None", tags={Tag.WEIGHTS_FINGERPRINT: "random-seed1"})]
    assert summary.configurations(summary.comparison_table(records))["seeds"].item() == 2


def test_each_setting_that_varies_gets_a_column_in_every_table():
    records = [_run("a", 0.6, data__image_size="40"), _run("b", 0.9, data__image_size="48")]
    table = summary.comparison_table(records)
    assert "data.image_size" in summary.varied(table)
    assert "data.image_size" in summary.public(table).columns
    assert "data.image_size" in summary.terminal_table(table).splitlines()[0]
    rows, best = summary.selection(table)
    assert "data.image_size=48" in summary.selection_markdown(rows, best, summary.varied(table))
    # a setting that does not vary is no column
    assert "classifier.tol" not in summary.public(table).columns


HUNDRED = ",".join(f"class_{i:03d}" for i in range(100))
SAME_SHORT = ",".join(f"class_{i:03d}" for i in (*range(5), *range(50, 100)))  # shortened, it reads as HUNDRED


def _two_cuts(names: str) -> list[RunRecord]:
    """block4_pool and block5_pool of one task, each with a test recall per class."""
    recall = {name: 0.5 for name in names.split(",")}
    return [dataclasses.replace(_run("a", 0.6, tags={Tag.CLASSES: names}), test_recall=recall),
            dataclasses.replace(_run("b", 0.7, layer="block5_pool", layer_index=18, tags={Tag.CLASSES: names}),
                                test_recall=recall)]


def test_a_long_class_list_is_shortened_in_the_terminal_and_run_names_and_kept_whole_in_the_files():
    names = HUNDRED
    table = summary.comparison_table([_run("a", 0.6, tags={Tag.CLASSES: names})])
    terminal = summary.terminal_table(table)
    assert ",…,class_099" in terminal and "class_050" not in terminal
    assert max(len(line) for line in terminal.splitlines()) < 200
    assert summary.public(table)["classes"].tolist() == [names]  # comparison.csv and .md
    rows, best = summary.selection(table)
    assert names in summary.selection_markdown(rows, best)
    two_cuts = _two_cuts(names)
    files = summary.summary_files(summary.comparison_table(two_cuts), two_cuts)
    shortened = "class_000_class_001_class_002_class_003_class_004_..._class_099"
    assert Artifact.figure(Artifact.ACCURACY_VS_LAYER, f"vgg16-{shortened}-C0.1") in files
    assert figures.title(summary.comparison_table(two_cuts).iloc[0]) == (
        "vgg16, classes class_000,class_001,class_002,class_003,class_004,…,class_099, C=0.1")
    config = SimpleNamespace(model=SimpleNamespace(name="vgg16"), layer="block4_pool",
                             classifier=SimpleNamespace(C=0.1))
    spec = JobSpec(config=config, record=SimpleNamespace(tags={Tag.CLASSES: names}))
    assert run_name(spec) == "vgg16/block4_pool C=0.1 class_000,class_001,class_002,class_003,class_004,…,class_099"


def test_two_tasks_whose_long_class_lists_read_the_same_keep_a_metric_each_on_the_parent():
    records = [_run("a", 0.6, tags={Tag.CLASSES: HUNDRED}),
               _run("b", 0.7, data__classes="[0, 1]", tags={Tag.CLASSES: SAME_SHORT}),
               _run("c", 0.8, tags={Tag.CLASSES: HUNDRED, Tag.DATA_FINGERPRINT: "e" * 16})]  # same classes, other data
    metrics = summary.parent_metrics(summary.comparison_table(records))
    per_layer = {key: value for key, value in metrics.items() if key.startswith("val_accuracy/")}
    assert sorted(per_layer.values()) == [0.6, 0.7, 0.8]  # none overwritten
    assert all(len(key) <= 250 for key in metrics)  # what MLflow takes
    name = "val_accuracy/vgg16/class_000_class_001_class_002_class_003_class_004_..._class_099/block4_pool"
    assert {name, f"{name} task 2", f"{name} task 3"} == set(per_layer)


def test_class_names_that_are_not_mathtext_are_drawn_as_they_are_in_every_summary_figure():
    records = _two_cuts("a$^$b,$5 bill,plain,5$")  # an even count of "$": matplotlib would parse "$^$" and raise
    files = summary.summary_files(summary.comparison_table(records), records)
    drawn = [name for name in files if name.endswith(".png")]
    assert [name.split("-")[0] for name in drawn] == ["accuracy_vs_layer", "class_recall_vs_layer"]
    recall = figures.class_recall_vs_layer(summary.comparison_table(records), records)
    ax = next(iter(recall.values())).axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["a$^$b", "$5 bill", "plain", "5$"]


@pytest.mark.parametrize("classes, rows_named, values", [(100, 100, True), (300, 100, False)])
def test_per_class_recall_gives_each_class_a_row_up_to_a_tall_figure_then_colour_alone(classes, rows_named, values):
    records = _two_cuts(",".join(f"class_{i:03d}" for i in range(classes)))
    figure = next(iter(figures.class_recall_vs_layer(summary.comparison_table(records), records).values()))
    ax = figure.axes[0]
    assert figure.get_size_inches()[1] == min(classes * figures.RECALL_ROW + 1.8, figures.RECALL_MAX_HEIGHT)
    assert len(ax.get_yticklabels()) == rows_named and bool(ax.texts) == values
    assert len(ax.texts) == (2 * classes if values else 0)


def test_cka_files_of_two_tasks_whose_classes_read_the_same_are_both_kept():
    similarities = [depth.Similarity(classes, ("vgg16/block4_pool", "vgg16/block5_pool"), np.eye(2) * value, 10,
                                     True) for classes, value in ((HUNDRED, 1.0), (SAME_SHORT, 0.5))]
    files = depth.similarity_files(similarities)
    assert len(files) == 4 and len({files[name] for name in files if name.endswith(".csv")}) == 2


def test_ties_name_one_best_the_smallest_C_then_the_cheapest_cut():
    layers = [("block3_pool", 10, "4096"), ("block4_pool", 14, "2048"), ("block5_pool", 18, "512")]
    tied = [_run(layer, 0.8, layer_index=index, layer=layer, feature_dim=dim) for layer, index, dim in layers]
    rows, best = summary.selection(summary.comparison_table(tied))
    assert rows["best_layer"].sum() == 1 and best["layer"] == "block5_pool"  # the fewest features
    assert rows.loc[rows["best_layer"], "layer"].item() == "block5_pool"
    by_C = [_run("big", 0.8, classifier__C="1.0"), _run("small", 0.8, classifier__C="0.01")]
    assert summary.selection(summary.comparison_table(by_C))[1]["run_id"] == "small"
    rows, best = summary.selection(summary.comparison_table(tied))
    assert summary.TIES in summary.selection_markdown(rows, best)


def test_failed_runs_are_listed_apart_never_as_empty_rows():
    records = [_run("ok", 0.8), _run("broken", float("nan"), status=Status.FAILED, layer="block5_pool")]
    files = summary.summary_files(summary.comparison_table(records), records)
    assert "broken" not in files[Artifact.COMPARISON_CSV] and "ok" in files[Artifact.COMPARISON_CSV]
    assert "broken" in files[Artifact.FAILED] and "nan" not in files[Artifact.COMPARISON_CSV].lower()
    assert "did not finish" in files[Artifact.COMPARISON_MD]


def test_a_run_that_failed_before_its_params_were_written_is_read_from_its_tags():
    bare = StoredRun("x", Status.FAILED, 0, {}, {}, {Tag.MODEL: "vgg16", Tag.LAYER: "block4_pool", Tag.CLASSES: "a,b",
                                              Tag.ERROR: "LoggingError: ..."})
    record = RunRecord.parse(bare)
    assert (record.model, record.layer, record.status) == ("vgg16", "block4_pool", Status.FAILED)
    table = summary.comparison_table([record])
    assert summary.finished(table).empty and summary.failed(table)["run_id"].tolist() == ["x"]
    assert summary.summary_files(table, [record])["failed.csv"].count("x") >= 1


def test_a_sweep_whose_jobs_all_failed_has_a_summary_that_says_so():
    records = [_run("a", float("nan"), status=Status.FAILED), _run("b", float("nan"), status=Status.FAILED, layer="x")]
    table = summary.comparison_table(records)
    files = summary.summary_files(table, records)
    assert "No finished runs" in files[Artifact.SELECTION] and files[Artifact.FAILED].count(Status.FAILED) == 2
    assert summary.terminal_table(table) == "no finished runs" and summary.selection(table)[1] is None


NAMES = ["great (white) shark", "a+b", "a&b", "o'neill", "x, y", "1/2", "Ünïcødé ελάφι", "a b"]


def test_every_class_name_has_a_metric_key_mlflow_takes_and_reads_back_as_itself(isolated):
    keys = class_keys(NAMES)
    assert len(set(keys.values())) == len(NAMES)  # a+b and a&b stay apart
    assert all("/" not in key and "(" not in key for key in keys.values())
    store = Store.open(f"sqlite:///{isolated / 'names.db'}")
    experiment = store.experiment_id("names", create=True)
    run_id = store.create_run(experiment, run_name="names", tags={})
    from tlsweep.tracking.payload import Payload

    metrics = {f"test_recall_{key}": i / 10 for i, key in enumerate(keys.values())}
    params = {"model.name": "vgg16", "layer": "block4_pool", "classifier.C": "0.1", "classifier.name": "linear_svc",
              "seed": "0"}
    tags = {Tag.CLASS_NAMES: json.dumps(NAMES, ensure_ascii=False), Tag.CLASSES: ",".join(NAMES)}
    store.write(run_id, Payload(params=params, metrics=metrics, tags=tags))  # MLflow takes every key
    store.end(run_id, Status.FINISHED)
    record = RunRecord.parse(store.get(run_id))
    assert record.test_recall == {name: i / 10 for i, name in enumerate(NAMES)}
    assert record.class_names == tuple(NAMES)


def test_an_observer_never_closes_a_run_before_several_of_its_owners_beats(isolated):
    client = MlflowClient()
    experiment = client.create_experiment("beats")
    now = datetime.now(timezone.utc)

    def running(age_s: float, interval: str | None) -> str:
        tags = {Tag.PROCESS: "elsewhere:1:1", Tag.HEARTBEAT: heartbeat.stamp(now - timedelta(seconds=age_s))}
        if interval:
            tags[Tag.HEARTBEAT_INTERVAL] = interval
        return client.create_run(experiment, tags=tags).info.run_id

    live = running(20, "30")  # the owner's default 5m beats every 30 s; it beat 20 s ago
    undeclared = running(100, None)  # from before intervals were declared: the longest interval, 30 s
    quick = running(20, "1")  # an owner beating every second, silent for 20 s
    dead = running(400, "30")
    closed = runs.close_stale_runs(Store(client.tracking_uri), experiment, stale_after=10)
    assert set(closed) == {quick, dead}
    for run_id in (live, undeclared):
        assert client.get_run(run_id).info.status == Status.RUNNING
    assert heartbeat.dead_after(10, "30") == 150 and heartbeat.dead_after(600, "30") == 600
    assert heartbeat.dead_after(10, "1e9") == 150  # no owner beats less often than every 30 s


SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("text", [
    f"python -m tlsweep -m +hydra.job.env_set.MLFLOW_TRACKING_PASSWORD={SECRET} layer=block4_pool",
    f"python -m tlsweep '+hydra.launcher.ray.init.runtime_env.env_vars.MLFLOW_TRACKING_PASSWORD={SECRET} x'",
    f"tracking.uri=http://alice:{SECRET}@127.0.0.1:5000",
    f"tracking.uri='https://alice:{SECRET}@mlflow.example.org/'",
    f"https://mlflow.example.org/api?token={SECRET}&x=1",
    f"env_vars: {{MLFLOW_TRACKING_TOKEN: {SECRET}}}",
    f'{{"AWS_SECRET_ACCESS_KEY": "{SECRET}"}}',
])
def test_secrets_are_masked_in_command_lines_uris_and_config_text(text):
    masked = redact(text)
    assert SECRET not in masked and "***" in masked


def test_masking_leaves_ordinary_settings_alone():
    text = "layer=block4_pool classifier.C=0.1 tokenizer_name=bpe tracking.uri=http://127.0.0.1:5000"
    assert redact(text) == text
    assert redact_mapping({"tracking.uri": f"http://u:{SECRET}@h", "x.password": SECRET, "layer": "b"}) == {
        "tracking.uri": "http://u:***@h", "x.password": "***", "layer": "b"}


def test_an_unreachable_server_with_credentials_is_one_line_without_the_password(free_port):
    from tlsweep.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        Store.open(f"http://alice:{SECRET}@127.0.0.1:{free_port()}")
    assert SECRET not in str(raised.value) and "alice:***@127.0.0.1" in str(raised.value)


def test_the_configuration_identity_is_defined_once_from_the_schema(compose):
    from omegaconf import OmegaConf

    defaults = identity.schema_defaults()
    assert defaults["features.pooling"] == "flatten" and defaults["classifier.C"] == 0.1
    flat = dict(identity.flatten(OmegaConf.to_container(compose(), resolve=True)))
    kept = identity.result_keys(flat)
    assert not any(key.startswith("tracking.") for key in kept) and "model.batch_size" not in kept
    assert "model.stages" not in kept and "layer" in kept and "data.val_fraction" in kept
    assert identity.config_hash(OmegaConf.to_container(compose(), resolve=True)) == "ba0a6b6860eab86e"
    one = identity.configuration(BASE, TAGS)
    assert "seed" not in one and identity.configuration_id(one) == identity.configuration_id(
        identity.configuration({**BASE, "seed": "7"}, TAGS))

