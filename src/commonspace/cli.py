"""The ``commonspace`` command line: datasets, models, train, embed, evaluate, translate, bench."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Learn joint representations of multimodal data, search them and benchmark them.")
console = Console(stderr=True, soft_wrap=True)  # a line naming a path is never broken
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    # soft_wrap: the message stays one line on a pipe or a narrow terminal (rich would break it at 80 columns)
    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    hp: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            _fail(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            hp[k] = json.loads(v)
        except json.JSONDecodeError:
            hp[k] = v
    return hp


def _split_list(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _model_dir(path: Path) -> Path:
    return path / "model" if (path / "model" / "config.json").exists() else path


@contextmanager
def _new_log_dropped_on_disk_error(out_dir: Path) -> Iterator[None]:
    """On a full or read-only disk, remove the log.jsonl this run created (a run that wrote nothing else)."""
    from commonspace.data.io import DiskError

    log = out_dir / "log.jsonl"
    existed = log.exists()
    try:
        yield
    except DiskError:
        if not existed and _is_rank0():
            log.unlink(missing_ok=True)
        raise


def _check_out(path: Path | str, option: str, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work: its parent folder missing, not writable,
    or (``folder=False``) the path itself an existing folder."""
    from commonspace.data.io import check_writable

    p = Path(path).expanduser()
    parent = p.parent
    if not parent.is_dir():
        _fail(f"{option} {path}: folder {parent} does not exist; create it first")
    if not folder and p.is_dir():
        _fail(f"{option} {path}: is a folder; give a file path")
    check_writable(p if not p.is_dir() else parent, option)  # read-only, not permitted or full: one line


def _check_k(k: int) -> None:
    if k < 1:
        _fail(f"--k must be >= 1, got {k}")


def _parse_ids(text: str) -> list[int]:
    """``--ids 3,17``: stored ids, integers >= 0; an empty list or a non-integer is refused."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        _fail(f"--ids {text!r} names no id; give comma-separated stored ids, e.g. --ids 3,17")
    ids = []
    for x in items:
        try:
            v = int(x)
        except ValueError:
            _fail(f"--ids: {x!r} is not an integer id; give comma-separated stored ids, e.g. --ids 3,17")
        if not 0 <= v < 2**63:
            _fail(f"--ids: {x} cannot be a stored id (ids are integers from 0 to 2^63 - 1)")
        ids.append(v)
    return ids


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True)


@contextlib.contextmanager
def _one_line_warnings(*categories: type[Warning]) -> Any:
    """Show these library warnings (every time) as one console line, without library file names."""
    import warnings

    with warnings.catch_warnings():
        for c in categories:
            warnings.simplefilter("always", c)
        warnings.showwarning = _show_warning
        yield


def _read_data(data: str, modalities: list[str] | None, root: Path | None, seed: int):
    """Resolve ``--data`` and keep its splits (carving train/val only from unassigned rows).

    Returns the dataset and the notes that say what was done to it (split made, rows with no modality).
    """
    from commonspace.data.dataset import DataWarning
    from commonspace.data.resolve import ensure_splits, resolve_data

    with _one_line_warnings(DataWarning):
        ds = resolve_data(data, modalities, root=root)
    ds, note = ensure_splits(ds, seed=seed)
    notes = [note] if note else []
    empty = int(ds.empty_rows.numel())
    if empty:
        notes.append(f"{empty} of {ds.n} rows have no modality present; they are left out of training and of "
                     "every query and database")
    return ds, notes


def _guard(fn: Any) -> Any:
    """Turn data and checkpoint errors into one clear line and exit code 2, never a traceback."""
    import functools

    from commonspace.data.dataset import DataError

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except (DataError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))

    return wrapper


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so files being written are removed; then one line, exit 128 + signal."""
    from commonspace.data.io import Terminated, exit_on_signals

    try:
        with exit_on_signals():
            yield
    except Terminated as exc:
        console.print(f"[red]error:[/red] stopped by {exc.signame}; files being written were discarded")
        raise
    except KeyboardInterrupt:  # typer turns it into exit code 130
        console.print("[red]error:[/red] interrupted; files being written were discarded")
        raise


