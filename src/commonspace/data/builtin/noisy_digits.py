"""Noisy image-speech digit pairs after the IMA paper's MNIST-TIDIGITS (Section 4, Appendix A.1).

For each class ``c`` with ``N`` images and ``N`` utterances the pairing builds ``N R`` pairs (image of ``c``,
synthetic speech noise), ``N R`` pairs (synthetic image noise, utterance of ``c``) and ``N (1 - R)`` clean
pairs (image of ``c``, utterance of ``c``); every pair is labelled ``c``. Images and utterances are paired by
class, not by instance. ``meta["noise_image"]`` / ``meta["noise_speech"]`` mark the noise rows, the ground
truth of the importance-detection experiment.

Builtins: ``noisy-digits`` (MNIST-5k + eSpeak NG speech, offline) and ``noisy-digits-fsdd`` (MNIST-5k + FSDD
recordings, needs a local FSDD copy). ``paper_test=True`` adds the split ``test_paper``: every test image paired
once, utterances reused within their class when there are fewer (the paper's test set pairs all of MNIST's test
images, Sec. 4 and 6.2); the other splits stay bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Collection, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from commonspace.data.builtin import fsdd
from commonspace.data.builtin._common import DatasetUnavailable, Info, carve
from commonspace.data.builtin.mnist import FRACTIONS as MNIST_FRACTIONS
from commonspace.data.builtin.mnist import mnist5k
from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.data.features import synth
from commonspace.data.features.audio import mfcc, utterance_mfcc, window_samples

__all__ = ["PAPER_TEST", "build_noisy_pairs", "cache_dir", "load_noisy_digits", "load_noisy_digits_fsdd",
           "noisy_pairing",
           "sparse_gaussian_images", "speech_features", "synthetic_speech_features", "white_noise_speech",
           "white_noise_waveforms"]

NOISE_FACTOR = 0.1  # "the amount of uncorrelated noise ... is 10%" (IMA Section 5.1)
SPARSITY, PIXEL_MEAN, PIXEL_SD = 0.8, 0.5, 0.12  # A.1.1
SPEECH_RATE, NOISE_SECONDS, NOISE_SD = 12_500, 1.0, 1.0  # A.1.2
SYNTH_SEED = 0
SPEECH_PER_DIGIT = 500
CACHE_FORMAT = 1
#: split added by ``paper_test=True``: every test image paired once, utterances reused within class
PAPER_TEST = "test_paper"
PAIRING = ("paired by class, not by instance: an image and an utterance share only the digit label (IMA "
           "MNIST-TIDIGITS protocol); per class and split N*R (image, speech noise), N*R (image noise, speech) and "
           "N*(1-R) clean pairs, every pair labelled with the digit; meta['noise_image'] / meta['noise_speech'] "
           "mark the synthetic-noise rows")

NoiseFn = Callable[[int, np.random.Generator], np.ndarray]


# ----------------------------------------------------------------- noise (IMA Appendix A.1)


def sparse_gaussian_images(n: int, rng: np.random.Generator, sparsity: float = SPARSITY, mean: float = PIXEL_MEAN,
                           sd: float = PIXEL_SD, dim: int = 784) -> np.ndarray:
    """(n, dim) float32 noise images (A.1.1): white Gaussian pixels N(mean, sd), then exactly
    ``round(sparsity * dim)`` pixels per image, chosen uniformly, set to zero; negative pixels set to zero.

    The paper notes that mean 0.5 and sd 0.12 keep "almost all" pixels in [0, 1]; the few above 1
    (probability 1.6e-5 per pixel) are clipped to 1 here so the images stay valid cross-entropy targets.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    x = rng.normal(mean, sd, (n, dim))
    k = int(round(sparsity * dim))
    if k > 0 and n > 0:
        # the k smallest of i.i.d. uniform keys are a uniform random k-subset of each row
        zero = np.argpartition(rng.random((n, dim)), k - 1, axis=1)[:, :k]
        np.put_along_axis(x, zero, 0.0, axis=1)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def white_noise_waveforms(n: int, rng: np.random.Generator, rate: int = SPEECH_RATE, seconds: float = NOISE_SECONDS,
                          sd: float = NOISE_SD) -> np.ndarray:
    """(n, round(rate * seconds)) float32 white Gaussian noise, mean 0, sd ``sd`` (A.1.2: 1 s at 12.5 kHz, sd 1)."""
    return rng.normal(0.0, sd, (n, int(round(rate * seconds)))).astype(np.float32)


