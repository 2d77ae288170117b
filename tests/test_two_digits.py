"""The two-digit multi-label set: digit-set labels, the right digits in each image half and audio half,
DCMH-style splits, on synthetic stand-in audio (always) and on FSDD (when the shared data is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commonspace.data.builtin import mnist5k
from commonspace.data.builtin.two_digits import build_two_digit_set
from commonspace.data.dataset import DataError

SIZES = {"n": 300, "n_query": 50, "n_train": 120, "n_val": 40}


def _fake_audio(per_class: int = 12, dim: int = 6, seed: int = 0):
    """Stand-in utterance features whose first coordinate is the digit (so halves can be traced back)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), per_class)
    x = rng.normal(size=(y.size, dim)).astype(np.float32)
    x[:, 0] = y
    idx = np.arange(y.size)
    take = idx % per_class
    splits = {"train": idx[take < per_class - 4], "val": idx[take == per_class - 4], "test": idx[take > per_class - 4]}
    return x, y, splits


def _check(ds, audio, audio_labels, image_splits, audio_splits) -> None:
    mn = mnist5k()
    img, y = mn.features["image"].numpy().reshape(-1, 28, 28), mn.labels.numpy()
    digits = ds.meta["digits"]
    n = len(ds)
    assert ds.dims == {"image": (1, 28, 56), "audio": (2 * audio.shape[1],)}
    # labels are exactly the digit sets (one label when both digits agree)
    want = np.zeros((n, 10), dtype=bool)
    want[np.arange(n), digits[:, 0]] = True
    want[np.arange(n), digits[:, 1]] = True
    assert np.array_equal(ds.labels.numpy(), want)
    same = digits[:, 0] == digits[:, 1]
    assert np.all(ds.labels.numpy()[same].sum(1) == 1) and np.all(ds.labels.numpy()[~same].sum(1) == 2)
    assert same.any() and (~same).any()
    # the image halves are the recorded MNIST images, of the right digits
    x = ds.features["image"].numpy()[:, 0]
    li, ri = ds.meta["left_image"], ds.meta["right_image"]
    assert np.array_equal(x[:, :, :28], img[li]) and np.array_equal(x[:, :, 28:], img[ri])
    assert np.array_equal(y[li], digits[:, 0]) and np.array_equal(y[ri], digits[:, 1])
    # the audio halves likewise
    a = ds.features["audio"].numpy()
    la, ra = ds.meta["left_audio"], ds.meta["right_audio"]
    d = audio.shape[1]
    assert np.allclose(a[:, :d], audio[la]) and np.allclose(a[:, d:], audio[ra])
    assert np.array_equal(audio_labels[la], digits[:, 0]) and np.array_equal(audio_labels[ra], digits[:, 1])
    # splits: query disjoint from the database, train and val inside it and disjoint from each other
    sp = {k: set(v.tolist()) for k, v in ds.splits.items()}
    assert not sp["query"] & sp["database"] and sp["query"] | sp["database"] == set(range(n))
    assert sp["train"] <= sp["database"] and sp["val"] <= sp["database"] and not sp["train"] & sp["val"]
    # components never cross roles: query from the test pools, val from val, train from train
    for role, src in (("query", "test"), ("val", "val"), ("train", "train")):
        rows = ds.split(role).numpy()
        assert set(li[rows]) | set(ri[rows]) <= set(image_splits[src].tolist())
        assert set(la[rows]) | set(ra[rows]) <= set(np.asarray(audio_splits[src]).tolist())


def test_builder_on_synthetic_audio() -> None:
    x, y, splits = _fake_audio()
    ds = build_two_digit_set(seed=3, audio=x, audio_labels=y, audio_splits=splits, **SIZES)
    assert {k: int(v.numel()) for k, v in ds.splits.items()} == {"query": 50, "train": 120, "val": 40,
                                                                   "database": 250}
    mn = mnist5k()
    _check(ds, x, y, {s: mn.split(s).numpy() for s in ("train", "val", "test")}, splits)
    # the same seed gives the same set, another seed another one
    again = build_two_digit_set(seed=3, audio=x, audio_labels=y, audio_splits=splits, **SIZES)
    assert np.array_equal(again.meta["digits"], ds.meta["digits"])
    other = build_two_digit_set(seed=4, audio=x, audio_labels=y, audio_splits=splits, **SIZES)
    assert not np.array_equal(other.meta["digits"], ds.meta["digits"])