@app.callback()
def _every_command(ctx: typer.Context) -> None:
    # runs before any command (torchrun workers included) and unwinds after it, exception and all
    ctx.with_resource(_interruptible())


@app.command()
@_guard
def datasets() -> None:
    """List the builtin datasets with their sizes and whether they need external data."""
    from commonspace.data import builtin

    rows = builtin.available()
    t = Table(title="builtin datasets (commonspace train --data NAME ...)")
    # the name is what the user types: never wrapped or cut, whatever the width; the other columns fold
    t.add_column("name", no_wrap=True, min_width=max((len(d["name"]) for d in rows), default=4))
    for c in ("modalities (dims)", "samples", "classes", "train / val / test", "available"):
        t.add_column(c, overflow="fold", justify="right" if c in ("samples", "classes") else "left")
    for d in rows:
        mods = ", ".join(f"{m} {v}" for m, v in d.get("modalities", {}).items())
        sp = d.get("splits", {})
        avail = "yes" if d.get("available") else f"no: needs {d.get('needs', '')}"
        t.add_row(Text(d["name"]), Text(mods), str(d.get("samples", "")), str(d.get("classes", "")),
                  " / ".join(str(sp.get(k, "-")) for k in ("train", "val", "test")), Text(avail))
    out.print(t)


