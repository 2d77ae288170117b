"""Turn a ``--data`` argument (builtin name, .npz, .toml spec, .h5, dataset folder) into a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from commonspace.data.dataset import DataError, MultimodalDataset

__all__ = ["ensure_splits", "resolve_data"]


def resolve_data(source: str, modalities: list[str] | None = None, root: Path | None = None) -> MultimodalDataset:
    """``builtin:NAME`` or a builtin name, a ``.npz`` file (see docs/data.md), a ``.toml`` spec, a dataset folder
    (``meta.json`` + ``.npy`` files, memory-mapped) or an ``.h5`` file in the ``.npz`` schema (read lazily)."""
    from commonspace.data import builtin
    from commonspace.data.folder import open_folder
    from commonspace.data.io import load_h5, load_npz, recover_replaced
    from commonspace.data.spec import load_spec

    names = {d["name"] for d in builtin.available()}
    name = source.removeprefix("builtin:")
    path = Path(source)
    if source.startswith("builtin:") or (name in names and not path.exists()):
        data = builtin.load(name, root=root)
    elif not path.exists() and not recover_replaced(path):  # put back a folder a killed --overwrite hid
        raise DataError(f"data {source!r} is neither a file nor a builtin dataset; builtins: {sorted(names)}")
    elif path.is_dir():
        if not (path / "meta.json").is_file():
            raise DataError(f"{path} is a folder without meta.json, not a dataset folder; write one with "
                            "`commonspace convert IN OUT/`, or give a .npz file or a .toml spec")
        data = open_folder(path)
    elif path.suffix == ".npz":
        data = load_npz(path)
    elif path.suffix == ".toml":
        data = load_spec(path)
    elif path.suffix.lower() in (".h5", ".hdf5"):
        data = load_h5(path)
    else:
        raise DataError(f"cannot read {path.name!r} as a dataset: give a .npz file (docs/data.md), a .toml "
                        "spec that maps modality names to .mat/.csv/.npy files, an .h5 file or a dataset folder")
    if modalities:
        data = data.select(modalities)
    return data


def _carve(labels: np.ndarray | None, pool: np.ndarray, fractions: dict[str, float | int],
           seed: int) -> dict[str, np.ndarray]:
    """Seeded splits of the rows ``pool`` (stratified when single-label), as indices into the dataset."""
    from commonspace.data.splits import stratified_splits

    sub = None if labels is None else labels[pool]
    try:
        local = stratified_splits(sub, fractions, seed=seed, n=pool.size)
    except DataError:  # a class too rare to stratify: a plain seeded split still keeps every row somewhere
        local = stratified_splits(None, fractions, seed=seed, n=pool.size)
    return {k: pool[v] for k, v in local.items()}


def ensure_splits(data: MultimodalDataset, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[MultimodalDataset, str]:
    """Give a dataset without a train split seeded train (and val) splits; every given split is kept.

    No split at all: seeded train/val/test of ``fractions`` (stratified when labelled). Some splits given
    but no ``train``: train, and val when absent, are carved only from the rows no given split holds, so
    a given test split stays exactly as it is. Returns the dataset and a sentence saying what was done.
    """
    if "train" in data.splits:
        return data, ""
    labels = None if data.labels is None or data.multilabel else data.labels.numpy()
    given = {k: v.numpy() for k, v in data.splits.items()}
    if not given:
        splits = _carve(labels, np.arange(data.n), {"train": fractions[0], "val": fractions[1],
                                                    "test": fractions[2]}, seed)
        msg = (f"the data has no splits: made a seeded (seed {seed}) split "
               f"{round(fractions[0] * 100)}/{round(fractions[1] * 100)}/{round(fractions[2] * 100)} "
               f"(train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])})")
        return data.replace(splits=splits), msg
    pool = np.setdiff1d(np.arange(data.n), np.concatenate(list(given.values())))
    kept = ", ".join(f"{k} {len(v)}" for k, v in given.items())
    if pool.size == 0:
        raise DataError(f"the data gives splits ({kept} rows) that hold every row, but no 'train' split; add a "
                        "split_train, or leave the training rows out of the other splits")
    new: dict[str, np.ndarray]
    val_share = fractions[1] / (fractions[0] + fractions[1])
    k = round(val_share * pool.size)
    if "val" in given or k < 1 or pool.size - k < 1:
        new = {"train": pool}
    else:
        new = _carve(labels, pool, {"train": 1.0 - val_share, "val": val_share}, seed)
    made = " and ".join(f"{name} ({len(v)} rows)" for name, v in new.items())
    msg = (f"kept the data's splits ({kept} rows) and made {made} from the {pool.size} rows no given split "
           f"holds (seed {seed})")
    return data.replace(splits={**data.splits, **{n: torch.as_tensor(v) for n, v in new.items()}}), msg
