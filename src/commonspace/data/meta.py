"""The schemas of commonspace's metadata files, checked in one place before a reader uses any entry.

Three files: a dataset folder's ``meta.json`` (:mod:`commonspace.data.folder`), an embeddings folder's
``meta.json`` (:mod:`commonspace.data.embedfiles`) and the ``meta`` entry of an index file
(:mod:`commonspace.index.faiss_index`). Each schema lists every key its reader relies on, with its type; keys
it does not list are allowed (a newer writer may add some). A file that breaks its schema is a
:class:`MetadataError` naming the file, the key, what it must be, what it holds and how to re-create the file::

    emb/meta.json: damaged metadata: 'arrays' must be a non-empty object (array name -> record), got an empty
    list; remove the folder and write it again with `commonspace embed ... --out emb/`
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from commonspace.data.dataset import DataError

__all__ = ["MetadataError", "check", "check_dataset_folder", "check_embeddings_folder", "check_index"]


class MetadataError(DataError):
    """A metadata file that breaks its schema (hand-edited, or damaged); the message names the file and the fix."""


class _Bad(Exception):
    """Raised inside a schema walk; :func:`check` turns it into a MetadataError with the file and the fix."""

    def __init__(self, at: str, why: str) -> None:
        super().__init__(at, why)
        self.at, self.why = at, why


def _show(v: Any) -> str:
    """A value as the message shows it: short, one line, JSON words for null and booleans."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:40] + "...")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "an empty list" if not v else "a list"
    if isinstance(v, dict):
        return "an empty object" if not v else "an object"
    return type(v).__name__  # pragma: no cover - json.loads makes nothing else


