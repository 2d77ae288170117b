"""Shared pieces of the builtin datasets: registry entries, data-folder lookup, fixed splits."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.splits import stratified_splits

HERE = Path(__file__).resolve().parent
SHARED_ENV = "COMMONSPACE_SHARED_DATA"


class DatasetUnavailable(DataError):
    """A builtin dataset whose files are not shipped and were not found locally."""


@dataclass
class Info:
    """What :func:`commonspace.data.builtin.available` reports about one dataset."""

    name: str
    description: str
    loader: Callable[..., MultimodalDataset]
    samples: int
    modalities: dict[str, int]
    classes: int
    splits: dict[str, int]
    split_protocol: str
    source: str
    license: str
    citation: str
    external: bool = False  # True: not shipped, needs a local copy
    needs: str = "nothing (shipped)"
    locate: Callable[[], Path | None] | None = None
    options: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict:
        return {"source": self.source, "license": self.license, "citation": self.citation,
                "split_protocol": self.split_protocol}


def find_shared(name: str) -> Path | None:
    """The folder ``shared/data/<name>`` if one exists, else None.

    Looks in ``$COMMONSPACE_SHARED_DATA/<name>`` first, then next to a source checkout
    (``<repo>/../shared/data/<name>``), then in the current directory and each of its parents.
    """
    cands: list[Path] = []
    env = os.environ.get(SHARED_ENV)
    if env:
        cands.append(Path(env).expanduser() / name)
    # builtin -> data -> commonspace -> src -> repo; only meaningful for a source checkout
    parents = HERE.parents
    if len(parents) > 3:
        cands.append(parents[3].parent / "shared" / "data" / name)
    cwd = Path.cwd()
    cands.extend(d / "shared" / "data" / name for d in (cwd, *cwd.parents))
    for c in cands:
        if c.is_dir():
            return c
    return None


def carve(labels: np.ndarray, fractions: dict[str, float | int]) -> dict[str, np.ndarray]:
    """Fixed builtin splits: stratified, seed 0, test first and val carved from the rest."""
    return stratified_splits(labels, fractions, seed=0)


def shipped(filename: str) -> Path:
    p = HERE / filename
    if not p.is_file():
        raise DataError(f"{p}: shipped data file missing; reinstall commonspace (the package data was not "
                        "installed)")
    return p
