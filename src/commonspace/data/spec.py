"""Dataset spec files: a small TOML file saying which file and key holds each modality, labels and splits.

Example (see docs/data.md for every option)::

    name = "my-data"
    standardize = true                  # fit on the train split, apply to all rows

    [modalities.image]
    file = "features.mat"               # relative paths resolve against this file's folder
    key = "X_img"

    [modalities.text]
    file = "text.csv"
    header = true
    columns = "0:-1"                    # drop the last (label) column

    [labels]
    file = "text.csv"
    header = true
    column = -1

    [split]                             # stratified, seeded; or [splits] with explicit index files
    train = 0.7
    val = 0.1
    test = 0.2
    seed = 0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from commonspace.data.dataset import DataError, MultimodalDataset, Standardizer
from commonspace.data.io import load_array as _load_array
from commonspace.data.splits import stratified_splits

__all__ = ["load_spec", "parse_spec"]

_TOP = {"name", "root", "modalities", "labels", "splits", "split", "standardize", "mask", "class_names",
        "meta", "description"}
_SOURCE = {"file", "key", "header", "delimiter", "transpose"}
_MODALITY = _SOURCE | {"columns", "shape", "missing"}
_LABELS = _SOURCE | {"column", "offset", "class_names", "class_names_file"}
_INDEX = _SOURCE | {"index_base"}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, spec: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DataError(f"{spec}: unknown option(s) {unknown} in {where}; allowed: {sorted(allowed)}")


class _Reader:
    """Loads (file, key) pairs once per spec, resolving paths against the spec's folder."""

    def __init__(self, spec: Path, root: Path) -> None:
        self.spec, self.root = spec, root
        self.cache: dict[tuple, np.ndarray] = {}

    def path(self, file: str) -> Path:
        p = Path(os.path.expandvars(file)).expanduser()
        return p if p.is_absolute() else self.root / p

    def load(self, opts: Mapping[str, Any], where: str) -> np.ndarray:
        if "file" not in opts:
            raise DataError(f"{self.spec}: {where} needs file = \"...\"")
        p = self.path(str(opts["file"]))
        text = {k: opts[k] for k in ("header", "delimiter") if k in opts}
        ck = (str(p), opts.get("key"), tuple(sorted(text.items())))
        if ck not in self.cache:
            try:
                self.cache[ck] = _load_array(p, opts.get("key"), **text)
            except DataError as exc:
                raise DataError(f"{self.spec} [{where}]: {exc}") from exc
        a = self.cache[ck]
        if opts.get("transpose", False):
            a = a.T
        return a


def _columns(a: np.ndarray, sel: Any, where: str, spec: Path) -> np.ndarray:
    """Pick columns by a list of indices or a "start:stop" slice string."""
    if a.ndim != 2:
        raise DataError(f"{spec}: {where}: columns needs a 2-D array, got shape {a.shape}")
    if isinstance(sel, str):
        try:
            parts = [int(v) if v.strip() else None for v in sel.split(":")]
            return a[:, slice(*parts)]
        except (ValueError, TypeError) as exc:
            raise DataError(f"{spec}: {where}: columns {sel!r} is not a 'start:stop' slice") from exc
    if isinstance(sel, list) and all(isinstance(v, int) for v in sel):
        return a[:, sel]
    raise DataError(f"{spec}: {where}: columns must be a list of integers or a 'start:stop' string")


def _vector(a: np.ndarray, where: str, spec: Path) -> np.ndarray:
    """MATLAB and CSV vectors arrive as (N, 1) or (1, N); flatten those."""
    if a.ndim == 2 and 1 in a.shape:
        return a.reshape(-1)
    if a.ndim != 1:
        raise DataError(f"{spec}: {where} must be a vector, got shape {a.shape}; pick a column with column=")
    return a


def _integers(a: np.ndarray, where: str, spec: Path) -> np.ndarray:
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise DataError(f"{spec}: {where} must hold integers")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{spec}: {where} must be numeric, got dtype {a.dtype}")
    return a.astype(np.int64)


def parse_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec file's TOML as a dict, with a clear error for syntax problems."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: spec file not found")
    try:
        with open(p, "rb") as fh:
            spec = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{p}: not valid TOML ({exc})") from exc
    _check_keys(spec, _TOP, "the top level", p)
    return spec


