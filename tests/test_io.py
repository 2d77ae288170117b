"""File I/O: the .npz schema, array loaders, embeddings, spec files and splits."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from commonspace.data import DataError, MultimodalDataset
from commonspace.data import io as dio
from commonspace.data.io import (
    load_array,
    load_csv,
    load_embeddings,
    load_mat,
    load_npz,
    save_embeddings,
    save_npz,
)
from commonspace.data.spec import load_spec
from commonspace.data.splits import stratified_splits


def _dataset(multilabel: bool = False) -> MultimodalDataset:
    rng = np.random.default_rng(0)
    n = 12
    img = rng.normal(size=(n, 1, 4, 4))
    txt = rng.normal(size=(n, 5))
    mask = np.ones((n, 2), bool)
    mask[[2, 7], 1] = False
    txt[[2, 7]] = 0
    labels = (rng.random((n, 3)) > 0.5).astype(int) if multilabel else np.arange(n) % 3
    splits = {"train": np.arange(8), "test": np.arange(8, 12), "query": np.array([8, 9])}
    return MultimodalDataset({"img": img, "txt": txt}, mask, labels, splits, "toy", ["a", "b", "c"],
                             {"source": "unit test", "n": 3})


# ----------------------------------------------------------------------------- npz
@pytest.mark.parametrize("multilabel", [False, True])
def test_npz_round_trip(tmp_path, multilabel):
    d = _dataset(multilabel)
    p = save_npz(d, tmp_path / "toy.npz")
    e = load_npz(p)
    assert e.name == "toy" and e.modalities == d.modalities and e.class_names == ["a", "b", "c"]
    for m in d.modalities:
        torch.testing.assert_close(e.features[m], d.features[m])
    assert torch.equal(e.mask, d.mask) and torch.equal(e.labels, d.labels)
    assert e.multilabel == multilabel
    assert {k: v.tolist() for k, v in e.splits.items()} == {k: v.tolist() for k, v in d.splits.items()}
    assert e.meta["source"] == "unit test" and e.meta["n"] == 3
    assert sorted(os.listdir(tmp_path)) == ["toy.npz"]  # no temp files left


def test_npz_minimal_user_file(tmp_path):
    p = tmp_path / "mine.npz"
    np.savez(p, x_audio=np.ones((4, 3)), x_video=np.ones((4, 2, 2, 2)), labels=np.array([0, 1, 1, 0]),
             split_train=np.array([0, 1]), split_test=np.array([2, 3]))
    d = load_npz(p)
    assert d.modalities == ("audio", "video") and d.name == "mine" and d.dims["video"] == (2, 2, 2)
    assert d.split("test").tolist() == [2, 3]


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_npz(tmp_path / "nope.npz")
    p = tmp_path / "bad.npz"
    np.savez(p, features=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"x_<modality>.*\['features'\]"):
        load_npz(p)
    np.savez(p, x_a=np.ones((3, 2)), x_b=np.ones((3, 2)), mask=np.ones((3, 2), bool))
    with pytest.raises(DataError, match="no 'modalities'"):
        load_npz(p)
    np.savez(p, x_a=np.ones((3, 2)), modalities=np.array(["a", "c"]))
    with pytest.raises(DataError, match="make them agree"):
        load_npz(p)
    np.savez(p, x_a=np.ones((3, 2)), labels=np.ones(4))
    with pytest.raises(DataError, match=r"bad\.npz: labels have shape"):
        load_npz(p)
    with pytest.raises(DataError, match="suffix"):
        save_npz(_dataset(), tmp_path / "toy.h5")
    with pytest.raises(DataError, match="does not exist"):
        save_npz(_dataset(), tmp_path / "missing_dir" / "toy.npz")


def test_save_npz_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "toy.npz"

    def broken(fh, arrays, compress=True):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(dio, "write_npz", broken)
    with pytest.raises(OSError, match="disk full"):
        save_npz(_dataset(), target)
    assert os.listdir(tmp_path) == []  # neither the target nor a temp file
    monkeypatch.undo()

    save_npz(_dataset(), target)
    before = target.read_bytes()
    monkeypatch.setattr(dio, "write_npz", broken)
    with pytest.raises(OSError):
        save_npz(_dataset(True), target)
    assert target.read_bytes() == before  # the old file survives a failed overwrite
    assert os.listdir(tmp_path) == ["toy.npz"]


# ---------------------------------------------------------------------- arrays
def test_mat_v5(tmp_path):
    p = tmp_path / "f.mat"
    a = np.arange(12.0).reshape(3, 4)
    scipy.io.savemat(p, {"A": a, "y": np.array([[1], [2], [3]])})
    np.testing.assert_array_equal(load_array(p, "A"), a)
    np.testing.assert_array_equal(load_mat(p, "y").ravel(), [1, 2, 3])
    with pytest.raises(DataError, match=r"no array named 'B'; available keys: \['A', 'y'\]"):
        load_array(p, "B")
    with pytest.raises(DataError, match="pass key="):
        load_array(p)


def test_mat_v73_transposed(tmp_path):
    """MATLAB -v7.3 files are HDF5 with every matrix stored transposed (column-major)."""
    p = tmp_path / "v73.mat"
    a = np.arange(12.0).reshape(3, 4)  # what MATLAB shows as a 3x4 matrix
    with h5py.File(p, "w", userblock_size=512) as f:
        d = f.create_dataset("A", data=a.T)
        d.attrs["MATLAB_class"] = np.bytes_("double")
        f.create_group("#refs#")
    with open(p, "r+b") as fh:  # MATLAB writes a text header into the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
                 b"HDF5 schema 1.00 .")
    out = load_array(p)  # '#refs#' is not a variable, so the single key needs no name
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, a)
    with pytest.raises(DataError, match=r"no array named 'B'; available keys: \['A'\]"):
        load_mat(p, "B")


def test_csv_header_and_labels(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("f1,f2,label\n1,2,0\n3,4,1\n5,6.5,1\n")
    x, y = load_csv(p, label_column="label")
    np.testing.assert_array_equal(x, [[1, 2], [3, 4], [5, 6.5]])
    assert y.tolist() == [0, 1, 1]
    x, y = load_csv(p, label_column=-1)
    assert x.shape == (3, 2) and y.tolist() == [0, 1, 1]
    assert load_array(p).shape == (3, 3)
    q = tmp_path / "n.csv"
    q.write_text("0,1,2\n1,2,3\n")
    assert load_csv(q)[0].shape == (2, 3)  # auto: numeric first row is data
    assert load_csv(q, header=True)[0].shape == (1, 3)  # a numeric header must be declared
    with pytest.raises(DataError, match="no column named 'cls'"):
        load_csv(p, label_column="cls")
    with pytest.raises(DataError, match="out of range"):
        load_csv(p, label_column=5)
    q.write_text("1,2\n3,abc\n")
    with pytest.raises(DataError, match="not purely numeric"):
        load_csv(q)
    with pytest.raises(DataError, match="drop key"):
        load_array(p, "x")


def test_npy_npz_h5_and_suffix_errors(tmp_path):
    a = np.arange(6).reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), a)
    np.savez(tmp_path / "b.npz", one=a, two=a * 2)
    np.testing.assert_array_equal(load_array(tmp_path / "b.npz", "two"), a * 2)
    with pytest.raises(DataError, match=r"available keys: \['one', 'two'\]"):
        load_array(tmp_path / "b.npz", "three")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["grp/x"] = a
    np.testing.assert_array_equal(load_array(tmp_path / "c.h5"), a)
    (tmp_path / "d.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match=r"d\.xlsx: unsupported file type '\.xlsx'"):
        load_array(tmp_path / "d.xlsx")
    with pytest.raises(DataError, match=r"missing\.npy: file not found"):
        load_array(tmp_path / "missing.npy")


# ------------------------------------------------------------------ embeddings
def test_save_embeddings_npz(tmp_path):
    z = {"image": torch.randn(5, 3), "text": np.ones((5, 3), np.float32), "labels": np.arange(5)}
    p = save_embeddings(tmp_path / "emb.npz", z, {"model": "cca", "dim": 3})
    arrays, meta = load_embeddings(p)
    np.testing.assert_allclose(arrays["image"], z["image"].numpy())
    assert meta == {"model": "cca", "dim": 3} and set(arrays) == {"image", "text", "labels"}
    with pytest.raises(DataError, match=r"\.npz, \.parquet or a folder"):
        save_embeddings(tmp_path / "emb.csv", z)


def test_save_embeddings_parquet(tmp_path, monkeypatch):
    z = {"image": np.random.default_rng(0).normal(size=(4, 3)), "labels": np.arange(4)}
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pip install pyarrow"):
            save_embeddings(tmp_path / "e.parquet", z)
        assert not (tmp_path / "e.parquet").exists()
        pytest.skip("pyarrow not installed; checked the error message only")
    p = save_embeddings(tmp_path / "e.parquet", z, {"model": "x"})
    arrays, meta = load_embeddings(p)
    np.testing.assert_allclose(arrays["image"], z["image"])
    assert arrays["labels"].tolist() == [0, 1, 2, 3] and meta == {"model": "x"}
    with pytest.raises(DataError, match="equal row counts"):
        save_embeddings(tmp_path / "f.parquet", {"a": np.ones((3, 2)), "b": np.ones(4)})


def test_parquet_missing_pyarrow_message(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match="pip install pyarrow"):
        save_embeddings(tmp_path / "e.parquet", {"a": np.ones((2, 2))})


# ---------------------------------------------------------------------- splits
def test_stratified_splits():
    y = np.repeat(np.arange(4), 50)
    s = stratified_splits(y, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [140, 20, 40]
    assert len(np.unique(np.concatenate(list(s.values())))) == 200
    for k, size in (("train", 35), ("val", 5), ("test", 10)):
        assert np.bincount(y[s[k]]).tolist() == [size] * 4
    again = stratified_splits(y, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = stratified_splits(y, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    assert not np.array_equal(s["test"], other["test"])


def test_stratified_splits_counts_and_errors():
    y = np.repeat(np.arange(2), 10)
    s = stratified_splits(y, {"train": 0, "test": 4})
    assert len(s["test"]) == 4 and len(s["train"]) == 16
    r = stratified_splits(None, {"train": 0.5, "test": 0.5}, n=10)  # unlabelled: random
    assert len(r["test"]) == 5
    with pytest.raises(DataError, match="sum to 1"):
        stratified_splits(y, {"train": 0.5, "test": 0.2})
    with pytest.raises(DataError, match="'train' entry"):
        stratified_splits(y, {"test": 0.5})
    with pytest.raises(DataError, match="stratified 'test'"):
        stratified_splits(np.array([0, 0, 0, 1]), {"train": 0.5, "test": 0.5})


# ------------------------------------------------------------------------ spec
def _write_spec_files(root):
    rng = np.random.default_rng(0)
    n = 40
    y = np.repeat(np.arange(4), 10)
    scipy.io.savemat(root / "feat.mat", {"X_img": rng.normal(size=(n, 6)) + y[:, None],
                                          "idx_test": np.arange(31, 41)[:, None]})  # 1-based, MATLAB style
    txt = np.column_stack([rng.normal(size=(n, 3)), y + 1])
    txt[5, :3] = np.nan  # text missing for sample 5
    np.savetxt(root / "text.csv", txt, delimiter=",", header="t0,t1,t2,cls", comments="")
    (root / "names.txt").write_text("w\nx\ny\nz\n")
    return y


def test_spec_fractions_and_standardize(tmp_path):
    (tmp_path / "data").mkdir()
    y = _write_spec_files(tmp_path / "data")
    spec = tmp_path / "my.toml"
    spec.write_text("""
