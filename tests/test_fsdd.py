"""FSDD loaders on the real recordings (skipped when shared/data/fsdd is absent)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from commonspace.data import builtin
from commonspace.data.builtin import DatasetUnavailable, fsdd
from commonspace.data.builtin.mnist import mnist5k
from commonspace.data.dataset import DataError
from commonspace.data.features import PCAWhitener, spectrogram, utterance_mfcc
from commonspace.data.features.audio import LOG_EPS, center_frames


def test_unavailable_says_where_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable, match=r"github.com/Jakobovski/free-spoken-digit-dataset.*CC BY-SA 4\.0"):
        builtin.load("fsdd-spectrogram", root=tmp_path)
    monkeypatch.setenv("COMMONSPACE_FSDD", str(tmp_path))
    with pytest.raises(DataError, match="COMMONSPACE_FSDD"):
        builtin.load("fsdd-mnist")
    with pytest.raises(DatasetUnavailable):
        fsdd.load_fsdd_waveforms()


def test_registry_rows():
    rows = {r["name"]: r for r in builtin.available()}
    for name in ("fsdd-spectrogram", "fsdd-mnist"):
        r = rows[name]
        assert r["external"] and r["samples"] == 3000 and r["classes"] == 10
        assert r["splits"] == {"train": 2430, "val": 270, "test": 300}
        assert "CC BY-SA 4.0" in r["license"] and "root" in r["options"]
    assert rows["fsdd-spectrogram"]["modalities"] == {"audio": 50}
    assert rows["fsdd-mnist"]["modalities"] == {"audio": 50, "image": 100}
    assert "PAIRED BY CLASS, NOT BY INSTANCE" in rows["fsdd-mnist"]["description"]
    with pytest.raises(DataError, match="takes no option"):
        builtin.load("fsdd-spectrogram", image_pca=None)


def test_locate_accepts_clone_or_recordings(tmp_path):
    rec = tmp_path / "free-spoken-digit-dataset" / "recordings"
    rec.mkdir(parents=True)
    (rec / "3_theo_7.wav").write_bytes(b"")
    (rec / "README.md").write_text("not a recording")
    assert fsdd.locate(rec) == rec
    assert fsdd.locate(rec.parent) == rec
    assert fsdd.locate(tmp_path) is None


# ----------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def root(shared_data):
    d = shared_data / "fsdd"
    if fsdd.locate(d) is None:
        pytest.skip(f"FSDD recordings not found under {d}")
    return d


@pytest.fixture(scope="module")
def waves(root):
    return fsdd.load_fsdd_waveforms(root)


@pytest.fixture(scope="module")
def spec(root):
    return builtin.load("fsdd-spectrogram", root=root)


@pytest.fixture(scope="module")
def paired(root):
    return builtin.load("fsdd-mnist", root=root)


@pytest.fixture(scope="module")
def raw(root):
    return builtin.load("fsdd-mnist", root=root, audio_pca=None, image_pca=None)


def test_waveforms_match_file_names(waves):
    x, rate, labels, speakers, takes, paths = waves
    assert len(x) == len(paths) == 3000 and rate == 8000
    assert len(set(speakers)) == 6 and np.bincount(labels).tolist() == [300] * 10
    for i in (0, 1, 10, 1234, 2999):
        d, s, t = re.fullmatch(r"(\d)_([a-z]+)_(\d+)\.wav", paths[i].name).groups()
        assert (int(d), s, int(t)) == (labels[i], speakers[i], takes[i])
    keys = list(zip(labels.tolist(), speakers, takes.tolist(), strict=True))
    assert keys == sorted(keys)  # deterministic (digit, speaker, numeric take) order
    assert all(w.dtype == np.float32 and np.abs(w).max() <= 1.0 for w in x[:50])


def test_official_split(waves, spec):
    _, _, labels, _, takes, _ = waves
    tr, va, te = (spec.split(s).numpy() for s in ("train", "val", "test"))
    assert (tr.size, va.size, te.size) == (2430, 270, 300)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.flatnonzero(takes >= 5))  # 2700 official train
    assert np.array_equal(te, np.flatnonzero(takes < 5))  # 300 official test
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert np.bincount(labels[va]).tolist() == [27] * 10  # stratified by digit
    assert np.array_equal(spec.labels.numpy(), labels)
    assert len(spec.meta["speakers"]) == 3000 and spec.meta["license"] == "CC BY-SA 4.0"


def test_spectrogram_dataset_whitened_on_train_only(spec, raw):
    a = spec.features["audio"].numpy()
    assert a.shape == (3000, 50)
    tr, te = spec.split("train").numpy(), spec.split("test").numpy()
    np.testing.assert_allclose(np.cov(a[tr].T), np.eye(50), atol=1e-4)
    assert np.abs(np.cov(a[te].T) - np.eye(50)).max() > 0.05  # test rows were not used in the fit
    r = raw.features["audio"].numpy()
    assert r.shape == (3000, 60 * 81)
    ref = PCAWhitener(50).fit(r, tr).transform(r)
    np.testing.assert_allclose(a, ref, atol=1e-4)
    np.testing.assert_array_equal(raw.features["audio"].numpy(), r)


def test_central_spectrograms_equal_per_clip_reference(waves, raw):
    x, rate = waves[0], waves[1]
    got = raw.features["audio"].numpy()
    lengths = np.array([w.size for w in x])
    for i in (int(np.argmin(lengths)), int(np.argmax(lengths)), 7, 2500):
        ref = center_frames(spectrogram(x[i], rate), 30, pad_value=np.log(LOG_EPS)).reshape(-1)
        np.testing.assert_allclose(got[i], ref, rtol=1e-5, atol=1e-4)


def test_fsdd_mnist_pairing_by_class(paired, raw, spec):
    assert paired.dims == {"audio": (50,), "image": (100,)}
    assert "not by instance" in paired.meta["pairing"]
    np.testing.assert_array_equal(paired.features["audio"].numpy(), spec.features["audio"].numpy())
    mn = mnist5k()
    rows = np.array(paired.meta["mnist_rows"])
    assert np.array_equal(mn.labels.numpy()[rows], paired.labels.numpy())  # same digit in both modalities
    for s in ("train", "val", "test"):
        idx = paired.split(s).numpy()
        assert set(rows[idx]) <= set(mn.split(s).numpy().tolist())  # image from the matching MNIST split
        assert np.unique(rows[idx]).size == idx.size  # without replacement within a split
    img = raw.features["image"].numpy()
    np.testing.assert_array_equal(img, mn.features["image"].numpy()[rows])
    assert img.shape == (3000, 784) and img.min() >= 0.0 and img.max() <= 1.0
    z = paired.features["image"].numpy()
    tr, te = paired.split("train").numpy(), paired.split("test").numpy()
    np.testing.assert_allclose(np.cov(z[tr].T), np.eye(100), atol=1e-3)
    assert np.abs(np.cov(z[te].T) - np.eye(100)).max() > 0.05


def test_fsdd_mnist_seed(root, paired):
    other = builtin.load("fsdd-mnist", root=root, seed=1, audio_pca=None)
    a, b = np.array(paired.meta["mnist_rows"]), np.array(other.meta["mnist_rows"])
    assert not np.array_equal(a, b) and np.array_equal(mnist5k().labels.numpy()[b], other.labels.numpy())


def test_extraction_speed_and_ima_vector(waves):
    x, rate = waves[0], waves[1]
    t = time.perf_counter()
    feats = fsdd.central_spectrograms(x, rate)
    elapsed = time.perf_counter() - t
    assert feats.shape == (3000, 4860)
    assert elapsed < 30.0, f"spectrograms of 3000 clips took {elapsed:.1f} s"  # ~1 s; generous for busy CI
    v = utterance_mfcc(x[0], rate)  # the IMA A.1.2 speech vector on a real clip
    assert v.shape == (696,) and np.isfinite(v).all()