def load_spec(path: str | os.PathLike) -> MultimodalDataset:
    """Build a :class:`MultimodalDataset` from a TOML spec file (format in docs/data.md)."""
    p = Path(path).expanduser().resolve()
    spec = parse_spec(p)
    root = p.parent / spec.get("root", ".")
    rd = _Reader(p, root)

    mods = spec.get("modalities")
    if not isinstance(mods, dict) or not mods:
        raise DataError(f"{p}: add at least one [modalities.<name>] table with file = ... (and key = ...)")
    feats: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for m, opts in mods.items():
        where = f"[modalities.{m}]"
        if isinstance(opts, str):
            opts = {"file": opts}
        _check_keys(opts, _MODALITY, where, p)
        a = np.asarray(rd.load(opts, where), dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if "columns" in opts:
            a = _columns(a, opts["columns"], where, p)
        if "shape" in opts:
            try:
                a = a.reshape(a.shape[0], *[int(v) for v in opts["shape"]])
            except (ValueError, TypeError) as exc:
                raise DataError(f"{p}: {where}: cannot reshape {a.shape} to (N, {opts['shape']})") from exc
        if opts.get("missing") is not None:
            if opts["missing"] != "nan":
                raise DataError(f"{p}: {where}: missing = \"nan\" is the only supported marker")
            # rows that are entirely NaN mean "modality absent": zero them and record it in the mask
            gone = np.isnan(a.reshape(a.shape[0], -1)).all(1)
            a = np.where(gone.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a)
            missing[m] = gone
        feats[m] = a

    n = next(iter(feats.values())).shape[0]
    mask = None
    if "mask" in spec:
        _check_keys(spec["mask"], _SOURCE, "[mask]", p)
        mask = rd.load(spec["mask"], "[mask]")
        if mask.ndim == 1:
            mask = mask[:, None]
    if missing:
        base = np.ones((n, len(feats)), bool) if mask is None else np.asarray(mask, bool).copy()
        for j, m in enumerate(feats):
            if m in missing and base.shape[0] == missing[m].shape[0]:
                base[missing[m], j] = False
        mask = base

    labels = None
    class_names = spec.get("class_names")
    if "labels" in spec:
        lab = spec["labels"]
        if isinstance(lab, str):
            lab = {"file": lab}
        _check_keys(lab, _LABELS, "[labels]", p)
        y = rd.load(lab, "[labels]")
        if "column" in lab:
            if y.ndim != 2:
                raise DataError(f"{p}: [labels] column= needs a 2-D table, got shape {y.shape}")
            y = y[:, int(lab["column"])]
        if y.ndim == 2 and 1 in y.shape:
            y = y.reshape(-1)
        y = _integers(np.asarray(y), "[labels]", p)
        # e.g. offset = -1 maps MATLAB's classes 1..K to 0..K-1
        y = y + int(lab.get("offset", 0))
        labels = y
        if "class_names" in lab:
            class_names = lab["class_names"]
        if "class_names_file" in lab:
            names_path = rd.path(lab["class_names_file"])
            if not names_path.is_file():
                raise DataError(f"{p}: class_names_file {names_path} not found")
            class_names = [s.strip() for s in names_path.read_text().splitlines() if s.strip()]

    splits: dict[str, np.ndarray] = {}
    if "splits" in spec and "split" in spec:
        raise DataError(f"{p}: give either [splits] (explicit indices) or [split] (fractions), not both")
    if "splits" in spec:
        for s, opts in spec["splits"].items():
            where = f"[splits.{s}]"
            if isinstance(opts, str):
                opts = {"file": opts}
            _check_keys(opts, _INDEX, where, p)
            idx = _vector(np.asarray(rd.load(opts, where)), where, p)
            if idx.dtype == bool:
                splits[s] = idx
                continue
            # MATLAB index files are 1-based
            splits[s] = _integers(idx, where, p) - int(opts.get("index_base", 0))
    elif "split" in spec:
        frac = dict(spec["split"])
        seed = int(frac.pop("seed", 0))
        splits = stratified_splits(labels, frac, seed=seed, n=n)

    meta = dict(spec.get("meta", {}))
    meta.setdefault("spec", str(p))
    if "description" in spec:
        meta.setdefault("description", spec["description"])
    try:
        ds = MultimodalDataset(feats, mask, labels, splits, str(spec.get("name", p.stem)), class_names, meta)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from exc

    std = spec.get("standardize", False)
    if std:
        split = "train" if std is True else str(std)
        if split not in ds.splits:
            raise DataError(f"{p}: standardize fits on split {split!r}, which the spec does not define")
        ds = Standardizer().fit(ds, split).transform(ds)
        ds.meta["standardized_on"] = split
    return ds
