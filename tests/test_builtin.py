"""Builtin datasets: shapes, fixed splits, registry, and the external Wikipedia set."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from commonspace.data import DataError, builtin
from commonspace.data.builtin import DatasetUnavailable, find_shared, mnist5k

SHIPPED = ["digits-halves", "mnist5k-halves", "mnist5k", "uci-mfeat"]


def _check_splits(d, info):
    tr, va, te = (d.split(s).numpy() for s in ("train", "val", "test"))
    assert {s: len(i) for s, i in d.splits.items()} == info["splits"]
    assert not set(tr) & set(va) and not set(tr) & set(te) and not set(va) & set(te)
    y = d.labels.numpy()
    overall = np.bincount(y, minlength=d.num_classes) / len(y)
    for idx in (tr, va, te):  # stratified: each split's class shares match the whole set's
        share = np.bincount(y[idx], minlength=d.num_classes) / len(idx)
        assert np.abs(share - overall).max() < 0.02


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_datasets(name):
    info = {r["name"]: r for r in builtin.available()}[name]
    t = time.perf_counter()
    d = builtin.load(name)
    assert time.perf_counter() - t < 2.0  # < 1 s in practice; slack for slow CI
    assert d.name == name and len(d) == info["samples"] and d.num_classes == info["classes"] == 10
    assert {m: s[0] for m, s in d.dims.items()} == info["modalities"]
    assert not info["external"] and info["available"]
    assert d.meta["license"] and d.meta["source"] and d.meta["citation"]
    for x in d.features.values():
        assert float(x.min()) >= -1e6 and bool(x.isfinite().all())
    _check_splits(d, info)
    again = builtin.load(name)
    assert all(np.array_equal(again.split(s), d.split(s)) for s in d.splits)


def test_halves_are_image_halves():
    d = builtin.load("mnist5k-halves")
    full = mnist5k()
    img = full.features["image"].reshape(-1, 28, 28)
    np.testing.assert_array_equal(d.features["left"].reshape(-1, 28, 14), img[:, :, :14])
    np.testing.assert_array_equal(d.features["right"].reshape(-1, 28, 14), img[:, :, 14:])
    assert float(full.features["image"].max()) == 1.0 and float(full.features["image"].min()) == 0.0
    assert np.bincount(full.labels.numpy()).tolist() == [500] * 10
    # the source rows are sorted by label; every split must still hold every class in equal shares
    for s in ("train", "val", "test"):
        assert len(set(np.bincount(full.labels[full.split(s)].numpy()).tolist())) == 1
    dg = builtin.load("digits-halves")
    assert dg.dims == {"left": (32,), "right": (32,)} and float(dg.features["left"].max()) <= 1.0


def test_mnist5k_root_matches_shipped(shared_data):
    csv = shared_data / "mnist5k"
    if not (csv / "mnist_5k.csv.gz").is_file():
        pytest.skip(f"{csv}/mnist_5k.csv.gz not present")
    a, b = mnist5k(), mnist5k(csv)
    assert np.array_equal(builtin.load("mnist5k", root=shared_data).features["image"], b.features["image"])
    assert np.array_equal(a.features["image"], b.features["image"]) and np.array_equal(a.labels, b.labels)


def test_mfeat_protocol_and_views():
    d = builtin.load("uci-mfeat")
    y = d.labels.numpy()
    _, test = train_test_split(np.arange(2000), test_size=400, stratify=y, random_state=0)
    assert np.array_equal(np.sort(test), d.split("test").numpy())  # the "1600/400, seed 0" protocol
    sub = builtin.load("uci-mfeat", views=("pix", "fou"))
    assert sub.modalities == ("pix", "fou") and np.array_equal(sub.features["pix"], d.features["pix"])
    with pytest.raises(DataError, match="pick distinct names"):
        builtin.load("uci-mfeat", views=("pix", "nope"))


@pytest.mark.parametrize("view", ["fac", "zer"])
def test_mfeat_matches_original_csv(shared_data, view):
    src = shared_data / "uci-mfeat" / f"mfeat-{view}.csv"
    if not src.is_file():
        pytest.skip(f"{src} not present")
    d = builtin.load("uci-mfeat", views=(view,))
    raw = np.loadtxt(src, delimiter=",", skiprows=1)  # numeric header row
    # the shipped copy holds the original values at float32 precision (what the dataset stores anyway)
    np.testing.assert_array_equal(d.features[view].numpy(), raw[:, :-1].astype(np.float32))
    assert np.array_equal(raw[:, -1].astype(int), d.labels.numpy())


def test_registry_api():
    rows = builtin.available()
    names = ["digits-halves", "mnist5k-halves", "mnist5k", "uci-mfeat", "wikipedia", "fsdd-spectrogram", "fsdd-mnist",
             "noisy-digits", "noisy-digits-fsdd"]
    assert [r["name"] for r in rows] == names
    for r in rows:
        keys = {"name", "description", "samples", "modalities", "splits", "external", "source", "license"}
        assert keys <= set(r)
    wiki = {r["name"]: r for r in rows}["wikipedia"]
    assert wiki["external"] and "not redistributable" in wiki["license"]
    text = builtin.describe("uci_mfeat")  # underscores accepted
    assert "uci-mfeat" in text and "CC BY 4.0" in text and "400" in text
    with pytest.raises(DataError, match="no builtin dataset 'cifar'; available"):
        builtin.load("cifar")
    assert builtin.load("uci-mfeat", root="/nowhere").n == 2000  # shipped: a generic data root is ignored
    assert all(r["needs"] for r in rows)
    with pytest.raises(DataError, match="takes no option"):
        builtin.load("digits-halves", views=("a",))


def test_wikipedia_unavailable(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable, match="UCSD SVCL.*root=<folder>"):
        builtin.load("wikipedia", root=tmp_path)
    monkeypatch.setenv("COMMONSPACE_WIKIPEDIA", str(tmp_path))
    with pytest.raises(DataError, match="COMMONSPACE_WIKIPEDIA"):
        builtin.load("wikipedia")


def test_find_shared(tmp_path, monkeypatch):
    (tmp_path / "fsdd").mkdir()
    monkeypatch.setenv("COMMONSPACE_SHARED_DATA", str(tmp_path))
    assert find_shared("fsdd") == tmp_path / "fsdd"
    (tmp_path / "proj" / "a" / "b").mkdir(parents=True)
    (tmp_path / "proj" / "shared" / "data" / "thing").mkdir(parents=True)
    monkeypatch.delenv("COMMONSPACE_SHARED_DATA")
    monkeypatch.chdir(tmp_path / "proj" / "a" / "b")
    assert find_shared("thing") == tmp_path / "proj" / "shared" / "data" / "thing"
    assert find_shared("no-such-dataset-here") is None


def test_wikipedia(shared_data, monkeypatch):
    root = shared_data / "wikipedia"
    if not (root / "raw_features.mat").is_file():
        pytest.skip(f"Wikipedia dataset not found at {root}")
    monkeypatch.delenv("COMMONSPACE_WIKIPEDIA", raising=False)
    d = builtin.load("wikipedia", root=root)
    info = {r["name"]: r for r in builtin.available()}["wikipedia"]
    assert len(d) == 2866 and d.dims == {"image": (128,), "text": (10,)}
    assert d.class_names[0] == "art" and len(d.class_names) == 10
    assert d.split("test").tolist() == list(range(2173, 2866))
    assert int(d.split("train").max()) < 2173 and int(d.split("val").max()) < 2173
    assert info["splits"] == {s: len(i) for s, i in d.splits.items()}
    tr, va = d.split("train").numpy(), d.split("val").numpy()
    assert len(tr) == 1956 and len(va) == 217 and not set(tr) & set(va)
    y = d.labels.numpy()
    share = np.bincount(y[:2173], minlength=10) / 2173
    assert np.abs(np.bincount(y[va], minlength=10) / len(va) - share).max() < 0.02
    np.testing.assert_allclose(d.features["image"].sum(1).numpy(), 1.0, atol=1e-3)  # SIFT histograms
    assert np.bincount(y[:2173]).tolist()[0] == 138  # 'art' count in the standard train list
    assert builtin.load("wikipedia").n == 2866  # found automatically under shared/data