def _doc_summary(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, without reST/Markdown markup."""
    import re

    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    # a sentence ends at ". " before a capital or markup, not at "Sec. 3.2" or "et al. 2011"
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z`:])", para)[0]
    first = re.sub(r":[\w.:-]+:`~?([^`]*)`", r"\1", first)  # :class:`CVS`, :func:`~a.b`
    return re.sub(r"`+([^`]*)`+", r"\1", first).replace("`", "")  # ``x``, `x` and any stray backtick


@app.command()
def models() -> None:
    """List the registered models."""
    from commonspace.models.base import available_models, model_class

    names = available_models()
    t = Table(title="models (commonspace train --model NAME ...)")
    t.add_column("name", no_wrap=True, min_width=max((len(n) for n in names), default=4))
    t.add_column("description", overflow="fold")
    for n in names:
        # Text, not a markup string: "[x1, x2]" in a docstring is not a rich style tag
        t.add_row(Text(n), Text(_doc_summary(model_class(n).__doc__)))
    out.print(t)


@app.command()
@_guard
def train(
    data: Annotated[str, typer.Option(help="builtin name, .npz file, .toml spec, .h5 file or dataset folder")],
    model: Annotated[str, typer.Option(help="model name (see `commonspace models`)")],
    out_dir: Annotated[Path, typer.Option("--out", help="run folder: model/, checkpoint/, log.jsonl")],
    modalities: Annotated[str | None, typer.Option(help="comma-separated modalities to use")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs per stage (default: the model's)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd (Nesterov)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    patience: Annotated[int | None, typer.Option(help="early-stopping patience in epochs")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="model hyper-parameter key=value")] = None,
    standardize: Annotated[bool, typer.Option(help="standardise each modality on train")] = True,
    resume: Annotated[bool, typer.Option(help="continue from --out/checkpoint if present")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    data_root: Annotated[Path | None, typer.Option(help="folder holding external datasets")] = None,
    compile_: Annotated[bool, typer.Option("--compile/--no-compile", help="train through torch.compile "
                                           "(eager if it cannot compile); pays off on long runs only")] = False,
) -> None:
    """Train a model on a dataset and save it (safetensors + JSON) under --out/model."""
    from commonspace.data.dataset import DataWarning, Standardizer
    from commonspace.models.base import create_for_data
    from commonspace.train import TrainConfig, Trainer
    from commonspace.train.lock import RunLock

    # rank 0 holds the folder from the start, so a busy folder is refused before data is read or notes printed
    if _is_rank0():  # a read-only or full disk is one line now, not a traceback after the data is read
        from commonspace.data.io import check_writable

        check_writable(out_dir)
    with RunLock(out_dir) if _is_rank0() else contextlib.nullcontext(), _new_log_dropped_on_disk_error(out_dir):
        hparams = _parse_sets(set_)
        ds, notes = _read_data(data, _split_list(modalities), data_root, seed)
        with _one_line_warnings(UserWarning):  # e.g. mahash's kernel network on 1 x 1 maps
            m = create_for_data(model, ds, init_seed=seed, **hparams)  # seeded: same seed, same weights
        # Bernoulli probabilities and word counts keep their own scale
        std = Standardizer.for_vectors(ds, "train", skip=m.unscaled_modalities()) if standardize else None
        if std is not None:
            ds = std.transform(ds)
        overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                                       "patience": patience}.items() if v is not None}
        if compile_:
            overrides["compile"] = True
        cfg = TrainConfig.for_model(m, seed=seed, out_dir=out_dir, progress=progress, **overrides)

        trainer = Trainer(m, cfg, standardizer=std)

        def say_notes() -> None:  # once the data, settings and any checkpoint are accepted: a refusal is one line
            if _is_rank0():
                for note in notes + trainer.notes:  # the trainer's: "resumed at epoch N of M"
                    console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)

        val = "val" if "val" in ds.splits else None
        try:
            with _one_line_warnings(DataWarning):  # one class only, a checkpoint without a data hash
                history = trainer.fit(ds, train="train", val=val, resume=resume, on_ready=say_notes)
        except FloatingPointError as exc:  # a diverged loss: the message names the epoch and --lr
            _fail(str(exc))
        selection = getattr(m, "selection", None)  # a setting the model chose on the validation split (CCA)
        if selection and _is_rank0():
            console.print(f"[yellow]note:[/yellow] {escape(selection['summary'])}", soft_wrap=True)
        if _is_rank0():
            last = history[-1] if history else {}
            terms = {**last.get("train", {}), "val_loss": last.get("val_loss")}
            shown = [f"{k}={v:.4g}" for k, v in terms.items() if isinstance(v, float)]
            if last.get("samples_per_s"):
                shown.append(f"{last['samples_per_s']:.0f} samples/s")
            what = (f"after {len(history)} epochs; last epoch: " if m.trainable else "fitted in closed form; ")
            console.print(escape(f"saved {out_dir / 'model'} {what}" + ", ".join(shown)), soft_wrap=True)


def _load(model_path: Path, data: str, modalities: str | None, data_root: Path | None, name: bool = False):
    """The model and the data it reads, checked against each other; ``name``: errors about the model say which
    ``--model`` (several are given)."""
    from commonspace.data.dataset import DataError
    from commonspace.train.checkpoint import load_model

    def which(exc: Exception) -> Exception:
        return DataError(f"--model {model_path}: {exc}") if name else exc

    try:
        loaded = load_model(_model_dir(model_path))
    except (DataError, FileNotFoundError) as exc:
        raise which(exc) from exc
    mods = _split_list(modalities) or list(loaded.model.modalities)
    # data without splits gets the same seeded split that `train` made for it
    seed = int((loaded.meta or {}).get("train_config", {}).get("seed", 0))
    ds, _ = _read_data(data, mods, data_root, seed)
    try:
        loaded.model.check_data(ds)  # before the standardiser, whose message would not name the model
    except DataError as exc:
        raise which(exc) from exc
    if loaded.standardizer is not None:
        ds = loaded.standardizer.transform(ds)
    return loaded.model, ds


def _index(ds, split: str | None):
    if split in (None, "all"):
        return None
    return ds.split(split)


@app.command()
@_guard
def embed(
    model: Annotated[Path, typer.Option(help="run folder or model folder")],
    data: Annotated[str, typer.Option(help="builtin name, .npz file, .toml spec, .h5 file or dataset folder")],
    out_path: Annotated[str, typer.Option("--out", help=".npz or .parquet file, or a folder (a path without a "
                                          "suffix, or ending in /: one memory-mappable .npy per array)")],
    split: Annotated[str, typer.Option(help="split name, or 'all'")] = "all",
    modalities: Annotated[str | None, typer.Option()] = None,
    data_root: Annotated[Path | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="rows embedded (and written) at a time")] = 1024,
) -> None:
    """Write per-modality encodings (enc_<m>), the joint embedding (joint), mask, index and labels.

    Streams: one batch is held at a time, whatever the split's size."""
    from commonspace.data.embedfiles import EmbeddingWriter, embedding_kind
    from commonspace.train.logging import Progress

    # a str, not a Path: Path("emb.v2/") drops the slash that says "a folder"
    slash = out_path.endswith(("/", os.sep))
    if slash and Path(out_path).suffix.lower() in (".npz", ".parquet"):
        _fail(f"--out {out_path}: a trailing / means a folder, but {Path(out_path).suffix} names a file; drop the "
              "/ for a file, or the suffix for a folder")
    kind = embedding_kind(out_path)  # .npz, .parquet or folder: a bad suffix is refused before the model loads
    _check_out(out_path, "--out", folder=kind == "folder")
    m, ds = _load(model, data, modalities, data_root)
    idx = _index(ds, split)
    rows = ds.n if idx is None else int(idx.numel())
    meta = {"model": m.name, "modalities": list(m.modalities), "split": split}
    shapes: dict[str, tuple[int, ...]] = {}
    with EmbeddingWriter(out_path, rows, meta) as w, Progress(True) as bar:
        bar.start_stage("embed", rows)
        for chunk in m.iter_embeddings(ds, idx, batch_size):
            w.write(chunk)
            shapes = shapes or {k: tuple(v.shape[1:]) for k, v in chunk.items() if k == "joint" or k[:4] == "enc_"}
            bar.advance(len(chunk["joint"]))
    console.print(escape(f"wrote {out_path}: {rows} rows; " + ", ".join(f"{k} {(rows, *v)}" for k, v in
                                                                        shapes.items())), soft_wrap=True)


@app.command()
@_guard
def evaluate(
    model: Annotated[list[Path], typer.Option(help="run folder or model folder (repeat to compare runs with "
                                              "--subsets)")],
    data: Annotated[str, typer.Option(help="builtin name, .npz file, .toml spec, .h5 file or dataset folder")],
    split: Annotated[str, typer.Option(help="the split that queries itself, or 'all' (every row)")] = "test",
    k: Annotated[int, typer.Option(help="cut-off for P@K and mAP@K")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the metrics as JSON")] = None,
    modalities: Annotated[str | None, typer.Option()] = None,
    data_root: Annotated[Path | None, typer.Option()] = None,
    subsets: Annotated[bool, typer.Option("--subsets", help="robustness: mask the queries to every non-empty "
                                          "subset of the model's modalities")] = False,
    subset: Annotated[list[str] | None, typer.Option("--subset", help="robustness: only this subset, e.g. "
                                                     "image,text (repeatable)")] = None,
    drop_rate: Annotated[list[float] | None, typer.Option("--drop-rate", help="robustness: each query modality "
                                                          "missing with this probability (repeatable)")] = None,
    probe_split: Annotated[str, typer.Option(help="robustness: the split a logistic probe of the joint "
                                             "embedding is fitted on, or 'none'")] = "train",
    seed: Annotated[int, typer.Option(help="robustness: seed of --drop-rate and the probe")] = 0,
    plot: Annotated[Path | None, typer.Option(help="robustness: PNG of joint MAP vs modalities present, one "
                                              "line per --model")] = None,
) -> None:
    """Retrieval on a split: every query modality against every database modality, and the joint space.

    With --subsets / --subset / --drop-rate: the same with the queries' modalities masked (robustness to missing
    modalities), a row per subset, and a probe of the joint embedding."""
    robust = bool(subsets or subset or drop_rate)
    if not robust and (len(model) != 1 or plot is not None):
        _fail("several --model runs and --plot compare robustness: add --subsets (or --subset / --drop-rate)")
    # every option is checked before the first model loads: a refusal never follows printed results
    _check_k(k)
    if plot is not None and plot.suffix.lower() != ".png":
        _fail(f"{plot}: plots are written as PNG; give --plot a .png suffix")
    for path, option in ((json_out, "--json"), (plot, "--plot")):
        if path is not None:
            _check_out(path, option)
    if robust:
        _evaluate_subsets(model, data, split, k, json_out, modalities, data_root, None if subsets else subset,
                          drop_rate or [], probe_split, seed, plot)
        return
    _evaluate_one(model[0], data, split, k, json_out, modalities, data_root)


def _query_rows(m: Any, ds: Any, split: str, who: str = "") -> tuple[Any, int]:
    """The rows of ``split`` that have at least one of the model's modalities, and how many were left out.

    ``who``: the ``--model`` a refusal names (when several are given)."""
    import torch

    if ds.labels is None:
        _fail("evaluation needs labels (relevance = shares a label); the data has none")
    if split != "all" and split not in ds.splits:
        _fail(f"--split {split!r}: {ds.name!r} has no such split; use one of {sorted(ds.splits)} or 'all'")
    idx = torch.arange(ds.n) if split == "all" and "all" not in ds.splits else ds.split(split)
    # a row with none of the model's modalities has nothing to embed: it is neither a query nor in a database
    present = ds.mask[idx][:, [ds.modalities.index(mm) for mm in m.modalities]]
    empty = int((~present.any(1)).sum())
    idx = idx[present.any(1)]
    if idx.numel() == 0:
        _fail(f"{who}no row of split {split!r} has any of the model's modalities {list(m.modalities)}; "
              "check --modalities and the data's mask")
    return idx, empty


def _evaluate_one(model: Path, data: str, split: str, k: int, json_out: Path | None, modalities: str | None,
                  data_root: Path | None) -> None:
    import torch

    from commonspace.bench.report import write_atomic
    from commonspace.eval.retrieval import cross_modal_retrieval, retrieval_metrics

    m, ds = _load(model, data, modalities, data_root)
    idx, empty = _query_rows(m, ds, split)
    b = ds.batch(idx)
    enc = m.encode_dataset(ds, idx)
    res: dict[str, dict] = {}
    cm = cross_modal_retrieval(enc, b.labels, m.presence_mask(b), m.modalities, ks=(k,), exclude_self=True,
                               map_at=(k,), include_same=True)
    res.update(cm)
    joint = m.embed_dataset(ds, idx)
    res["joint"] = retrieval_metrics(joint, joint, b.labels, b.labels, ks=(k,), map_at=(k,),
                                     exclude_self=torch.arange(len(b)))
    t = Table(title=escape(f"{m.name} on {data} [{split}], {len(b)} items"),
              caption=f"{empty} rows with no modality present left out" if empty else None)
    keys = [f"p@{k}", f"map@{k}", "map"]
    t.add_column("query -> database")
    for c in (f"P@{k}", f"mAP@{k}", "mAP (full ranking)", "queries"):
        t.add_column(c, justify="right")
    clean: dict[str, dict] = {}
    for name, r in res.items():
        clean[name] = {kk: (float(v) if isinstance(v, int | float) or getattr(v, "ndim", 1) == 0 else None)
                       for kk, v in r.items()}
        t.add_row(name, *[f"{float(r[c]):.4f}" if c in r else "-" for c in keys], str(r.get("queries", "")))
    out.print(t)
    if json_out:
        write_atomic(json_out, json.dumps({**clean, "excluded_empty_rows": empty}, indent=2))
        console.print(escape(f"wrote {json_out}"))


def _run_labels(paths: list[Path]) -> list[str]:
    """Short names for runs: the folder name, or the whole path where two folders share a name."""
    names = [(p.parent if p.name == "model" else p).name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def _evaluate_subsets(models: list[Path], data: str, split: str, k: int, json_out: Path | None,
                      modalities: str | None, data_root: Path | None, subsets: list[str] | None,
                      drop_rates: list[float], probe_split: str, seed: int, plot: Path | None) -> None:
    from commonspace.bench.report import write_atomic
    from commonspace.data.dataset import DataError
    from commonspace.eval.robustness import (
        all_subsets,
        check_drop_rate,
        parse_subsets,
        plot_robustness,
        probe_rows,
        robustness,
        summary_rows,
    )

    for p in drop_rates:
        check_drop_rate(p)  # before any model is loaded
    labels = _run_labels(models)
    if len(set(labels)) != len(labels):
        _fail("the same --model is given twice")
    several = len(models) > 1
    probe = None if probe_split == "none" else probe_split
    # every run is loaded and checked against the data before the first is evaluated; the first stays loaded,
    # the others are read again in turn, so one run's data is in memory at a time
    first: tuple[Any, Any] | None = None
    notes: list[str] = []
    for path in models:
        m, ds = _load(path, data, modalities, data_root, name=several)
        who = f"--model {path}: " if several else ""
        idx, _ = _query_rows(m, ds, split, who)
        try:
            all_subsets(m.modalities) if subsets is None else parse_subsets(subsets, m.modalities)
            if probe is not None:
                if probe not in ds.splits:
                    _fail(f"--probe-split {probe!r}: {ds.name!r} has no such split; use one of "
                          f"{sorted(ds.splits)} or 'none'")
                _, overlap = probe_rows(ds, idx, probe, m.modalities)
                if int(overlap.sum()):
                    q, n = int(overlap.numel()), int(overlap.sum())
                    notes.append(f"{who}the probe is scored on {q - n} of the {q} query rows: the {n} rows of "
                                 f"--probe-split {probe!r} among them are left out (it was fitted on them)")
        except DataError as exc:
            raise DataError(f"{who}{exc}") from exc
        if first is None:
            first = (m, ds)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    results: dict[str, dict] = {}
    for label, path in zip(labels, models, strict=True):
        m, ds = first if first is not None else _load(path, data, modalities, data_root, name=several)
        first = None
        idx, _ = _query_rows(m, ds, split)
        res = robustness(m, ds, query=idx, subsets=subsets, drop_rates=drop_rates, ks=(k,), probe_train=probe,
                         seed=seed)
        res["run"] = str(path)
        results[label] = res
        t = Table(title=escape(f"{label} ({m.name}) on {data} [{split}]: queries masked to each subset, "
                               f"database {res['database']} items with every modality"))
        for c in ("subset", "present", "queries"):
            t.add_column(c, justify="left" if c == "subset" else "right", no_wrap=c == "subset")
        for c in (f"P@{k}", f"mAP@{k}", "MAP", "x-MAP", "probe"):
            t.add_column(c, justify="right")
        for r in summary_rows(res, k):
            t.add_row(escape(r["subset"]), f"{r['present']:g}" if isinstance(r["present"], int) else
                      f"{r['present']:.2f}", str(r["queries"]),
                      *[("-" if r[c] is None else f"{r[c]:.4f}")
                        for c in (f"p@{k}", f"map@{k}", "map", "cross_modal_map", "probe")])
        t.caption = ("joint embedding of the masked queries vs the full database; x-MAP: mean MAP over the cross-modal "
                     "q->d pairs (q != d); probe: logistic regression on the joint embedding of "
                     + (f"split {probe_split!r} (accuracy; classification MAP for multi-label), scored on the "
                        "queries outside that split" if probe else "nothing (--probe-split none)"))
        out.print(t)
    if json_out:
        write_atomic(json_out, json.dumps({"data": data, "split": split, "runs": results}, indent=2))
        console.print(escape(f"wrote {json_out}"))
    if plot is not None:
        plot_robustness(results, plot, title=f"{data} [{split}]: joint MAP vs modalities present")
        console.print(escape(f"wrote {plot}"))


@app.command()
@_guard
def translate(
    model: Annotated[Path, typer.Option(help="run folder or model folder")],
    data: Annotated[str, typer.Option(help="builtin name, .npz file, .toml spec, .h5 file or dataset folder")],
    target: Annotated[str, typer.Option(help="the modality to produce")],
    out_path: Annotated[Path, typer.Option("--out")],
    split: Annotated[str, typer.Option()] = "all",
    data_root: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Crossmodal translation into --target from the other modality (models that support it)."""
    from commonspace.data.io import save_embeddings

    m, ds = _load(model, data, None, data_root)
    if not hasattr(m, "translate"):
        _fail(f"model {m.name!r} cannot translate; use bidnn or ae_split")
    if target not in m.modalities:
        _fail(f"unknown target modality {target!r}; the model has {list(m.modalities)}")
    idx = _index(ds, split)
    y = m.apply_batches(ds, lambda bt: m.translate(bt, target), idx)
    save_embeddings(out_path, {f"translated_{target}": y, "index": ds.batch(idx).index},
                    meta={"model": m.name, "target": target})
    console.print(f"wrote {out_path}: translated_{target} {tuple(y.shape)}")


@app.command()
def bench(
    name: Annotated[str | None, typer.Argument(help="benchmark spec name; omit to list them")] = None,
    quick: Annotated[bool, typer.Option(help="a short run (minutes on 2 CPU cores)")] = False,
    seeds: Annotated[int, typer.Option(help="number of seeds (0..n-1)")] = 5,
    out_dir: Annotated[Path, typer.Option("--out", help="where JSON and Markdown go")] = Path("bench-results"),
    data_root: Annotated[Path | None, typer.Option(help="folder holding external datasets")] = None,
    datasets_: Annotated[str | None, typer.Option("--datasets", help="comma-separated dataset keys")] = None,
    progress: Annotated[bool, typer.Option()] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads (default: the spec's choice, 1 for "
                                                  "bidnn, cvs, ima and hashing, whose small layers gain nothing "
                                                  "from more)")]
    = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run: reuse the runs it recorded under "
                                              "--out with the same plan (hashing records every run)")] = False,
    jobs: Annotated[int | None, typer.Option(min=1, help="seeds run at once, each in its own process on one "
                                             "thread (default: one per core for the one-thread specs bidnn, cvs "
                                             "and ima, else 1); the results do not change")]
    = None,
) -> None:
    """Run a paper's protocol and print our numbers beside the paper's."""
    from commonspace.bench.runner import BenchContext, available_specs, run_spec

    specs = available_specs()
    if name is None:
        t = Table(title="benchmarks (commonspace bench NAME [--quick])")
        t.add_column("name")
        t.add_column("what")
        for s in specs:
            t.add_row(s.name, s.description)
        out.print(t)
        return
    if name not in {s.name for s in specs}:
        _fail(f"unknown benchmark {name!r}; available: {[s.name for s in specs]}")
    spec = next(s for s in specs if s.name == name)
    spec_threads = threads if threads is not None else spec.threads
    if jobs is not None and jobs > 1 and spec.parallel_seeds and spec_threads != 1:
        _fail(f"--jobs {jobs} runs each seed in its own process on one torch thread, but bench {name} runs on "
              f"{spec_threads or 'torch default'} threads; add --threads 1 (or use --jobs 1)")
    ctx = BenchContext(quick=quick, seeds=list(range(seeds)), out_dir=out_dir / name, data_root=data_root,
                       console=out, progress=progress, datasets=_split_list(datasets_), threads=threads,
                       resume=resume, jobs=jobs)
    run_spec(name, ctx)


index_app = typer.Typer(no_args_is_help=True, help="Build and query a FAISS index over embeddings or codes.")
app.add_typer(index_app, name="index")


@index_app.command("build")
@_guard
def index_build(
    embeddings: Annotated[Path, typer.Option("--embeddings", help=".npz, .parquet or embeddings folder written "
                                             "by `commonspace embed` (a folder is memory-mapped)")],
    out_path: Annotated[Path, typer.Option("--out", help="the index file to write (one .npz)")],
    key: Annotated[str, typer.Option(help="array to index: joint, enc_<modality>, or codes")] = "joint",
    factory: Annotated[str, typer.Option(help="FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF4096,PQ64, "
                                         "BFlat")] = "Flat",
    metric: Annotated[str, typer.Option(help="cosine, ip or l2 (ignored for binary codes)")] = "cosine",
    train_size: Annotated[int | None, typer.Option(min=1, help="rows sampled to train IVF / PQ indexes (default: "
                                                   "50 per IVF list, at least 65536, at most all)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the training sample")] = 0,
    nprobe: Annotated[int | None, typer.Option(min=1, help="IVF lists visited per query (saved with the "
                                               "index)")] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="rows read and added at a time")] = 65536,
) -> None:
    """Index one array of an embeddings file; ids are the rows' dataset indices."""
    from commonspace.index import build_index_from_file

    _check_out(out_path, "--out")  # before the embeddings are read and the index trained
    idx = build_index_from_file(embeddings, out_path, key=key, factory=factory, metric=metric,
                                train_size=train_size, seed=seed, nprobe=nprobe, chunk_rows=chunk_rows)
    console.print(f"wrote {out_path}: {idx.ntotal} items, {idx.dim}-{'bit' if key == 'codes' else 'd'}, "
                  f"factory {idx.factory!r}")


@index_app.command("query")
@_guard
def index_query(
    index_path: Annotated[Path, typer.Option("--index", help="an index file from `commonspace index build`")],
    ids: Annotated[str | None, typer.Option(help="comma-separated stored item ids to query by")] = None,
    queries: Annotated[Path | None, typer.Option(help=".npz/.npy file of query vectors or codes")] = None,
    key: Annotated[str | None, typer.Option(help="array of --queries to use (default: joint in an .npz, the "
                                             "only array of a .mat or .h5)")] = None,
    k: Annotated[int, typer.Option(help="neighbours per query")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON")] = None,
) -> None:
    """Nearest neighbours of stored items (--ids) or of new vectors (--queries)."""
    from commonspace.bench.report import write_atomic
    from commonspace.data.dataset import DataError
    from commonspace.data.io import load_array
    from commonspace.index import query_index

    if (ids is None) == (queries is None):
        _fail("give exactly one of --ids or --queries")
    # every option is checked before the index is read
    id_list = None if ids is None else _parse_ids(ids)
    _check_k(k)
    if json_out is not None:
        _check_out(json_out, "--json")
    q = None
    if queries is not None:
        suffix = queries.suffix.lower()
        pick = (key or "joint") if suffix == ".npz" else key if suffix in (".mat", ".h5", ".hdf5") else None
        if key is not None and pick is None:
            _fail(f"--key {key}: {queries.name} holds one array; drop --key")
        try:
            q = load_array(queries, pick)
        except DataError as exc:  # the reader names its parameter key=; here it is --key
            raise DataError(str(exc).replace("pass key=... to choose one", "choose one with --key")
                            .replace("Pass one of them as key", "Pass one of them as --key")) from exc
    res = query_index(index_path, queries=q, ids=id_list, k=k, exclude_self=id_list is not None)
    t = Table(title=f"{index_path.name}: top {k}")
    t.add_column("query")
    t.add_column("neighbour ids")
    t.add_column(res[0]["measure"] if res else "score")
    for r in res:
        t.add_row(str(r["query"]), " ".join(str(i) for i in r["ids"]),
                  " ".join(f"{float(v):.3g}" for v in r["values"]))
    out.print(t)
    if json_out:
        clean = [{k2: (v.tolist() if hasattr(v, "tolist") else v) for k2, v in r.items()} for r in res]
        write_atomic(json_out, json.dumps(clean, indent=2))
        console.print(escape(f"wrote {json_out}"))


@app.command()
@_guard
def convert(
    source: Annotated[str, typer.Argument(help="builtin name, .npz file, .toml spec, .h5 file or dataset folder")],
    out_dir: Annotated[Path, typer.Argument(help="the dataset folder to write (x_<modality>.npy, mask.npy, "
                                            "labels.npy, split_<name>.npy, meta.json)")],
    dtype: Annotated[str, typer.Option(help="float16 (half the size, about 3 significant digits) or float32 "
                                       "(values exactly as given)")] = "float16",
    chunk_rows: Annotated[int | None, typer.Option(min=1, help="rows written per chunk (default: about 16 MiB "
                                                   "of float32)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace OUT when it is an existing dataset folder")] = False,
    modalities: Annotated[str | None, typer.Option(help="comma-separated modalities to keep")] = None,
    data_root: Annotated[Path | None, typer.Option(help="folder holding external datasets")] = None,
) -> None:
    """Write any --data source as a memory-mapped dataset folder, in chunks; then use --data OUT/ anywhere."""
    from commonspace.data.dataset import DataWarning
    from commonspace.data.folder import folder_summary, open_folder, write_folder
    from commonspace.data.resolve import resolve_data

    if dtype not in ("float16", "float32"):
        _fail(f"--dtype {dtype!r} is not supported; use float16 or float32")
    with _one_line_warnings(DataWarning):
        ds = resolve_data(source, _split_list(modalities), root=data_root)
    path = write_folder(ds, out_dir, dtype=dtype, chunk_rows=chunk_rows, overwrite=overwrite)
    written = open_folder(path, verify=False)  # headers and small files only: the writer hashed as it wrote
    rounding = ("float16: rounded to about 3 significant digits (--dtype float32 keeps the values exactly)"
                if dtype == "float16" else "float32: values exactly as given")
    console.print(escape(f"wrote {path}: {folder_summary(written)}; {rounding}"), soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
