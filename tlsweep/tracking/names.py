"""Every name a tlsweep run carries, declared once: tags, params, metrics, artifacts, models, the parent's and
compare's summary names, the run statuses; and the experiment's tags and the UI link a sweep ends with.

Writers (the job's record, the sweep's callback and summary, compare, provenance) and readers (the run
record, resume, compare, the tests) use these names and spell none themselves. `declared` says whether a key
a run holds is one of them, which a test checks for every key a small sweep writes. No mlflow here.
"""

from __future__ import annotations

import re
from typing import Sequence

SPLITS = ("train", "val", "test")


class Status:
    """MLflow's run statuses, as stored (tracking.store checks them against mlflow's own)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Kind:
    """`tlsweep.kind`: what a run is."""

    SWEEP = "sweep"
    JOB = "job"
    SUMMARY = "summary"


class Tag:
    """Tag keys."""

    KIND = "tlsweep.kind"  # Kind: tells sweep parents, job children and compare's summary runs apart
    PROCESS = "tlsweep.process"  # host:pid:start-time of the process that owns a RUNNING run
    HEARTBEAT = "tlsweep.heartbeat"  # UTC time its process last said a RUNNING run is alive (tracking/heartbeat.py)
    HEARTBEAT_INTERVAL = "tlsweep.heartbeat_interval"  # seconds between its beats, as its owner declared them
    CONFIG_HASH = "tlsweep.config_hash"
    RESUMED_PREFIX = "tlsweep.resumed."  # on a parent: tlsweep.resumed.<config hash> = the reused run's id
    FAILED_PREFIX = "tlsweep.failed."  # on a parent: tlsweep.failed.<key> = a job that failed before its run opened
    SEAL_PREFIX = "tlsweep.seal."  # on a parent: tlsweep.seal.<run id> = the proof that run is the sweep's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"  # MLflow's own: the name a run was created with
    NOTE = "mlflow.note.content"  # the run page's description: on a parent, the command and its answer
    ERROR = "error"
    LAYER = "layer"
    MODEL = "model"
    CLASSES = "classes"  # class names, comma-separated, for people and `compare --classes`
    CLASS_NAMES = "class_names"  # the class names as a JSON list: exact, whatever characters a name holds
    DEMO = "demo"
    DATA_FINGERPRINT = "data.fingerprint"
    WEIGHTS_FINGERPRINT = "weights.fingerprint"
    SPLIT_DIGEST = "split.digest"  # the train, val (and few-shot) row indices, hashed
    FEATURES_CACHE = "features.cache"  # the feature cache folder the job read: what the parent's CKA reads again
    SCORES_CACHED = "scores.cached"  # the scores (comma-separated names) read from that folder, not computed
    BEST_LAYER = "best.layer"  # on a parent: the layer whose best configuration has the best mean val accuracy
    BEST_RUN_ID = "best.run_id"  # on a parent: that configuration's run with the best val accuracy
    SWEEP_OVERRIDES = "sweep.overrides"
    SWEEP_DIR = "sweep.dir"
    PRESCREEN = "tlsweep.prescreen"  # on a job under prescreen=K: PRESCREEN_KEPT, or PRESCREEN_SKIPPED (no probe)
    PRESCREEN_KEPT, PRESCREEN_SKIPPED = "kept", "skipped by prescreen"
    # where a run ran (provenance.machine_tags)
    MACHINE = "machine"  # tracking.machine, else the host name: what compare's by_machine columns are named by
    MACHINE_HOST, MACHINE_CPU, MACHINE_CORES = "machine.host", "machine.cpu", "machine.cores"
    MACHINE_GPU, MACHINE_PLATFORM, MACHINE_PYTHON = "machine.gpu", "machine.platform", "machine.python"
    KERAS_BACKEND = "keras.backend"
    GIT_COMMIT = "git.commit"
    VERSION_PREFIX = "version."  # version.<distribution>: tensorflow, keras, scikit-learn, mlflow, ...
    # on compare's summary run: what it compared
    COMPARE_PREFIX = "compare."  # compare.<what>: experiments, runs, machines, and each filter given
    COMPARE_EXPERIMENTS, COMPARE_RUNS, COMPARE_MACHINES = "compare.experiments", "compare.runs", "compare.machines"

    @staticmethod
    def version(distribution: str) -> str:
        return f"{Tag.VERSION_PREFIX}{distribution}"

    @staticmethod
    def compare(what: str) -> str:
        return f"{Tag.COMPARE_PREFIX}{what}"


class Param:
    """Params beyond the flattened config (every config key is a param too), and the config keys that records
    read back."""

    FEATURE_DIM = "feature_dim"  # after pooling
    N_TRAIN = "n_train"
    N_VAL = "n_val"
    N_TEST = "n_test"
    N_FIT = "n_fit"  # rows of the final fit: train, train+val after classifier.C=auto, k per class few-shot
    SELECTED_C = "selected_C"  # the C the final fit used: classifier.C, or the one chosen on validation
    MODEL = "model.name"
    LAYER = "layer"
    C = "classifier.C"
    CLASSIFIER = "classifier.name"
    SEED = "seed"
    CLASSES = "data.classes"
    POOLING = "features.pooling"
    NORMALIZE = "features.normalize"
    TRAIN_PER_CLASS = "data.train_per_class"
    CONFIG_KEYS = (MODEL, LAYER, C, CLASSIFIER, SEED)  # every tlsweep job run has these
    SHOWN_KEYS = (MODEL, LAYER, CLASSES, CLASSIFIER, C, POOLING, NORMALIZE, TRAIN_PER_CLASS, SEED)  # own columns
    OWN = (FEATURE_DIM, N_TRAIN, N_VAL, N_TEST, N_FIT, SELECTED_C)


class Metric:
    """Metric keys; the per-split, per-class and per-layer ones are built by the functions below."""

    EXTRACTION_SECONDS = "extraction_seconds"
    CNN_FORWARD_IMAGES = "cnn_forward_images"  # images the CNN ran on in this job: 0 on a warm cache
    FIT_SECONDS = "fit_seconds"
    N_ITER = "n_iter"
    CONVERGED = "converged"
    LAYER_INDEX = "layer_index"  # the cut's position in the backbone, input first
    LAYER_DEPTH = "layer_depth"  # the cut's position over the last stage's: 0 at the input, 1 at the last stage
    TOTAL_SECONDS = "total_seconds"
    OVERHEAD_SECONDS = "overhead_seconds"  # a job's wall time outside extraction, fits and scores: reports, logging
    SEARCH_C = "search/C"  # one step per C tried by classifier.C=auto, ascending
    SEARCH_VAL_ACCURACY = "search/val_accuracy"  # at the same steps
    OWN = (EXTRACTION_SECONDS, CNN_FORWARD_IMAGES, FIT_SECONDS, N_ITER, CONVERGED, LAYER_INDEX, LAYER_DEPTH,
           TOTAL_SECONDS, OVERHEAD_SECONDS, SEARCH_C, SEARCH_VAL_ACCURACY)
    # per split: `{split}_{name}`; per class: `{split}_{stat}_{class key}` (`class_keys`)
    SPLIT_NAMES = ("accuracy", "balanced_accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                   "weighted_precision", "weighted_recall", "weighted_f1")
    CLASS_STATS = ("precision", "recall", "f1")
    # on a sweep's parent: the answer, so the collapsed runs table shows it
    BEST_VAL_ACCURACY = "best_val_accuracy"
    BEST_TEST_ACCURACY = "best_test_accuracy"
    STARTUP_SECONDS = "startup_seconds"  # from the process's start to its jobs handed to the launcher
    # transferability scores (tlsweep.scores): score/<metric> and score_seconds/<name> on a job; on a parent,
    # how well each ranks the children, and what prescreen=K saved
    SCORE_PREFIX, SCORE_SECONDS_PREFIX, RANK_PREFIX = "score/", "score_seconds/", "rank/"
    # on a parent: pipeline/val_accuracy, pipeline/test_accuracy of the model `model` it serves (one run's, where
    # best_val_accuracy is the mean over seeds), linked to it and its datasets, so the model's page shows them
    PIPELINE_PREFIX = "pipeline/"
    PRESCREEN_SKIPPED_FITS = "prescreen/skipped_fits"
    PRESCREEN_SAVED_SECONDS = "prescreen/saved_seconds"  # the skipped fits, at the mean cost of those it ran
    RANK_KINDS = ("kendall_tau", "weighted_tau")

    @staticmethod
    def score(metric: str) -> str:
        return f"{Metric.SCORE_PREFIX}{metric}"

    @staticmethod
    def score_seconds(name: str) -> str:
        return f"{Metric.SCORE_SECONDS_PREFIX}{name}"

    @staticmethod
    def pipeline(split: str) -> str:
        return f"{Metric.PIPELINE_PREFIX}{Metric.accuracy(split)}"

    @staticmethod
    def rank(name: str, kind: str) -> str:
        """On a parent: `rank/<score>_kendall_tau`, `rank/<score>_weighted_tau` between the score and val accuracy."""
        return f"{Metric.RANK_PREFIX}{name}_{kind}"

    @staticmethod
    def is_time(key: str) -> bool:
        """Wall-clock seconds: the metrics in which two runs of the same configuration may differ."""
        return key.endswith("_seconds") or key.startswith(Metric.SCORE_SECONDS_PREFIX)

    @staticmethod
    def of(split: str, *name: str) -> str:
        """`{split}_{name}`: test_accuracy, val_balanced_accuracy, train_top5_accuracy, test_macro_f1, test_recall_deer."""
        return "_".join((split, *name))

    @staticmethod
    def accuracy(split: str) -> str:
        return Metric.of(split, "accuracy")

    @staticmethod
    def per_layer(split: str, name: str) -> str:
        """On a parent: `val_accuracy/<layer>` (or `<model>/<classes>/<layer>` with several)."""
        return f"{Metric.accuracy(split)}/{name}"


class Artifact:
    """Artifact paths of a job, its models, and the summary files under a parent's `summary/`."""

    CONFIG = "config.yaml"
    ERROR = "error.txt"
    FIT_WARNINGS = "fit_warnings.txt"
    SEARCH_PLOT = "search/val_accuracy_vs_C.png"
    SKIPPED_IMAGES = "data/skipped_images.csv"  # data.skip_bad_images=true: id, reason of each file left out
    PROBE_MODEL = "probe"  # the job's fitted probe, scikit-learn flavour (an MLflow logged model)
    PIPELINE_MODEL = "model"  # raw images -> class names, pyfunc: the parent's best, or a job's (log_pipeline)

    # per split: predictions(split) is id, true, predicted (class names), one row per image; report(split, "txt")
    # as scikit-learn prints it, or "json"; confusion(split) the ConfusionMatrixDisplay
    predictions = staticmethod("predictions/{}.csv".format)
    report = staticmethod("reports/{}_classification_report.{}".format)
    confusion = staticmethod("confusion/{}_confusion_matrix.png".format)
    SUMMARY_FOLDER = "summary"
    COMPARISON_CSV, COMPARISON_MD = "comparison.csv", "comparison.md"  # under SUMMARY_FOLDER, as the ones below
    SELECTION = "selection.md"
    FAILED = "failed.csv"
    BY_MACHINE_CSV, BY_MACHINE_MD = "by_machine.csv", "by_machine.md"  # compare's
    CKA = "cka"  # cka.csv and cka.png; cka-<classes>.* with several tasks
    SCORES_CSV, SCORES_FIGURE = "scores.csv", "scores.png"  # each child's scores beside its accuracies
    # the summary's figures: <kind>-<what sets the curve apart>.png
    ACCURACY_VS_LAYER, CLASS_RECALL_VS_LAYER = "accuracy_vs_layer", "class_recall_vs_layer"
    VAL_ACCURACY_VS_C, DEPTH_PROFILE = "val_accuracy_vs_C", "depth_profile"
    FIGURES = (ACCURACY_VS_LAYER, CLASS_RECALL_VS_LAYER, VAL_ACCURACY_VS_C, DEPTH_PROFILE)
    summary = staticmethod((SUMMARY_FOLDER + "/{}").format)  # a parent's file: summary(COMPARISON_CSV)
    figure = staticmethod("{}-{}.png".format)  # figure(ACCURACY_VS_LAYER, "vgg16-deer_dog-C0.1")


