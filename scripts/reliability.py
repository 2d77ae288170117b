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


@dataclass
class Outcome:
    case: Case
    code: int
    output: str
    left: list[str] = field(default_factory=list)

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


# --------------------------------------------------------------------------------------------- cases
#: a JSON file cut short: fixed bytes, so the parser's position in the message does not depend on the run
_CUT_JSON = b'{"format": "commonspace.model", "model": "bid'


def _newer_format(h: dict) -> None:
    h["format_version"] = 99


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
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=workdir))
    try:
        args = case.setup(folder)
        before = _snapshot(folder)
        code, output = (case.run or (lambda _f, a: run_cli(a)))(folder, args)
        added = sorted(_snapshot(folder) - before)
        # a run folder's contents are summarised; hidden files (temporary outputs) are always named
        left = [a for a in added if Path(a).parts[0] not in ("run",) or Path(a).name.startswith(".")
                or len(Path(a).parts) == 1]
        return Outcome(case, code, _normalise(output, folder), left)
    finally:
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
        "temporary files included.",
        "",
        "| case | command | exit | message | left on disk |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        left = ", ".join(o.left) if o.left else "nothing"
        lines.append(f"| {_cell(o.case.name)} | `{_cell(o.case.shown)}` | {o.code} | {_cell(o.message)} | "
                     f"{_cell(left)} |")
    return "\n".join(lines) + "\n"


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
    if a.check:
        same = a.out.is_file() and a.out.read_text() == text
        print("docs/reliability.md is up to date" if same else "docs/reliability.md is out of date; rerun "
              "python scripts/reliability.py")
        return 0 if same and not bad else 1
    a.out.write_text(text)
    print(f"wrote {a.out}: {len(outcomes)} cases, {len(bad)} unexpected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
