"""``digits-halves``: scikit-learn's 8x8 digits split into left and right image halves."""

from __future__ import annotations

import numpy as np

from commonspace.data.builtin._common import Info, carve
from commonspace.data.dataset import MultimodalDataset

FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.3}


def load_digits_halves() -> MultimodalDataset:
    """1797 digits; ``left`` and ``right`` are the 8x4 halves (32-d each, pixel/16 in [0, 1])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = d.images.astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    n = img.shape[0]
    feats = {"left": img[:, :, :4].reshape(n, 32), "right": img[:, :, 4:].reshape(n, 32)}
    return MultimodalDataset(feats, None, y, carve(y, FRACTIONS), INFO.name, [str(i) for i in range(10)],
                             INFO.meta())


INFO = Info(
    name="digits-halves",
    description="sklearn 8x8 digits, left vs right image half (two views of one image)",
    loader=load_digits_halves,
    samples=1797,
    modalities={"left": 32, "right": 32},
    classes=10,
    splits={"train": 1078, "val": 180, "test": 539},
    split_protocol="stratified 60/10/30, seed 0 (test carved first, val from the rest)",
    source="scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits, test part)",
    license="CC BY 4.0 (UCI)",
    needs="nothing (bundled with scikit-learn)",
    citation="E. Alpaydin and C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning "
             "Repository, 1998. https://archive.ics.uci.edu/dataset/80",
)