class ExperimentTag:
    """Tags on the experiment itself."""

    # mlflow.sharedViewState.<key>: a runs-table view that MLflow's UI restores from a link naming <key>
    # (Link.VIEW_KEY); a sweep's is keyed by its parent run id (tracking/view.py)
    SHARED_VIEW_PREFIX = "mlflow.sharedViewState."


class Link:
    """The address a sweep's closing lines print: its runs table in MLflow's UI, as its view left it."""

    UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves when given no --host or --port
    RUNS = "#/experiments/{experiment_id}/runs"  # the experiment's runs table
    VIEW_KEY = "viewStateShareKey"  # ?viewStateShareKey=<key>: restore the view in SHARED_VIEW_PREFIX + <key>
    WORKFLOW = "workflowType"  # ?workflowType=machine_learning: the UI's Model training side, not GenAI
    MODEL_TRAINING = "machine_learning"


_NOT_IN_KEYS = re.compile(r"[^\w.\- ]+")  # MLflow keys take letters, digits, `_ - . space` (and `/ :`, not on Windows)


def class_keys(names: Sequence[str]) -> dict[str, str]:
    """Each class name's form in metric keys (`test_recall_<key>`): what MLflow does not take becomes `_`,
    and a name that would then repeat an earlier one's key gets `_2`, `_3`, ... The names themselves are
    shown as they are everywhere a person reads them."""
    keys: dict[str, str] = {}
    for name in names:
        key = _NOT_IN_KEYS.sub("_", str(name)).strip() or "_"
        candidate, number = key, 1
        while candidate in keys.values():
            number += 1
            candidate = f"{key}_{number}"
        keys[name] = candidate
    return keys


