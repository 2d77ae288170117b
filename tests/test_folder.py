"""Dataset folders (issue 15, item 1 and the batch half of item 2): memory-mapped features, chunked writing and
validation, damage detection, batches gathered from the map, and training identical to the in-memory path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data import folder as folder_mod
from commonspace.data.dataset import DataError, LazyArray, MultimodalDataset, Standardizer
from commonspace.data.folder import open_folder, write_folder
from commonspace.data.io import load_h5
from commonspace.data.resolve import resolve_data

runner = CliRunner()


def _toy(n: int = 50, seed: int = 0, multilabel: bool = False, big: float | None = None) -> MultimodalDataset:
    """Vectors ``a`` (6-d), feature maps ``img`` (2 x 3 x 3) missing for every 5th row, labels and splits."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 6)).astype(np.float32) * 3
    img = rng.normal(size=(n, 2, 3, 3)).astype(np.float32)
    mask = np.ones((n, 2), bool)
    mask[::5, 1] = False
    img[~mask[:, 1]] = 0
    if big is not None:
        a[3, 1] = big
    y = rng.random((n, 3)) < 0.4 if multilabel else rng.integers(0, 4, n)
    perm = rng.permutation(n)
    splits = {"train": np.sort(perm[:30]), "val": np.sort(perm[30:40]), "test": np.sort(perm[40:])}
    return MultimodalDataset({"a": a, "img": img}, mask, y, splits, "toy", None if multilabel else list("wxyz"),
                             {"source": "test"})


def _refresh(folder: Path, name: str) -> None:
    """Record a tampered file's new size and checksum in meta.json (so the other checks are reached)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name] = {**meta["files"][name], **folder_mod._file_entry(folder / name)}
    (folder / "meta.json").write_text(json.dumps(meta))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("multilabel", [False, True])
def test_round_trip_float32_is_exact_and_lazy(tmp_path: Path, multilabel: bool) -> None:
    ds = _toy(multilabel=multilabel)
    out = write_folder(ds, tmp_path / "f", dtype="float32", chunk_rows=7)  # 7 does not divide 50
    back = open_folder(out)
    assert back.lazy_modalities == ("a", "img")
    assert back.dims == {"a": (6,), "img": (2, 3, 3)}
    assert isinstance(back._store()["a"].source, np.memmap)
    b0, b1 = ds.batch(), back.batch()
    for m in ds.modalities:
        assert b1.features[m].dtype == torch.float32 and torch.equal(b0.features[m], b1.features[m])
    assert torch.equal(ds.mask, back.mask) and torch.equal(ds.labels, back.labels)
    assert back.labels.dtype == ds.labels.dtype
    assert list(back.splits) == ["train", "val", "test"]
    assert all(torch.equal(ds.splits[s], back.splits[s]) for s in ds.splits)
    assert back.name == "toy" and back.class_names == ds.class_names and back.meta["source"] == "test"
    assert back.meta["folder"] == str(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == folder_mod.FORMAT and meta["version"] == 1 and meta["samples"] == 50
    assert meta["modalities"] == ["a", "img"] and meta["dtypes"] == {"a": "float32", "img": "float32"}
    assert set(meta["files"]) == {"x_a.npy", "x_img.npy", "mask.npy", "labels.npy", "split_train.npy",
                                  "split_val.npy", "split_test.npy"}
    assert all(len(r["sha256"]) == 64 for r in meta["files"].values())
    assert np.load(out / "x_img.npy", mmap_mode="r").shape == (50, 2, 3, 3)  # image-like shape kept


def test_round_trip_float16_within_rounding(tmp_path: Path) -> None:
    ds = _toy()
    back = open_folder(write_folder(ds, tmp_path / "f"))  # float16 is the default
    assert np.load(tmp_path / "f" / "x_a.npy", mmap_mode="r").dtype == np.float16
    for m in ds.modalities:
        got = back.batch().features[m]
        assert got.dtype == torch.float32
        assert torch.equal(got, ds.features[m].half().float())  # exactly float16's rounding, nothing else
        torch.testing.assert_close(got, ds.features[m], rtol=2 ** -11, atol=1e-4)
    assert torch.equal(back.mask, ds.mask)


def test_writing_goes_chunk_by_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = folder_mod._rows

    def spy(held, start, stop):
        calls.append((start, stop))
        return real(held, start, stop)

    monkeypatch.setattr(folder_mod, "_rows", spy)
    write_folder(_toy(), tmp_path / "f", chunk_rows=7)
    per_modality = [(s, min(50, s + 7)) for s in range(0, 50, 7)]
    assert calls == per_modality * 2  # 8 chunks per modality, the last of 1 row


def test_writing_from_a_folder_reads_it_in_chunks(tmp_path: Path) -> None:
    """Converting a folder (float32 -> float16) streams from the map, loading nothing whole."""
    src = open_folder(write_folder(_toy(), tmp_path / "f32", dtype="float32"))
    out = write_folder(src, tmp_path / "f16", dtype="float16", chunk_rows=9)
    assert src.features._loaded == {}
    assert torch.equal(open_folder(out).batch().features["a"], _toy().features["a"].half().float())


# ------------------------------------------------------------------ laziness and chunked validation
class _Recording:
    """An array-like that records every read (rows asked for), to check reads stay in chunks."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

    def __getitem__(self, key):
        rows = np.arange(self.shape[0])[key]
        self.reads.append(int(np.size(rows)))
        return self.a[key]


