"""Bad CLI input is refused in one line before any work (issue 28, items 6 and 7): ids, --k, output paths,
several --model runs, option names in messages, faiss's own text, and a probe never scored on its own rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.io import load_embeddings
from commonspace.eval.robustness import probe_rows, robustness
from commonspace.index import EmbeddingIndex
from commonspace.index.faiss_index import _faiss_msg
from commonspace.models.base import create
from helpers_disk import small_tmpfs

runner = CliRunner()


def _run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _npz(path: Path, n: int = 80, db: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    np.savez(path, x_a=rng.normal(size=(3, 6))[y] + 0.3 * rng.normal(size=(n, 6)),
             x_b=rng.normal(size=(3, db))[y] + 0.3 * rng.normal(size=(n, db)), labels=y,
             modalities=np.array(["a", "b"]))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two closed-form (raw) runs, one for 4-d and one for 5-d ``b``; an embeddings file; a Flat index."""
    d = tmp_path_factory.mktemp("cli-input")
    data, other = _npz(d / "data.npz"), _npz(d / "other.npz", db=5, seed=1)
    for src, run in ((data, d / "run"), (other, d / "run5")):
        r = _run("train", "--data", src, "--model", "raw", "--out", run, "--no-progress")
        assert r.exit_code == 0, r.output
    r = _run("embed", "--model", d / "run", "--data", data, "--out", d / "emb.npz")
    assert r.exit_code == 0, r.output
    r = _run("index", "build", "--embeddings", d / "emb.npz", "--out", d / "idx.npz")
    assert r.exit_code == 0, r.output
    return {"dir": d, "data": data, "run": d / "run", "run5": d / "run5", "emb": d / "emb.npz",
            "idx": d / "idx.npz"}


def _one_line(r: object, *needles: str) -> str:
    """Exit 2, a single ``error:`` line, no traceback, no table; returns the line."""
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ index query
@pytest.mark.parametrize(("ids", "k", "needles"), [
    ("abc", 10, ("--ids", "'abc' is not an integer id")),
    ("1.5", 10, ("--ids", "'1.5'")),
    (",", 10, ("--ids ','", "names no id")),
    (" , ,", 10, ("names no id",)),
    ("99999999999999999999", 10, ("--ids", "2^63 - 1")),
    ("-3", 10, ("--ids", "cannot be a stored id")),
    ("3", 0, ("--k must be >= 1, got 0",)),
    ("3", -2, ("--k must be >= 1",)),
])
def test_index_query_ids_and_k_are_checked(runs: dict[str, Path], ids: str, k: int, needles: tuple[str, ...]
                                           ) -> None:
    line = _one_line(_run("index", "query", "--index", runs["idx"], "--ids", ids, "--k", k), *needles)
    assert "only that item" not in line and "int()" not in line


def test_index_query_unknown_id_says_what_the_index_holds(runs: dict[str, Path]) -> None:
    _one_line(_run("index", "query", "--index", runs["idx"], "--ids", "999"), "[999]", "80 ids from 0 to 79")


def test_index_query_json_parent_is_checked_first(runs: dict[str, Path], tmp_path: Path) -> None:
    _one_line(_run("index", "query", "--index", tmp_path / "absent.npz", "--ids", "3", "--json",
                   tmp_path / "nodir" / "r.json"), "--json", "does not exist")
    r = _run("index", "query", "--index", runs["idx"], "--ids", "3,4", "--k", "2", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "r.json").read_text())
    assert [g["query"] for g in got] == [3, 4] and all(len(g["ids"]) == 2 and g["query"] not in g["ids"]
                                                       for g in got)


def test_index_query_key_names_the_option(runs: dict[str, Path], tmp_path: Path) -> None:
    q = tmp_path / "q.npz"
    np.savez(q, a=np.zeros((2, 200)), b=np.zeros((2, 200)))
    line = _one_line(_run("index", "query", "--index", runs["idx"], "--queries", q, "--key", "c"), "--key")
    assert "as key" not in line
    np.save(tmp_path / "q.npy", np.zeros((2, 200)))
    _one_line(_run("index", "query", "--index", runs["idx"], "--queries", tmp_path / "q.npy", "--key", "x"),
              "drop --key")


