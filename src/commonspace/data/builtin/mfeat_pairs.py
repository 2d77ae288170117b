"""Two-digit pairs from UCI Multiple Features (shipped): a second multi-label image set for the hashing bench,
on which the kernel network has positions to weigh.

Each item draws two digits ``(d1, d2)`` uniformly and independently. Its ``image`` is the ``pix`` view (240 pixel
averages over 2 x 3 windows, a 16 x 15 map with values 0-6, scaled to [0, 1]) of a scanned ``d1`` beside one of
``d2``: a raw ``1 x 16 x 30`` map. Its ``text`` is the ``fou`` view (76 Fourier coefficients of the character
contour) of the **same two scans**, concatenated in the same order (152-d): image and text describe one physical
pair of digits, unlike the two-digit MNIST / FSDD set, which pairs by class. Labels = the digit set (10-d
multi-hot). Splits as in :mod:`commonspace.data.builtin.two_digits` (DCMH-style query / database with train and
val inside the database), drawing the query items' scans from UCI's test split (400 scans), val from its val
split (200) and train and the rest of the database from its train split (1400), with replacement within a pool.
"""

from __future__ import annotations

from commonspace.data.builtin.mfeat import load_uci_mfeat
from commonspace.data.builtin.two_digits import compose_pairs, role_sizes
from commonspace.data.dataset import MultimodalDataset

__all__ = ["DESCRIPTION", "build_mfeat_pair_set"]

DESCRIPTION = (
    "two digits d1, d2 drawn uniformly and independently per item; image = UCI mfeat pixel map of a scan of d1 | "
    "of a scan of d2 (1 x 16 x 30, values / 6 in [0, 1]); text = [Fourier contour coefficients (fou, 76) of the "
    "same two scans] (152-d); labels = the digit set (10-d multi-hot); paired by instance; query scans from the "
    "UCI test split, val from val, train and the rest of the database from train"
)


def build_mfeat_pair_set(n: int = 5000, seed: int = 0, *, n_query: int = 500, n_train: int = 2000,
                         n_val: int = 500) -> MultimodalDataset:
    """``n`` pair items: ``image`` (1, 16, 30), ``text`` (152,), 10-d multi-hot labels; splits ``query``,
    ``database``, ``train``, ``val`` (module docstring). Needs no data beyond the shipped UCI copy."""
    sizes = role_sizes(n, n_query, n_train, n_val)
    uci = load_uci_mfeat(["pix", "fou"])
    y = uci.labels.numpy()
    splits = {s: uci.split(s).numpy() for s in ("train", "val", "test")}
    pix = uci.features["pix"].numpy().reshape(-1, 16, 15) / 6.0
    image, text, labels, out_splits, extra = compose_pairs(
        pix, y, splits, uci.features["fou"].numpy(), y, splits, sizes, seed, same_instance=True)
    meta = {"description": DESCRIPTION, "seed": int(seed), "sizes": sizes, "source": "UCI mfeat (shipped)",
            **extra}
    return MultimodalDataset({"image": image, "text": text}, None, labels, out_splits, "mfeat-pairs",
                             [str(i) for i in range(10)], meta)
