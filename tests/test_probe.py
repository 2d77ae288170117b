"""Classification probes: separable toy data, seeded determinism, multi-label MAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.eval import classification_map, logistic_probe, mlp_probe


def blobs(n_per=40, classes=3, dim=5, seed=0):
    """Linearly separable: class c is a tight cloud around 6 * e_c."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 0.3, (n_per, dim)) + 6 * np.eye(dim)[c] for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per)
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def multilabel(n=300, dim=6, labels=3, seed=0):
    """Label j is on when x_j > 0: separable per label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    x[:, :labels] += np.sign(x[:, :labels]) * 0.5  # margin around each boundary
    return x, (x[:, :labels] > 0).astype(np.int64)


def test_probes_reach_full_accuracy_on_separable_data():
    xtr, ytr = blobs(seed=0)
    xte, yte = blobs(seed=1)
    m = mlp_probe(xtr, ytr, xte, yte, hidden=32, epochs=100, seed=0)
    assert m["accuracy"] == pytest.approx(1.0) and m["error"] == pytest.approx(0.0)
    lr = logistic_probe(xtr, ytr, xte, yte)
    assert lr["accuracy"] == pytest.approx(1.0) and lr["error"] == pytest.approx(0.0)


def test_mlp_is_seeded_and_leaves_global_rng_alone():
    xtr, ytr = blobs(n_per=30, seed=2)
    xte, yte = blobs(n_per=30, seed=3)
    xtr = xtr + np.random.default_rng(4).normal(0, 3.0, xtr.shape).astype(np.float32)  # make it imperfect
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = mlp_probe(xtr, ytr, xte, yte, hidden=16, epochs=30, seed=7, batch_size=16)
    after = torch.rand(1)
    b = mlp_probe(xtr, ytr, xte, yte, hidden=16, epochs=30, seed=7, batch_size=16)
    assert a == b
    assert torch.equal(before, after)  # the probe ran under a forked RNG
    c = mlp_probe(torch.as_tensor(xtr), torch.as_tensor(ytr), xte, yte, hidden=16, epochs=30, seed=7,
                  batch_size=16)
    assert c == a  # tensors and arrays give the same result


def test_mlp_early_stopping_on_validation():
    xtr, ytr = blobs(seed=5)
    xva, yva = blobs(n_per=10, seed=6)
    xte, yte = blobs(seed=7)
    r = mlp_probe(xtr, ytr, xte, yte, hidden=16, epochs=500, seed=0, val=(xva, yva), patience=5, lr=1e-2)
    assert r["accuracy"] == pytest.approx(1.0)
    assert 1 <= r["best_epoch"] <= r["epochs"] <= 500


def test_multilabel_probes_report_map():
    xtr, ytr = multilabel(seed=0)
    xte, yte = multilabel(seed=1)
    m = mlp_probe(xtr, ytr, xte, yte, hidden=32, epochs=300, seed=0, lr=1e-2)
    assert m["map"] > 0.98 and m["accuracy"] > 0.95 and 0 <= m["exact_match"] <= 1
    lr = logistic_probe(xtr, ytr, xte, yte)
    assert lr["map"] > 0.99 and lr["accuracy"] > 0.97


def test_logistic_chooses_c_on_validation_only():
    xtr, ytr = blobs(seed=8)
    xva, yva = blobs(n_per=10, seed=9)
    xte, yte = blobs(seed=10)
    r = logistic_probe(xtr, ytr, xte, yte, C=[0.01, 1.0], val=(xva, yva))
    assert r["C"] in (0.01, 1.0) and r["accuracy"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="val"):
        logistic_probe(xtr, ytr, xte, yte, C=[0.1, 1.0])


def test_classification_map_skips_labels_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    assert classification_map(y, s) == pytest.approx(1.0)


def test_probe_input_errors():
    x, y = blobs(n_per=5)
    with pytest.raises(DataError, match="features"):
        mlp_probe(x, y, x[:, :3], y)
    with pytest.raises(DataError, match="train_y"):
        logistic_probe(x, y[:-1], x, y)
    with pytest.raises(DataError, match="all be class ids"):
        mlp_probe(x, y, x, np.eye(3)[y].astype(int))


def test_single_label_classification_map_matches_one_vs_rest_ap():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(3, 4))[y] + 1.5 * rng.normal(size=(300, 4))
    res = logistic_probe(x[:200], y[:200], x[200:], y[200:], standardize=False)
    prob = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(x[:200], y[:200]).predict_proba(x[200:])
    want = np.mean([average_precision_score(y[200:] == c, prob[:, c]) for c in range(3)])
    assert res["map"] == pytest.approx(want, abs=1e-6)
    assert 0.0 < mlp_probe(x[:200], y[:200], x[200:], y[200:], epochs=50)["map"] <= 1.0


def test_logistic_probe_many_fits_once_and_scores_each_test_set_like_logistic_probe():
    from commonspace.eval.probe import logistic_probe_many

    g = np.random.default_rng(0)
    y = g.integers(0, 3, 120)
    x = g.normal(size=(120, 5)) + np.eye(3)[y] @ g.normal(size=(3, 5)) * 2
    noisy = x + g.normal(size=x.shape) * 3
    many = logistic_probe_many(x[:80], y[:80], {"clean": (x[80:], y[80:]), "noisy": (noisy[80:], y[80:])})
    assert many["clean"] == logistic_probe(x[:80], y[:80], x[80:], y[80:])
    assert many["noisy"] == logistic_probe(x[:80], y[:80], noisy[80:], y[80:])
    assert many["clean"]["accuracy"] > many["noisy"]["accuracy"]
    with pytest.raises(DataError, match="tests is empty"):
        logistic_probe_many(x, y, {})
