"""Full and read-only disks, and crash-safe replacement of dataset and embeddings folders (issue 28, items 2, 3).

The full and read-only disk cases mount a small tmpfs and so run only as root (they skip otherwise); the rest
inject the fault (ENOSPC from the reservation, a SafetensorError) or leave the state a kill would leave.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data import io as cio
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.embedfiles import read_embeddings_folder, write_embeddings
from commonspace.data.folder import open_folder, write_folder
from commonspace.data.io import DiskError, atomic_write, disk_error, recover_replaced, sweep_replaced
from commonspace.data.resolve import resolve_data
from helpers_disk import small_tmpfs

runner = CliRunner()
DEAD = 2**30  # beyond any pid_max: a writer that is certainly gone


def _toy(n: int = 40, d: int = 6, seed: int = 0) -> MultimodalDataset:
    rng = np.random.default_rng(seed)
    return MultimodalDataset({"a": rng.normal(size=(n, d)).astype(np.float32),
                              "b": rng.normal(size=(n, 3)).astype(np.float32)},
                             labels=rng.integers(0, 3, n), name="toy")


def _npz(path: Path, n: int = 60, d: int = 6) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    np.savez(path, x_a=rng.normal(size=(n, d)), x_b=rng.normal(size=(n, 4)), labels=y, modalities=np.array(["a", "b"]))
    return path


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _hidden(folder: Path) -> list[str]:
    return [n for n in _entries(folder) if n.startswith(".")]


def _one_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in output, output
    assert all(ln.startswith(("error:", "warning:", "note:")) for ln in lines), output
    return lines[-1]


# ------------------------------------------------------------------ messages
def test_disk_error_is_one_line_naming_folder_and_fix(tmp_path: Path) -> None:
    full = disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "out", 5_000_000)
    assert isinstance(full, DiskError) and isinstance(full, OSError) and isinstance(full, DataError)
    assert full.errno == errno.ENOSPC
    msg = str(full)
    assert msg.startswith(f"{tmp_path / 'out'}: no space left on {tmp_path}: needs 5.0 MB, ") and "MB free" in msg
    assert msg.endswith("free space or choose another --out")
    ro = str(disk_error(OSError(errno.EROFS, "Read-only file system"), tmp_path / "a" / "b"))
    assert "read-only file system" in ro and f"cannot write to {tmp_path}" in ro and "another --out" in ro
    # safetensors' Rust errors carry the errno only in the text
    st = disk_error(RuntimeError("I/O error: No space left on device (os error 28)"), tmp_path / "ck")
    assert st is not None and "no space left" in str(st)
    assert disk_error(OSError(errno.ENOENT, "gone"), tmp_path / "x") is None
    assert disk_error(ValueError("no errno"), tmp_path / "x") is None


# ------------------------------------------------------------------ full disk, injected
def _no_space(*a: object, **k: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_reservation_refusal_removes_the_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk found while reserving the memory-mapped files: one DiskError, nothing left, old kept."""
    old = write_folder(_toy(), tmp_path / "f")
    monkeypatch.setattr(cio, "reserve", _no_space)
    with pytest.raises(DiskError, match=r"no space left on .*: needs [\d.]+ MB, [\d.]+ MB free"):
        write_folder(_toy(seed=1), tmp_path / "f", overwrite=True)
    with pytest.raises(DiskError, match="no space left"):
        write_embeddings(tmp_path / "emb", [{"joint": np.ones((10, 4), np.float32)}], 10)
    with pytest.raises(DiskError, match="no space left"):
        write_embeddings(tmp_path / "emb.npz", [{"joint": np.ones((10, 4), np.float32)}], 10)
    assert _entries(tmp_path) == ["f"]
    assert open_folder(old).n == 40


def test_atomic_write_on_a_full_disk_removes_its_temp_file(tmp_path: Path) -> None:
    def write(fh: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskError, match="needs 1.0 MB"):
        atomic_write(tmp_path / "x.npz", write, needed=1_000_000)
    assert _entries(tmp_path) == []


