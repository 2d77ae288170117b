"""Every ```bash / ```sh / ```python block of README.md and docs/*.md runs (issue 28, item 8).

Blocks are found when the tests are collected, so a block added to a doc is run without editing this file.
The blocks of one file run in order in one temp folder (a doc block often uses what the one before it wrote):
Python blocks in one namespace, shell blocks through ``bash -e -o pipefail`` with the venv's ``commonspace``
first on PATH.

The prelude (:data:`PRELUDE`) defines the names the docs use, as tiny seeded arrays: ``img_feats``,
``txt_feats`` (1000 x 8 / 6, nonzero where ``present`` marks them missing), ``y``, ``present`` (1000 x 2
bool), ``img`` / ``txt`` (the same with missing rows zeroed), ``tr`` / ``va`` / ``te`` (800 / 100 / 100 row
indices), ``data`` (a :class:`MultimodalDataset` of them), ``z`` / ``queries`` / ``more_vectors`` /
``more_ids`` (16-d float vectors), ``codes`` / ``query_codes`` / ``packed`` (64-bit codes), and for the noisy-pair
builder ``images``, ``image_labels``, ``speech``, ``speech_labels``, ``itr``, ``ite``, ``str_``, ``ste``. The
folder starts with ``emb.npz`` (an embeddings file as ``commonspace embed`` writes it) and ``my-pairs.toml``
(a dataset spec over ``.npy`` files).

Rewrites that keep the run short (:func:`rewrite_shell`, :func:`rewrite_python`):

* ``commonspace train`` gets ``--epochs 1``; Python ``epochs=N`` becomes ``epochs=2``;
* ``commonspace bench NAME --quick`` gets ``--seeds 1`` and, where :data:`BENCH_DATASETS` names one, its
  smallest dataset;
* ``../shared/data`` points at the shared data folder (``$COMMONSPACE_SHARED_DATA`` or ``<repo>/../shared/data``).

Blocks that cannot run here are listed in :data:`SKIP` by (file, first line) with the reason and reported as
skipped; :func:`test_skip_list_is_current` fails when a listed block is gone, so the list cannot go stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LANGS = {"bash": "shell", "sh": "shell", "python": "python"}

#: (file, first line of the block, stripped; a prefix is enough) -> why the block is not run here. Where two
#: blocks share a first line, the key names a later line unique to the block instead.
SKIP: dict[tuple[str, str], str] = {
    ("README.md", "python3 -m venv .venv && . .venv/bin/activate && pip install"):
        "the fresh-machine install: builds a venv and downloads torch (network, minutes)",
    ("README.md", ". .venv/bin/activate && python -m pytest -q"):
        "runs the whole test suite, this file included",
    ("docs/training.md", "torchrun --nproc_per_node=2"):
        "two processes on placeholders (`--data ...`); DDP is tested by tests/test_ddp.py",
    ("docs/data.md", 'ds = load("fsdd-mnist"'):
        "needs the FSDD recordings (a download) and featurises 3000 clips twice",
    ("docs/benchmarks.md", "commonspace bench hashing --datasets two-digits  --data-root"):
        "the full hashing bench (432 trainings, about 9 core-hours)",
    ("docs/data.md", 'ds = load("noisy-digits")'):
        "on a cold cache synthesises and featurises 5000 utterances (11 s or more)",
}

#: the smallest dataset of each bench, for ``bench NAME --quick`` blocks
BENCH_DATASETS = {"bidnn": "digits"}

PRELUDE = '''
import numpy as np
from commonspace import MultimodalDataset

_rng = np.random.default_rng(0)
N = 1000
y = _rng.integers(0, 4, N)
img_feats = (_rng.normal(size=(N, 8)) + y[:, None]).astype(np.float32)
txt_feats = (_rng.normal(size=(N, 6)) - y[:, None]).astype(np.float32)
present = np.ones((N, 2), bool)
present[_rng.choice(N, 100, replace=False), _rng.integers(0, 2, 100)] = False
img = np.where(present[:, :1], img_feats, 0).astype(np.float32)
txt = np.where(present[:, 1:], txt_feats, 0).astype(np.float32)
_perm = _rng.permutation(N)
tr, va, te = np.sort(_perm[:800]), np.sort(_perm[800:900]), np.sort(_perm[900:])
data = MultimodalDataset({"image": img, "text": txt}, mask=present, labels=y,
                         splits={"train": tr, "val": va, "test": te})
z = _rng.normal(size=(N, 16)).astype(np.float32)
queries = z[:5] + 0.01 * _rng.normal(size=(5, 16)).astype(np.float32)
more_vectors = _rng.normal(size=(10, 16)).astype(np.float32)
more_ids = np.arange(N, N + 10)
codes = np.where(_rng.normal(size=(N, 64)) > 0, 1, -1).astype(np.int8)
query_codes = codes[:5]
packed = np.packbits(codes > 0, axis=1)
images = _rng.random((40, 784), dtype=np.float32)
image_labels = np.repeat(np.arange(4), 10)
speech = _rng.normal(size=(40, 696)).astype(np.float32)
speech_labels = np.repeat(np.arange(4), 10)
itr, ite = np.arange(0, 40, 2), np.arange(1, 40, 2)
str_, ste = np.arange(0, 40, 2), np.arange(1, 40, 2)
'''

FILES_PRELUDE = '''
from pathlib import Path

import numpy as np
from commonspace.data.io import save_embeddings

_rng = np.random.default_rng(1)
_mask = np.ones((50, 2), bool)
save_embeddings("emb.npz", {"joint": _rng.normal(size=(50, 8)).astype(np.float32), "index": np.arange(50),
                            "labels": _rng.integers(0, 3, 50), "mask": _mask},
                meta={"model": "bidnn", "modalities": ["image", "text"], "split": "test"})
np.save("spec_image.npy", _rng.normal(size=(60, 5)).astype(np.float32))
np.save("spec_text.npy", _rng.normal(size=(60, 3)).astype(np.float32))
np.save("spec_labels.npy", np.repeat(np.arange(3), 20))
Path("my-pairs.toml").write_text("""name = "my-pairs"
[modalities.image]
file = "spec_image.npy"
[modalities.text]
file = "spec_text.npy"
[labels]
file = "spec_labels.npy"
[split]
train = 0.7
val = 0.1
test = 0.2
""")
'''


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repo
    line: int  # line of the opening fence
    kind: str  # "shell" or "python"
    text: str

    @property
    def first(self) -> str:
        return next((s.strip() for s in self.text.splitlines() if s.strip()), "")

    def matches(self, key: str) -> bool:
        return any(s.strip().startswith(key) for s in self.text.splitlines())


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def find_blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file tagged bash, sh or python, in order."""
    rel = path.relative_to(ROOT).as_posix()
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in LANGS:
            body = "\n".join(s[indent:] if s[:indent].isspace() else s for s in lines[i + 1:j])
            out.append(Block(rel, i + 1, LANGS[lang], body + "\n"))
        i = j + 1
    return out