def white_noise_speech(n: int, rng: np.random.Generator, rate: int = SPEECH_RATE, seconds: float = NOISE_SECONDS,
                       sd: float = NOISE_SD) -> np.ndarray:
    """(n, 696) speech-noise features (A.1.2): :func:`white_noise_waveforms` through the same MFCC pipeline as the
    utterances (equal to ``utterance_mfcc(w, rate)`` per clip, computed as one batch)."""
    w = white_noise_waveforms(n, rng, rate, seconds, sd)
    if n == 0:
        return np.zeros((0, 696), np.float32)
    win, hop = window_samples(SPEECH_RATE, 20.0), window_samples(SPEECH_RATE, 10.0)
    frames = 1 + (w.shape[1] - win) // hop if w.shape[1] >= win else 0
    start = (frames - 58) // 2  # center_frames' first frame
    if rate != SPEECH_RATE or start < 1:  # general path: resampling, or a clip too short for 58 frames
        return speech_features(list(w), rate)
    # equal-length clips in one batch, cut to the samples of the 58 central frames first (pre-emphasis done
    # here on the full clip so the cut's first sample sees its real predecessor): same numbers, 40% less work
    a, b = start * hop, start * hop + 57 * hop + win
    x = w.astype(np.float64)
    cut = x[:, a:b] - 0.97 * x[:, a - 1:b - 1]
    return mfcc(cut, rate, preemphasis=None).reshape(n, -1).astype(np.float32)


def speech_features(waves: list[np.ndarray], rate: int) -> np.ndarray:
    """(N, 696) float32 IMA speech vectors: ``utterance_mfcc`` (12.5 kHz, 20/10 ms, 12 MFCCs, 58 central frames)
    per clip, resampling all clips with one filter design (``synth.resample_many``)."""
    clips = synth.resample_many(waves, rate, SPEECH_RATE)
    return np.stack([utterance_mfcc(w, SPEECH_RATE, new_rate=None) for w in clips]).astype(np.float32)


# ----------------------------------------------------------------- pairing (IMA Section 4)


