"""Two-digit image-speech pairs with multi-label digit sets (the multi-label setting of the hashing bench).

Each item draws two digits ``(d1, d2)`` independently and uniformly from 0-9. Its ``image`` is an MNIST-5k image
of ``d1`` (left) beside one of ``d2`` (right), a raw ``1 x 28 x 56`` map in [0, 1]; its ``audio`` is the
concatenation ``[a(d1); a(d2)]`` of the features of an FSDD utterance of ``d1`` and one of ``d2`` (by default
the log spectrogram of the central 0.6 s PCA-whitened to 50-d on FSDD's train split, so 100-d; the order matches
the image halves). Its labels are the digit set as a 10-d multi-hot vector (one label when ``d1 == d2``).
Images and utterances are paired by class, not by instance.

Splits follow DCMH's protocol (query / database / train with train inside the database), with ``val`` carved
from the database for model selection: ``query`` (``n_query`` items), ``train`` (``n_train``), ``val``
(``n_val``) and ``database`` = every item that is not a query (``train``, ``val`` and ``n - n_query - n_train -
n_val`` further items). Components never cross roles: query items take their images and utterances from the
source ``test`` splits, val items from the source ``val`` splits, train and the remaining database items from
the source ``train`` splits (drawn with replacement within each pool: a pool has fewer images than its items
need), so no query shares an image or a recording with an item the model was fitted or selected on.
"""

from __future__ import annotations

import os

import numpy as np

from commonspace.data.dataset import DataError, MultimodalDataset

__all__ = ["DESCRIPTION", "ROLES", "build_two_digit_set", "compose_pairs", "fsdd_audio_features", "role_sizes"]

ROLES = ("query", "train", "val", "rest")
#: which source split each role draws its components from
_SOURCE = {"query": "test", "train": "train", "val": "val", "rest": "train"}
AUDIO_PCA = 50
DESCRIPTION = (
    "two digits d1, d2 drawn uniformly and independently per item; image = MNIST-5k image of d1 | image of d2 "
    "(1 x 28 x 56, pixels in [0, 1]); audio = [FSDD utterance features of d1; of d2] concatenated (each the "
    "log spectrogram of the central 0.6 s, PCA-whitened to 50-d on FSDD train); labels = the digit set "
    "(10-d multi-hot); paired by class, not by instance; query components from the source test splits, val "
    "from the source val splits, train and the rest of the database from the source train splits"
)


def fsdd_audio_features(root: str | os.PathLike | None = None,
                        audio_pca: int = AUDIO_PCA) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """FSDD per-utterance features (N, audio_pca), digit labels (N,) and the official splits (train / val /
    test); the PCA whitening is fitted on the train split. Raises ``DatasetUnavailable`` without FSDD."""
    from commonspace.data.builtin.fsdd import central_spectrograms, fsdd_splits, load_fsdd_waveforms
    from commonspace.data.features.pca import PCAWhitener

    waves, rate, y, _, takes, _ = load_fsdd_waveforms(root)
    splits = fsdd_splits(y, takes)
    spec = central_spectrograms(waves, rate)
    x = PCAWhitener(audio_pca).fit(spec, splits["train"]).transform(spec).astype(np.float32)
    return x, y, splits


def _check_source(name: str, x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray]) -> None:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    for s in set(_SOURCE.values()):
        if s not in splits:
            raise DataError(f"{name}: the source splits need {sorted(set(_SOURCE.values()))}; got {sorted(splits)}")
        for c in range(10):
            if not np.any(y[np.asarray(splits[s])] == c):
                raise DataError(f"{name}: the source {s!r} split has no item of digit {c}; every split needs "
                                "all ten digits")