def test_a_one_item_index_queried_by_id_is_not_misdiagnosed(runs: dict[str, Path], tmp_path: Path) -> None:
    emb = tmp_path / "one.npz"
    np.savez(emb, joint=np.ones((1, 4)), index=np.array([7]))
    assert _run("index", "build", "--embeddings", emb, "--out", tmp_path / "one.idx.npz").exit_code == 0
    _one_line(_run("index", "query", "--index", tmp_path / "one.idx.npz", "--ids", "7", "--k", "0"), "--k")
    line = _one_line(_run("index", "query", "--index", tmp_path / "one.idx.npz", "--ids", "7"),
                     "holds only item 7", "--queries")
    assert "exclude_self leaves" not in line


# ------------------------------------------------------------------------------------------ index build
def test_index_build_refusals_name_cli_options_and_come_first(runs: dict[str, Path], tmp_path: Path) -> None:
    before = set(tmp_path.iterdir())
    _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path / "nodir" / "i.npz"),
              "--out", "does not exist")
    _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path), "--out", "is a folder")
    line = _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path / "i.npz", "--key",
                          "nope"), "--key")
    assert "Pass key=" not in line
    line = _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path / "i.npz",
                          "--factory", "IVF100,Flat"), "100 IVF lists", "--factory 'IVF2,Flat'")
    assert "train_vectors" not in line
    _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path / "i.npz", "--factory",
                   "IVF4,Flat", "--train-size", "500"), "--train-size")
    line = _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", tmp_path / "i.npz", "--factory",
                          "IVF2,Flat", "--nprobe", "100000000000000000000"), "--nprobe")
    assert "in method" not in line and "size_t" not in line
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary left


def test_faiss_signature_text_stays_out_of_messages() -> None:
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    idx = EmbeddingIndex.build(x, factory="IVF2,Flat")
    for bad in ({"nprobe": -1}, {"nprobe": 2**64}, {"nprobe": 1.5}):
        with pytest.raises(DataError, match="nprobe") as exc:
            idx.set_search_params(**bad)
        assert "in method" not in str(exc.value)
    hnsw = EmbeddingIndex.build(x, factory="HNSW8")
    with pytest.raises(DataError, match="ef_search") as exc:
        hnsw.set_search_params(ef_search=2**40)
    assert "in method" not in str(exc.value)
    swig = OverflowError("in method 'IndexIVFInterface_nprobe_set', argument 2 of type 'size_t'")
    assert _faiss_msg(swig) == "faiss got a value out of range (it expects size_t)"
    with pytest.raises(DataError, match=r"k \(CLI: --k\) must be an integer >= 1"):
        idx.search(x[:2], 0)
    with pytest.raises(DataError, match="k must be|--k"):
        idx.search_by_id([1], 0, exclude_self=True)
    with pytest.raises(DataError, match="ids must be integers"):
        idx.search_by_id([1.5], 3)