def _split_rows(n: int, splits: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return {"all": np.arange(n)} if splits is None else {s: np.asarray(r, dtype=np.int64) for s, r in splits.items()}


def _reused(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``pool``, each item used ``n // len(pool)`` or one more time (which ones get the extra
    use is drawn at random), in random order; ``n <= len(pool)`` is a draw without replacement."""
    reps, extra = divmod(n, pool.size)
    return rng.permutation(np.concatenate([np.tile(pool, reps), rng.choice(pool, extra, replace=False)]))


def noisy_pairing(image_labels: np.ndarray, speech_labels: np.ndarray, n_per_class: int | None, R: float,
                  rng: np.random.Generator, image_pool: np.ndarray | None = None,
                  speech_pool: np.ndarray | None = None,
                  reuse_speech: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of one pool of pairs: (image_rows, speech_rows, labels), -1 where that side is noise.

    Per class ``c``: ``N`` = ``n_per_class`` (None: the smaller of the class's image and utterance counts in the
    pools) images and utterances drawn without replacement; ``k = N R`` (rounded half up) images get speech noise,
    ``k`` utterances get image noise, and the other ``N - k`` images and utterances are paired at random.
    ``reuse_speech``: ``N`` may exceed the class's utterances (None: every image of the class), which are then
    reused within the class as evenly as possible (each ``N // n`` or ``N // n + 1`` times); images are still
    drawn without replacement. Rows come out shuffled (not sorted by class).
    """
    if not 0.0 <= R <= 1.0:
        raise DataError(f"noise factor R must be in [0, 1], got {R}")
    image_labels, speech_labels = np.asarray(image_labels), np.asarray(speech_labels)
    ipool = np.arange(image_labels.size) if image_pool is None else np.asarray(image_pool, dtype=np.int64)
    spool = np.arange(speech_labels.size) if speech_pool is None else np.asarray(speech_pool, dtype=np.int64)
    img, sp, lab = [], [], []
    for c in np.union1d(image_labels[ipool], speech_labels[spool]):
        ic, sc = ipool[image_labels[ipool] == c], spool[speech_labels[spool] == c]
        most = (ic.size if sc.size else 0) if reuse_speech else min(ic.size, sc.size)
        n = most if n_per_class is None else int(n_per_class)
        if n > most:
            what = "images (utterances reused)" if reuse_speech else "images and utterances"
            raise DataError(f"class {c}: n_per_class={n} but only {ic.size} images and {sc.size} utterances are "
                            f"available; at most {most} {what}: lower n_per_class or pass None (use all)")
        if n == 0:
            continue
        k = int(np.floor(n * R + 0.5))  # N*R rounded half up (Python's round would take 2.5 to 2)
        ii = rng.choice(ic, n, replace=False)
        ss = _reused(sc, n, rng) if reuse_speech else rng.choice(sc, n, replace=False)
        none = np.full(k, -1, dtype=np.int64)
        # (image, speech noise), (image noise, speech), clean pairs
        img.append(np.concatenate([ii[:k], none, ii[k:]]))
        sp.append(np.concatenate([none, ss[:k], ss[k:]]))
        lab.append(np.full(n + k, c, dtype=np.int64))
    if not img:
        raise DataError("no class has both images and utterances in this pool")
    order = rng.permutation(sum(a.size for a in lab))
    return np.concatenate(img)[order], np.concatenate(sp)[order], np.concatenate(lab)[order]


def build_noisy_pairs(
    images: np.ndarray,
    image_labels: np.ndarray,
    speech: np.ndarray,
    speech_labels: np.ndarray,
    n_per_class: int | Mapping[str, int | None] | None = None,
    R: float = NOISE_FACTOR,
    seed: int = 0,
    image_noise_fn: NoiseFn = sparse_gaussian_images,
    speech_noise_fn: NoiseFn = white_noise_speech,
    image_splits: Mapping[str, np.ndarray] | None = None,
    speech_splits: Mapping[str, np.ndarray] | None = None,
    name: str = "noisy-pairs",
    class_names: list[str] | None = None,
    meta: dict | None = None,
    reuse_speech: bool | Collection[str] = False,
) -> MultimodalDataset:
    """The IMA noisy pairing of image features and speech features as a dataset with modalities ``image``
    and ``speech``; labels = the class of the real side of every pair.

    ``image_splits`` / ``speech_splits`` (same names in both) keep splits apart: pairs of split ``s`` use only
    images of ``image_splits[s]`` and utterances of ``speech_splits[s]``, and become split ``s`` of the result
    (rows ordered split by split). Without them everything is one pool and the result has no splits.
    ``n_per_class``: ``N`` per class, one int for all splits, a mapping split -> int, or None (all available,
    limited by the scarcer modality). ``image_noise_fn(n, rng)`` / ``speech_noise_fn(n, rng)`` return ``n`` noise
    feature rows of the image / speech width (defaults: A.1.1 sparse Gaussian images, A.1.2 white-noise MFCCs).
    ``seed`` drives the draw, the pairing and the noise (separate streams, so a different noise function leaves
    the pairing unchanged). ``reuse_speech``: True, or the names of the splits (``"all"`` without splits), whose
    pairs reuse utterances within class (:func:`noisy_pairing`; ``N`` defaults to every image there). Those
    splits come last in row order and draw their pairing and noise from their own streams, so adding one leaves
    every other split bit-identical. ``meta`` gets: the pairing statement, ``R``, ``N`` per split and class, the
    reuse splits, and numpy arrays aligned with rows: ``noise_image`` / ``noise_speech`` (bool) and
    ``image_rows`` / ``speech_rows`` (source row, -1 for noise).
    """
    images, speech = np.asarray(images, dtype=np.float32), np.asarray(speech, dtype=np.float32)
    image_labels, speech_labels = np.asarray(image_labels, dtype=np.int64), np.asarray(speech_labels, dtype=np.int64)
    if images.shape[0] != image_labels.size or speech.shape[0] != speech_labels.size:
        raise DataError(f"{images.shape[0]} images with {image_labels.size} labels / {speech.shape[0]} utterances "
                        f"with {speech_labels.size} labels: one label per row")
    if (image_splits is None) != (speech_splits is None):
        raise DataError("pass both image_splits and speech_splits, or neither")
    ipools, spools = _split_rows(images.shape[0], image_splits), _split_rows(speech.shape[0], speech_splits)
    if set(ipools) != set(spools):
        raise DataError(f"image_splits {sorted(ipools)} and speech_splits {sorted(spools)} must name the same splits")
    reuse = set(ipools) if reuse_speech is True else set() if reuse_speech is False else set(reuse_speech)
    if not reuse <= set(ipools):
        raise DataError(f"reuse_speech names {sorted(reuse - set(ipools))}, not splits here ({sorted(ipools)})")
    # streams 0-2: pairing, image noise, speech noise of the ordinary splits (as before reuse existed);
    # 3-5: the same for the reuse splits, so adding one changes nothing else
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    rows_i, rows_s, labels, splits, n_used = [], [], [], {}, {}
    start = 0
    for s in [s for s in ipools if s not in reuse] + [s for s in ipools if s in reuse]:
        n = n_per_class.get(s) if isinstance(n_per_class, Mapping) else n_per_class
        ii, ss, yy = noisy_pairing(image_labels, speech_labels, n, R, rngs[3 if s in reuse else 0], ipools[s],
                                   spools[s], reuse_speech=s in reuse)
        rows_i.append(ii)
        rows_s.append(ss)
        labels.append(yy)
        splits[s] = np.arange(start, start + yy.size)
        start += yy.size
        n_used[s] = {int(c): int(((yy == c) & (ii >= 0)).sum()) for c in np.unique(yy)}
    img_rows, sp_rows, y = np.concatenate(rows_i), np.concatenate(rows_s), np.concatenate(labels)
    noise_i, noise_s = img_rows < 0, sp_rows < 0
    in_reuse = np.zeros(y.size, bool)
    for s in reuse:
        in_reuse[splits[s]] = True
    x_img = np.empty((y.size, images.shape[1]), np.float32)
    x_sp = np.empty((y.size, speech.shape[1]), np.float32)
    x_img[~noise_i] = images[img_rows[~noise_i]]
    x_sp[~noise_s] = speech[sp_rows[~noise_s]]
    for what, x, noise, fn, j in (("image", x_img, noise_i, image_noise_fn, 1),
                                  ("speech", x_sp, noise_s, speech_noise_fn, 2)):
        for rows, rng in ((noise & ~in_reuse, rngs[j]), (noise & in_reuse, rngs[j + 3])):
            z = np.asarray(fn(int(rows.sum()), rng), dtype=np.float32)
            if z.shape != (int(rows.sum()), x.shape[1]):
                raise DataError(f"{what}_noise_fn returned shape {z.shape}; expected ({int(rows.sum())}, "
                                f"{x.shape[1]})")
            x[rows] = z
    info = {"pairing": PAIRING, "R": float(R), "pairing_seed": int(seed), "n_per_class": n_used,
            "reuse_speech": sorted(reuse), "noise_image": noise_i, "noise_speech": noise_s, "image_rows": img_rows,
            "speech_rows": sp_rows}
    return MultimodalDataset({"image": x_img, "speech": x_sp}, None, y, {} if image_splits is None else splits,
                             name, class_names, dict(meta or {}) | info)


# ----------------------------------------------------------------- synthetic speech cache


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/commonspace`` (an absolute XDG_CACHE_HOME only, per the XDG spec), else
    ``~/.cache/commonspace``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "commonspace"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    from commonspace.data.io import atomic_write, write_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: write_npz(fh, arrays, compress=False))