def skip_reason(block: Block) -> str | None:
    return next((why for (f, key), why in SKIP.items() if f == block.file and block.matches(key)), None)


def shared_data() -> Path:
    env = os.environ.get("COMMONSPACE_SHARED_DATA")
    return Path(env).expanduser() if env else ROOT.parent / "shared" / "data"


def rewrite_shell(text: str) -> str:
    """Short runs: ``train`` for one epoch, quick benches on one seed (and their smallest dataset)."""
    def bench(m: re.Match) -> str:
        line = m.group(0)
        if "--quick" not in line:
            return line
        extra = " --seeds 1" if "--seeds" not in line else ""
        ds = BENCH_DATASETS.get(m.group(1))
        if ds and "--datasets" not in line:
            extra += f" --datasets {ds}"
        return re.sub(r"commonspace bench \S+", lambda b: b.group(0) + extra, line, count=1)

    def train(m: re.Match) -> str:
        line = re.sub(r"--epochs[ =]\d+", "--epochs 1", m.group(0))
        return line if "--epochs" in line else re.sub(r"commonspace(?:\.cli)? train\b", r"\g<0> --epochs 1", line)

    text = re.sub(r"^.*commonspace(?:\.cli)? train\b.*$", train, text, flags=re.M)
    text = re.sub(r"^.*commonspace bench (\S+).*$", bench, text, flags=re.M)
    return text.replace("../shared/data", str(shared_data()))


