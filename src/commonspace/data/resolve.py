"""Turn a ``--data`` argument (builtin name, .npz, .toml spec, .mat/.csv/.npy) into a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.data.dataset import DataError, MultimodalDataset

__all__ = ["ensure_splits", "resolve_data"]


def resolve_data(source: str, modalities: list[str] | None = None, root: Path | None = None) -> MultimodalDataset:
    """``builtin:NAME`` or a builtin name, a ``.npz`` file (see docs/data.md) or a ``.toml`` spec."""
    from commonspace.data import builtin
    from commonspace.data.io import load_npz
    from commonspace.data.spec import load_spec

    names = {d["name"] for d in builtin.available()}
    name = source.removeprefix("builtin:")
    path = Path(source)
    if source.startswith("builtin:") or (name in names and not path.exists()):
        data = builtin.load(name, root=root)
    elif not path.exists():
        raise DataError(f"data {source!r} is neither a file nor a builtin dataset; builtins: {sorted(names)}")
    elif path.suffix == ".npz":
        data = load_npz(path)
    elif path.suffix == ".toml":
        data = load_spec(path)
    else:
        raise DataError(f"cannot read {path.name!r} as a dataset: give a .npz file (docs/data.md) or a .toml "
                        "spec that maps modality names to .mat/.csv/.npy files")
    if modalities:
        data = data.select(modalities)
    return data


def ensure_splits(data: MultimodalDataset, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[MultimodalDataset, str]:
    """Give a dataset without a train split seeded train/val/test splits (stratified when labelled).

    Returns the dataset and a sentence saying what was done, so callers can tell the user.
    """
    if "train" in data.splits:
        return data, ""
    from commonspace.data.splits import stratified_splits

    labels = None if data.labels is None or data.multilabel else data.labels.numpy()
    if labels is None:
        labels = np.zeros(data.n, dtype=np.int64)
    splits = stratified_splits(labels, {"train": fractions[0], "val": fractions[1], "test": fractions[2]},
                               seed=seed)
    msg = (f"the data has no 'train' split: made a seeded (seed {seed}) split "
           f"{int(fractions[0] * 100)}/{int(fractions[1] * 100)}/{int(fractions[2] * 100)} "
           f"(train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])})")
    return data.replace(splits=splits), msg