def synthetic_speech_features(n_per_digit: int = SPEECH_PER_DIGIT, seed: int = SYNTH_SEED,
                              cache: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (10 n, 696) float32, digit labels, meta) of eSpeak NG digit words synthesised at 12.5 kHz
    (``synthesize_digits`` defaults, digit-major rows). Cached in :func:`cache_dir` keyed by every setting
    and the espeakng-loader version; ``cache=False`` recomputes and writes nothing."""
    try:
        loader = version("espeakng-loader")
    except PackageNotFoundError:
        loader = "none"
    key = {"format": CACHE_FORMAT, "n_per_digit": n_per_digit, "seed": seed, "rate": SPEECH_RATE,
           "synth_defaults": repr(synth.synthesize_digits.__defaults__), "chunk": synth.CHUNK, "loader": loader,
           "features": "utterance_mfcc(rate=12500, 20/10 ms, 12 MFCC w/o c0, 26 mels, preemphasis 0.97, half=29)"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"noisy-digits-speech-{digest}.npz"
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                x, y, meta = z["x"], z["y"], json.loads(str(z["meta"]))
            if x.shape == (10 * n_per_digit, 696) and y.shape == (10 * n_per_digit,):
                return x, y, meta | {"cache": str(path)}
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: synthesise again and overwrite
    try:
        waves, rate, y, smeta = synth.synthesize_digits(n_per_digit, seed, rate=SPEECH_RATE)
    except synth.SynthesisError as exc:
        raise DatasetUnavailable(f"noisy-digits needs the eSpeak NG speech synthesiser: {exc}") from exc
    x = speech_features(waves, rate)
    durations = np.array([w.size / rate for w in waves])
    meta = smeta | {"durations_s": [round(float(d), 4) for d in durations]}
    if cache:
        try:
            _atomic_savez(path, x=x, y=y, meta=np.array(json.dumps(meta)))
            meta = meta | {"cache": str(path)}
        except OSError as exc:
            warnings.warn(f"could not cache the synthesised speech at {path}: {exc}", stacklevel=2)
    return x, y, meta


# ----------------------------------------------------------------- builtins


def _mnist() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    mn = mnist5k()
    return mn.features["image"].numpy(), mn.labels.numpy(), {s: mn.split(s).numpy() for s in ("train", "val", "test")}


def _with_paper_test(isplits: dict[str, np.ndarray], ssplits: dict[str, np.ndarray],
                     paper_test: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], set[str]]:
    """The splits plus, when ``paper_test``, :data:`PAPER_TEST` over the test images and test utterances."""
    if not paper_test:
        return isplits, ssplits, set()
    return ({**isplits, PAPER_TEST: isplits["test"]}, {**ssplits, PAPER_TEST: ssplits["test"]}, {PAPER_TEST})


def load_noisy_digits(seed: int = 0, R: float = NOISE_FACTOR, n_per_class: int | Mapping[str, int | None] | None = None,
                      cache: bool = True, speech_per_digit: int = SPEECH_PER_DIGIT,
                      paper_test: bool = False) -> MultimodalDataset:
    """MNIST-5k ``image`` (784 pixels in [0, 1]) + eSpeak NG ``speech`` (696 raw MFCC values), IMA noisy pairing.

    ``speech_per_digit`` synthesised utterances per digit (default 500, as many as MNIST-5k's images; fixed
    synthesis seed, cached) are split 60/10/30 like MNIST-5k's images; split ``s`` pairs only images and
    utterances of split ``s``. ``seed`` drives pairing and noise; ``n_per_class`` = N per class and split (one
    int or a split -> int mapping; None: all available, 300 / 50 / 150 with the default speech pool).
    ``paper_test`` adds the split ``test_paper``: every test image (150 per class; ``n_per_class`` may cap it)
    paired once with a test utterance of its digit, reused within class when there are fewer.
    """
    img, iy, isplits = _mnist()
    sp, sy, smeta = synthetic_speech_features(speech_per_digit, cache=cache)
    isplits, ssplits, reuse = _with_paper_test(isplits, carve(sy, MNIST_FRACTIONS), paper_test)
    meta = NOISY.meta() | {"speech_source": smeta.get("engine", "eSpeak NG"), "speech_synthesis": {
        k: smeta.get(k) for k in ("seed", "voices", "speed_range", "pitch_range", "intonation_range", "native_rate")},
        "speech_per_digit": speech_per_digit, "speech_cache": smeta.get("cache"), "speech_rate": SPEECH_RATE,
        "speech_features": _SPEECH_DOC, "image_features": "pixel / 255"}
    return build_noisy_pairs(img, iy, sp, sy, n_per_class, R, seed, image_splits=isplits, speech_splits=ssplits,
                             name=NOISY.name, class_names=[str(i) for i in range(10)], meta=meta, reuse_speech=reuse)


def load_noisy_digits_fsdd(root: str | os.PathLike | None = None, seed: int = 0, R: float = NOISE_FACTOR,
                           n_per_class: int | Mapping[str, int | None] | None = None,
                           paper_test: bool = False) -> MultimodalDataset:
    """MNIST-5k ``image`` + FSDD recordings as ``speech`` (696 raw MFCC values), IMA noisy pairing.

    FSDD's official split (takes 0-4 test; val = 10% of train) meets MNIST-5k's split of the same name, so
    test pairs hold only test images and test recordings. None for ``n_per_class``: 243 / 27 / 30 per class.
    ``paper_test`` adds the split ``test_paper``: all 150 test images per class, each paired once with one of
    the class's 30 test recordings (each recording used 5 times) -> 165 pairs per class.
    """
    waves, rate, sy, speakers, takes, paths = fsdd.load_fsdd_waveforms(root)
    img, iy, isplits = _mnist()
    isplits, ssplits, reuse = _with_paper_test(isplits, fsdd.fsdd_splits(sy, takes), paper_test)
    meta = NOISY_FSDD.meta() | {"path": str(paths[0].parent), "speech_rate": SPEECH_RATE,
                                "speech_features": _SPEECH_DOC, "image_features": "pixel / 255"}
    return build_noisy_pairs(img, iy, speech_features(waves, rate), sy, n_per_class, R, seed, image_splits=isplits,
                             speech_splits=ssplits, name=NOISY_FSDD.name, class_names=[str(i) for i in range(10)],
                             meta=meta, reuse_speech=reuse)


def _espeak_found() -> Path | None:
    try:
        return Path(synth.espeak_paths()[0])
    except synth.SynthesisError:
        return None


_SPEECH_DOC = ("IMA A.1.2: resample to 12.5 kHz, MFCC (20 ms Hamming, 10 ms hop, 26 mels, 12 coefficients "
               "without c0), the 58 frames around the midpoint, flattened (696); raw values, standardise on train")
_CITE_IMA = ("IMA: Importance-based Multimodal Autoencoder (Sections 4 and A.1: MNIST-TIDIGITS noisy pairing); "
             "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to document recognition. "
             "Proc. IEEE 86(11), 1998")
_OPTS = {"seed": "seed of the pairing and of the synthetic noise (default 0)",
         "R": f"noise factor R in [0, 1] (default {NOISE_FACTOR})",
         "n_per_class": "N images and N utterances per class and split, or a split -> N mapping (default None: "
                        "all available)",
         "paper_test": "add the split 'test_paper': every test image paired once, utterances reused within class "
                       "(the paper's test-set scale; default False)"}
NOISY = Info(
    name="noisy-digits",
    description="MNIST-5k image + eSpeak-synthesised spoken digit (696-d MFCC) with IMA synthetic noise pairs "
                "(R = 0.1); PAIRED BY CLASS, NOT BY INSTANCE",
    loader=load_noisy_digits,
    samples=5500,
    modalities={"image": 784, "speech": 696},
    classes=10,
    splits={"train": 3300, "val": 550, "test": 1650},
    split_protocol="MNIST-5k's stratified 60/10/30 image split and the same split of the 5000 utterances; "
                   "per class and split N (300 / 50 / 150) images and utterances -> N(1+R) pairs",
    source="MNIST-5k (shipped) + digit words synthesised offline with eSpeak NG (espeakng-loader wheel) + "
           "synthetic noise (IMA A.1.1, A.1.2)",
    license="CC BY 4.0 (MNIST-5k, see MNIST5K_LICENSE.txt); the synthesised audio is generated locally with "
            "eSpeak NG (GPL-3.0 program, loaded at run time only, not shipped)",
    citation=_CITE_IMA,
    needs="eSpeak NG from the espeakng-loader dependency (first load synthesises and caches ~10 s)",
    locate=_espeak_found,
    options=_OPTS | {"cache": "reuse / write the synthesised speech features in ~/.cache/commonspace (default True)",
                     "speech_per_digit": f"utterances synthesised per digit (default {SPEECH_PER_DIGIT})"},
)
NOISY_FSDD = Info(
    name="noisy-digits-fsdd",
    description="MNIST-5k image + FSDD spoken digit (696-d MFCC) with IMA synthetic noise pairs (R = 0.1); "
                "PAIRED BY CLASS, NOT BY INSTANCE",
    loader=load_noisy_digits_fsdd,
    samples=3300,
    modalities={"image": 784, "speech": 696},
    classes=10,
    splits={"train": 2670, "val": 300, "test": 330},
    split_protocol="official FSDD split (takes 0-4 test, val = stratified 10% of train) meets MNIST-5k's split "
                   "of the same name; N per class = 243 / 27 / 30 -> N(1+R) pairs",
    source="MNIST-5k (shipped) + Free Spoken Digit Dataset (https://github.com/Jakobovski/free-spoken-digit-dataset;"
           " not shipped, needs a local copy) + synthetic noise (IMA A.1.1, A.1.2)",
    license="CC BY-SA 4.0 (FSDD); CC BY 4.0 (MNIST-5k, see MNIST5K_LICENSE.txt)",
    citation=_CITE_IMA + "; Z. Jackson et al. Free Spoken Digit Dataset (FSDD), v1.0.10, 2018",
    external=True,
    needs="a local copy of FSDD's recordings/: root=<folder>, $COMMONSPACE_FSDD or shared/data/fsdd",
    locate=fsdd.locate,
    options=_OPTS | {"root": "folder with the FSDD recordings (the clone, or its recordings/ folder)"},
)