def rewrite_python(text: str) -> str:
    return re.sub(r"\bepochs=\d+", "epochs=2", text).replace("../shared/data", str(shared_data()))


@dataclass
class Session:
    """One file's blocks, run in order in one folder with one Python namespace."""

    folder: Path
    blocks: list[Block]
    results: list[str | None] = field(default_factory=list)  # per block: None = passed, else the failure
    ns: dict = field(default_factory=dict)

    def _python(self, code: str, name: str) -> None:
        here = os.getcwd()
        os.chdir(self.folder)
        try:
            exec(compile(code, name, "exec"), self.ns)
        finally:
            os.chdir(here)

    def run_through(self, i: int) -> str | None:
        if not self.results:
            self._python(FILES_PRELUDE, "<files prelude>")
            self._python(PRELUDE, "<prelude>")
        while len(self.results) <= i:
            b = self.blocks[len(self.results)]
            self.results.append(None if skip_reason(b) else self._run(b))
        return self.results[i]

    def _run(self, b: Block) -> str | None:
        where = f"{b.file}:{b.line}"
        if b.kind == "python":
            try:
                self._python(rewrite_python(b.text), where)
            except Exception:
                return f"{where} failed:\n{traceback.format_exc()}"
            return None
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        script = rewrite_shell(b.text)
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.folder, env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            return f"{where} exited {r.returncode}:\n{script}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n" \
                   f"{r.stderr[-3000:]}"
        return None


BLOCKS = [(b, i) for f in doc_files() for i, b in enumerate(find_blocks(f))]


@pytest.fixture(scope="module")
def sessions() -> dict[str, Session]:
    return {}


@pytest.mark.parametrize("block,i", BLOCKS, ids=[f"{b.file}:{b.line}" for b, _ in BLOCKS])
def test_doc_block_runs(block: Block, i: int, sessions: dict[str, Session], tmp_path_factory) -> None:
    """Each block runs after the blocks above it in its file, in that file's folder."""
    why = skip_reason(block)
    if why:
        pytest.skip(f"{block.file}:{block.line} ({block.first[:50]}): {why}")
    s = sessions.get(block.file)
    if s is None:
        s = sessions[block.file] = Session(tmp_path_factory.mktemp(re.sub(r"\W", "_", block.file)),
                                           [b for b, _ in BLOCKS if b.file == block.file])
    failure = s.run_through(i)
    assert failure is None, failure


def test_skip_list_is_current() -> None:
    """Every SKIP entry names exactly one existing block (so fixed or removed blocks leave the list)."""
    blocks = {f.relative_to(ROOT).as_posix(): find_blocks(f) for f in doc_files()}
    for (f, key), why in SKIP.items():
        hits = [b for b in blocks.get(f, []) if b.matches(key)]
        assert len(hits) == 1, f"SKIP entry ({f!r}, {key!r}) ({why}) matches {len(hits)} blocks; update SKIP"


def test_every_block_names_its_language() -> None:
    """An untagged fence would hide a command from this file: each says bash/sh/python (run) or another tag."""
    untagged = []
    for f in doc_files():
        inside = False
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
            if not m:
                continue
            if not inside and not m.group(2):
                untagged.append(f"{f.relative_to(ROOT).as_posix()}:{n}")
            inside = not inside
    assert not untagged, f"fenced blocks without a language (bash, python, text, ...): {untagged}"


def test_rewrites() -> None:
    """The documented rewrites, on lines of the forms the docs use."""
    assert rewrite_shell("commonspace train    --data my.npz --out runs/x      # note\n") == \
        "commonspace train --epochs 1    --data my.npz --out runs/x      # note\n"
    assert rewrite_shell("commonspace train --epochs 50 --data d\n") == "commonspace train --epochs 1 --data d\n"
    assert rewrite_shell("x && commonspace bench bidnn --quick\n") == \
        "x && commonspace bench bidnn --seeds 1 --datasets digits --quick\n"
    assert rewrite_shell("commonspace bench ima --data-root ../shared/data\n") == \
        f"commonspace bench ima --data-root {shared_data()}\n"
    assert rewrite_python("TrainConfig(epochs=200, x=1)") == "TrainConfig(epochs=2, x=1)"
