"""Transferability scores against straightforward float64 references written from their papers: LogME's
fixed point with explicit d x d matrices, DINO's k-NN vote by brute force, GBC with full-matrix Bhattacharyya
distances after scikit-learn's PCA; both LogME routes; invariances; the registry; one-line errors."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from sklearn.decomposition import PCA

from tlsweep import scores
from tlsweep.scores import SCORES, gbc, knn_accuracy, logme
from tlsweep.stages.analysis.cka import subsample_rows


def logme_reference(features: np.ndarray, labels: np.ndarray) -> float:
    """You et al. 2022's fixed point, written with the d x d matrices themselves: for t = alpha / beta,
    m = (F'F + t I)^-1 F'y, gamma = tr(F'F (F'F + t I)^-1), alpha = gamma / (|m|^2 + 1e-5),
    beta = (n - gamma) / (|y - F m|^2 + 1e-5), stopping when t moves by 1e-3 or less (11 steps at most);
    the evidence with log|alpha I + beta F'F| over all d eigenvalues."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n, d = f.shape
    ftf = f.T @ f
    evidences = []
    for label in np.unique(labels):
        y = (labels == label).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            inverse = np.linalg.inv(ftf + t * np.eye(d))
            m = inverse @ (f.T @ y)
            gamma = np.trace(ftf @ inverse)
            m2, res2 = m @ m, np.sum((y - f @ m) ** 2)
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        log_det = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)[1]
        evidence = (d * np.log(alpha) + n * np.log(beta) - log_det - beta * res2 - alpha * m2
                    - n * np.log(2 * np.pi)) / 2
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def knn_reference(train, train_labels, evaluated, eval_labels, k, temperature) -> float:
    """DINO's weighted k-NN one eval row at a time, with exactly rounded cosines (math.fsum) and the ties
    made explicit: the k most similar train rows, lower index first among equals; the class with the
    largest sum of exp(similarity / T), the smallest label among equals."""
    train, evaluated = np.asarray(train, np.float64), np.asarray(evaluated, np.float64)
    norms = [max(math.sqrt(math.fsum(row * row)), 1e-12) for row in train]  # as torch.nn.functional.normalize
    correct = 0
    for row, truth in zip(evaluated, eval_labels):
        norm = max(math.sqrt(math.fsum(row * row)), 1e-12)
        similarity = [math.fsum(row * other) / (norm * other_norm) for other, other_norm in zip(train, norms)]
        nearest = sorted(range(len(train)), key=lambda j: (-similarity[j], j))[:k]
        votes: dict[int, float] = {}
        for j in nearest:
            votes[int(train_labels[j])] = votes.get(int(train_labels[j]), 0.0) + math.exp(similarity[j] / temperature)
        best = max(votes.values())
        correct += min(label for label, vote in votes.items() if vote == best) == truth
    return correct / len(evaluated)


def gbc_reference(features, labels, dims=64) -> float:
    """Pandy et al.'s GBC: scikit-learn PCA, then per class a Gaussian with diagonal covariance (variances
    floored at 1e-4), and -sum over ordered pairs of exp(-D_B), with the general Bhattacharyya distance
    D_B = (mu1 - mu2)' S^-1 (mu1 - mu2) / 8 + ln(det S / sqrt(det S1 det S2)) / 2, S = (S1 + S2) / 2."""
    x = np.asarray(features, np.float64)
    if dims is not None:
        x = PCA(n_components=min(dims, *x.shape), svd_solver="full").fit_transform(x)
    stats = {c: (x[labels == c].mean(axis=0), np.diag(np.maximum(x[labels == c].var(axis=0), 1e-4)))
             for c in np.unique(labels)}
    total = 0.0
    for first, (mu1, s1) in stats.items():
        for second, (mu2, s2) in stats.items():
            if first != second:
                s = (s1 + s2) / 2
                distance = ((mu1 - mu2) @ np.linalg.inv(s) @ (mu1 - mu2) / 8
                            + (np.linalg.slogdet(s)[1] - (np.linalg.slogdet(s1)[1] + np.linalg.slogdet(s2)[1]) / 2) / 2)
                total += math.exp(-distance)
    return -total


