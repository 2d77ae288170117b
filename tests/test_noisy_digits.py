"""IMA noisy image-speech pairing: noise definitions (A.1.1, A.1.2), exact counts, splits, builtins."""

from __future__ import annotations

import numpy as np
import pytest

from commonspace.data import DataError, builtin
from commonspace.data.builtin import DatasetUnavailable, fsdd, mnist5k
from commonspace.data.builtin import noisy_digits as nd
from commonspace.data.features import synth, utterance_mfcc

# ----------------------------------------------------------------- noise generators


def test_sparse_gaussian_images_follow_appendix_a11():
    x = nd.sparse_gaussian_images(2000, np.random.default_rng(0))
    assert x.shape == (2000, 784) and x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    zeros = (x == 0).sum(1)
    k = round(0.8 * 784)
    assert zeros.min() >= k and zeros.max() <= k + 2  # exactly K*784 set to zero (+ the odd negative pixel)
    nz = x[x > 0]
    assert abs(nz.mean() - 0.5) < 0.003 and abs(nz.std() - 0.12) < 0.003  # N(0.5, 0.12) where not zeroed
    share = (x == 0).mean(0)  # zeroed pixels are uniform over positions (no spatial structure)
    assert np.abs(share - 0.8).max() < 0.05
    assert np.array_equal(x, nd.sparse_gaussian_images(2000, np.random.default_rng(0)))
    mnist = mnist5k().features["image"].numpy()
    assert (mnist == 0).mean() > 0.75  # MNIST is about as sparse, which is why the paper picks K = 0.8


