"""Run every bad-input case against the real CLI and write the table in docs/reliability.md.

Each case builds its inputs in a fresh folder, runs one ``commonspace`` command (in-process through typer's
test runner, or as a subprocess where a signal or a second process is involved), and records the exit code,
what the command printed, and which files it left behind. ``tests/test_reliability.py`` runs the same cases
and checks the committed table against a fresh run, so the table cannot drift from the code.

    python scripts/reliability.py            # rewrite docs/reliability.md
    python scripts/reliability.py --check    # exit 1 when docs/reliability.md is out of date
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Case:
    """One bad input: ``setup(folder)`` writes the inputs and returns the CLI arguments."""

    name: str
    setup: Callable[[Path], list[str]]
    expect: int = 2  # exit code
    shown: str = ""  # the command as the table shows it
    run: Callable[[Path, list[str]], tuple[int, str]] | None = None  # default: in-process CLI
    needs_root: bool = False  # mounts a small tmpfs: skipped (and its row left as it is) when not root


@dataclass
class Outcome:
    case: Case
    code: int
    output: str
    left: list[str] = field(default_factory=list)
    skipped: str = ""  # why the case could not run here (its row in the table is then not checked)

    @property
    def message(self) -> str:
        lines = [ln for ln in self.output.splitlines() if ln.strip()]
        wanted = [ln for ln in lines if ln.startswith(("error:", "warning:", "note:"))]
        return " / ".join(wanted) if wanted else (lines[-1] if lines else "")


# ------------------------------------------------------------------------------------------------ inputs
def tiny(path: Path, n: int = 60, **change: object) -> Path:
    """A small two-modality labelled set in the documented .npz schema, with entries replaced by ``change``."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    arrays: dict[str, object] = {
        "x_a": rng.normal(size=(3, 6))[y] + 0.3 * rng.normal(size=(n, 6)),
        "x_b": rng.normal(size=(3, 4))[y] + 0.3 * rng.normal(size=(n, 4)),
        "labels": y,
        "modalities": np.array(["a", "b"]),
    }
    for k, v in change.items():
        if v is None:
            arrays.pop(k, None)
        else:
            arrays[k] = v
    np.savez(path, **arrays)
    return path


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "bidnn", "--out", str(out), "--epochs", "1",
            "--no-progress", *extra]


