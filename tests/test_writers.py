"""Writers leave nothing behind and respect the umask; a run folder has one writer at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from commonspace.cli import app
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.io import _host_tag, atomic_write, save_embeddings, save_npz
from commonspace.train import TrainConfig, Trainer
from commonspace.train import lock as lock_mod
from commonspace.train import trainer as trainer_mod
from commonspace.train.checkpoint import write_text_atomic
from commonspace.train.distributed import DistInfo
from commonspace.train.lock import LOCK_NAME, RunLock
from helpers_train import build_model, make_data

runner = CliRunner()
posix_only = pytest.mark.skipif(os.name != "posix", reason="signals and modes as on POSIX")


def _own_npz(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = rng.normal(size=(3, 5))[y] + 0.3 * rng.normal(size=(n, 5))
    b = rng.normal(size=(3, 4))[y] + 0.3 * rng.normal(size=(n, 4))
    np.savez(path, x_image=a, x_text=b, labels=y, modalities=np.array(["image", "text"]))
    return path


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------------- atomic_write
@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_no_temp_and_keeps_target(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")

    def boom(fh) -> None:
        fh.write(b"partial")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, "out.npz") == []


def test_write_into_a_directory_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        atomic_write(tmp_path / "d", lambda fh: fh.write(b"x"))


@posix_only
def test_stale_temp_files_of_dead_writers_are_swept_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "emb.npz"
    tag = _host_tag()
    dead = tmp_path / f".emb.npz.{_dead_pid()}-{tag}.abcd1234.tmp"
    live = tmp_path / f".emb.npz.{os.getppid()}-{tag}.abcd1234.tmp"
    mine = tmp_path / f".emb.npz.{os.getpid()}-{tag}.abcd1234.tmp"  # another thread of this process
    other_host = tmp_path / f".emb.npz.{_dead_pid()}-{'0' * 8 if tag != '0' * 8 else '1' * 8}.abcd1234.tmp"
    legacy_old = tmp_path / ".emb.npz.k3j4h5g6.tmp"  # pre-pid name, untouched for two hours
    legacy_new = tmp_path / ".emb.npz.q1w2e3r4.tmp"
    other_target = tmp_path / f".emb.npz.bak.{_dead_pid()}-{tag}.abcd1234.tmp"
    for p in (dead, live, mine, other_host, legacy_old, legacy_new, other_target):
        p.write_bytes(b"x" * 10)
    two_hours_ago = time.time() - 7200
    os.utime(legacy_old, (two_hours_ago, two_hours_ago))

    atomic_write(target, lambda fh: fh.write(b"new"))

    assert target.read_bytes() == b"new"
    assert not dead.exists() and not legacy_old.exists()
    assert live.exists() and mine.exists() and other_host.exists() and legacy_new.exists() and other_target.exists()


def test_write_text_atomic_is_the_same_writer(tmp_path: Path) -> None:
    stale = tmp_path / f".log.jsonl.{_dead_pid()}-{_host_tag()}.abcd1234.tmp"
    stale.write_text("x")
    write_text_atomic(tmp_path / "sub" / "log.jsonl", "a\n")  # creates the folder, like before
    write_text_atomic(tmp_path / "log.jsonl", "b\n")
    assert (tmp_path / "sub" / "log.jsonl").read_text() == "a\n" and not stale.exists()


# ------------------------------------------------------------------------------------------------- umask
@posix_only
def test_output_files_follow_the_umask(tmp_path: Path, umask022: None) -> None:
    rng = np.random.default_rng(0)
    ds = MultimodalDataset({"a": rng.normal(size=(10, 3)).astype(np.float32)})
    save_npz(ds, tmp_path / "ds.npz")
    save_embeddings(tmp_path / "emb.npz", {"joint": rng.normal(size=(10, 2))})
    for name in ("ds.npz", "emb.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    os.umask(0o027)
    save_embeddings(tmp_path / "private.npz", {"joint": rng.normal(size=(10, 2))})
    assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o640


@posix_only
def test_cli_outputs_follow_the_umask(tmp_path: Path, umask022: None) -> None:
    data = _own_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(data), "--model", "cca", "--out", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    emb, ev = tmp_path / "emb.npz", tmp_path / "eval.json"
    r = runner.invoke(app, ["embed", "--model", str(run), "--data", str(data), "--out", str(emb)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--model", str(run), "--data", str(data), "--json", str(ev)])
    assert r.exit_code == 0, r.output
    for p in (emb, ev, run / "log.jsonl", run / "model" / "model.safetensors"):
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert not (run / LOCK_NAME).exists()  # the lock goes with the run


# ----------------------------------------------------------------------------------------------- signals
_SLOW_WRITE = """
import sys, time
from commonspace.data.io import atomic_write, exit_on_signals

def slow(fh):
    fh.write(b"partial" * 1000)
    fh.flush()
    print("writing", flush=True)
    time.sleep(30)

with exit_on_signals():
    atomic_write(sys.argv[1], slow)
"""

# the real CLI app (its callback installs the handler) running one extra command that writes slowly
_SLOW_CLI = """
import sys, time
from commonspace.cli import app
from commonspace.data.io import atomic_write

@app.command("slow-write")
def slow_write(path: str) -> None:
    def slow(fh):
        fh.write(b"partial" * 1000)
        fh.flush()
        print("writing", flush=True)
        time.sleep(30)
    atomic_write(path, slow)