def test_white_noise_follows_appendix_a12():
    w = nd.white_noise_waveforms(40, np.random.default_rng(0))
    assert w.shape == (40, 12_500) and w.dtype == np.float32  # 1 s at 12.5 kHz
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
    power = (np.abs(np.fft.rfft(w, axis=1)) ** 2).mean(0)[1:]
    bands = power[: power.size // 16 * 16].reshape(16, -1).mean(1)
    assert bands.max() / bands.min() < 1.15  # flat spectrum
    f = nd.white_noise_speech(5, np.random.default_rng(1))
    ref = nd.white_noise_waveforms(5, np.random.default_rng(1))
    assert f.shape == (5, 696)
    np.testing.assert_allclose(f, np.stack([utterance_mfcc(r, 12_500) for r in ref]), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------- pairing


def _pools(n_img=(30, 40), n_sp=(25, 35), dim_i=784, dim_s=696):
    """Two classes; each row's features hold its own row index, so provenance can be checked."""
    iy = np.repeat([0, 1], n_img)
    sy = np.repeat([0, 1], n_sp)
    img = np.repeat(np.arange(iy.size, dtype=np.float32)[:, None], dim_i, 1)
    sp = np.repeat(np.arange(sy.size, dtype=np.float32)[:, None], dim_s, 1)
    return img, iy, sp, sy


def _noise(value):
    return lambda n, rng: np.full((n, 784 if value == -1 else 696), value, np.float32)


def test_pairing_counts_labels_and_indicators():
    img, iy, sp, sy = _pools()
    d = nd.build_noisy_pairs(img, iy, sp, sy, n_per_class=20, R=0.1, seed=0, image_noise_fn=_noise(-1.0),
                             speech_noise_fn=_noise(-2.0))
    y, m = d.labels.numpy(), d.meta
    ni, ns, ir, sr = m["noise_image"], m["noise_speech"], m["image_rows"], m["speech_rows"]
    assert len(d) == 2 * 22 and not d.splits and "not by instance" in m["pairing"] and m["R"] == 0.1
    assert ni.dtype == bool and ns.dtype == bool and not (ni & ns).any()
    for c in (0, 1):
        rows = y == c
        assert (ni & rows).sum() == 2 and (ns & rows).sum() == 2 and (~ni & ~ns & rows).sum() == 18  # NR/NR/N(1-R)
    xi, xs = d.features["image"].numpy(), d.features["speech"].numpy()
    assert np.array_equal(ni, ir < 0) and np.array_equal(ns, sr < 0)
    assert (xi[ni] == -1).all() and (xs[ns] == -2).all()
    np.testing.assert_array_equal(xi[~ni, 0], ir[~ni])  # real rows are the source rows named in meta
    np.testing.assert_array_equal(xs[~ns, 0], sr[~ns])
    assert np.array_equal(iy[ir[~ni]], y[~ni]) and np.array_equal(sy[sr[~ns]], y[~ns])  # label = the digit
    assert np.unique(ir[~ni]).size == 40 and np.unique(sr[~ns]).size == 40  # each image / utterance once
    assert m["n_per_class"] == {"all": {0: 20, 1: 20}}
    assert not np.array_equal(y, np.sort(y))  # rows are shuffled, not sorted by class


def test_pairing_default_n_rounding_and_errors():
    img, iy, sp, sy = _pools()
    d = nd.build_noisy_pairs(img, iy, sp, sy, R=0.1)  # N = min(images, utterances) = 25 / 35
    ni, ns, y = d.meta["noise_image"], d.meta["noise_speech"], d.labels.numpy()
    assert [(ni & (y == c)).sum() for c in (0, 1)] == [3, 4]  # 2.5 -> 3 (half up), 3.5 -> 4
    assert [(~ni & ~ns & (y == c)).sum() for c in (0, 1)] == [22, 31]
    assert d.features["image"].shape == (len(d), 784) and nd.build_noisy_pairs(img, iy, sp, sy, R=0.0).n == 60
    with pytest.raises(DataError, match="only 30 images and 25 utterances"):
        nd.build_noisy_pairs(img, iy, sp, sy, n_per_class=26)
    with pytest.raises(DataError, match="R must be in"):
        nd.build_noisy_pairs(img, iy, sp, sy, R=1.5)
    with pytest.raises(DataError, match="image_noise_fn returned shape"):
        nd.build_noisy_pairs(img, iy, sp, sy, image_noise_fn=lambda n, rng: np.zeros((n, 5)))
    with pytest.raises(DataError, match="both image_splits and speech_splits"):
        nd.build_noisy_pairs(img, iy, sp, sy, image_splits={"train": np.arange(5)})


def test_pairing_seed_and_noise_streams():
    img, iy, sp, sy = _pools()
    a = nd.build_noisy_pairs(img, iy, sp, sy, seed=3)
    b = nd.build_noisy_pairs(img, iy, sp, sy, seed=3)
    assert all(np.array_equal(a.features[m], b.features[m]) for m in a.modalities)
    assert np.array_equal(a.labels, b.labels)
    c = nd.build_noisy_pairs(img, iy, sp, sy, seed=4)
    assert not np.array_equal(a.meta["image_rows"], c.meta["image_rows"])
    e = nd.build_noisy_pairs(img, iy, sp, sy, seed=3, image_noise_fn=_noise(-1.0))
    assert np.array_equal(a.meta["image_rows"], e.meta["image_rows"])  # another noise leaves the pairing alone
    assert np.array_equal(a.features["speech"], e.features["speech"])


def test_pairing_keeps_splits_apart():
    img, iy, sp, sy = _pools(n_img=(50, 50), n_sp=(40, 40))
    isp = {"train": np.r_[0:30, 50:80], "test": np.r_[30:50, 80:100]}
    ssp = {"train": np.r_[0:25, 40:65], "test": np.r_[25:40, 65:80]}
    d = nd.build_noisy_pairs(img, iy, sp, sy, R=0.2, image_splits=isp, speech_splits=ssp)
    ir, sr = d.meta["image_rows"], d.meta["speech_rows"]
    for s in ("train", "test"):
        rows = d.split(s).numpy()
        assert set(ir[rows][ir[rows] >= 0]) <= set(isp[s]) and set(sr[rows][sr[rows] >= 0]) <= set(ssp[s])
    assert d.meta["n_per_class"] == {"train": {0: 25, 1: 25}, "test": {0: 15, 1: 15}}
    assert len(d.split("train")) == 2 * 30 and len(d.split("test")) == 2 * 18
    assert np.array_equal(np.sort(np.concatenate([d.split("train"), d.split("test")])), np.arange(len(d)))


def test_reuse_split_pairs_every_image_and_reuses_utterances_evenly():
    img, iy, sp, sy = _pools(n_img=(50, 50), n_sp=(40, 40))
    isp = {"train": np.r_[0:30, 50:80], "test": np.r_[30:50, 80:100]}
    ssp = {"train": np.r_[0:25, 40:65], "test": np.r_[25:32, 65:71]}  # 7 and 6 test utterances
    base = nd.build_noisy_pairs(img, iy, sp, sy, R=0.1, seed=5, image_splits=isp, speech_splits=ssp)
    kw = dict(R=0.1, seed=5, image_splits={**isp, "test_paper": isp["test"]},
              speech_splits={"test_paper": ssp["test"], **ssp})  # listed first: still placed last
    d = nd.build_noisy_pairs(img, iy, sp, sy, reuse_speech={"test_paper"}, **kw)
    # the other splits are bit-identical to a build without the reuse split (own streams, placed last)
    n0 = len(base)
    assert np.array_equal(d.split("test_paper").numpy(), np.arange(n0, len(d)))
    for m in d.modalities:
        assert np.array_equal(d.features[m][:n0], base.features[m])
    assert np.array_equal(d.labels[:n0], base.labels)
    assert all(np.array_equal(d.split(s), base.split(s)) for s in ("train", "test"))
    # every test image once (N = 20 per class > 7 / 6 utterances), k = 2 noise pairs each way per class
    rows = d.split("test_paper").numpy()
    y, ir, sr = d.labels.numpy()[rows], d.meta["image_rows"][rows], d.meta["speech_rows"][rows]
    assert len(rows) == 2 * 22 and d.meta["n_per_class"]["test_paper"] == {0: 20, 1: 20}
    assert np.array_equal(np.sort(ir[ir >= 0]), np.sort(isp["test"]))
    assert np.array_equal(iy[ir[ir >= 0]], y[ir >= 0]) and np.array_equal(sy[sr[sr >= 0]], y[sr >= 0])  # in class
    for c, pool, uses in ((0, ssp["test"][:7], (2, 3)), (1, ssp["test"][7:], (3, 4))):  # 20 = 7*2+6 = 6*3+2
        u, n = np.unique(sr[(sr >= 0) & (y == c)], return_counts=True)
        assert np.array_equal(u, pool) and set(n) == set(uses) and n.sum() == 20
    assert [((ir < 0) & (y == c)).sum() for c in (0, 1)] == [2, 2]
    assert d.meta["reuse_speech"] == ["test_paper"]
    again = nd.build_noisy_pairs(img, iy, sp, sy, reuse_speech={"test_paper"}, **kw)
    assert all(np.array_equal(again.features[m], d.features[m]) for m in d.modalities)
    assert np.array_equal(again.meta["speech_rows"], d.meta["speech_rows"])
    other = nd.build_noisy_pairs(img, iy, sp, sy, reuse_speech={"test_paper"}, **{**kw, "seed": 6})
    assert not np.array_equal(other.meta["speech_rows"][-len(rows):], sr)
    # without reuse the split is limited by the scarcer side
    plain = nd.build_noisy_pairs(img, iy, sp, sy, **kw)
    assert plain.meta["n_per_class"]["test_paper"] == {0: 7, 1: 6}
    with pytest.raises(DataError, match="not splits here"):
        nd.build_noisy_pairs(img, iy, sp, sy, reuse_speech={"tset"}, **kw)
    with pytest.raises(DataError, match="utterances reused"):
        nd.build_noisy_pairs(img, iy, sp, sy, reuse_speech={"test_paper"}, n_per_class={"test_paper": 21}, **kw)


def test_reuse_without_splits_and_no_reuse_needed():
    img, iy, sp, sy = _pools(n_img=(30, 40), n_sp=(25, 35))
    d = nd.build_noisy_pairs(img, iy, sp, sy, R=0.0, reuse_speech=True)
    assert d.meta["n_per_class"] == {"all": {0: 30, 1: 40}} and d.meta["reuse_speech"] == ["all"]
    sr, y = d.meta["speech_rows"], d.labels.numpy()
    assert np.array_equal(np.unique(sr[y == 1]), np.arange(25, 60))  # 40 draws over 35 utterances: all used
    small = nd.build_noisy_pairs(img, iy, sp, sy, R=0.0, n_per_class=10, reuse_speech=True)
    assert all(np.unique(small.meta["speech_rows"][small.labels.numpy() == c]).size == 10 for c in (0, 1))


# ----------------------------------------------------------------- builtins


def _check_builtin(d, image_split_of):
    """Test pairs hold only test images; labels match sources; counts follow N / N R per class and split."""
    m, y = d.meta, d.labels.numpy()
    ir, ni, ns = m["image_rows"], m["noise_image"], m["noise_speech"]
    mn = mnist5k()
    assert np.array_equal(mn.labels.numpy()[ir[~ni]], y[~ni])
    for s in ("train", "val", "test"):
        rows = d.split(s).numpy()
        real = ir[rows][~ni[rows]]
        assert set(real) <= image_split_of[s]
        for c, n in m["n_per_class"][s].items():
            k = int(np.floor(n * m["R"] + 0.5))
            in_c = y[rows] == c
            assert (ni[rows] & in_c).sum() == k and (ns[rows] & in_c).sum() == k and in_c.sum() == n + k
    im = d.features["image"].numpy()
    assert im.min() >= 0 and im.max() <= 1 and d.dims == {"image": (784,), "speech": (696,)}
    assert "not by instance" in m["pairing"]


def test_noisy_digits_builtin_small(monkeypatch, tmp_path):
    try:
        synth.espeak_paths()
    except synth.SynthesisError as exc:
        pytest.skip(f"eSpeak NG not available: {exc}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = builtin.load("noisy-digits", speech_per_digit=10)  # 100 utterances: 6 / 1 / 3 per digit and split
    mn = mnist5k()
    _check_builtin(d, {s: set(mn.split(s).numpy().tolist()) for s in ("train", "val", "test")})
    assert {s: len(i) for s, i in d.splits.items()} == {"train": 70, "val": 10, "test": 30}  # 6+1, 1+0, 3+0
    cached = list((tmp_path / "commonspace").glob("noisy-digits-speech-*.npz"))
    assert len(cached) == 1 and d.meta["speech_cache"] == str(cached[0])
    again = builtin.load("noisy-digits", speech_per_digit=10)  # from the cache: identical
    assert all(np.array_equal(again.features[k], d.features[k]) for k in d.modalities)
    fresh = builtin.load("noisy-digits", speech_per_digit=10, cache=False)  # re-synthesised: identical
    assert np.array_equal(fresh.features["speech"], d.features["speech"]) and fresh.meta["speech_cache"] is None
    # speech rows of different splits are different utterances
    sr = d.meta["speech_rows"]
    used = [set(sr[d.split(s).numpy()][sr[d.split(s).numpy()] >= 0]) for s in ("train", "val", "test")]
    assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])


def test_noisy_digits_full_size(monkeypatch):
    """The default sizes (5500 pairs), with stand-in speech features so no synthesis is needed."""
    def fake(n_per_digit=500, seed=0, cache=True):
        rng = np.random.default_rng(0)
        return rng.normal(size=(10 * n_per_digit, 696)).astype(np.float32), np.repeat(np.arange(10), n_per_digit), {}

    monkeypatch.setattr(nd, "synthetic_speech_features", fake)
    d = builtin.load("noisy-digits")
    info = {r["name"]: r for r in builtin.available()}["noisy-digits"]
    assert len(d) == info["samples"] == 5500 and {s: len(i) for s, i in d.splits.items()} == info["splits"]
    assert d.meta["n_per_class"]["test"] == {c: 150 for c in range(10)}
    assert d.meta["noise_image"].sum() == d.meta["noise_speech"].sum() == 500  # 30 + 5 + 15 per class
    mn = mnist5k()
    _check_builtin(d, {s: set(mn.split(s).numpy().tolist()) for s in ("train", "val", "test")})
    e = builtin.load("noisy-digits", R=0.2, seed=1, n_per_class=20)
    assert len(e) == 3 * 10 * 24 and e.meta["R"] == 0.2


def test_noisy_digits_paper_test_split(monkeypatch):
    """``paper_test``: every MNIST-5k test image paired once, utterances reused within class; rest unchanged."""
    def fake(n_per_digit=500, seed=0, cache=True):
        rng = np.random.default_rng(0)
        return rng.normal(size=(10 * n_per_digit, 696)).astype(np.float32), np.repeat(np.arange(10), n_per_digit), {}

    monkeypatch.setattr(nd, "synthetic_speech_features", fake)
    plain = builtin.load("noisy-digits", speech_per_digit=100)  # 30 test utterances per digit
    d = builtin.load("noisy-digits", speech_per_digit=100, paper_test=True)
    n0 = len(plain)
    assert {s: len(i) for s, i in d.splits.items()} == {**{s: len(i) for s, i in plain.splits.items()},
                                                         "test_paper": 1650}
    assert all(np.array_equal(d.features[m][:n0], plain.features[m]) for m in d.modalities)
    rows = d.split(nd.PAPER_TEST).numpy()
    y, ir, sr = d.labels.numpy()[rows], d.meta["image_rows"][rows], d.meta["speech_rows"][rows]
    mn = mnist5k()
    assert np.array_equal(np.sort(ir[ir >= 0]), np.sort(mn.split("test").numpy()))  # each test image once
    st = d.meta["speech_rows"][d.split("test").numpy()]
    test_utts = set(st[st >= 0].tolist())
    assert set(sr[sr >= 0].tolist()) == test_utts and len(test_utts) == 300  # only (all) test utterances
    assert set(np.unique(sr[sr >= 0], return_counts=True)[1]) == {5}  # 150 images / 30 utterances
    assert np.array_equal(np.bincount(y), np.full(10, 165))
    assert (d.meta["noise_image"][rows].sum(), d.meta["noise_speech"][rows].sum()) == (150, 150)


def test_unavailable_synthesiser_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(synth.LIB_ENV, str(tmp_path / "missing.so"))
    monkeypatch.setenv(synth.DATA_ENV, str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="eSpeak NG.*does not exist"):
        builtin.load("noisy-digits", speech_per_digit=1)
    assert not {r["name"]: r for r in builtin.available()}["noisy-digits"]["available"]


def test_noisy_digits_fsdd(shared_data):
    root = shared_data / "fsdd"
    if fsdd.locate(root) is None:
        pytest.skip(f"FSDD recordings not found under {root}")
    d = builtin.load("noisy-digits-fsdd", root=root)
    info = {r["name"]: r for r in builtin.available()}["noisy-digits-fsdd"]
    assert len(d) == info["samples"] == 3300 and {s: len(i) for s, i in d.splits.items()} == info["splits"]
    mn = mnist5k()
    _check_builtin(d, {s: set(mn.split(s).numpy().tolist()) for s in ("train", "val", "test")})
    _, _, labels, _, takes, _ = fsdd.load_fsdd_waveforms(root)
    sr, ns = d.meta["speech_rows"], d.meta["noise_speech"]
    te = d.split("test").numpy()
    assert (takes[sr[te][~ns[te]]] < 5).all()  # test pairs: only FSDD's official test recordings
    tr = d.split("train").numpy()
    assert (takes[sr[tr][~ns[tr]]] >= 5).all()
    assert np.array_equal(labels[sr[~ns]], d.labels.numpy()[~ns])
    # the paper-scale split: all 1500 test images, each FSDD test recording of the digit used 5 times
    p = builtin.load("noisy-digits-fsdd", root=root, paper_test=True)
    assert all(np.array_equal(p.features[m][:len(d)], d.features[m]) for m in d.modalities)
    rows = p.split(nd.PAPER_TEST).numpy()
    sr, ir, y = p.meta["speech_rows"][rows], p.meta["image_rows"][rows], p.labels.numpy()[rows]
    assert len(rows) == 1650 and np.array_equal(np.bincount(y), np.full(10, 165))
    assert np.array_equal(np.sort(ir[ir >= 0]), np.sort(mn.split("test").numpy()))
    u, n = np.unique(sr[sr >= 0], return_counts=True)
    assert u.size == 300 and (takes[u] < 5).all() and set(n) == {5}
    assert np.array_equal(labels[sr[sr >= 0]], y[sr >= 0])


def test_fsdd_variant_unavailable(tmp_path, monkeypatch):
    monkeypatch.delenv("COMMONSPACE_FSDD", raising=False)
    with pytest.raises(DatasetUnavailable, match="Free Spoken Digit Dataset was not found"):
        builtin.load("noisy-digits-fsdd", root=tmp_path)
