"""Tampered metadata (issue 28, item 4): every metadata file's schema is checked in one place
(commonspace.data.meta); a hand-edited dataset folder meta.json, embeddings folder meta.json or index meta is one
DataError naming the file, the key and the fix, and one `error:` line with exit 2 from the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.embedfiles import read_embeddings_folder, write_embeddings
from commonspace.data.folder import open_folder, write_folder
from commonspace.data.meta import MetadataError
from commonspace.index import BinaryIndex, EmbeddingIndex, load_index

runner = CliRunner()
Edit = Callable[[Any], Any]


def _set(*keys: str, to: Any) -> Edit:
    """An edit that sets the nested entry ``keys`` to ``to``."""
    def edit(doc: Any) -> Any:
        d = doc
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = to
        return doc
    return edit


def _drop(key: str) -> Edit:
    def edit(doc: Any) -> Any:
        del doc[key]
        return doc
    return edit


def _as_list(doc: Any) -> Any:
    return [doc]


# ------------------------------------------------------------------------------------------ the files
def _dataset_folder(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 20
    ds = MultimodalDataset({"a": rng.normal(size=(n, 3)).astype(np.float32),
                            "b": rng.normal(size=(n, 2)).astype(np.float32)}, np.ones((n, 2), bool),
                           rng.integers(0, 2, n), {"train": np.arange(14), "test": np.arange(14, n)}, "toy")
    return write_folder(ds, tmp / "data", dtype="float32")


def _embeddings_folder(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 20
    arrays = {"joint": rng.normal(size=(n, 4)).astype(np.float32), "index": np.arange(n)}
    return write_embeddings(tmp / "emb", [arrays], rows=n, meta={"model": "toy", "modalities": ["a", "b"]})


def _index_file(tmp: Path, binary: bool = False) -> Path:
    rng = np.random.default_rng(0)
    if binary:
        idx: EmbeddingIndex | BinaryIndex = BinaryIndex.build(rng.random((20, 12)) < 0.5)
    else:
        idx = EmbeddingIndex.build(rng.normal(size=(20, 4)).astype(np.float32), modalities=["a"], model="toy")
    idx.save(tmp / "idx.npz")
    return tmp / "idx.npz"


def _edit_json(path: Path, edit: Edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _edit_index(path: Path, edit: Edit) -> None:
    with np.load(path) as z:
        arrays = dict(z)
    arrays["meta"] = np.array(json.dumps(edit(json.loads(str(arrays["meta"])))), dtype=str)
    np.savez(path, **arrays)


# --------------------------------------------------------------------------------------------- cases
FOLDER_CASES = {
    "list": (_as_list, "the file must hold a JSON object, got a list"),
    "missing key": (_drop("samples"), "'samples' is missing"),
    "wrong type": (_set("modalities", to="a"), "'modalities' must be a non-empty list, got 'a'"),
    "empty list": (_set("files", to=[]), "'files' must be a non-empty object (file name -> {sha256, bytes}), got "
                                         "an empty list"),
    "null": (_set("files", "x_a.npy", "bytes", to=None), "'files[\"x_a.npy\"].bytes' must be a whole number >= 0, "
                                                          "got null"),
    "non-numeric string": (_set("samples", to="abc"), "'samples' must be a whole number >= 0, got 'abc'"),
    "negative count": (_set("splits", "train", to=-1), "'splits.train' must be a whole number >= 0, got -1"),
    "boolean count": (_set("samples", to=True), "'samples' must be a whole number >= 0, got true"),
    "dims not whole": (_set("dims", "a", to=[3.5]), "'dims.a[0]' must be a whole number >= 0, got 3.5"),
    "modality without dims": (_set("dims", to={"a": [3]}), "'dims' has no entry for modality 'b'"),
    "bad checksum text": (_set("files", "mask.npy", "sha256", to="xyz"), "must be a SHA-256 hex digest"),
    "class names not a list": (_set("class_names", to="ab"), "'class_names' must be null or a list, got 'ab'"),
}

EMB_CASES = {
    "list": (_as_list, "the file must hold a JSON object, got a list"),
    "missing key": (_drop("rows"), "'rows' is missing"),
    "wrong type": (_set("arrays", "joint", "shape", to="20,4"), "'arrays.joint.shape' must be a non-empty list"),
    "empty list": (_set("arrays", to=[]), "'arrays' must be a non-empty object (array name -> {file, shape, dtype, "
                                          "sha256, bytes}), got an empty list"),
    "null": (_set("arrays", "joint", "sha256", to=None), "'arrays.joint.sha256' must be a SHA-256 hex digest, got "
                                                         "null"),
    "non-numeric string": (_set("rows", to="abc"), "'rows' must be a whole number >= 0, got 'abc'"),
    "negative count": (_set("arrays", "joint", "bytes", to=-1), "'arrays.joint.bytes' must be a whole number >= 0"),
    "file is a path": (_set("arrays", "joint", "file", to="../x.npy"), "'arrays.joint.file' must be a .npy file"),
    "rows disagree": (_set("rows", to=21), "array 'joint' has 20 rows but 'rows' is 21"),
    "run meta modalities": (_set("meta", "modalities", to="ab"), "'meta.modalities' must be a list, got 'ab'"),
}

INDEX_CASES = {
    "list": (_as_list, "the file must hold a JSON object, got a list"),
    "missing key": (_drop("kind"), "'kind' is missing"),
    "wrong type": (_set("modalities", to="a"), "'modalities' must be null or a list, got 'a'"),
    "empty list": (_set("factory", to=[]), "'factory' must be a string, got an empty list"),
    "null": (_set("ntotal", to=None), "'ntotal' must be a whole number >= 0, got null"),
    "non-numeric string": (_set("dim", to="abc"), "'dim' must be a whole number >= 1, got 'abc'"),
    "negative count": (_set("ntotal", to=-1), "'ntotal' must be a whole number >= 0, got -1"),
    "version a string": (_set("version", to="1"), "'version' must be a whole number >= 0, got '1'"),
    "unknown kind": (_set("kind", to="sparse"), "'kind' must be one of 'float', 'binary', got 'sparse'"),
    "metric of the other kind": (_set("metric", to="hamming"), "'metric' must be one of 'cosine', 'ip', 'l2'"),
}


def _check(exc: pytest.ExceptionInfo, path: Path, needle: str, fix: str) -> None:
    msg = str(exc.value)
    assert isinstance(exc.value, DataError) and "\n" not in msg
    assert msg.startswith(f"{path}: damaged metadata: "), msg
    assert needle in msg and fix in msg, msg


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output, output
    return lines[0]


# ------------------------------------------------------------------------------------- dataset folder
@pytest.mark.parametrize("case", FOLDER_CASES)
def test_dataset_folder_meta(tmp_path: Path, case: str) -> None:
    edit, needle = FOLDER_CASES[case]
    folder = _dataset_folder(tmp_path)
    _edit_json(folder / "meta.json", edit)
    with pytest.raises(MetadataError) as exc:
        open_folder(folder)
    _check(exc, folder / "meta.json", needle, f"commonspace convert SOURCE {folder} --overwrite")
    r = runner.invoke(app, ["train", "--data", str(folder), "--model", "bidnn", "--out", str(tmp_path / "run"),
                            "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert "meta.json" in line and needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no run folder, nothing hidden


# ---------------------------------------------------------------------------------- embeddings folder
@pytest.mark.parametrize("case", EMB_CASES)
def test_embeddings_folder_meta(tmp_path: Path, case: str) -> None:
    edit, needle = EMB_CASES[case]
    emb = _embeddings_folder(tmp_path)
    _edit_json(emb / "meta.json", edit)
    with pytest.raises(MetadataError) as exc:
        read_embeddings_folder(emb)
    _check(exc, emb / "meta.json", needle, f"commonspace embed --model RUN --data DATA --out {emb}/")
    r = runner.invoke(app, ["index", "build", "--embeddings", f"{emb}/", "--out", str(tmp_path / "idx.npz")])
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert "meta.json" in line and needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]


# ----------------------------------------------------------------------------------------- index file
@pytest.mark.parametrize("case", INDEX_CASES)
def test_index_meta(tmp_path: Path, case: str) -> None:
    edit, needle = INDEX_CASES[case]
    path = _index_file(tmp_path)
    _edit_index(path, edit)
    with pytest.raises(MetadataError) as exc:
        load_index(path)
    _check(exc, path, needle, f"commonspace index build --embeddings EMB --out {path}")
    r = runner.invoke(app, ["index", "query", "--index", str(path), "--ids", "0"])
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert "idx.npz" in line and needle in line


def test_binary_index_needs_bits(tmp_path: Path) -> None:
    path = _index_file(tmp_path, binary=True)
    _edit_index(path, _drop("bits"))
    with pytest.raises(MetadataError) as exc:
        load_index(path)
    _check(exc, path, "'bits' is missing", "commonspace index build")


# ------------------------------------------------------------------------------------- what still loads
def test_untouched_files_load_and_unknown_keys_are_allowed(tmp_path: Path) -> None:
    folder, emb, path = _dataset_folder(tmp_path), _embeddings_folder(tmp_path), _index_file(tmp_path)
    assert open_folder(folder).n == 20 and read_embeddings_folder(emb)[0]["joint"].shape == (20, 4)
    assert load_index(path).ntotal == 20
    # a newer writer may add keys: the schemas list what the readers use, not everything a file may hold
    _edit_json(folder / "meta.json", _set("fingerprint", to={"sha256": "x"}))
    _edit_json(emb / "meta.json", _set("note", to=[1, 2]))
    _edit_index(path, _set("built_by", to="test"))
    assert open_folder(folder).n == 20 and read_embeddings_folder(emb)[0]["joint"].shape == (20, 4)
    assert load_index(path).ntotal == 20


def test_foreign_and_newer_files_keep_their_own_messages(tmp_path: Path) -> None:
    folder, emb, path = _dataset_folder(tmp_path), _embeddings_folder(tmp_path), _index_file(tmp_path)
    _edit_json(folder / "meta.json", _set("version", to=2))
    with pytest.raises(DataError, match="dataset folder format version 2"):
        open_folder(folder)
    _edit_json(emb / "meta.json", _set("format", to="commonspace-dataset-folder"))
    with pytest.raises(DataError, match="not an embeddings folder's"):
        read_embeddings_folder(emb)
    _edit_index(path, _set("version", to=9))
    with pytest.raises(DataError, match="newer than this commonspace"):
        load_index(path)