def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    import commonspace.train.checkpoint as ck

    def full(*a: object, **k: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", full)
    data = _npz(tmp_path / "d.npz")
    before = _entries(tmp_path)
    res = runner.invoke(app, ["train", "--data", str(data), "--model", "bidnn", "--out", str(tmp_path / "run"),
                              "--epochs", "1", "--no-progress"])
    assert res.exit_code == 2
    assert "no space left" in _one_error(res.output)
    assert _entries(tmp_path) == before  # no run/, no run/log.jsonl, no hidden temp


# ------------------------------------------------------------------ atomic replacement
def _kill_between_renames(parent: Path, name: str) -> tuple[Path, Path]:
    """The state a writer killed between its two renames left: OUT hidden as .old, the new copy as .tmp."""
    tag = f".{name}.{DEAD}-{cio._host_tag()}"
    old, new = parent / f"{tag}.abcd1234.old", parent / f"{tag}.efgh5678.tmp"
    os.rename(parent / name, old)
    write_folder(_toy(seed=1), parent / "scratch", dtype="float32")
    os.rename(parent / "scratch", new)
    return old, new


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacement_leaves_only_the_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(cio, "exchange", lambda a, b: False)
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    write_folder(_toy(seed=1), out, dtype="float32", overwrite=True)
    assert np.array_equal(open_folder(out).batch().features["a"].numpy(), _toy(seed=1).features["a"].numpy())
    write_embeddings(tmp_path / "e", [{"joint": np.zeros((5, 2), np.float32)}], 5)
    write_embeddings(tmp_path / "e", [{"joint": np.ones((3, 2), np.float32)}], 3)
    assert read_embeddings_folder(tmp_path / "e")[0]["joint"].shape == (3, 2)
    assert _entries(tmp_path) == ["e", "f"]


def test_kill_between_renames_readers_restore_the_old_folder(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    _kill_between_renames(tmp_path, "f")
    assert not out.exists()
    ds = resolve_data(str(out))  # `--data f` no longer says "neither a file nor a builtin"
    assert np.array_equal(ds.batch().features["a"].numpy(), _toy().features["a"].numpy())
    # the next write sweeps the stale new copy, never the restored old one
    write_folder(_toy(seed=2), out, dtype="float32", overwrite=True)
    assert _entries(tmp_path) == ["f"]


def test_kill_between_renames_the_next_write_puts_the_old_folder_back(tmp_path: Path) -> None:
    out = write_folder(_toy(), tmp_path / "f", dtype="float32")
    _kill_between_renames(tmp_path, "f")
    with pytest.raises(DataError, match="exists and is not empty"):  # restored first, so --overwrite is needed
        write_folder(_toy(seed=2), out, dtype="float32")
    assert open_folder(out).n == 40 and _hidden(tmp_path) == []


def test_a_sweep_never_deletes_the_last_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(_toy(), tmp_path / "f")
    old, new = _kill_between_renames(tmp_path, "f")
    monkeypatch.setattr(cio, "recover_replaced", lambda p: False)  # e.g. the rename back failed
    sweep_replaced(tmp_path / "f")
    assert old.is_dir() and not new.exists()  # the stale new copy goes, the only old copy stays
    monkeypatch.undo()
    assert recover_replaced(tmp_path / "f") and _entries(tmp_path) == ["f"]


def test_embeddings_folder_killed_between_renames(tmp_path: Path) -> None:
    write_embeddings(tmp_path / "e", [{"joint": np.ones((4, 2), np.float32)}], 4)
    os.rename(tmp_path / "e", tmp_path / f".e.{DEAD}-{cio._host_tag()}.abcd1234.old")
    arrays, _ = cio.load_embeddings(tmp_path / "e")
    assert arrays["joint"].shape == (4, 2) and _entries(tmp_path) == ["e"]


def test_symlinked_out_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    real = write_folder(_toy(), tmp_path / "real", dtype="float32")
    link = tmp_path / "link"
    link.symlink_to(real)
    write_folder(_toy(seed=1), link, dtype="float32", overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert np.array_equal(open_folder(link).batch().features["a"].numpy(), _toy(seed=1).features["a"].numpy())
    write_embeddings(tmp_path / "ereal", [{"joint": np.ones((2, 2), np.float32)}], 2)
    (tmp_path / "elink").symlink_to(tmp_path / "ereal")
    write_embeddings(tmp_path / "elink", [{"joint": np.zeros((3, 2), np.float32)}], 3)
    assert (tmp_path / "elink").is_symlink() and read_embeddings_folder(tmp_path / "ereal")[0]["joint"].shape == (3, 2)
    (tmp_path / "x.npz").write_bytes(b"old")
    (tmp_path / "xlink.npz").symlink_to(tmp_path / "x.npz")
    atomic_write(tmp_path / "xlink.npz", lambda fh: fh.write(b"new"))
    assert (tmp_path / "xlink.npz").is_symlink() and (tmp_path / "x.npz").read_bytes() == b"new"
    assert _hidden(tmp_path) == []


def test_a_stray_old_symlink_is_restored_or_unlinked(tmp_path: Path) -> None:
    """Older versions renamed a symlinked OUT aside as a hidden .old link; it is put back, or dropped."""
    real = write_folder(_toy(), tmp_path / "real")
    stray = tmp_path / f".link.{DEAD}-{cio._host_tag()}.abcd1234.old"
    stray.symlink_to(real)
    assert recover_replaced(tmp_path / "link") and (tmp_path / "link").is_symlink()
    stray.symlink_to(real)
    sweep_replaced(tmp_path / "link")  # link exists: the stray copy is redundant, and only the link goes
    assert not os.path.lexists(stray) and open_folder(real).n == 40


# ------------------------------------------------------------------ a real tmpfs (root only)
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk") as disk:
        yield disk


def _read_only(disk: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {r.stderr.strip()}")


def test_convert_onto_a_full_tmpfs_is_one_line_not_sigbus(tmp_path: Path, small_disk: Path) -> None:
    data = _npz(tmp_path / "big.npz", n=3000, d=200)  # 2.4 MB of float32 features: more than the disk holds
    # a subprocess: a memory map filled without a reservation would kill the test runner with SIGBUS
    r = subprocess.run([sys.executable, "-m", "commonspace", "convert", str(data), str(small_disk / "out"), "--dtype",
                        "float32"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = _one_error(r.stderr + r.stdout)
    assert "no space left on" in line and "MB free" in line and "needs 2." in line
    assert _entries(small_disk) == []


def test_embed_and_index_onto_a_full_tmpfs(small_disk: Path) -> None:
    from commonspace.index.faiss_index import EmbeddingIndex

    joint = np.random.default_rng(0).normal(size=(4000, 200)).astype(np.float32)  # 3.2 MB
    for out in (small_disk / "emb", small_disk / "emb.npz"):
        with pytest.raises(DiskError, match="no space left"):
            write_embeddings(out, [{"joint": joint}], len(joint))
    idx = EmbeddingIndex.build(joint, factory="Flat")
    with pytest.raises(DiskError, match="no space left"):
        idx.save(small_disk / "idx.npz")
    assert _entries(small_disk) == []


def test_train_onto_a_full_tmpfs_leaves_nothing(tmp_path: Path, small_disk: Path) -> None:
    data = _npz(tmp_path / "d.npz", n=200, d=200)
    res = runner.invoke(app, ["train", "--data", str(data), "--model", "bidnn", "--out", str(small_disk / "run"),
                              "--epochs", "1", "--no-progress", "--set", "hidden=1024"])
    assert res.exit_code == 2
    assert "no space left" in _one_error(res.output)
    assert _entries(small_disk) == []


def test_read_only_tmpfs_refuses_every_writer_in_one_line(tmp_path: Path, small_disk: Path) -> None:
    data = _npz(tmp_path / "d.npz")
    (small_disk / "run").mkdir()
    _read_only(small_disk)
    with pytest.raises(DiskError, match="read-only file system"):
        write_folder(_toy(), small_disk / "f")
    with pytest.raises(DiskError, match="read-only file system"):
        write_embeddings(small_disk / "emb", [{"joint": np.ones((3, 2), np.float32)}], 3)
    with pytest.raises(DiskError, match="read-only file system"):
        atomic_write(small_disk / "idx.npz", lambda fh: fh.write(b"x"))
    for out in ("run", "new/run"):
        res = runner.invoke(app, ["train", "--data", str(data), "--model", "bidnn", "--out", str(small_disk / out),
                                  "--epochs", "1", "--no-progress"])
        assert res.exit_code == 2 and "read-only file system" in _one_error(res.output)
    assert _entries(small_disk) == ["run"]
