"""Free Spoken Digit Dataset (not shipped; loaded from a local copy).

``fsdd-spectrogram``: one modality ``audio``, a PCA-whitened log spectrogram of the utterance's central
frames. ``fsdd-mnist``: that ``audio`` plus an MNIST-5k ``image`` of the same digit, paired by class (a
random image of the spoken digit), not by instance.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from commonspace.data.builtin._common import DatasetUnavailable, Info, carve, find_shared
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.features.audio import LOG_EPS, center_frames, frame, power_spectrum, read_wav, window_samples
from commonspace.data.features.pca import PCAWhitener

__all__ = ["central_spectrograms", "fsdd_splits", "load_fsdd_mnist", "load_fsdd_spectrogram",
           "load_fsdd_waveforms", "locate"]

ENV = "COMMONSPACE_FSDD"
URL = "https://github.com/Jakobovski/free-spoken-digit-dataset"
_FILE = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
TEST_TAKES = 5  # official split: takes 0-4 are test, 5-49 train
FRAMES = 60  # 60 x 10 ms hop = 0.6 s (+ one 20 ms window): the whole utterance for 91.5% of FSDD clips
AUDIO_PCA = 50
IMAGE_PCA = 100
WIN_MS, HOP_MS = 20.0, 10.0
PAIRING = ("paired by class, not by instance: each utterance gets a random MNIST-5k image of the same digit "
           "(drawn without replacement within each split from the matching MNIST-5k split, seeded)")


def _wav_names(d: Path) -> list[str]:
    try:
        return [p.name for p in d.iterdir() if _FILE.match(p.name)]
    except OSError:
        return []


def locate(root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding FSDD's ``{digit}_{speaker}_{take}.wav`` files: ``root`` (the recordings folder,
    or a folder with ``recordings/`` or ``fsdd/recordings/`` inside), else ``$COMMONSPACE_FSDD``, else
    ``shared/data/fsdd/recordings``."""
    if root is not None:
        bases = [Path(root).expanduser()]
    elif os.environ.get(ENV):
        bases = [Path(os.environ[ENV]).expanduser()]
    else:
        shared = find_shared("fsdd")
        bases = [] if shared is None else [shared]
    for b in bases:
        for d in (b, b / "recordings", b / "fsdd" / "recordings"):
            if d.is_dir() and _wav_names(d):
                return d
    return None


def _unavailable(root: str | os.PathLike | None) -> DatasetUnavailable:
    where = f"in {root}" if root is not None else (
        f"in ${ENV}={os.environ[ENV]}" if os.environ.get(ENV) else "in any shared/data/fsdd folder")
    return DatasetUnavailable(
        f"the Free Spoken Digit Dataset was not found {where}. It is not shipped with commonspace: get it from "
        f"{URL} (CC BY-SA 4.0; e.g. git clone the repository), then pass root=<the clone or its recordings/ "
        f"folder>, or set {ENV}=<folder>, or place it at shared/data/fsdd/recordings next to your project"
    )


def load_fsdd_waveforms(
    root: str | os.PathLike | None = None,
) -> tuple[list[np.ndarray], int, np.ndarray, list[str], np.ndarray, list[Path]]:
    """All FSDD recordings: (waveforms float32 in [-1, 1], sample rate, digit labels int64 (N,),
    speakers, takes int64 (N,), paths), sorted by (digit, speaker, take) with numeric take order."""
    d = locate(root)
    if d is None:
        raise _unavailable(root)
    keyed = []
    for name in _wav_names(d):
        m = _FILE.match(name)
        assert m is not None
        keyed.append(((int(m[1]), m[2], int(m[3])), d / name))
    keyed.sort(key=lambda kp: kp[0])
    waves, rates = [], set()
    for _, p in keyed:
        x, r = read_wav(p)
        waves.append(x)
        rates.add(r)
    if len(rates) != 1:
        raise DataError(f"{d}: recordings have different sample rates {sorted(rates)}; FSDD is 8 kHz throughout")
    labels = np.array([k[0] for k, _ in keyed], dtype=np.int64)
    speakers = [k[1] for k, _ in keyed]
    takes = np.array([k[2] for k, _ in keyed], dtype=np.int64)
    return waves, rates.pop(), labels, speakers, takes, [p for _, p in keyed]