def _sub(at: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{at}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{at}.{key}" if at else key
    return f"{at}[{json.dumps(key)}]"  # double quotes: the whole path is shown in single quotes


class Rule:
    """One value's rule; :meth:`walk` raises :class:`_Bad` at the first value that breaks it."""

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def walk(self, v: Any, at: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def bad(self, v: Any, at: str) -> _Bad:
        return _Bad(at, f"must be {self.describe()}, got {_show(v)}")


@dataclass(frozen=True)
class Whole(Rule):
    """An integer (not a boolean, not 5.0) of at least ``min``."""

    min: int = 0

    def describe(self) -> str:
        return f"a whole number >= {self.min}"

    def walk(self, v: Any, at: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < self.min:
            raise self.bad(v, at)


@dataclass(frozen=True)
class Text(Rule):
    """A string, optionally one of ``choices`` or matching ``pattern`` (described as ``what``)."""

    choices: tuple[str, ...] = ()
    pattern: str | None = None
    what: str = "a string"

    def describe(self) -> str:
        return f"one of {', '.join(map(repr, self.choices))}" if self.choices else self.what

    def walk(self, v: Any, at: str) -> None:
        if (not isinstance(v, str) or (self.choices and v not in self.choices)
                or (self.pattern is not None and not re.fullmatch(self.pattern, v))):
            raise self.bad(v, at)


@dataclass(frozen=True)
class Null(Rule):
    """``null`` or what ``rule`` allows."""

    rule: Rule

    def describe(self) -> str:
        return f"null or {self.rule.describe()}"

    def walk(self, v: Any, at: str) -> None:
        if v is not None:
            try:
                self.rule.walk(v, at)
            except _Bad as exc:
                if exc.at == at:  # the value itself is wrong (not one inside it): say null was fine too
                    raise self.bad(v, at) from None
                raise


@dataclass(frozen=True)
class ListOf(Rule):
    item: Rule
    nonempty: bool = False

    def describe(self) -> str:
        return f"{'a non-empty' if self.nonempty else 'a'} list"

    def walk(self, v: Any, at: str) -> None:
        if not isinstance(v, list) or (self.nonempty and not v):
            raise self.bad(v, at)
        for i, x in enumerate(v):
            self.item.walk(x, _sub(at, i))


@dataclass(frozen=True)
class MapOf(Rule):
    """An object of any keys (matching ``keys`` when given), each value as ``value`` says."""

    value: Rule
    nonempty: bool = False
    hint: str = ""
    keys: str | None = None

    def describe(self) -> str:
        return f"{'a non-empty' if self.nonempty else 'an'} object" + (f" ({self.hint})" if self.hint else "")

    def walk(self, v: Any, at: str) -> None:
        if not isinstance(v, dict) or (self.nonempty and not v):
            raise self.bad(v, at)
        for k, x in v.items():
            if self.keys is not None and not re.fullmatch(self.keys, k):
                raise _Bad(_sub(at, k), "is not a valid name (letters, digits, '_', '-', '.')")
            self.value.walk(x, _sub(at, k))


@dataclass(frozen=True)
class Obj(Rule):
    """An object with the ``required`` keys, and the ``optional`` ones when present; other keys are allowed."""

    required: Mapping[str, Rule] = field(default_factory=dict)
    optional: Mapping[str, Rule] = field(default_factory=dict)

    def describe(self) -> str:
        return "an object"

    def walk(self, v: Any, at: str) -> None:
        if not isinstance(v, dict):
            if not at:
                raise _Bad(at, f"the file must hold a JSON object, got {_show(v)}")
            raise self.bad(v, at)
        for k, rule in self.required.items():
            if k not in v:
                raise _Bad(_sub(at, k), "is missing")
            rule.walk(v[k], _sub(at, k))
        for k, rule in self.optional.items():
            if k in v:
                rule.walk(v[k], _sub(at, k))


def check(doc: Any, schema: Rule, path: str | os.PathLike, fix: str) -> None:
    """Raise :class:`MetadataError` ``"<path>: damaged metadata: <key> must be ...; <fix>"`` unless ``doc`` fits."""
    try:
        schema.walk(doc, "")
    except _Bad as exc:
        raise _damaged(path, f"'{exc.at}' {exc.why}" if exc.at else exc.why, fix) from None


def _damaged(path: str | os.PathLike, why: str, fix: str) -> MetadataError:
    return MetadataError(f"{path}: damaged metadata: {why}; {fix}")


def _object(doc: Any, path: str | os.PathLike, fix: str) -> dict[str, Any]:
    check(doc, Obj(), path, fix)
    return doc


# ------------------------------------------------------------------------------------------ the schemas
_SHA256 = Text(pattern=r"[0-9a-f]{64}", what="a SHA-256 hex digest")
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAMES = ListOf(Text())

#: a dataset folder's meta.json, as :func:`commonspace.data.folder.open_folder` reads it
DATASET_FOLDER = Obj(
    required={
        "samples": Whole(),
        "modalities": ListOf(Text(), nonempty=True),
        "dims": MapOf(ListOf(Whole()), hint="modality -> feature shape"),
        "dtypes": MapOf(Text(), hint="modality -> dtype"),
        "files": MapOf(Obj(required={"sha256": _SHA256, "bytes": Whole()}, optional={"dtype": Text()}),
                       nonempty=True, hint="file name -> {sha256, bytes}"),
    },
    optional={
        "name": Null(Text()),
        "labels": Null(Text(choices=("single", "multi"))),
        "class_names": Null(_NAMES),
        "splits": Null(MapOf(Whole(), hint="split name -> size")),
        "meta": Null(Obj()),
    },
)

#: the run's meta inside an embeddings file, as ``commonspace index build`` reads it
_RUN_META = Obj(optional={"model": Null(Text()), "modalities": _NAMES, "split": Null(Text())})

#: an embeddings folder's meta.json, as :func:`commonspace.data.embedfiles.read_embeddings_folder` reads it
EMBEDDINGS_FOLDER = Obj(
    required={
        "rows": Whole(),
        "arrays": MapOf(Obj(required={"file": Text(pattern=_NAME + r"\.npy", what="a .npy file name"),
                                      "shape": ListOf(Whole(), nonempty=True), "dtype": Text(),
                                      "sha256": _SHA256, "bytes": Whole()}),
                        nonempty=True, hint="array name -> {file, shape, dtype, sha256, bytes}", keys=_NAME),
    },
    optional={"meta": Null(_RUN_META)},
)

#: an index file's ``meta`` entry, as :func:`commonspace.index.faiss_index.load_index` reads it
INDEX = Obj(
    required={
        "kind": Text(choices=("float", "binary")),
        "ntotal": Whole(),
        "factory": Text(),
        "metric": Text(),
        "dim": Whole(1),
    },
    optional={
        "modalities": Null(_NAMES),
        "model": Null(Text()),
        "extra": Obj(),
        "nprobe": Null(Whole(1)),
        "ef_search": Null(Whole(1)),
    },
)
INDEX_KIND = {
    "float": Obj(required={"metric": Text(choices=("cosine", "ip", "l2"))}),
    "binary": Obj(required={"metric": Text(choices=("hamming",)), "bits": Whole(1)}),
}


# ------------------------------------------------------------------------------------------- the readers
def check_dataset_folder(doc: Any, path: str | os.PathLike, *, format: str, version: int) -> dict[str, Any]:
    """A dataset folder's parsed ``meta.json`` (at ``path``), checked: format, version, schema, consistency."""
    folder = os.path.dirname(os.fspath(path)) or "."
    fix = f"re-create the folder with `commonspace convert SOURCE {folder} --overwrite` or restore it from a copy"
    doc = _object(doc, path, fix)
    if doc.get("format") != format:
        raise DataError(f"{path}: is not a commonspace dataset folder's meta.json (format {doc.get('format')!r}, "
                        f"expected {format!r}); write the folder with `commonspace convert`")
    if doc.get("version") != version:
        raise DataError(f"{path}: dataset folder format version {doc.get('version')!r}; this commonspace reads "
                        f"version {version}: re-create the folder with this version's `commonspace convert`")
    check(doc, DATASET_FOLDER, path, fix)
    for m in doc["modalities"]:
        for key in ("dims", "dtypes"):
            if m not in doc[key]:
                raise _damaged(path, f"'{key}' has no entry for modality {m!r}", fix)
    return doc


def check_embeddings_folder(doc: Any, path: str | os.PathLike, *, format: str, version: int) -> dict[str, Any]:
    """An embeddings folder's parsed ``meta.json`` (at ``path``), checked: format, version, schema, row counts."""
    folder = os.path.dirname(os.fspath(path)) or "."
    fix = (f"remove the folder and write it again with `commonspace embed --model RUN --data DATA --out "
           f"{folder}{os.sep}`")
    doc = _object(doc, path, fix)
    if doc.get("format") != format:
        raise DataError(f"{folder}: meta.json is not an embeddings folder's (a dataset folder? use it as --data)")
    if doc.get("version") != version:
        raise DataError(f"{folder}: embeddings folder version {doc.get('version')!r}; this commonspace reads "
                        f"version {version}")
    check(doc, EMBEDDINGS_FOLDER, path, fix)
    for name, rec in doc["arrays"].items():
        if rec["shape"][0] != doc["rows"]:
            raise _damaged(path, f"array {name!r} has {rec['shape'][0]} rows but 'rows' is {doc['rows']}", fix)
    return doc


def check_index(doc: Any, path: str | os.PathLike, *, format: str, version: int) -> dict[str, Any]:
    """An index file's parsed ``meta`` entry (the file at ``path``), checked: format, version, schema by kind."""
    fix = f"rebuild the index with `commonspace index build --embeddings EMB --out {path}`"
    doc = _object(doc, path, fix)
    if doc.get("format") != format:
        raise DataError(f"{path}: not a commonspace index file (format {doc.get('format')!r})")
    check(doc, Obj(optional={"version": Whole()}), path, fix)
    if doc.get("version", 0) > version:
        raise DataError(f"{path}: index format version {doc['version']} is newer than this commonspace "
                        f"({version}); upgrade commonspace")
    check(doc, INDEX, path, fix)
    check(doc, INDEX_KIND[doc["kind"]], path, fix)
    return doc