def classes_in_features(n: int, d: int, classes: int, *, signal: float, seed: int, dtype=np.float64):
    """n rows of Gaussian noise whose first `classes` columns carry a one-hot of the label times `signal`;
    labels are arbitrary integers (here 10, 13, 16, ...), not 0..K-1."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d))
    x[:, :classes] += signal * np.eye(classes)[index]
    return x.astype(dtype), 10 + 3 * index


@pytest.mark.parametrize("n,d", [(300, 40), (40, 150)], ids=["n>d", "n<d"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logme_equals_the_reference_fixed_point(n, d, dtype):
    x, y = classes_in_features(n, d, 4, signal=1.5, seed=1, dtype=dtype)
    assert logme(x, y) == pytest.approx(logme_reference(x, y), abs=1e-6)


@pytest.mark.parametrize("n,d", [(300, 60), (60, 150)], ids=["n>d", "n<d"])
def test_logme_equals_the_reference_on_relu_features_of_deficient_rank(n, d):
    """After a ReLU whole channels are dead and others repeat: G has many zero eigenvalues, which the
    tridiagonal form carries as rounding-sized ones; the score still matches the explicit fixed point."""
    x, y = classes_in_features(n, d, 5, signal=2.0, seed=7)
    x = np.maximum(x, 0.0)
    x[:, 10:20] = 0.0  # dead channels
    x[:, 20:30] = x[:, 30:40]  # repeated ones
    for route in ("samples", "features"):
        assert logme(x, y, route=route) == pytest.approx(logme_reference(x, y), abs=1e-6)


@pytest.mark.parametrize("n,d", [(200, 30), (30, 200)], ids=["n>d", "n<d"])
def test_logme_the_n_by_n_and_d_by_d_routes_agree(n, d):
    x, y = classes_in_features(n, d, 3, signal=1.0, seed=2)
    samples, features = logme(x, y, route="samples"), logme(x, y, route="features")
    assert samples == pytest.approx(features, abs=1e-8)
    assert logme(x, y) == pytest.approx(samples, abs=1e-8)


def test_logme_ranks_informative_features_higher_and_ignores_label_names_and_row_order():
    x, y = classes_in_features(240, 20, 3, signal=3.0, seed=3)
    noise = np.random.default_rng(4).normal(size=x.shape)
    score = logme(x, y)
    assert score > logme(noise, y) + 0.1
    relabelled = np.select([y == 10, y == 13], [-7, 99], 4)  # another name per class
    assert logme(x, relabelled) == pytest.approx(score, abs=1e-12)
    order = np.random.default_rng(5).permutation(len(y))
    assert logme(x[order], y[order]) == pytest.approx(score, abs=1e-10)
    maps = x.reshape(240, 2, 2, 5)
    assert logme(maps, y) == pytest.approx(score, abs=1e-12)


def test_logme_on_wide_float32_features_makes_no_float64_copy():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((128, 200_000), dtype=np.float32)  # 102 MB; in float64 it would take 205 MB
    y = np.arange(128) % 4
    tracemalloc.start()
    try:
        score = logme(x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert math.isfinite(score)
    assert peak < 150e6  # a 64 MB float64 chunk of columns and the 128 x 128 Gram matrix, not 205 MB


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_knn_equals_brute_force_across_eval_chunks(k, temperature, dtype, monkeypatch):
    x, y = classes_in_features(160, 12, 4, signal=1.2, seed=7, dtype=dtype)
    monkeypatch.setattr(scores._arrays, "CHUNK_BYTES", 8 * 120 * 7)  # 7 eval rows a chunk against 120 train rows
    expected = knn_reference(x[:120], y[:120], x[120:], y[120:], k, temperature)
    assert knn_accuracy(x[:120], y[:120], x[120:], y[120:], k=k, temperature=temperature) == expected
    assert 0.4 < expected < 1.0  # the data is neither hopeless nor trivial, so the check has teeth


def test_knn_equals_brute_force_with_many_exact_ties():
    rng = np.random.default_rng(8)
    x = (rng.random((150, 6)) < 0.3).astype(np.float64)  # 0/1 rows: many repeated rows, exactly tied cosines
    x[0] = 0.0  # an all-zero row has similarity 0 to everything
    y = rng.integers(0, 3, 150) * 5
    for k in (1, 4, 9):
        assert knn_accuracy(x[:100], y[:100], x[100:], y[100:], k=k) == knn_reference(
            x[:100], y[:100], x[100:], y[100:], k, 0.07)


def test_knn_breaks_ties_by_train_row_then_by_smallest_label():
    train = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    query = np.array([[1.0, 0.0]])
    # k=1: rows 1 and 2 are equally near; the lower row index (label 9) is taken, not the smaller label
    assert knn_accuracy(train, np.array([3, 9, 4]), query, np.array([9]), k=1) == 1.0
    assert knn_accuracy(train[[0, 2, 1]], np.array([3, 4, 9]), query, np.array([4]), k=1) == 1.0
    # k=2: both are taken with equal votes; the smallest label wins
    assert knn_accuracy(train, np.array([3, 9, 4]), query, np.array([4]), k=2) == 1.0


def test_knn_scale_and_label_names_do_not_matter_and_the_subsample_is_seeded():
    x, y = classes_in_features(300, 10, 3, signal=1.5, seed=9)
    accuracy = knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10)
    assert knn_accuracy(5.0 * x[:200], -y[:200], 0.1 * x[200:], -y[200:], k=10) == accuracy
    sub = knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10, max_train=80, seed=3)
    rows = subsample_rows(200, max_rows=80, seed=3)
    assert sub == knn_accuracy(x[rows], y[rows], x[200:], y[200:], k=10)
    assert sub == knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10, max_train=80, seed=3)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10, max_train=500) == accuracy
    unseen = y[200:].copy()
    unseen[:50] = 1000  # a class train never saw: always wrong
    assert knn_accuracy(x[:200], y[:200], x[200:], unseen, k=10) <= 0.5


@pytest.mark.parametrize("n,d,dims", [(300, 100, 64), (80, 500, 64), (200, 30, 64), (150, 12, None)],
                         ids=["n>d", "n<d", "d<64", "no-pca"])
def test_gbc_equals_the_reference(n, d, dims):
    x, y = classes_in_features(n, d, 4, signal=0.8, seed=10)
    assert gbc(x, y, pca_dims=dims) == pytest.approx(gbc_reference(x, y, dims), rel=1e-9, abs=1e-12)
    if dims is None:
        x[:, -1] = 0.01 * (y - 10) / 3  # constant within each class: its variance is the 1e-4 floor
        assert gbc(x, y, pca_dims=None) == pytest.approx(gbc_reference(x, y, None), rel=1e-9)


def test_gbc_spans_minus_k_k_minus_1_to_0_and_ignores_label_names():
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(5), 100)
    overlapping = rng.normal(scale=1e-4, size=(500, 16))
    separable = rng.normal(scale=0.01, size=(500, 16)) + (labels ** 2)[:, None]
    assert gbc(overlapping, labels) == pytest.approx(-20.0, rel=0.05)  # -K(K-1): all classes on top of each other
    assert gbc(separable, labels) == pytest.approx(0.0, abs=1e-9)
    x, y = classes_in_features(300, 20, 4, signal=1.0, seed=12)
    assert -12.0 < gbc(x, y) < 0.0
    assert gbc(x, 7 - y) == pytest.approx(gbc(x, y), rel=1e-12)


def test_the_registry_names_its_metrics_and_calls_each_score_alike():
    x, y = classes_in_features(200, 16, 3, signal=1.5, seed=13)
    train, val = (x[:150], y[:150]), (x[150:], y[150:])
    assert {name: score.metric for name, score in SCORES.items()} == {
        "logme": "logme", "knn": "knn_accuracy", "gbc": "gbc"}
    assert SCORES["logme"](*train, *val) == logme(*train)
    assert SCORES["gbc"](*train, *val) == gbc(*train)
    assert SCORES["knn"](*train, *val) == knn_accuracy(*train, *val)
    assert SCORES["knn"](*train, *val, k=3) == knn_accuracy(*train, *val, k=3)


def _bad_calls():
    x, y = classes_in_features(50, 6, 3, signal=1.0, seed=14)
    nan = x.copy()
    nan[3, 2] = np.nan
    return [
        (lambda: logme(x, y[:-1]), r"one per feature row \(50\); received dtype=int64, shape \(49,\)"),
        (lambda: logme(x, np.full(50, 4)), r"at least 2 classes; received 1: \[4\]"),
        (lambda: logme(x, y.astype(float)), r"should be integers.*received dtype=float64"),
        (lambda: logme(nan, y), r"should be finite; received nan at row 3, column 2"),
        (lambda: logme(x[:, 0], y), r"received an array of shape \(50,\)"),
        (lambda: logme(x.astype(complex), y), r"real numbers; received dtype=complex128"),
        (lambda: logme(x, y, route="svd"), r"route should be one of .*received route='svd'"),
        (lambda: gbc(x, y, pca_dims=0), r"pca_dims should be None or an integer >= 1; received pca_dims=0"),
        (lambda: knn_accuracy(x, y, x, y, k=0), r"k should be an integer from 1 to .* \(50\); received k=0"),
        (lambda: knn_accuracy(x, y, x, y, k=51), r"received k=51"),
        (lambda: knn_accuracy(x, y, x, y, max_train=10, k=20), r"\(10\); received k=20"),
        (lambda: knn_accuracy(x, y, x, y, temperature=0.0), r"temperature should be a number > 0; received"),
        (lambda: knn_accuracy(x, y, x[:, :4], y), r"same width; received 6 and 4"),
        (lambda: knn_accuracy(x, y, x, y[:10]), r"eval_labels should be integers, one per feature row"),
        (lambda: knn_accuracy(x, y, x, y, max_train=0), r"max_train should be None or an integer >= 1"),
    ]


@pytest.mark.parametrize("call,message", _bad_calls())
def test_bad_input_raises_one_line_naming_what_it_received(call, message):
    with pytest.raises(ValueError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
