"""Streaming embeddings (issue 15, items 3 and 5): chunked writing to .npz / .parquet / a folder, memory-mapped
reading, `commonspace embed` one batch at a time, and `index build` from a memory map with a sampled training set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import DataError
from commonspace.data.embedfiles import EmbeddingWriter, read_embeddings_folder, write_embeddings
from commonspace.data.io import load_embeddings, save_embeddings
from commonspace.index import build_index_from_file, load_index

runner = CliRunner()


def _arrays(n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"joint": rng.normal(size=(n, 8)).astype(np.float32), "enc_a": rng.normal(size=(n, 3)).astype(np.float32),
            "mask": rng.random((n, 2)) < 0.8, "index": np.arange(100, 100 + n), "labels": rng.integers(0, 4, n)}


def _chunks(arrays: dict[str, np.ndarray], step: int) -> list[dict[str, np.ndarray]]:
    n = len(arrays["joint"])
    return [{k: v[s:s + step] for k, v in arrays.items()} for s in range(0, n, step)]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("target", ["emb.npz", "emb"])
def test_chunked_writing_equals_writing_at_once(tmp_path: Path, target: str) -> None:
    z = _arrays()
    meta = {"model": "toy", "modalities": ["a", "b"]}
    out = write_embeddings(tmp_path / target, _chunks(z, 7), rows=50, meta=meta)  # 7 does not divide 50
    back, m = load_embeddings(out)
    assert m == meta and back.keys() == z.keys()
    for k in z:
        assert back[k].dtype == z[k].dtype and np.array_equal(back[k], z[k]), k
    assert _leftovers(tmp_path) == []
    if target.endswith(".npz"):
        # the same bytes as the in-memory writer, and as a second run: repeatable output files
        ref = save_embeddings(tmp_path / "ref.npz", z, meta)
        assert out.read_bytes() == ref.read_bytes()
    else:
        assert isinstance(back["joint"], np.memmap) and not back["joint"].flags.writeable
        doc = json.loads((out / "meta.json").read_text())
        assert doc["rows"] == 50 and doc["arrays"]["joint"]["shape"] == [50, 8]
        again = write_embeddings(tmp_path / "again", _chunks(z, 11), rows=50, meta=meta)
        assert all((out / f).read_bytes() == (again / f).read_bytes() for f in os.listdir(out))


def test_parquet_is_written_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is optional (pip install commonspace[parquet])")
    from commonspace.data import embedfiles

    monkeypatch.setattr(embedfiles, "_COPY_ROWS_BYTES", 8 * 4 * 16)  # 16 rows of the widest array per group
    z = _arrays()
    out = write_embeddings(tmp_path / "emb.parquet", _chunks(z, 9), rows=50, meta={"model": "toy"})
    assert pq.ParquetFile(out).num_row_groups == 4
    back, meta = load_embeddings(out)
    assert meta == {"model": "toy"} and all(np.array_equal(back[k], z[k]) for k in z)


def test_a_failed_or_unfinished_write_leaves_the_old_target(tmp_path: Path) -> None:
    z = _arrays()
    out = write_embeddings(tmp_path / "emb", _chunks(z, 25), rows=50)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    with pytest.raises(RuntimeError, match="boom"), EmbeddingWriter(out, 50) as w:
        w.write(_chunks(_arrays(seed=1), 25)[0])
        raise RuntimeError("boom")
    with pytest.raises(DataError, match="25 rows were written, 50 announced"), EmbeddingWriter(out, 50) as w:
        w.write(_chunks(_arrays(seed=1), 25)[0])
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    assert _leftovers(tmp_path) == []
    # the whole output is replaced by a complete new one
    write_embeddings(out, _chunks(_arrays(seed=2), 50), rows=50)
    assert np.array_equal(load_embeddings(out)[0]["joint"], _arrays(seed=2)["joint"])


def test_bad_chunks_and_targets_are_refused(tmp_path: Path) -> None:
    z = _arrays()
    with pytest.raises(DataError, match="different row counts"), EmbeddingWriter(tmp_path / "e", 50) as w:
        w.write({"joint": z["joint"][:5], "index": z["index"][:4]})
    with pytest.raises(DataError, match="the first had"), EmbeddingWriter(tmp_path / "e", 50) as w:
        w.write({"joint": z["joint"][:5]})
        w.write({"other": z["joint"][:5]})
    with pytest.raises(DataError, match="more rows than announced"), EmbeddingWriter(tmp_path / "e", 4) as w:
        w.write({"joint": z["joint"][:5]})
    with pytest.raises(DataError, match="rows of shape"), EmbeddingWriter(tmp_path / "e", 50) as w:
        w.write({"joint": z["joint"][:5]})
        w.write({"joint": z["enc_a"][:5]})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an embeddings folder; refusing to replace it"):
        EmbeddingWriter(mine, 50)
    with pytest.raises(DataError, match=r"\.npz, \.parquet or a folder"):
        EmbeddingWriter(tmp_path / "e.csv", 50)
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "e").exists()
    assert _leftovers(tmp_path) == []


def test_damaged_folders_are_named(tmp_path: Path) -> None:
    out = write_embeddings(tmp_path / "emb", _chunks(_arrays(), 50), rows=50)
    good = (out / "joint.npy").read_bytes()
    raw = bytearray(good)
    raw[-3] ^= 0xFF
    (out / "joint.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"joint\.npy: checksum mismatch; the embeddings folder is damaged"):
        read_embeddings_folder(out)
    assert read_embeddings_folder(out, verify=False)[0]["joint"].shape == (50, 8)
    (out / "joint.npy").write_bytes(good)
    (out / "labels.npy").unlink()
    with pytest.raises(DataError, match="array 'labels' is missing"):
        load_embeddings(out)


# ------------------------------------------------------------------ the CLI
def _trained(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    a = rng.normal(size=(3, 6))[y] + 0.3 * rng.normal(size=(n, 6))
    b = rng.normal(size=(3, 4))[y] + 0.3 * rng.normal(size=(n, 4))
    data = tmp_path / "d.npz"
    np.savez(data, x_image=a, x_text=b, labels=y, modalities=np.array(["image", "text"]))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(data), "--model", "contrastive", "--out", str(run), "--epochs",
                            "2", "--no-progress", "--set", "dim=16"])
    assert r.exit_code == 0, r.output
    return data, run


def test_cli_embed_streams_batches_and_every_kind_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, run = _trained(tmp_path)
    sizes: list[int] = []
    write = EmbeddingWriter.write

    def spy(self: EmbeddingWriter, chunk: dict) -> None:
        sizes.append(len(chunk["joint"]))
        write(self, chunk)

    monkeypatch.setattr(EmbeddingWriter, "write", spy)
    from commonspace.models.base import MultimodalModel

    def whole(*a: object, **k: object) -> None:
        raise AssertionError("embed must not gather every embedding in memory")

    monkeypatch.setattr(MultimodalModel, "apply_batches", whole)
    outs = {}
    for target in ("e.npz", "folder"):
        r = runner.invoke(app, ["embed", "--model", str(run), "--data", str(data), "--out", str(tmp_path / target),
                                "--batch-size", "64"])
        assert r.exit_code == 0, r.output
        outs[target] = load_embeddings(tmp_path / target)
    assert sizes == [64, 64, 64, 64, 44] * 2
    a, b = outs["e.npz"][0], outs["folder"][0]
    assert a.keys() == b.keys() == {"enc_image", "enc_text", "joint", "mask", "index", "labels"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(a["index"], np.arange(300)) and a["joint"].shape == (300, 16)
    assert outs["folder"][1] == {"model": "contrastive", "modalities": ["image", "text"], "split": "all"}
    # the same command gives the same bytes
    r = runner.invoke(app, ["embed", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "again"),
                            "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    names = sorted(os.listdir(tmp_path / "folder"))
    assert names == sorted(os.listdir(tmp_path / "again"))
    assert all((tmp_path / "folder" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in names)


def test_index_from_a_memory_mapped_folder_with_a_training_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=(n, 16)).astype(np.float32)
    z = {"joint": x, "index": np.arange(n) * 2, "mask": np.ones((n, 1), bool)}
    folder = write_embeddings(tmp_path / "emb", _chunks(z, 1000), rows=n, meta={"modalities": ["a"]})
    npz = save_embeddings(tmp_path / "emb.npz", z, {"modalities": ["a"]})
    kw = dict(factory="IVF16,PQ4x4", train_size=800, seed=3, nprobe=4)
    built = [build_index_from_file(src, tmp_path / f"i{j}.npz", chunk_rows=c, **kw)
             for j, (src, c) in enumerate([(folder, 257), (npz, 65536)])]
    assert all(b.ntotal == n for b in built) and built[0].meta["extra"]["train_rows"] == 800
    q = x[:20]
    (s0, i0), (s1, i1) = (load_index(tmp_path / f"i{j}.npz").search(q, 5) for j in (0, 1))
    assert np.array_equal(i0, i1) and np.array_equal(s0, s1)
    assert set(i0.reshape(-1).tolist()) <= set(z["index"].tolist())
    # a different training sample gives a different quantiser: the seed is used
    other = build_index_from_file(folder, tmp_path / "i2.npz", factory="IVF16,PQ4x4", train_size=800, seed=4,
                                  nprobe=4)
    assert not np.array_equal(torch.as_tensor(other.search(q, 5)[0]).numpy(), s0)
    with pytest.raises(DataError, match="train_size 5000 must be between 1 and the 3000 rows"):
        build_index_from_file(folder, tmp_path / "i3.npz", factory="IVF16,Flat", train_size=5000)
    r = runner.invoke(app, ["index", "build", "--embeddings", str(folder), "--out", str(tmp_path / "c.npz"),
                            "--factory", "IVF16,PQ4x4", "--train-size", "800", "--seed", "3", "--nprobe", "4",
                            "--chunk-rows", "257"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(load_index(tmp_path / "c.npz").search(q, 5)[1], i0)