def _draw(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each digit a random row of ``pool`` with that label (with replacement)."""
    out = np.empty(digits.shape[0], dtype=np.int64)
    for c in range(10):
        need = np.flatnonzero(digits == c)
        if need.size:
            cand = pool[labels[pool] == c]
            out[need] = rng.choice(cand, need.size, replace=True)
    return out


def role_sizes(n: int, n_query: int, n_train: int, n_val: int) -> dict[str, int]:
    """``{"query", "train", "val", "rest"}`` item counts of an ``n``-item set (``rest``: more database items)."""
    sizes = {"query": int(n_query), "train": int(n_train), "val": int(n_val)}
    if min(sizes.values()) < 1:
        raise DataError(f"n_query, n_train and n_val must be >= 1, got {sizes}")
    sizes["rest"] = int(n) - sum(sizes.values())
    if sizes["rest"] < 0:
        raise DataError(f"n={n} is smaller than n_query + n_train + n_val = {int(n) - sizes['rest']}")
    return sizes


def compose_pairs(images: np.ndarray, image_labels: np.ndarray, image_splits: dict[str, np.ndarray],
                  vectors: np.ndarray, vector_labels: np.ndarray, vector_splits: dict[str, np.ndarray],
                  sizes: dict[str, int], seed: int, same_instance: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], dict]:
    """Two-digit items from single-digit sources: ``(image (n, 1, H, 2W), vector (n, 2 d), multi-hot labels (n, 10),
    splits, meta rows)``.

    ``images`` (N_i, H, W) and ``vectors`` (N_v, d) with their digit labels and train / val / test index splits;
    ``sizes`` the role sizes (``query``, ``train``, ``val``, ``rest``). Each item draws two digits uniformly and
    independently; each half takes a random row of that digit from the role's source split (with replacement).
    ``same_instance``: the vector rows are the image rows (both describe the same scanned digit; the two sources
    must then be row-aligned), else they are drawn independently (paired by class only).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    vector_labels = np.asarray(vector_labels, dtype=np.int64)
    images = np.asarray(images, dtype=np.float32)
    image_labels = np.asarray(image_labels, dtype=np.int64)
    if vectors.ndim != 2:
        raise DataError(f"audio must be (N, d) features, got shape {vectors.shape}")
    if images.ndim != 3:
        raise DataError(f"images must be (N, H, W), got shape {images.shape}")
    _check_source("audio", vectors, vector_labels, vector_splits)
    _check_source("images", images, image_labels, image_splits)
    if same_instance and (images.shape[0] != vectors.shape[0] or not np.array_equal(image_labels, vector_labels)):
        raise DataError("same_instance pairs need row-aligned sources (the same rows and labels in both)")
    n = sum(sizes.values())
    rng = np.random.default_rng(seed)
    role = np.concatenate([np.full(sizes[r], i) for i, r in enumerate(ROLES)])
    digits = rng.integers(0, 10, size=(n, 2))
    rows = {k: np.empty(n, dtype=np.int64) for k in ("left_image", "right_image", "left_audio", "right_audio")}
    for i, r in enumerate(ROLES):
        at = np.flatnonzero(role == i)
        if at.size == 0:
            continue
        src = _SOURCE[r]
        ipool, apool = np.asarray(image_splits[src]), np.asarray(vector_splits[src])
        for side, j in (("left", 0), ("right", 1)):
            rows[f"{side}_image"][at] = _draw(rng, digits[at, j], image_labels, ipool)
            rows[f"{side}_audio"][at] = (rows[f"{side}_image"][at] if same_instance
                                         else _draw(rng, digits[at, j], vector_labels, apool))
    image = np.concatenate([images[rows["left_image"]], images[rows["right_image"]]], axis=2)[:, None]
    vector = np.concatenate([vectors[rows["left_audio"]], vectors[rows["right_audio"]]], axis=1)
    labels = np.zeros((n, 10), dtype=np.int64)
    labels[np.arange(n), digits[:, 0]] = 1
    labels[np.arange(n), digits[:, 1]] = 1
    splits = {r: np.flatnonzero(role == i) for i, r in enumerate(ROLES) if r != "rest"}
    splits["database"] = np.flatnonzero(role != 0)
    meta = {"digits": digits, **rows, "same_digit_items": int((digits[:, 0] == digits[:, 1]).sum())}
    return image, vector, labels, splits, meta


def build_two_digit_set(
    n: int = 5000,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    *,
    n_query: int = 500,
    n_train: int = 2500,
    n_val: int = 500,
    audio: np.ndarray | None = None,
    audio_labels: np.ndarray | None = None,
    audio_splits: dict[str, np.ndarray] | None = None,
    images: np.ndarray | None = None,
    image_labels: np.ndarray | None = None,
    image_splits: dict[str, np.ndarray] | None = None,
) -> MultimodalDataset:
    """``n`` two-digit items: ``image`` (1, 28, 56), ``audio`` (2 d_a), 10-d multi-hot labels; splits ``query``,
    ``database``, ``train`` and ``val`` (see the module docstring).

    ``root``: FSDD's folder (or a data folder holding ``fsdd/``); ignored when ``audio`` is given. ``audio``
    (N_a, d_a) with ``audio_labels`` (N_a,) digits and ``audio_splits`` (train / val / test index arrays)
    replace the FSDD features (e.g. synthetic stand-ins in tests); ``images`` (N_i, 784) in [0, 1] with
    ``image_labels`` and ``image_splits`` replace MNIST-5k likewise. ``meta`` records, per item, the digits and
    the source rows of each half (``left_image``, ``right_image``, ``left_audio``, ``right_audio``).
    """
    sizes = role_sizes(n, n_query, n_train, n_val)
    if audio is None:
        audio, audio_labels, audio_splits = fsdd_audio_features(root)
        audio_source = "FSDD (log spectrogram of the central 0.6 s, PCA-whitened to 50-d on FSDD train)"
    else:
        if audio_labels is None or audio_splits is None:
            raise DataError("injected audio needs audio_labels and audio_splits (train / val / test) too")
        audio_source = "injected"
    if images is None:
        from commonspace.data.builtin.mnist import mnist5k

        mn = mnist5k()
        images, image_labels = mn.features["image"].numpy(), mn.labels.numpy()
        image_splits = {s: mn.split(s).numpy() for s in ("train", "val", "test")}
        image_source = "MNIST-5k (shipped)"
    else:
        if image_labels is None or image_splits is None:
            raise DataError("injected images need image_labels and image_splits (train / val / test) too")
        image_source = "injected"
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    image, sound, labels, splits, extra = compose_pairs(images, image_labels, image_splits, audio, audio_labels,
                                                        audio_splits, sizes, seed)
    meta = {"description": DESCRIPTION, "seed": int(seed), "sizes": sizes, "audio_source": audio_source,
            "image_source": image_source, **extra}
    return MultimodalDataset({"image": image, "audio": sound}, None, labels, splits, "two-digits",
                             [str(i) for i in range(10)], meta)