def _constants(*owners: type) -> set[str]:
    return {value for owner in owners for name, value in vars(owner).items()
            if name.isupper() and isinstance(value, str)}


def declared(kind: str, key: str, *, config_keys: Sequence[str] = ()) -> bool:
    """Whether `key`, a `kind` ("param", "metric", "tag" or "artifact") a run holds, is declared here (params:
    or one of `config_keys`, the flattened schema's)."""
    if kind == "param":
        return key in Param.OWN or key in config_keys
    if kind == "metric":
        if any(key.startswith(f"{Metric.accuracy(s)}/") for s in ("val", "test")):
            return True
        split = next((s for s in SPLITS if key.startswith(f"{s}_")), None)
        if split is not None:
            rest = key[len(split) + 1:]
            return rest in Metric.SPLIT_NAMES or any(rest.startswith(f"{stat}_") for stat in Metric.CLASS_STATS)
        return key in Metric.OWN or key in (Metric.BEST_VAL_ACCURACY, Metric.BEST_TEST_ACCURACY, Metric.STARTUP_SECONDS,
                                              Metric.PRESCREEN_SKIPPED_FITS, Metric.PRESCREEN_SAVED_SECONDS) or \
            key.startswith((Metric.SCORE_PREFIX, Metric.SCORE_SECONDS_PREFIX, Metric.RANK_PREFIX)) or \
            key in (Metric.pipeline("val"), Metric.pipeline("test"))
    if kind == "tag":
        prefixes = (Tag.RESUMED_PREFIX, Tag.FAILED_PREFIX, Tag.SEAL_PREFIX, Tag.VERSION_PREFIX, Tag.COMPARE_PREFIX)
        return key in _constants(Tag) or key.startswith(prefixes)
    if kind == "artifact":
        fixed = {Artifact.CONFIG, Artifact.ERROR, Artifact.FIT_WARNINGS, Artifact.SEARCH_PLOT, Artifact.SKIPPED_IMAGES,
                 *(Artifact.predictions(s) for s in SPLITS), *(Artifact.confusion(s) for s in SPLITS),
                 *(Artifact.report(s, suffix) for s in SPLITS for suffix in ("txt", "json"))}
        if key in fixed:
            return True
        name = key.removeprefix(f"{Artifact.SUMMARY_FOLDER}/")
        summary = {Artifact.COMPARISON_CSV, Artifact.COMPARISON_MD, Artifact.SELECTION, Artifact.FAILED,
                   Artifact.BY_MACHINE_CSV, Artifact.BY_MACHINE_MD, Artifact.SCORES_CSV, Artifact.SCORES_FIGURE}
        return name != key and (name in summary or name.startswith((Artifact.CKA, *Artifact.FIGURES)))
    raise ValueError(f"kind should be one of 'param', 'metric', 'tag' or 'artifact'; received kind={kind!r}")
