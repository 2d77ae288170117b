"""End-to-end CLI runs on tiny data: train, embed, evaluate, translate, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.io import load_embeddings

runner = CliRunner()


def _own_npz(path: Path, n: int = 120, seed: int = 0, nan: bool = False, missing: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers_a, centers_b = rng.normal(size=(3, 6)), rng.normal(size=(3, 4))
    a = centers_a[y] + 0.3 * rng.normal(size=(n, 6))
    b = centers_b[y] + 0.3 * rng.normal(size=(n, 4))
    mask = np.ones((n, 2), dtype=bool)
    if missing:
        mask[::7, 1] = False
        b[~mask[:, 1]] = 0
    if nan:
        a[3, 2] = np.nan
    np.savez(path, x_image=a, x_text=b, labels=y, mask=mask, modalities=np.array(["image", "text"]))
    return path


def _run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_train_embed_evaluate_translate_on_own_npz(tmp_path: Path) -> None:
    data = _own_npz(tmp_path / "my.npz")
    run = tmp_path / "run"
    r = _run("train", "--data", data, "--model", "bidnn", "--out", run, "--epochs", "3", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (run / "model" / "config.json").exists() and (run / "model" / "model.safetensors").exists()
    assert (run / "log.jsonl").read_text().count("\n") == 3

    emb = tmp_path / "emb.npz"
    r = _run("embed", "--model", run, "--data", data, "--out", emb)
    assert r.exit_code == 0, r.output
    arrays, meta = load_embeddings(emb)
    assert arrays["joint"].shape == (120, 200)
    assert arrays["enc_image"].shape == (120, 100) and arrays["mask"].shape == (120, 2)
    assert meta["model"] == "bidnn"

    ev = tmp_path / "eval.json"
    r = _run("evaluate", "--model", run, "--data", data, "--split", "test", "--json", ev)
    assert r.exit_code == 0, r.output
    res = json.loads(ev.read_text())
    assert set(res) >= {"image->text", "text->image", "joint"}
    assert 0.0 <= res["joint"]["p@10"] <= 1.0

    tr = tmp_path / "tr.npz"
    r = _run("translate", "--model", run, "--data", data, "--target", "text", "--out", tr)
    assert r.exit_code == 0, r.output
    assert load_embeddings(tr)[0]["translated_text"].shape == (120, 4)


def test_train_resume_continues_and_closed_form_model(tmp_path: Path) -> None:
    data = _own_npz(tmp_path / "my.npz")
    run = tmp_path / "run"
    assert _run("train", "--data", data, "--model", "ae_split", "--out", run, "--epochs", "2",
                "--no-progress").exit_code == 0
    r = _run("train", "--data", data, "--model", "ae_split", "--out", run, "--epochs", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    r = _run("train", "--data", data, "--model", "cca", "--out", tmp_path / "cca", "--no-progress")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "nope"], "unknown model"),
        (["--modalities", "image,audio"], "unknown modalities"),
        (["--set", "hidden=-3"], "hidden"),
    ],
)
def test_train_bad_input_fails_cleanly(tmp_path: Path, args: list[str], needle: str) -> None:
    data = _own_npz(tmp_path / "my.npz")
    base = ["train", "--data", data, "--model", "bidnn", "--out", tmp_path / "run", "--epochs", "1", "--no-progress"]
    if args[0] == "--model":
        base[base.index("bidnn")] = args[1]
        args = []
    r = _run(*base, *args)
    assert r.exit_code == 2
    assert needle in r.output
    assert not (tmp_path / "run" / "model").exists()


def test_nan_in_data_and_missing_file_errors(tmp_path: Path) -> None:
    bad = _own_npz(tmp_path / "bad.npz", nan=True)
    r = _run("train", "--data", bad, "--model", "bidnn", "--out", tmp_path / "r", "--no-progress")
    assert r.exit_code == 2 and "NaN" in r.output
    r = _run("train", "--data", tmp_path / "absent.npz", "--model", "bidnn", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "neither a file nor a builtin" in r.output


def test_checkpoint_with_wrong_dimensions_is_refused(tmp_path: Path) -> None:
    data = _own_npz(tmp_path / "my.npz")
    run = tmp_path / "run"
    assert _run("train", "--data", data, "--model", "bidnn", "--out", run, "--epochs", "1",
                "--no-progress").exit_code == 0
    rng = np.random.default_rng(1)
    other = tmp_path / "other.npz"
    np.savez(other, x_image=rng.normal(size=(30, 9)), x_text=rng.normal(size=(30, 4)))
    r = _run("embed", "--model", run, "--data", other, "--out", tmp_path / "e.npz")
    assert r.exit_code == 2
    assert "image" in r.output and "9" in r.output
    assert not (tmp_path / "e.npz").exists()


def test_listing_commands() -> None:
    r = _run("datasets")
    assert r.exit_code == 0 and "uci-mfeat" in r.output
    r = _run("models")
    assert r.exit_code == 0 and "bidnn" in r.output
    r = _run("bench")
    assert r.exit_code == 0 and "bidnn" in r.output


def test_index_build_and_query(tmp_path: Path) -> None:
    data = _own_npz(tmp_path / "my.npz", missing=False)
    run = tmp_path / "run"
    assert _run("train", "--data", data, "--model", "cca", "--out", run, "--no-progress").exit_code == 0
    emb = tmp_path / "emb.npz"
    assert _run("embed", "--model", run, "--data", data, "--out", emb).exit_code == 0
    idx = tmp_path / "idx.npz"
    r = _run("index", "build", "--embeddings", emb, "--out", idx, "--key", "enc_image")
    assert r.exit_code == 0, r.output
    res = tmp_path / "res.json"
    r = _run("index", "query", "--index", idx, "--ids", "0,5", "--k", "3", "--json", res)
    assert r.exit_code == 0, r.output
    got = json.loads(res.read_text())
    assert [g["query"] for g in got] == [0, 5]
    assert all(len(g["ids"]) == 3 and g["query"] not in g["ids"] for g in got)
    r = _run("index", "query", "--index", idx, "--k", "3")
    assert r.exit_code == 2 and "exactly one" in r.output


def test_train_warns_in_one_line_when_the_kernel_network_cannot_act(tmp_path: Path) -> None:
    """mahash on two vector modalities: its KN sees 1 x 1 maps; the CLI says so in one line, then trains."""
    res = runner.invoke(app, ["train", "--data", "uci-mfeat", "--modalities", "fou,kar", "--model", "mahash",
                              "--epochs", "1", "--set", "bits=8", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "kernel network cannot act" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "use_kn=False" in lines[0]
    assert "Traceback" not in res.output and "hashing.py" not in res.output


def test_bench_jobs_with_more_threads_is_one_line_exit_2(tmp_path) -> None:
    r = runner.invoke(app, ["bench", "bidnn", "--quick", "--jobs", "2", "--threads", "2", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "add --threads 1" in r.output and "Traceback" not in r.output
    assert not any(tmp_path.iterdir())  # refused before anything ran