def fsdd_splits(labels: np.ndarray, takes: np.ndarray) -> dict[str, np.ndarray]:
    """Official split (takes 0-4 test, the rest train) with val = stratified 10% of train (by digit, seed 0)."""
    labels, takes = np.asarray(labels), np.asarray(takes)
    te = np.flatnonzero(takes < TEST_TAKES)
    tr = np.flatnonzero(takes >= TEST_TAKES)
    if tr.size == 0 or te.size == 0:
        raise DataError(f"FSDD needs takes 0-{TEST_TAKES - 1} (test) and >= {TEST_TAKES} (train); found takes "
                        f"{sorted(set(takes.tolist()))[:10]}...")
    part = carve(labels[tr], {"train": 0.9, "val": 0.1})
    return {"train": tr[part["train"]], "val": tr[part["val"]], "test": te}


def central_spectrograms(waves: list[np.ndarray], rate: int, frames: int = FRAMES, win_ms: float = WIN_MS,
                         hop_ms: float = HOP_MS, chunk: int = 512) -> np.ndarray:
    """(N, frames * bins) float32: per clip the log power spectrogram (Hamming window), its ``frames``
    central frames (clips with fewer frames padded symmetrically with silent frames, which give exactly
    ``ln(LOG_EPS)``), flattened frame by frame. At 8 kHz a 20 ms window has 160 samples and 81 bins.

    Equal to ``center_frames(spectrogram(w, rate), frames // 2, pad_value=ln(LOG_EPS))`` per clip, but the
    central frames are cut first and transformed together, ``chunk`` clips per FFT call.
    """
    if frames < 2 or frames % 2:
        raise DataError(f"frames must be an even number >= 2 (frames either side of the midpoint), got {frames}")
    win, hop = window_samples(rate, win_ms), window_samples(rate, hop_ms)
    out = []
    for s in range(0, len(waves), chunk):
        # zero-padded frames have zero power, so padding raw frames equals padding with the log floor
        cut = np.stack([center_frames(frame(w, win, hop), frames // 2) for w in waves[s:s + chunk]])
        out.append(np.log(power_spectrum(cut) + LOG_EPS).astype(np.float32).reshape(cut.shape[0], -1))
    return np.concatenate(out) if out else np.zeros((0, frames * (win // 2 + 1)), np.float32)


def _whiten(x: np.ndarray, rows: np.ndarray, k: int | None, what: str) -> tuple[np.ndarray, dict]:
    if k is None:
        return x.astype(np.float32), {f"{what}_pca": None}
    w = PCAWhitener(int(k)).fit(x, rows)
    return w.transform(x), {f"{what}_pca": int(k),
                            f"{what}_pca_explained_variance": round(float(w.explained_variance_ratio.sum()), 4)}


def _audio(root: str | os.PathLike | None, frames: int,
           audio_pca: int | None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    waves, rate, y, speakers, takes, paths = load_fsdd_waveforms(root)
    splits = fsdd_splits(y, takes)
    x, info = _whiten(central_spectrograms(waves, rate, frames), splits["train"], audio_pca, "audio")
    meta = {"path": str(paths[0].parent), "sample_rate": rate, "speakers": speakers, "takes": takes.tolist(),
            "audio_features": f"log power spectrogram, {WIN_MS:g} ms Hamming window, {HOP_MS:g} ms hop, "
                              f"{frames} central frames, flattened" + ("" if audio_pca is None else
                                                                       f", PCA-whitened to {audio_pca} (train)"),
            **info}
    return x, y, splits, meta


def load_fsdd_spectrogram(root: str | os.PathLike | None = None, frames: int = FRAMES,
                          audio_pca: int | None = AUDIO_PCA) -> MultimodalDataset:
    """``audio``: log spectrogram (20 ms Hamming, 10 ms hop) of the ``frames`` central frames, PCA-whitened to
    ``audio_pca`` components fitted on the train split (None: the raw ``frames * 81`` values)."""
    x, y, splits, meta = _audio(root, frames, audio_pca)
    return MultimodalDataset({"audio": x}, None, y, splits, SPECTROGRAM.name, [str(i) for i in range(10)],
                             SPECTROGRAM.meta() | meta)


def pair_by_class(labels: np.ndarray, splits: dict[str, np.ndarray], pool_labels: np.ndarray,
                  pools: dict[str, np.ndarray], seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """For each row a row of the pool with the same label, drawn without replacement within each split from
    ``pools[split]`` (with replacement for a class whose pool is too small; those splits are returned)."""
    rng = np.random.default_rng(seed)
    out = np.full(labels.shape[0], -1, dtype=np.int64)
    reused = []
    for s, rows in splits.items():
        pool = np.asarray(pools[s])
        for c in np.unique(labels[rows]):
            need = rows[labels[rows] == c]
            cand = pool[pool_labels[pool] == c]
            if cand.size == 0:
                raise DataError(f"no image of class {c} in the {s!r} pool to pair with")
            small = cand.size < need.size
            out[need] = rng.choice(cand, need.size, replace=small)
            if small and s not in reused:
                reused.append(s)
    return out, reused


def load_fsdd_mnist(root: str | os.PathLike | None = None, seed: int = 0, image_pca: int | None = IMAGE_PCA,
                    audio_pca: int | None = AUDIO_PCA, frames: int = FRAMES) -> MultimodalDataset:
    """FSDD ``audio`` (as ``fsdd-spectrogram``) + an MNIST-5k ``image`` of the same digit (paired by class).

    FSDD train / val / test utterances draw images from MNIST-5k's train / val / test splits (seeded by
    ``seed``). ``image``: pixels PCA-whitened to ``image_pca`` components fitted on the train split's images
    (None: the raw 784 pixels in [0, 1]).
    """
    from commonspace.data.builtin.mnist import mnist5k

    x, y, splits, meta = _audio(root, frames, audio_pca)
    mn = mnist5k()
    pools = {s: mn.split(s).numpy() for s in splits}
    rows, reused = pair_by_class(y, splits, mn.labels.numpy(), pools, seed)
    img, info = _whiten(mn.features["image"].numpy()[rows], splits["train"], image_pca, "image")
    meta |= {"pairing": PAIRING + ("" if not reused else f"; drawn with replacement in {reused} (too few images)"),
             "pairing_seed": seed, "mnist_rows": rows.tolist(), **info}
    return MultimodalDataset({"audio": x, "image": img}, None, y, splits, FSDD_MNIST.name,
                             [str(i) for i in range(10)], FSDD_MNIST.meta() | meta)


_COMMON = dict(
    samples=3000,
    classes=10,
    splits={"train": 2430, "val": 270, "test": 300},
    split_protocol="official FSDD split: takes 0-4 test (300), takes 5-49 train; val = stratified 10% of "
                   "train by digit, seed 0; PCA whitening fitted on train only",
    external=True,
    needs=f"a local copy of FSDD's recordings/: root=<folder>, ${ENV} or shared/data/fsdd",
    locate=locate,
)
_CITE_FSDD = ("Z. Jackson et al. Free Spoken Digit Dataset (FSDD), v1.0.10, "
              "https://github.com/Jakobovski/free-spoken-digit-dataset, 2018")
_OPT_AUDIO = {
    "root": "folder with the FSDD recordings (the clone, or its recordings/ folder)",
    "frames": f"central 10 ms frames kept per utterance, even (default {FRAMES} = 0.6 s)",
    "audio_pca": f"whitened audio components (default {AUDIO_PCA}; None: raw frames x 81 log spectrogram)",
}
SPECTROGRAM = Info(
    name="fsdd-spectrogram",
    description="Free Spoken Digit Dataset: log spectrogram of the central 0.6 s, PCA-whitened to 50-d "
                "(train-fitted); 6 speakers, 10 digits",
    loader=load_fsdd_spectrogram,
    modalities={"audio": AUDIO_PCA},
    source=f"Free Spoken Digit Dataset ({URL}); not shipped, needs a local copy",
    license="CC BY-SA 4.0",
    citation=_CITE_FSDD,
    options=dict(_OPT_AUDIO),
    **_COMMON,
)
FSDD_MNIST = Info(
    name="fsdd-mnist",
    description="spoken digit (FSDD, 50-d whitened spectrogram) + MNIST-5k image of the same digit "
                "(100-d whitened); PAIRED BY CLASS, NOT BY INSTANCE",
    loader=load_fsdd_mnist,
    modalities={"audio": AUDIO_PCA, "image": IMAGE_PCA},
    source=f"Free Spoken Digit Dataset ({URL}; not shipped, needs a local copy) + MNIST-5k (shipped)",
    license="CC BY-SA 4.0 (FSDD); CC BY 4.0 (MNIST-5k, see MNIST5K_LICENSE.txt)",
    citation=_CITE_FSDD + "; Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to "
                          "document recognition. Proc. IEEE 86(11), 1998",
    options=dict(_OPT_AUDIO, seed="seed of the class-wise image draw (default 0)",
                 image_pca=f"whitened image components (default {IMAGE_PCA}; None: raw 784 pixels in [0, 1])"),
    **_COMMON,
)