def _trained(folder: Path) -> tuple[Path, Path]:
    """A tiny trained run (data, run folder), built once per process and copied into ``folder``."""
    cache = Path(tempfile.gettempdir()) / f"commonspace-reliability-{os.getpid()}"
    if not (cache / "run" / "model" / "config.json").is_file():
        if not cache.exists():
            import atexit

            # the cache outlives every case's folder, so only the process's exit may remove it
            atexit.register(shutil.rmtree, cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        tiny(cache / "data.npz")
        code, out = run_cli(train_args(cache / "data.npz", cache / "run"))
        if code != 0:
            raise RuntimeError(f"could not train the reference run: {out}")
    shutil.copy(cache / "data.npz", folder / "data.npz")
    shutil.copytree(cache / "run", folder / "run", ignore=shutil.ignore_patterns(".lock"))
    return folder / "data.npz", folder / "run"


def embed_args(folder: Path) -> list[str]:
    return ["embed", "--model", str(folder / "run"), "--data", str(folder / "data.npz"), "--out",
            str(folder / "emb.npz")]


def _damage(rel: str, how: Callable[[bytes], bytes], then: Callable[[Path], list[str]] = embed_args):
    def setup(folder: Path) -> list[str]:
        _trained(folder)
        p = folder / "run" / rel
        p.write_bytes(how(p.read_bytes()))
        return then(folder)
    return setup


def _flip_bit(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[len(b) - 100] ^= 0x10  # inside the last tensor's data, past the JSON header
    return bytes(b)


def _edit_json(rel: str, edit: Callable[[dict], None], then: Callable[[Path], list[str]] = embed_args):
    def setup(folder: Path) -> list[str]:
        _trained(folder)
        p = folder / "run" / rel
        obj = json.loads(p.read_text())
        edit(obj)
        p.write_text(json.dumps(obj))
        return then(folder)
    return setup


def _resume(folder: Path) -> list[str]:
    return train_args(folder / "data.npz", folder / "run", "--epochs", "3")


def _resume_other(folder: Path) -> list[str]:
    _trained(folder)
    return _resume(folder) + ["--lr", "0.5"]


def _data_case(**change: object) -> Callable[[Path], list[str]]:
    return lambda folder: train_args(tiny(folder / "data.npz", **change), folder / "run")


def _sets(*sets: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        extra = [x for s in sets for x in ("--set", s)]
        return train_args(tiny(folder / "data.npz"), folder / "run", *extra)
    return setup


def _features(n: int = 60, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 6))


def _with_nan() -> np.ndarray:
    x = _features()
    x[5, 2] = np.nan
    return x


def _mask_empty() -> dict[str, object]:
    rng = np.random.default_rng(0)
    n = 60
    a, b = rng.normal(size=(n, 6)), rng.normal(size=(n, 4))
    mask = np.ones((n, 2), dtype=bool)
    mask[:3] = False
    a[:3], b[:3] = 0, 0
    return {"x_a": a, "x_b": b, "mask": mask}


def _mask_contradicts() -> dict[str, object]:
    mask = np.ones((60, 2), dtype=bool)
    mask[4, 1] = False
    return {"mask": mask}


def _text_npz(folder: Path) -> list[str]:
    (folder / "data.npz").write_text("a,b\n1,2\n")
    return train_args(folder / "data.npz", folder / "run")


def _truncated_npz(folder: Path) -> list[str]:
    raw = tiny(folder / "data.npz").read_bytes()
    (folder / "data.npz").write_bytes(raw[: len(raw) // 3])
    return train_args(folder / "data.npz", folder / "run")


def _unknown_model(folder: Path) -> list[str]:
    args = train_args(tiny(folder / "data.npz"), folder / "run")
    args[args.index("--model") + 1] = "bidn"
    return args


def _other_dims(folder: Path) -> list[str]:
    _trained(folder)
    tiny(folder / "data.npz", x_b=_features())
    return embed_args(folder)


# --------------------------------------------------------------------------------------- runners
def run_cli(args: list[str]) -> tuple[int, str]:
    """The CLI in this process; a traceback shows up in the output, as a user would see it."""
    import traceback

    from typer.testing import CliRunner

    from commonspace.cli import app

    res = CliRunner().invoke(app, args)
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        out += "".join(traceback.format_exception(res.exception))
    return res.exit_code, out


def _cli_cmd() -> list[str]:
    return [sys.executable, "-m", "commonspace"]


def run_sigterm(folder: Path, args: list[str]) -> tuple[int, str]:
    """Start the command, send SIGTERM once its temporary output file exists, and wait."""
    proc = subprocess.Popen(_cli_cmd() + args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    target = Path(args[args.index("--out") + 1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{target.name}.") for p in target.parent.iterdir()):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


_HOLDERS: list[subprocess.Popen] = []


def _held(folder: Path) -> list[str]:
    """A second process holds the run folder's lock (as a running ``train`` does) while the case runs."""
    ready = folder / "holder.ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        "from commonspace.train.lock import RunLock\n"
        "with RunLock(sys.argv[1]):\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    time.sleep(120)\n"), str(folder / "run"), str(ready)])
    _HOLDERS.append(holder)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and holder.poll() is None:
        time.sleep(0.02)
    return train_args(tiny(folder / "data.npz"), folder / "run")


def run_locked(folder: Path, args: list[str]) -> tuple[int, str]:
    try:
        return run_cli(args)
    finally:
        while _HOLDERS:
            h = _HOLDERS.pop()
            h.kill()
            h.wait()


def _big_data(folder: Path) -> list[str]:
    _trained(folder)
    rng = np.random.default_rng(0)
    n = 400_000
    y = rng.integers(0, 3, n)
    np.savez(folder / "big.npz", x_a=rng.normal(size=(n, 6)).astype(np.float32),
             x_b=rng.normal(size=(n, 4)).astype(np.float32), labels=y, modalities=np.array(["a", "b"]))
    return ["embed", "--model", str(folder / "run"), "--data", str(folder / "big.npz"), "--out",
            str(folder / "emb.npz")]


# --- issue 28 items 1, 5: resume on changed data, training failures
_SPLITS = {"split_train": np.arange(40), "split_val": np.arange(40, 50), "split_test": np.arange(50, 60)}


def _stopped(folder: Path) -> list[str]:
    """A 3-epoch run stopped right after its first checkpoint (as a kill would), and the command to rerun it."""
    from commonspace.train import trainer

    tiny(folder / "data.npz")
    args = train_args(folder / "data.npz", folder / "run", "--epochs", "3")
    write = trainer.Trainer._checkpoint

    def stop(self, *a, **k):  # type: ignore[no-untyped-def]
        write(self, *a, **k)
        raise KeyboardInterrupt

    trainer.Trainer._checkpoint = stop
    try:
        run_cli(args)
    finally:
        trainer.Trainer._checkpoint = write
    return args


def _stopped_then_changed(folder: Path) -> list[str]:
    args = _stopped(folder)
    tiny(folder / "data.npz", x_a=_features(60, seed=7))  # same shape, labels and splits; other values
    return args


def _diverging(folder: Path) -> list[str]:
    args = train_args(tiny(folder / "data.npz", **_SPLITS), folder / "run", "--lr", "1e30", "--epochs", "2")
    args[args.index("bidnn")] = "ae_split"
    return args


def _sets_split(*sets: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        extra = [x for s in sets for x in ("--set", s)]
        return train_args(tiny(folder / "data.npz", **_SPLITS), folder / "run", *extra)
    return setup


def _with_free_memory(gib: int) -> Callable[[Path, list[str]], tuple[int, str]]:
    """Run in-process with the free memory pinned, so the message (which states the limit) is the same anywhere."""
    def run(folder: Path, args: list[str]) -> tuple[int, str]:
        from commonspace.models import base

        real = base.available_memory
        base.available_memory = lambda device="cpu": gib << 30
        try:
            return run_cli(args)
        finally:
            base.available_memory = real
    return run


def _outlier_class(folder: Path) -> list[str]:
    y = np.random.default_rng(0).integers(0, 3, 60)
    y[7] = 10**9
    args = train_args(tiny(folder / "data.npz", labels=y, **_SPLITS), folder / "run")
    args[args.index("bidnn")] = "cvs"
    return args


def _single_class(folder: Path) -> list[str]:
    return train_args(tiny(folder / "data.npz", labels=np.zeros(60, dtype=int), **_SPLITS), folder / "run")


# --- issue 28 item 4: tampered metadata
def _edit_meta_json(path: Path, edit: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _tampered_folder(edit: Callable[[dict], object]) -> Callable[[Path], list[str]]:
    """A dataset folder written by `convert`, its meta.json hand-edited; then `train --data data/` on it."""
    def setup(folder: Path) -> list[str]:
        code, out = run_cli(["convert", str(tiny(folder / "data.npz")), str(folder / "data")])
        if code != 0:
            raise RuntimeError(f"could not convert the reference data: {out}")
        _edit_meta_json(folder / "data" / "meta.json", edit)
        return train_args(folder / "data", folder / "run")
    return setup


def _embedded(folder: Path) -> Path:
    """An embeddings folder written by `embed --out emb/` from the reference run."""
    _trained(folder)
    code, out = run_cli(["embed", "--model", str(folder / "run"), "--data", str(folder / "data.npz"), "--out",
                         f"{folder / 'emb'}/"])
    if code != 0:
        raise RuntimeError(f"could not embed with the reference run: {out}")
    return folder / "emb"


def _tampered_embeddings(edit: Callable[[dict], object]) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        _edit_meta_json(_embedded(folder) / "meta.json", edit)
        return ["index", "build", "--embeddings", f"{folder / 'emb'}/", "--out", str(folder / "idx.npz")]
    return setup


def _tampered_index(edit: Callable[[dict], object]) -> Callable[[Path], list[str]]:
    """An index file from `index build`, its JSON meta entry hand-edited; then `index query --ids 0` on it."""
    def setup(folder: Path) -> list[str]:
        code, out = run_cli(["index", "build", "--embeddings", f"{_embedded(folder)}/", "--out",
                             str(folder / "idx.npz")])
        if code != 0:
            raise RuntimeError(f"could not build the reference index: {out}")
        shutil.rmtree(folder / "emb")
        with np.load(folder / "idx.npz") as z:
            arrays = dict(z)
        arrays["meta"] = np.array(json.dumps(edit(json.loads(str(arrays["meta"])))), dtype=str)
        np.savez(folder / "idx.npz", **arrays)
        return ["index", "query", "--index", str(folder / "idx.npz"), "--ids", "0"]
    return setup


def _without(key: str) -> Callable[[dict], dict]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _null_bytes(d: dict) -> dict:
    d["files"]["x_a.npy"]["bytes"] = None
    return d


# --- issue 28 items 6, 7: CLI input, robustness probe
def _indexed(folder: Path) -> None:
    """The reference run's embeddings and a Flat index over them, in ``folder``."""
    _trained(folder)
    for args in (embed_args(folder), ["index", "build", "--embeddings", str(folder / "emb.npz"), "--out",
                                      str(folder / "idx.npz")]):
        code, out = run_cli(args)
        if code != 0:
            raise RuntimeError(f"could not build the index: {out}")


def _query(*extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        _indexed(folder)
        return ["index", "query", "--index", str(folder / "idx.npz"), *(str(folder / x) if "/" in x else x
                                                                          for x in extra)]
    return setup


def _two_runs(folder: Path) -> list[str]:
    """The reference run and a closed-form one for a 5-d ``b``: the second does not fit data.npz."""
    _trained(folder)
    code, out = run_cli(["train", "--data", str(tiny(folder / "other.npz", x_b=_features(60)[:, :5])), "--model",
                         "raw", "--out", str(folder / "run5"), "--no-progress"])
    if code != 0:
        raise RuntimeError(f"could not train the second run: {out}")
    return ["evaluate", "--model", str(folder / "run"), "--model", str(folder / "run5"), "--data",
            str(folder / "data.npz"), "--subsets"]


def _evaluate(*extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        _trained(folder)
        return ["evaluate", "--model", str(folder / "run"), "--data", str(folder / "data.npz"),
                *(str(folder / x) if "/" in x else x for x in extra)]
    return setup


def _embed_slash(folder: Path) -> list[str]:
    _trained(folder)
    return embed_args(folder)[:-1] + [f"{folder / 'emb.v2'}/"]


# --------------------------------------------------------------------------------------------- cases
#: a JSON file cut short: fixed bytes, so the parser's position in the message does not depend on the run
_CUT_JSON = b'{"format": "commonspace.model", "model": "bid'


def _newer_format(h: dict) -> None:
    h["format_version"] = 99


# --- issue 28 items 2, 3: full disk, read-only disk, atomic replacement
class Unavailable(RuntimeError):
    """A case's setup cannot be made on this machine (no tmpfs mount): the case is skipped, not failed."""


_MOUNTS: list[Path] = []


def _small_disk(folder: Path, read_only: bool = False) -> Path:
    """A fresh 1 MiB tmpfs at ``folder/disk`` (unmounted by run_case), read-only if asked."""
    disk = folder / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}")
    _MOUNTS.append(disk)
    if read_only:
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if r.returncode != 0:
            raise Unavailable(f"cannot remount the tmpfs read-only: {r.stderr.strip()}")
    return disk


def run_subprocess(folder: Path, args: list[str]) -> tuple[int, str]:
    """The CLI in a child process: a memory map filled past a full disk would kill this one with SIGBUS."""
    r = subprocess.run(_cli_cmd() + args, cwd=folder, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def _wide(path: Path, n: int = 3000, d: int = 200) -> Path:
    """2.4 MB of float32 features: more than the 1 MiB disk holds."""
    return tiny(path, n=n, x_a=np.random.default_rng(2).normal(size=(n, d)).astype(np.float32))


def _convert_full(folder: Path) -> list[str]:
    data = _wide(folder / "big.npz")
    return ["convert", str(data), str(_small_disk(folder) / "out"), "--dtype", "float32"]


def _embed_full(folder: Path, out: str = "emb") -> list[str]:
    _trained(folder)
    tiny(folder / "data.npz", n=4000)
    return ["embed", "--model", str(folder / "run"), "--data", str(folder / "data.npz"), "--out",
            str(_small_disk(folder) / out)]


def _index_full(folder: Path) -> list[str]:
    np.savez(folder / "emb.npz", joint=np.random.default_rng(0).normal(size=(4000, 200)).astype(np.float32),
             index=np.arange(4000))
    return ["index", "build", "--embeddings", str(folder / "emb.npz"), "--out", str(_small_disk(folder) / "idx.npz"),
            "--factory", "Flat"]


def _train_full(folder: Path) -> list[str]:
    data = _wide(folder / "data.npz", n=200)  # with its splits, so that no split note precedes the refusal
    tiny(data, n=200, x_a=np.load(data)["x_a"], split_train=np.arange(160), split_val=np.arange(160, 180),
         split_test=np.arange(180, 200))
    return train_args(data, _small_disk(folder) / "run", "--set", "hidden=1024")


def _train_read_only(folder: Path) -> list[str]:
    return train_args(tiny(folder / "data.npz"), _small_disk(folder, read_only=True) / "run")


def _embed_read_only(folder: Path) -> list[str]:
    _trained(folder)
    return ["embed", "--model", str(folder / "run"), "--data", str(folder / "data.npz"), "--out",
            str(_small_disk(folder, read_only=True) / "emb")]


def _killed_between_renames(folder: Path, name: str) -> None:
    """Leave the state a writer killed between its two renames would: ``name`` hidden as .old, the new as .tmp."""
    from commonspace.data.io import _host_tag

    tag = f".{name}.{2**30}-{_host_tag()}"  # pid 2**30: beyond any pid_max, so certainly gone
    shutil.copytree(folder / name, folder / f"{tag}.efgh5678.tmp")
    os.rename(folder / name, folder / f"{tag}.abcd1234.old")


def _converted(folder: Path) -> Path:
    code, out = run_cli(["convert", str(tiny(folder / "data.npz")), str(folder / "data")])
    if code != 0:
        raise RuntimeError(f"could not convert the reference data: {out}")
    return folder / "data"


def _overwrite_killed(then: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        _converted(folder)
        _killed_between_renames(folder, "data")
        if then == "read":
            return train_args(folder / "data", folder / "run")
        return ["convert", str(folder / "data.npz"), str(folder / "data"), "--overwrite"]
    return setup


def _symlinked_out(folder: Path) -> list[str]:
    os.rename(_converted(folder), folder / "real")
    (folder / "data").symlink_to(folder / "real")
    return ["convert", str(folder / "data.npz"), str(folder / "data"), "--overwrite", "--dtype", "float32"]


def _embed_folder_killed(folder: Path) -> list[str]:
    _embedded(folder)
    _killed_between_renames(folder, "emb")
    return ["index", "build", "--embeddings", f"{folder / 'emb'}/", "--out", str(folder / "idx.npz")]


CASES: list[Case] = [
    # data files
    Case("file not found", lambda f: train_args(f / "nope.npz", f / "run"), shown="train --data nope.npz"),
    Case("text file renamed .npz", _text_npz, shown="train --data data.npz"),
    Case("truncated .npz", _truncated_npz, shown="train --data data.npz"),
    Case("object array (needs pickle)", _data_case(x_b=np.array([{"a": 1}] * 60, dtype=object)),
         shown="train --data data.npz"),
    Case("mismatched sample counts", _data_case(x_b=np.zeros((50, 4))), shown="train --data data.npz"),
    Case("NaN in features", _data_case(x_a=_with_nan()), shown="train --data data.npz"),
    Case("float64 beyond float32 range", _data_case(x_a=_features() * 1e300), shown="train --data data.npz"),
    Case("integers above 2^24 (trains, warns)",
         _data_case(x_a=np.random.default_rng(0).integers(0, 2**26, (60, 6))), expect=0,
         shown="train --data data.npz"),
    Case("modality of width 0", _data_case(x_b=np.zeros((60, 0))), shown="train --data data.npz"),
    Case("unknown modality name", lambda f: train_args(tiny(f / "data.npz"), f / "run", "--modalities", "a,c"),
         shown="train --data data.npz --modalities a,c"),
    Case("mask contradicts features", _data_case(**_mask_contradicts()), shown="train --data data.npz"),
    Case("labels of the wrong shape", _data_case(labels=np.zeros(50, dtype=int)), shown="train --data data.npz"),
    Case("string labels", _data_case(labels=np.array(["cat", "dog", "owl"] * 20)), shown="train --data data.npz"),
    Case("real-valued labels", _data_case(labels=np.linspace(0, 1, 60)), shown="train --data data.npz"),
    Case("empty split", _data_case(split_test=np.zeros(0, dtype=int)), shown="train --data data.npz"),
    Case("split index out of range", _data_case(split_test=np.array([1, 2, 600])), shown="train --data data.npz"),
    Case("train and test overlap", _data_case(split_train=np.arange(40), split_test=np.arange(30, 60)),
         shown="train --data data.npz"),
    Case("1-sample training split", _data_case(split_train=np.array([0]), split_test=np.arange(1, 60)),
         shown="train --data data.npz"),
    Case("only a test split given (kept, trains)", _data_case(split_test=np.arange(50, 60)), expect=0,
         shown="train --data data.npz"),
    Case("rows with no modality (trains, counted)", _data_case(**_mask_empty()), expect=0,
         shown="train --data data.npz"),
    # hyper-parameters
    Case("unknown model", _unknown_model, shown="train --model bidn"),
    Case("hyper-parameter of the wrong type", _sets("hidden=big"), shown="train --set hidden=big"),
    Case("unknown hyper-parameter", _sets("hiden=64"), shown="train --set hiden=64"),
    Case("--set without =", _sets("hidden"), shown="train --set hidden"),
    # checkpoints
    Case("flipped bit in model.safetensors", _damage("model/model.safetensors", _flip_bit),
         shown="embed --model run"),
    Case("truncated model.safetensors", _damage("model/model.safetensors", lambda b: b[: len(b) // 2]),
         shown="embed --model run"),
    Case("garbage model.safetensors", _damage("model/model.safetensors", lambda b: b"\x00garbage" * 64),
         shown="embed --model run"),
    Case("config.json not JSON", _damage("model/config.json", lambda b: _CUT_JSON), shown="embed --model run"),
    Case("config.json 'config' not an object", _edit_json("model/config.json", lambda h: h.update(config=[])),
         shown="embed --model run"),
    Case("config.json 'dims' not an object",
         _edit_json("model/config.json", lambda h: h["config"].update(dims="a")), shown="embed --model run"),
    Case("checkpoint from a newer format", _edit_json("model/config.json", _newer_format),
         shown="embed --model run"),
    Case("data of other dimensions than the checkpoint", _other_dims, shown="embed --model run --data other.npz"),
    Case("damaged trainer.json on resume", _damage("checkpoint/trainer.json", lambda b: _CUT_JSON, _resume),
         shown="train --out run (resume)"),
    Case("damaged rng.json on resume", _damage("checkpoint/rng.json", lambda b: b[:-10], _resume),
         shown="train --out run (resume)"),
    Case("resume with other settings", _resume_other,
         shown="train --out run --lr 0.5 (resume)"),
    # runs and writers
    Case("run folder in use by another process", _held, run=run_locked,
         shown="train --out run (while another train holds it)"),
    Case("embed killed by SIGTERM while writing", _big_data, expect=143, run=run_sigterm,
         shown="embed --out emb.npz, then kill -TERM"),
    # --- issue 28: resume on changed data, training failures (items 1, 5)
    Case("resume after a stop (same data)", _stopped, expect=0,
         shown="train --epochs 3 (stopped after epoch 1, rerun)"),
    Case("resume on changed data (same shape and labels)", _stopped_then_changed,
         shown="train --epochs 3 (stopped, data.npz replaced, rerun)"),
    Case("diverging loss", _diverging, shown="train --model ae_split --lr 1e30 --epochs 2"),
    Case("absurd width", _sets_split("hidden=1000000000"), run=_with_free_memory(16),
         shown="train --set hidden=1000000000 (16 GiB free)"),
    Case("one outlier class id", _outlier_class, shown="train --model cvs (labels 0..2 and one 10**9)"),
    Case("single-class labels (trains, warns)", _single_class, expect=0, shown="train --data data.npz (labels all 0)"),
    # --- issue 28: full disk, read-only disk, atomic replacement (items 2, 3)
    Case("convert onto a full disk (1 MiB tmpfs)", _convert_full, run=run_subprocess, needs_root=True,
         shown="convert big.npz disk/out --dtype float32"),
    Case("embed --out a folder on a full disk", _embed_full, run=run_subprocess, needs_root=True,
         shown="embed --out disk/emb"),
    Case("embed --out an .npz on a full disk", lambda f: _embed_full(f, "emb.npz"), run=run_subprocess,
         needs_root=True, shown="embed --out disk/emb.npz"),
    Case("index build onto a full disk", _index_full, run=run_subprocess, needs_root=True,
         shown="index build --out disk/idx.npz"),
    Case("train --out on a full disk", _train_full, run=run_subprocess, needs_root=True,
         shown="train --out disk/run --set hidden=1024"),
    Case("train --out on a read-only disk", _train_read_only, needs_root=True, shown="train --out disk/run"),
    Case("embed --out on a read-only disk", _embed_read_only, needs_root=True, shown="embed --out disk/emb"),
    Case("convert --overwrite killed between its renames, then --data OUT (old folder put back)",
         _overwrite_killed("read"), expect=0, shown="train --data data/ (data/ hidden as .old by the kill)"),
    Case("convert --overwrite killed between its renames, then rerun (stale copies swept)",
         _overwrite_killed("rerun"), expect=0, shown="convert data.npz data --overwrite (after the kill)"),
    Case("convert --overwrite onto a symlinked OUT (target replaced, link kept)", _symlinked_out, expect=0,
         shown="convert data.npz data --overwrite (data -> real)"),
    Case("embeddings folder replacement killed between its renames, then read",
         _embed_folder_killed, expect=0, shown="index build --embeddings emb/ (emb/ hidden as .old by the kill)"),
    # --- issue 28: tampered metadata (item 4)
    Case("dataset folder meta.json is a list", _tampered_folder(lambda d: [d]), shown="train --data data/"),
    Case("dataset folder meta.json \"files\": []", _tampered_folder(lambda d: {**d, "files": []}),
         shown="train --data data/"),
    Case("dataset folder meta.json bytes null", _tampered_folder(_null_bytes), shown="train --data data/"),
    Case("dataset folder meta.json \"samples\": \"abc\"", _tampered_folder(lambda d: {**d, "samples": "abc"}),
         shown="train --data data/"),
    Case("embeddings folder meta.json \"arrays\": []", _tampered_embeddings(lambda d: {**d, "arrays": []}),
         shown="index build --embeddings emb/"),
    Case("index meta without kind", _tampered_index(_without("kind")), shown="index query --index idx.npz --ids 0"),
    Case("index meta is a list", _tampered_index(lambda d: [d]), shown="index query --index idx.npz --ids 0"),
    # --- issue 28: CLI input, robustness probe (items 6, 7)
    Case("index query --ids not an integer", _query("--ids", "abc"), shown="index query --ids abc"),
    Case("index query --k 0", _query("--ids", "3", "--k", "0"), shown="index query --ids 3 --k 0"),
    Case("index query --ids with no id", _query("--ids", ","), shown="index query --ids ,"),
    Case("index query --ids beyond int64", _query("--ids", "99999999999999999999"),
         shown="index query --ids 99999999999999999999"),
    Case("index query --json in a missing folder", _query("--ids", "3", "--json", "nodir/r.json"),
         shown="index query --ids 3 --json nodir/r.json"),
    Case("index build --nprobe beyond faiss's size_t",
         lambda f: (_indexed(f), ["index", "build", "--embeddings", str(f / "emb.npz"), "--out", str(f / "i.npz"),
                                  "--factory", "IVF2,Flat", "--nprobe", str(10**20)])[1],
         shown="index build --factory IVF2,Flat --nprobe 100000000000000000000"),
    Case("index build IVF lists > rows", lambda f: (_indexed(f), [
        "index", "build", "--embeddings", str(f / "emb.npz"), "--out", str(f / "i.npz"), "--factory",
        "IVF100,Flat"])[1], shown="index build --factory IVF100,Flat (60 rows)"),
    Case("evaluate two runs, the second of other dims", _two_runs,
         shown="evaluate --model run --model run5 --subsets"),
    Case("evaluate --json in a missing folder", _evaluate("--json", "nodir/r.json"),
         shown="evaluate --json nodir/r.json"),
    Case("evaluate --k 0", _evaluate("--k", "0"), shown="evaluate --k 0"),
    Case("embed --out with a trailing slash (a folder)", _embed_slash, expect=0, shown="embed --out emb.v2/"),
    Case("probe with --split all (probe rows left out, noted)", _evaluate("--subsets", "--split", "all"),
         expect=0, shown="evaluate --subsets --split all"),
    Case("probe with every query a probe row", _evaluate("--subsets", "--split", "train"),
         shown="evaluate --subsets --split train"),
    # --- issue 28: docs, quick runs (items 8, 9)
]


# ------------------------------------------------------------------------------------------- running
def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _normalise(text: str, folder: Path) -> str:
    text = text.replace(str(folder) + os.sep, "").replace(str(folder), ".")
    text = re.sub(r"/tmp/[^\s'\"]*commonspace-reliability-\d+/", "", text)
    text = re.sub(r"'_\w+', ", "", text)  # models a test suite registers for itself ('_toy_...')
    text = re.sub(r"\bpid \d+", "pid <pid>", text)
    text = text.replace(socket.gethostname(), "<host>")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?", "<time>", text)
    text = re.sub(r"\(seed \d+\)", "(seed 0)", text)
    text = re.sub(r"\d+ samples/s", "N samples/s", text)
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    text = re.sub(r"python[\d.]* -m commonspace|commonspace train[^)]*\)", lambda m: m.group(0).split(" ")[0], text)
    return text


def run_case(case: Case, workdir: Path | None = None) -> Outcome:
    if case.needs_root and (not hasattr(os, "geteuid") or os.geteuid() != 0):
        return Outcome(case, -1, "", skipped="mounting a tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=workdir))
    try:
        try:
            args = case.setup(folder)
        except Unavailable as exc:
            return Outcome(case, -1, "", skipped=str(exc))
        before = _snapshot(folder)
        code, output = (case.run or (lambda _f, a: run_cli(a)))(folder, args)
        added = sorted(_snapshot(folder) - before)
        # a run folder's contents are summarised; hidden files (temporary outputs) are always named
        left = [a for a in added if Path(a).parts[0] not in ("run",) or Path(a).name.startswith(".")
                or len(Path(a).parts) == 1]
        return Outcome(case, code, _normalise(output, folder), left)
    finally:
        while _MOUNTS:
            subprocess.run(["umount", "-l", str(_MOUNTS.pop())], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def run_all(workdir: Path | None = None) -> list[Outcome]:
    return [run_case(c, workdir) for c in CASES]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(outcomes: list[Outcome]) -> str:
    lines = [
        "# Reliability: every bad input we try, and what the CLI does with it",
        "",
        "Generated by `python scripts/reliability.py`, which builds each input in a fresh folder and runs the",
        "real command; `tests/test_reliability.py` reruns every case and fails when this file is out of date.",
        "Paths are shown relative to the case's folder. Exit 2 is a refused input (one line, before any training",
        "starts, no traceback); exit 0 rows run and say what they did; 143 is the conventional code for SIGTERM.",
        "\"Left on disk\" lists every file the command created outside a run folder's normal contents, hidden",
        "temporary files included. Rows on a full or read-only disk mount a 1 MiB tmpfs, so they run only as root;",
        "elsewhere the test checks the other rows.",
        "",
        "| case | command | exit | message | left on disk |",
        "|---|---|---|---|---|",
    ]
    for o in (o for o in outcomes if not o.skipped):
        left = ", ".join(o.left) if o.left else "nothing"
        lines.append(f"| {_cell(o.case.name)} | `{_cell(o.case.shown)}` | {o.code} | {_cell(o.message)} | "
                     f"{_cell(left)} |")
    return "\n".join(lines) + "\n"


def comparable(doc: str, outcomes: list[Outcome]) -> str:
    """The committed table less the rows of cases that could not run here (root-only ones run as a user)."""
    gone = {f"| {_cell(o.case.name)} |" for o in outcomes if o.skipped}
    return "\n".join(ln for ln in doc.split("\n") if not any(ln.startswith(g) for g in gone))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/reliability.md instead of writing")
    ap.add_argument("--out", type=Path, default=DOC)
    a = ap.parse_args(argv)
    outcomes = run_all()
    bad = [o for o in outcomes if o.code != o.case.expect]
    for o in bad:
        print(f"UNEXPECTED exit {o.code} (want {o.case.expect}) for {o.case.name!r}: {o.output}", file=sys.stderr)
    text = render(outcomes)
    for o in outcomes:
        if o.skipped:
            print(f"skipped {o.case.name!r}: {o.skipped}", file=sys.stderr)
    if a.check:
        same = a.out.is_file() and comparable(a.out.read_text(), outcomes) == text
        print("docs/reliability.md is up to date" if same else "docs/reliability.md is out of date; rerun "
              "python scripts/reliability.py")
        return 0 if same and not bad else 1
    if any(o.skipped for o in outcomes):
        print("not written: some cases could not run here (see above); run as root", file=sys.stderr)
        return 1
    a.out.write_text(text)
    print(f"wrote {a.out}: {len(outcomes)} cases, {len(bad)} unexpected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