def test_builder_rejects_bad_input() -> None:
    x, y, splits = _fake_audio()
    with pytest.raises(DataError, match="smaller"):
        build_two_digit_set(n=100, audio=x, audio_labels=y, audio_splits=splits, n_query=50, n_train=50, n_val=10)
    with pytest.raises(DataError, match="audio_labels"):
        build_two_digit_set(audio=x, **SIZES)
    bad = dict(splits, val=splits["val"][y[splits["val"]] != 7])
    with pytest.raises(DataError, match="digit 7"):
        build_two_digit_set(audio=x, audio_labels=y, audio_splits=bad, **SIZES)


def test_builder_on_fsdd(shared_data: Path) -> None:
    from commonspace.data.builtin import DatasetUnavailable
    from commonspace.data.builtin.two_digits import fsdd_audio_features

    try:
        audio, labels, splits = fsdd_audio_features(shared_data)
    except DatasetUnavailable as exc:
        pytest.skip(f"FSDD absent: {exc}")
    ds = build_two_digit_set(seed=0, root=shared_data, **SIZES)
    mn = mnist5k()
    _check(ds, audio, labels, {s: mn.split(s).numpy() for s in ("train", "val", "test")}, splits)
    assert ds.dims["audio"] == (100,)


def test_mfeat_pair_set_pairs_the_same_scans() -> None:
    """The UCI set (shipped data): each half's pixels and Fourier text come from one scan of the right digit,
    and the query / val / train items draw their scans from UCI's test / val / train splits."""
    from commonspace.data.builtin.mfeat import load_uci_mfeat
    from commonspace.data.builtin.mfeat_pairs import build_mfeat_pair_set

    ds = build_mfeat_pair_set(seed=3, **SIZES)
    again = build_mfeat_pair_set(seed=3, **SIZES)
    assert np.array_equal(ds.features["image"].numpy(), again.features["image"].numpy())
    assert ds.dims == {"image": (1, 16, 30), "text": (152,)}
    uci = load_uci_mfeat(["pix", "fou"])
    pix = uci.features["pix"].numpy().reshape(-1, 16, 15) / 6.0
    fou, y = uci.features["fou"].numpy(), uci.labels.numpy()
    meta, img, txt = ds.meta, ds.features["image"].numpy(), ds.features["text"].numpy()
    for side, cols, tcols in (("left", slice(0, 15), slice(0, 76)), ("right", slice(15, 30), slice(76, 152))):
        rows = meta[f"{side}_image"]
        assert np.array_equal(rows, meta[f"{side}_audio"])  # same instance
        assert np.allclose(img[:, 0, :, cols], pix[rows]) and np.allclose(txt[:, tcols], fou[rows])
        assert np.array_equal(y[rows], meta["digits"][:, 0 if side == "left" else 1])
    labels = ds.labels.numpy().astype(bool)
    assert np.array_equal(labels, np.eye(10, dtype=bool)[meta["digits"][:, 0]] |
                          np.eye(10, dtype=bool)[meta["digits"][:, 1]])
    for role, source in (("query", "test"), ("val", "val"), ("train", "train")):
        idx = ds.split(role).numpy()
        pool = set(uci.split(source).tolist())
        assert {int(r) for s in ("left_image", "right_image") for r in meta[s][idx]} <= pool, role
    assert set(ds.split("database").tolist()) == set(range(SIZES["n"])) - set(ds.split("query").tolist())
    with pytest.raises(DataError, match="smaller than"):
        build_mfeat_pair_set(10, n_query=5, n_train=5, n_val=5)