def test_validation_reads_in_chunks_and_never_whole() -> None:
    x = _Recording(np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32))
    ds = MultimodalDataset({"x": LazyArray(x, chunk_rows=8)})
    assert x.reads and max(x.reads) <= 8 and sum(x.reads) == 100  # one pass, in chunks
    x.reads.clear()
    ds.select(["x"]).subset(torch.tensor([5, 1, 1])).replace(splits={"t": [0]})
    assert x.reads == []  # derived datasets share the scan: nothing is read again
    ds.batch([9, 2, 2, 50])
    assert x.reads == [3]  # one sorted read of the unique rows


def test_opening_maps_without_loading(tmp_path: Path) -> None:
    ds = _toy()
    back = open_folder(write_folder(ds, tmp_path / "f", dtype="float32"))
    feats = back.features
    assert feats._loaded == {} and "a" in feats and list(feats) == ["a", "img"] and len(feats) == 2
    std = Standardizer.for_vectors(back.select(["a"]), "train")
    z = std.transform(back.select(["a"]))
    sub = back.subset("train").subset(torch.tensor([3, 0, 3]))
    for b in back.iter_batches("train", batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert len(b) <= 8
    z.batch([1, 2])
    back.split("test")
    back.replace(splits={"train": back.split("train")})
    assert feats._loaded == {} and back.lazy_modalities == ("a", "img") and sub.lazy_modalities == ("a", "img")
    assert z.lazy_modalities == ("a",)
    # asking for a whole modality loads it (once) and gives the in-memory tensor
    whole = back.features["a"]
    assert torch.equal(whole, ds.features["a"]) and back.features["a"] is whole
    assert back.lazy_modalities == ("img",)


def test_nan_in_the_last_chunk_is_found_with_its_row(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    mm = np.load(out / "x_a.npy", mmap_mode="r+")
    mm[49, 2] = np.nan
    mm.flush()
    del mm
    _refresh(out, "x_a.npy")
    with pytest.raises(DataError) as exc:
        open_folder(out, chunk_rows=7)
    msg = _one_line(exc)
    assert "x_a.npy" in msg and "NaN" in msg and "[49]" in msg
    # without the verifying pass the values are trusted, so the folder opens
    assert open_folder(out, verify=False).n == 50


def test_mask_contradicting_the_data_is_refused(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    mask = np.load(out / "mask.npy")
    mask[7, 0] = False  # row 7 of "a" is not zero
    np.save(out / "mask.npy", mask)
    _refresh(out, "mask.npy")
    with pytest.raises(DataError) as exc:
        open_folder(out, chunk_rows=4)
    assert "mask says modality 'a' is missing" in _one_line(exc) and "[7]" in str(exc.value)


# ------------------------------------------------------------------ damage and bad files
def test_flipped_byte_is_detected_by_the_checksum(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    raw = bytearray((out / "x_img.npy").read_bytes())
    raw[-5] ^= 0x01
    (out / "x_img.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError) as exc:
        open_folder(out)
    msg = _one_line(exc)
    assert "x_img.npy" in msg and "checksum" in msg and "commonspace convert" in msg


def test_flipped_byte_making_a_nan_is_reported_as_damage(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    raw = bytearray((out / "x_a.npy").read_bytes())
    raw[-1] = 0x7F
    raw[-2] = 0xC0  # the last float32 becomes a NaN
    (out / "x_a.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        open_folder(out)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    raw = (out / "x_a.npy").read_bytes()
    (out / "x_a.npy").write_bytes(raw[:-10])
    with pytest.raises(DataError) as exc:
        open_folder(out)
    assert "x_a.npy" in _one_line(exc) and "truncated" in str(exc.value)
    (out / "x_a.npy").write_bytes(raw)
    (out / "labels.npy").unlink()
    with pytest.raises(DataError) as exc:
        open_folder(out)
    assert "labels.npy" in _one_line(exc) and "missing" in str(exc.value)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="no meta.json"):
        open_folder(out)


def test_wrong_dtype_shape_and_labels_are_refused(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    good = np.load(out / "x_a.npy")
    np.save(out / "x_a.npy", good.astype(np.float64))
    _refresh(out, "x_a.npy")
    with pytest.raises(DataError) as exc:
        open_folder(out)
    assert "float64" in _one_line(exc) and "float32" in str(exc.value)

    np.save(out / "x_a.npy", good[:-1])
    _refresh(out, "x_a.npy")
    with pytest.raises(DataError) as exc:
        open_folder(out)
    assert "shape (49, 6)" in _one_line(exc) and "(50, 6)" in str(exc.value)

    np.save(out / "x_a.npy", good)
    _refresh(out, "x_a.npy")
    np.save(out / "labels.npy", np.zeros((50, 2, 2), np.int64))
    _refresh(out, "labels.npy")
    with pytest.raises(DataError) as exc:
        open_folder(out)
    assert "labels have shape (50, 2, 2)" in _one_line(exc)

    np.save(out / "labels.npy", np.zeros(50, np.float32))
    _refresh(out, "labels.npy")
    with pytest.raises(DataError, match="labels are int64"):
        open_folder(out)


def test_float16_overflow_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    ds = _toy(big=7e4)
    with pytest.raises(DataError) as exc:
        write_folder(ds, tmp_path / "f", chunk_rows=7)
    msg = _one_line(exc)
    assert "'a'" in msg and "float16" in msg and "float32" in msg and "[3]" in msg
    assert not (tmp_path / "f").exists() and _hidden(tmp_path) == []
    # float32 holds it
    assert open_folder(write_folder(ds, tmp_path / "f", dtype="float32")).batch([3]).features["a"][0, 1] == 7e4


def test_existing_folder_needs_overwrite_and_a_failed_overwrite_keeps_it(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    with pytest.raises(DataError, match="not empty"):
        write_folder(_toy(seed=1), out, dtype="float32")
    with pytest.raises(DataError, match="float16"):
        write_folder(_toy(big=1e5), out, overwrite=True)
    assert torch.equal(open_folder(out).batch().features["a"], _toy().features["a"])  # untouched
    write_folder(_toy(seed=1), out, dtype="float32", overwrite=True)
    assert torch.equal(open_folder(out).batch().features["a"], _toy(seed=1).features["a"])
    assert _hidden(tmp_path) == []
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dataset folder"):
        write_folder(_toy(), other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert open_folder(write_folder(_toy(), tmp_path / "empty")).n == 50  # an empty folder is filled


def test_stale_temp_folders_of_dead_writers_are_swept(tmp_path: Path) -> None:
    from commonspace.data.io import _host_tag

    dead = tmp_path / f".f.999999999-{_host_tag()}.abcd1234.tmp"
    dead.mkdir()
    (dead / "x_a.npy").write_bytes(b"half")
    write_folder(_toy(), tmp_path / "f")
    assert not dead.exists() and _hidden(tmp_path) == []


# ------------------------------------------------------------------ batches, subsets, standardisation
def test_batches_equal_the_in_memory_ones(tmp_path: Path) -> None:
    ds = _toy(n=64)
    back = open_folder(write_folder(ds, tmp_path / "f", dtype="float32", chunk_rows=5))
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = torch.as_tensor(rng.integers(0, 64, 23))  # unsorted, with repeats
        b0, b1 = ds.batch(idx), back.batch(idx)
        assert all(torch.equal(b0.features[m], b1.features[m]) for m in ds.modalities)
        assert torch.equal(b0.mask, b1.mask) and torch.equal(b0.labels, b1.labels) and torch.equal(b0.index, b1.index)
    # a subset of a subset is an index map onto the file
    rows = torch.as_tensor(rng.permutation(64)[:40])
    inner = torch.as_tensor(rng.integers(0, 40, 17))
    s0, s1 = ds.subset(rows).subset(inner), back.subset(rows).subset(inner)
    assert s1.n == 17 and s1.lazy_modalities == ("a", "img")
    assert all(torch.equal(s0.batch().features[m], s1.batch().features[m]) for m in ds.modalities)
    assert torch.equal(s0.mask, s1.mask)
    # iter_batches with the same generator gives the same batches
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for x0, x1 in zip(ds.iter_batches("train", 7, True, g0), back.iter_batches("train", 7, True, g1), strict=True):
        assert torch.equal(x0.features["img"], x1.features["img"]) and torch.equal(x0.index, x1.index)
    with pytest.raises(IndexError):
        back.batch([64])


def test_standardisation_is_chunked_and_matches_memory(tmp_path: Path) -> None:
    ds = _toy(n=64).select(["a"])
    mem = Standardizer().fit(ds, "train")
    one = open_folder(write_folder(ds, tmp_path / "f", dtype="float32")).select(["a"])
    many = open_folder(tmp_path / "f", chunk_rows=4).select(["a"])  # 30 training rows in 8 chunks
    st1, st8 = Standardizer().fit(one, "train"), Standardizer().fit(many, "train")
    assert torch.equal(st1.mean["a"], mem.mean["a"]) and torch.equal(st1.std["a"], mem.std["a"])
    torch.testing.assert_close(st8.mean["a"], mem.mean["a"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(st8.std["a"], mem.std["a"], rtol=1e-6, atol=1e-7)
    # applied per batch, bit for bit the in-memory transform (missing rows stay zero)
    full = _toy(n=64)
    back = open_folder(write_folder(full, tmp_path / "g", dtype="float32"))
    st = Standardizer().fit(full, "train")
    z0, z1 = st.transform(full), st.transform(back)
    idx = torch.tensor([5, 0, 63, 5, 10])
    assert all(torch.equal(z0.batch(idx).features[m], z1.batch(idx).features[m]) for m in full.modalities)
    assert torch.equal(z1.features["img"], z0.features["img"])  # loading applies it too
    assert z1.batch([0]).features["img"].abs().sum() == 0  # row 0 misses img


def test_pickling_reopens_the_file_instead_of_copying(tmp_path: Path) -> None:
    back = open_folder(write_folder(_toy(n=400), tmp_path / "f", dtype="float32"))
    blob = pickle.dumps(back)
    assert len(blob) < 400 * 24 * 4 / 3  # the features alone are 400 x 24 float32
    again = pickle.loads(blob)
    assert again.lazy_modalities == ("a", "img")
    assert torch.equal(again.batch([0, 3]).features["img"], back.batch([0, 3]).features["img"])
    sub = pickle.loads(pickle.dumps(back.subset(torch.arange(399, 0, -1))))
    assert torch.equal(sub.batch([0]).features["a"], back.batch([399]).features["a"])


# ------------------------------------------------------------------ training
def test_training_on_a_folder_gives_the_same_weights(tmp_path: Path) -> None:
    from commonspace.models.base import create
    from commonspace.train import TrainConfig, Trainer

    ds = _toy(n=80).select(["a"])
    rng = np.random.default_rng(5)
    ds = MultimodalDataset({"a": ds.features["a"], "b": rng.normal(size=(80, 5)).astype(np.float32)},
                           labels=ds.labels, splits=ds.splits)
    back = open_folder(write_folder(ds, tmp_path / "f", dtype="float32", chunk_rows=11), chunk_rows=11)
    weights = []
    for data in (ds, back):
        std = Standardizer.for_vectors(data, "train")
        data = std.transform(data)
        model = create("bidnn", data.dims, init_seed=0, hidden=16, central=8)
        cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, seed=0, progress=False)
        Trainer(model, cfg, standardizer=std).fit(data, train="train", val="val")
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert back.features._loaded == {}
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ------------------------------------------------------------------ HDF5 read lazily
def test_h5_in_the_npz_schema_is_read_lazily(tmp_path: Path) -> None:
    import h5py

    ds = _toy()
    p = tmp_path / "toy.h5"
    with h5py.File(p, "w") as f:
        f["x_img"] = ds.features["img"].numpy().astype(">f4")  # big-endian: converted on read
        f["x_a"] = ds.features["a"].numpy().astype(np.float64)
        f["mask"] = ds.mask.numpy()
        f["labels"] = ds.labels.numpy()
        for s, idx in ds.splits.items():
            f[f"split_{s}"] = idx.numpy()
        f.attrs["modalities"] = ["a", "img"]
        f.attrs["name"] = "toy-h5"
    h = load_h5(p)
    assert h.lazy_modalities == ("a", "img") and h.name == "toy-h5"
    idx = torch.tensor([7, 3, 3, 40])
    assert all(torch.equal(h.batch(idx).features[m], ds.batch(idx).features[m]) for m in ds.modalities)
    r = resolve_data(str(p))
    assert r.lazy_modalities == ("a", "img")
    out = write_folder(str(p), tmp_path / "f", dtype="float32", chunk_rows=6)
    assert torch.equal(open_folder(out).batch().features["img"], ds.features["img"])
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["x_a"] = np.array([[1.0, np.nan], [0.0, 1.0]])
    with pytest.raises(DataError, match=r"NaN or inf \(first bad rows \[0\]\)"):
        load_h5(tmp_path / "bad.h5")


# ------------------------------------------------------------------ CLI
def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_convert_builtin_then_train_and_evaluate(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    r = _run("convert", "digits-halves", f"{out}/", "--chunk-rows", "500")
    assert r.exit_code == 0, r.output
    assert "1797 rows" in r.output and "float16" in r.output
    run = tmp_path / "run"
    r = _run("train", "--data", f"{out}/", "--model", "bidnn", "--out", run, "--epochs", "1", "--no-progress",
             "--set", "hidden=32", "--set", "central=16")
    assert r.exit_code == 0, r.output
    ev = tmp_path / "ev.json"
    r = _run("evaluate", "--model", run, "--data", f"{out}/", "--split", "test", "--json", ev)
    assert r.exit_code == 0, r.output
    assert 0.0 <= json.loads(ev.read_text())["joint"]["map"] <= 1.0
    # an existing folder is refused without --overwrite, in one line
    r = _run("convert", "digits-halves", out)
    assert r.exit_code == 2 and "not empty" in r.output and "--overwrite" in r.output
    r = _run("convert", "digits-halves", out, "--overwrite", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    r = _run("convert", "digits-halves", tmp_path / "x", "--dtype", "float64")
    assert r.exit_code == 2 and "float16 or float32" in r.output


def test_cli_convert_npz_and_failures_leave_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    a, b = rng.normal(size=(60, 4)), rng.normal(size=(60, 3))
    np.savez(tmp_path / "my.npz", x_image=a, x_text=b, labels=y, modalities=np.array(["image", "text"]))
    r = _run("convert", tmp_path / "my.npz", tmp_path / "my", "--dtype", "float32", "--chunk-rows", "7")
    assert r.exit_code == 0, r.output
    back = open_folder(tmp_path / "my")
    assert torch.equal(back.batch().features["image"], torch.as_tensor(a, dtype=torch.float32))
    assert back.splits == {}  # the file had none; train carves the same seeded split from either
    run = tmp_path / "run"
    r = _run("train", "--data", tmp_path / "my", "--model", "ae_split", "--out", run, "--epochs", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    # float16 overflow: one line, exit 2, no folder and no temporary folder
    a[5, 0] = 1e6
    np.savez(tmp_path / "big.npz", x_image=a, x_text=b, labels=y, modalities=np.array(["image", "text"]))
    r = _run("convert", tmp_path / "big.npz", tmp_path / "big")
    assert r.exit_code == 2 and "float16" in r.output and "'image'" in r.output
    assert r.output.strip().count("\n") == 0
    assert not (tmp_path / "big").exists() and _hidden(tmp_path) == []
    # --data with a folder that is not a dataset folder
    (tmp_path / "plain").mkdir()
    r = _run("train", "--data", tmp_path / "plain", "--model", "bidnn", "--out", tmp_path / "r2", "--no-progress")
    assert r.exit_code == 2 and "meta.json" in r.output


# ------------------------------------------------------------------ resident memory
def _mapped_kib(name: str) -> int | None:
    """Resident KiB of this process's mappings of files called ``name`` (/proc/self/smaps), None off Linux."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    total, inside = 0, False
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: range perms offset dev inode [path]
            inside = len(head) >= 6 and head[-1].endswith("/" + name)
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(_mapped_kib("x") is None, reason="needs Linux /proc/self/smaps to measure resident pages")
def test_reading_a_whole_folder_keeps_the_resident_set_bounded(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifying pass, a standardisation pass and an epoch of random batches over a 48 MB modality map none of
    it (rows are read with pread); read through the map instead, the pages stay unless released, and the releases
    keep them bounded."""
    from commonspace.data import dataset as dataset_mod

    n, d = 12_000, 1000  # 48 MB of float32
    rng = np.random.default_rng(0)
    out = write_folder(MultimodalDataset({"a": rng.normal(size=(n, d)).astype(np.float32)},
                                         splits={"train": torch.arange(n)}), tmp_path / "f", dtype="float32")

    def epoch(verify: bool) -> int:
        ds = open_folder(out, chunk_rows=500, verify=verify)  # the verifying pass reads every byte once
        peak = _mapped_kib("x_a.npy")
        ds = Standardizer.for_vectors(ds, "train").transform(ds)
        peak = max(peak, _mapped_kib("x_a.npy"))
        for b in ds.iter_batches("train", batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)):
            assert b.features["a"].shape[1] == d
            peak = max(peak, _mapped_kib("x_a.npy"))
        return peak

    assert epoch(verify=True) < 1024
    # through the map (a memmap pread cannot locate, e.g. a slice): every touched page stays without releases ...
    monkeypatch.setattr(dataset_mod._RowReader, "usable", staticmethod(lambda src: False))
    monkeypatch.setattr(dataset_mod, "RELEASE_BYTES", 1 << 40)
    assert epoch(verify=False) > 40 * 1024
    # ... and the releases drop them as the reads go
    monkeypatch.setattr(dataset_mod, "RELEASE_BYTES", 1 << 20)
    assert epoch(verify=False) < 6 * 1024


def test_masking_and_range_checks_read_lazily(tmp_path: Path) -> None:
    """with_mask zeroes the rows it removes as batches are read, and value_range scans in chunks: neither loads
    a memory-mapped modality, and both agree with the in-memory dataset."""
    ds = _toy(n=50)
    back = open_folder(write_folder(ds, tmp_path / "f", dtype="float32"), chunk_rows=7)
    mask = back.mask.clone()
    mask[:10, 0] = False
    mask[5:20, 1] = False
    z = back.with_mask(mask)
    assert z.lazy_modalities == ("a", "img") and back.features._loaded == {}
    ref = ds.with_mask(mask)
    for m in ("a", "img"):
        assert torch.equal(z.batch().features[m], ref.batch().features[m])
        assert z.value_range(m) == ref.value_range(m) and back.value_range(m) == ds.value_range(m)
    assert back.features._loaded == {} and z.features._loaded == {}