# ------------------------------------------------------------------------------------------------ embed
def test_embed_out_with_a_trailing_slash_is_a_folder(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "emb.v2"
    r = _run("embed", "--model", runs["run"], "--data", runs["data"], "--out", f"{out}/")
    assert r.exit_code == 0, r.output
    assert (out / "meta.json").is_file()
    arrays, _ = load_embeddings(out)
    assert arrays["joint"].shape[0] == 80
    _one_line(_run("embed", "--model", runs["run"], "--data", runs["data"], "--out", f"{tmp_path / 'e.npz'}/"),
              "trailing / means a folder")
    _one_line(_run("embed", "--model", runs["run"], "--data", runs["data"], "--out", tmp_path / "e.v3"),
              "add a / for a folder")
    _one_line(_run("embed", "--model", runs["run"], "--data", runs["data"], "--out", tmp_path / "no" / "e.npz"),
              "--out", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.v2"]


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_checks_every_model_before_the_first_result(runs: dict[str, Path]) -> None:
    line = _one_line(_run("evaluate", "--model", runs["run"], "--model", runs["run5"], "--data", runs["data"],
                          "--subsets"), f"--model {runs['run5']}", "expects (5,)")
    assert "(4,)" in line


@pytest.mark.parametrize("extra", [["--subsets"], []])
def test_evaluate_output_paths_and_k_are_checked_first(runs: dict[str, Path], tmp_path: Path,
                                                       extra: list[str]) -> None:
    base = ["evaluate", "--model", runs["run"], "--data", runs["data"], *extra]
    _one_line(_run(*base, "--json", tmp_path / "nodir" / "r.json"), "--json", "does not exist")
    _one_line(_run(*base, "--json", tmp_path), "--json", "is a folder")
    _one_line(_run(*base, "--k", "0"), "--k must be >= 1")
    _one_line(_run(*base, "--split", "nosuch"), "--split 'nosuch'", "'all'")
    if extra:
        _one_line(_run(*base, "--plot", tmp_path / "nodir" / "p.png"), "--plot", "does not exist")
        _one_line(_run(*base, "--probe-split", "nosuch"), "--probe-split 'nosuch'", "'none'")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- the robustness probe
def _random_labels(n: int = 400, seed: int = 0) -> MultimodalDataset:
    """Features and labels drawn independently: no probe can beat chance (0.25) on rows it was not fitted on."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    feats = {"a": rng.normal(size=(n, 24)).astype(np.float32), "b": rng.normal(size=(n, 16)).astype(np.float32)}
    perm = rng.permutation(n)
    cut = n * 3 // 5
    return MultimodalDataset(feats, np.ones((n, 2), bool), y, {"train": perm[:cut], "test": perm[cut:]})


def test_probe_is_not_scored_on_its_own_training_rows() -> None:
    data = _random_labels()
    model = create("raw", data.dims)
    every = robustness(model, data, query=torch.arange(data.n), probe_train="train", cross_modal=False)
    held = robustness(model, data, query="test", probe_train="train", cross_modal=False)
    assert every["probe_overlap"] == 240 and every["probe_train"] == 240 and held["probe_overlap"] == 0
    for a, b in zip(every["rows"], held["rows"], strict=True):
        # all rows as queries: the probe is scored on the test rows alone, exactly as with --split test
        assert a["probe"] == b["probe"] and a["probe"]["queries"] == 160
        assert a["probe"]["accuracy"] < 0.4  # chance is 0.25; scored on its training rows too it read 0.40
    assert every["rows"][-1]["queries"] == 400  # retrieval still uses every query row


def test_probe_with_no_query_row_left_is_refused() -> None:
    data = _random_labels(n=80)
    model = create("raw", data.dims)
    with pytest.raises(DataError, match="--probe-split none"):
        robustness(model, data, query="train", probe_train="train")
    pi, overlap = probe_rows(data, torch.arange(data.n), "train", model.modalities)
    assert pi.numel() == 48 and int(overlap.sum()) == 48 and overlap.numel() == 80


def test_evaluate_split_all_notes_the_rows_left_out_of_the_probe(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = _run("evaluate", "--model", runs["run"], "--data", runs["data"], "--subsets", "--split", "all",
             "--json", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())["runs"]["run"]
    n_train = res["probe_overlap"]
    assert n_train == res["probe_train"] > 0
    assert f"note: the probe is scored on {80 - n_train} of the 80 query rows" in r.output
    assert all(row["probe"]["queries"] == 80 - n_train for row in res["rows"])
    _one_line(_run("evaluate", "--model", runs["run"], "--data", runs["data"], "--subsets", "--split", "train"),
              "probe-training rows", "--probe-split none")


def test_output_on_a_read_only_disk_is_refused_before_the_work(runs: dict[str, Path], tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", size="1m", read_only=True) as ro:
        _one_line(_run("evaluate", "--model", runs["run"], "--data", runs["data"], "--json", ro / "r.json"),
                  "--json", "read-only file system")
        _one_line(_run("index", "build", "--embeddings", runs["emb"], "--out", ro / "i.npz"), "--out",
                  "read-only file system")
        _one_line(_run("embed", "--model", runs["run"], "--data", runs["data"], "--out", f"{ro / 'e'}/"),
                  "--out", "read-only file system")