app(["slow-write", sys.argv[1]], prog_name="commonspace")
"""


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _kill_while_writing(script: str, target: Path, sig: int) -> subprocess.CompletedProcess:
    # a job started in the background (`cmd &`) inherits SIGINT ignored, and one under nohup SIGHUP, and the CLI
    # rightly keeps an ignored signal ignored: give the child the default dispositions, as a terminal would
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(target)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    try:
        line = p.stdout.readline()
        assert line.strip() == "writing", p.stderr.read()
        assert _leftovers(target.parent, target.name), "the temp file should exist while writing"
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@posix_only
def test_sigterm_during_atomic_write_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "emb.npz"
    r = _kill_while_writing(_SLOW_WRITE, target, signal.SIGTERM)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert _leftovers(tmp_path, "emb.npz") == [] and not target.exists()


@posix_only
@pytest.mark.parametrize(("sig", "code", "needle"), [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                     (signal.SIGHUP, 129, "stopped by SIGHUP"),
                                                     (signal.SIGINT, 130, "interrupted")])
def test_cli_command_killed_mid_write_cleans_up_with_one_line(tmp_path: Path, sig: int, code: int,
                                                               needle: str) -> None:
    target = tmp_path / "eval.json"
    r = _kill_while_writing(_SLOW_CLI, target, sig)
    assert r.returncode == code, r.stderr
    assert _leftovers(tmp_path, "eval.json") == [] and not target.exists()
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr



def _train_run(tmp_path: Path, epochs: int) -> tuple[Path, list[str]]:
    """A run folder and the `train` arguments of a small ae_split run into it."""
    data = _own_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    return run, ["train", "--data", str(data), "--model", "ae_split", "--out", str(run), "--epochs", str(epochs),
                 "--no-progress"]

@posix_only
def test_sigterm_stops_train_cleanly_and_frees_the_folder(tmp_path: Path) -> None:
    """What torchrun does to its workers: the folder keeps its last checkpoint, no temp entries, no lock."""
    run, args = _train_run(tmp_path, epochs=100000)
    p = subprocess.Popen([sys.executable, "-m", "commonspace", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.jsonl").exists() and (run / "checkpoint").is_dir()) and p.poll() is None:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert sorted(x.name for x in run.iterdir() if x.name.startswith(".")) == []  # no .lock, no temp entries
    assert (run / "checkpoint" / "trainer.json").exists()


# -------------------------------------------------------------------------------------------------- lock
_HOLD_LOCK = """
import sys
from commonspace.train.lock import RunLock

with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _hold(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD_LOCK), str(folder)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "locked":
        p.kill()
        raise AssertionError(p.stderr.read())
    return p


def _release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=60)


@posix_only
def test_second_train_on_a_locked_run_folder_is_refused(tmp_path: Path) -> None:
    run, args = _train_run(tmp_path, epochs=1)
    holder = _hold(run)
    try:
        before = _snapshot(run)
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] and info["started"] and "python" in info["command"]
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        msg = " ".join(r.output.split())
        assert f"in use by pid {holder.pid}" in msg and "use another --out" in msg and "Traceback" not in msg
        assert _snapshot(run) == before  # nothing read, written or deleted
    finally:
        _release(holder)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (run / "model" / "config.json").exists() and not (run / LOCK_NAME).exists()


@posix_only
def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    holder = _hold(tmp_path)
    holder.kill()  # SIGKILL: no cleanup runs, the file stays, the kernel drops the lock
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_thread_and_refuses_another(tmp_path: Path) -> None:
    import threading

    errors: list[BaseException] = []
    with RunLock(tmp_path), RunLock(tmp_path):
        t = threading.Thread(target=lambda: errors.append(pytest.raises(DataError, RunLock(tmp_path).acquire).value))
        t.start()
        t.join()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()
    assert len(errors) == 1 and "in use by" in str(errors[0])


@posix_only
def test_lock_without_flock_uses_exclusive_create_and_pid_liveness(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(lock_mod, "fcntl", None)
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x", "command": "y"}))
    with RunLock(tmp_path):  # its holder is gone: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x", "command": "y"}))
    with pytest.raises(DataError, match=f"in use by pid {os.getppid()} .*delete"):
        RunLock(tmp_path).acquire()
    assert path.exists()


@pytest.mark.parametrize(("rank", "locked"), [(0, True), (1, False)])
def test_only_rank_0_locks_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: int,
                                          locked: bool) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(trainer_mod, "init_distributed", lambda **kw: DistInfo(rank=rank, world_size=2))
    monkeypatch.setattr(Trainer, "_fit", lambda self, *a: seen.append((tmp_path / LOCK_NAME).exists()) or [])
    Trainer(build_model(), TrainConfig(epochs=1, out_dir=tmp_path)).fit(make_data())
    assert seen == [locked] and not (tmp_path / LOCK_NAME).exists()


def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(DataError, match="nope"):
        Trainer(build_model(), TrainConfig(epochs=1, out_dir=run)).fit(make_data(), train="nope")
    assert not run.exists()  # the lock made it and took it away again, empty
    with pytest.raises(DataError, match="is a file"):
        RunLock(_own_npz(tmp_path / "d.npz")).acquire()