name = "toy-spec"
root = "data"
standardize = true

[modalities.image]
file = "feat.mat"
key = "X_img"

[modalities.text]
file = "text.csv"
columns = "0:-1"
missing = "nan"

[labels]
file = "text.csv"
column = -1
offset = -1
class_names_file = "names.txt"

[split]
train = 0.6
val = 0.2
test = 0.2
seed = 0

[meta]
source = "unit test"
""")
    d = load_spec(spec)
    assert d.name == "toy-spec" and d.dims == {"image": (6,), "text": (3,)}
    assert d.labels.tolist() == y.tolist() and d.class_names == ["w", "x", "y", "z"]
    assert not d.mask[5, 1] and int((~d.mask).sum()) == 1 and d.features["text"][5].abs().sum() == 0
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 24, "val": 8, "test": 8}
    assert d.meta["standardized_on"] == "train" and d.meta["source"] == "unit test"
    tr = d.features["image"][d.split("train")]
    np.testing.assert_allclose(tr.mean(0).numpy(), 0, atol=1e-5)


def test_spec_explicit_splits(tmp_path):
    _write_spec_files(tmp_path)
    np.save(tmp_path / "train.npy", np.arange(30))
    spec = tmp_path / "s.toml"
    spec.write_text("""
[modalities]
image = "feat.mat#"
""".replace('"feat.mat#"', '{ file = "feat.mat", key = "X_img" }') + """
[splits]
train = "train.npy"
test = { file = "feat.mat", key = "idx_test", index_base = 1 }
""")
    d = load_spec(spec)
    assert d.split("test").tolist() == list(range(30, 40)) and len(d.split("train")) == 30
    assert d.labels is None and d.name == "s"


def test_spec_errors(tmp_path):
    _write_spec_files(tmp_path)
    spec = tmp_path / "bad.toml"
    with pytest.raises(DataError, match="spec file not found"):
        load_spec(spec)
    spec.write_text("name = \n")
    with pytest.raises(DataError, match="not valid TOML"):
        load_spec(spec)
    spec.write_text('nmae = "x"\n[modalities.a]\nfile = "feat.mat"\nkey = "X_img"\n')
    with pytest.raises(DataError, match=r"unknown option\(s\) \['nmae'\]"):
        load_spec(spec)
    spec.write_text('[modalities.a]\nfile = "feat.mat"\nkey = "X_im"\n')
    with pytest.raises(DataError, match=r"\[modalities.a\].*no array named 'X_im'; available keys"):
        load_spec(spec)
    spec.write_text('[modalities.a]\nfile = "nothere.npy"\n')
    with pytest.raises(DataError, match="nothere.npy: file not found"):
        load_spec(spec)
    spec.write_text('standardize = true\n[modalities.a]\nfile = "feat.mat"\nkey = "X_img"\n')
    with pytest.raises(DataError, match="standardize fits on split 'train'"):
        load_spec(spec)
    spec.write_text("")
    with pytest.raises(DataError, match="at least one"):
        load_spec(spec)


def test_docs_example_spec_parses():
    """The spec in docs/data.md must stay valid TOML with only known options."""
    import re
    import tomllib
    from pathlib import Path

    from commonspace.data import spec as spec_mod

    doc = Path(__file__).resolve().parents[1] / "docs" / "data.md"
    if not doc.is_file():
        pytest.skip("docs/data.md not present")
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    assert blocks
    for b in blocks:
        parsed = tomllib.loads(b)
        assert set(parsed) <= spec_mod._TOP
    assert json.dumps(parsed)
