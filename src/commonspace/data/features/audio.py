"""Speech features with numpy/scipy only: framing, (log) power spectrogram, mel filterbank, MFCC.

Framing uses strided views (no per-frame Python loop). Frames start at ``i * hop`` and only whole
frames are kept (no padding at the end), so a clip of ``L`` samples gives ``1 + (L - win) // hop`` frames,
or none when ``L < win``. Window and hop lengths in samples are ``round(rate * ms / 1000)``.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dct, rfft
from scipy.io import wavfile
from scipy.signal import get_window, resample_poly

__all__ = [
    "LOG_EPS",
    "center_frames",
    "cepstrum",
    "frame",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
    "power_spectrum",
    "read_wav",
    "resample",
    "spectrogram",
    "utterance_mfcc",
    "window_samples",
]

# added to the power before the log: silence maps to log(1e-10) ~ -23 instead of -inf; far below the
# quantisation noise of 16-bit audio scaled to [-1, 1] (~1e-9 per sample)
LOG_EPS = 1e-10


def read_wav(path: str | os.PathLike | Path) -> tuple[np.ndarray, int]:
    """(float32 samples in [-1, 1], sample rate). Integer PCM is scaled by its full range; stereo is
    averaged to mono; float files are returned as stored."""
    rate, x = wavfile.read(str(path))
    if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred at 128
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    else:
        x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x, int(rate)


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis by the reduced fraction ``new_rate / rate``
    (8000 -> 12500 Hz is up 25, down 16)."""
    if rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {rate} -> {new_rate}")
    g = gcd(int(rate), int(new_rate))
    up, down = int(new_rate) // g, int(rate) // g
    if up == down:
        return np.asarray(x)
    return resample_poly(x, up, down, axis=-1).astype(np.asarray(x).dtype, copy=False)


def frame(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Overlapping frames of the last axis as a read-only strided view: (..., n_frames, win)."""
    x = np.asarray(x)
    if win < 1 or hop < 1:
        raise ValueError(f"win and hop must be >= 1, got win={win}, hop={hop}")
    if x.shape[-1] < win:
        return np.zeros((*x.shape[:-1], 0, win), dtype=x.dtype)
    return sliding_window_view(x, win, axis=-1)[..., ::hop, :]


def window_samples(rate: int, ms: float) -> int:
    """Milliseconds to a whole number of samples (at least 1): ``round(rate * ms / 1000)``."""
    return max(1, int(round(rate * ms / 1000.0)))


def spectrogram(
    x: np.ndarray,
    rate: int,
    win_ms: float = 20.0,
    hop_ms: float = 10.0,
    window: str = "hamming",
    log: bool = True,
    n_fft: int | None = None,
) -> np.ndarray:
    """Short-time power spectrum (..., frames, n_fft // 2 + 1).

    Each frame is multiplied by the (periodic) window and transformed with a real FFT of ``n_fft`` points
    (default: the window length, 160 at 8 kHz, so bin ``k`` is ``k * rate / n_fft`` Hz). ``log=False``
    returns the power ``|X_k|^2``; ``log=True`` returns ``ln(|X_k|^2 + LOG_EPS)`` (log power, i.e. twice
    the log magnitude). Works on a batch of equal-length clips (leading axes).
    """
    frames = frame(np.asarray(x, dtype=np.float64), window_samples(rate, win_ms), window_samples(rate, hop_ms))
    power = power_spectrum(frames, window, n_fft)
    return np.log(power + LOG_EPS) if log else power


def power_spectrum(frames: np.ndarray, window: str = "hamming", n_fft: int | None = None) -> np.ndarray:
    """``|rfft(window * frame, n_fft)|^2`` over the last axis of already-cut frames (..., win):
    (..., n_fft // 2 + 1). The window is scipy's periodic (DFT-even) form; an all-zero frame gives 0."""
    w = frames.shape[-1]
    n = w if n_fft is None else int(n_fft)
    if n < w:
        raise ValueError(f"n_fft={n} is shorter than the {w}-sample window")
    spec = rfft(np.asarray(frames, dtype=np.float64) * get_window(window, w, fftbins=True), n=n, axis=-1)
    return spec.real ** 2 + spec.imag ** 2


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, rate: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters with peak 1, centres equally spaced on the HTK mel scale
    between ``fmin`` and ``fmax`` (default rate / 2). Weights are evaluated at each FFT bin's frequency
    (not snapped to bins), so no filter is empty even when filters are narrower than a bin."""
    fmax = rate / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= rate/2, got fmin={fmin}, fmax={fmax}, rate={rate}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def cepstrum(log_mel: np.ndarray, n_mfcc: int = 12, drop_energy: bool = True) -> np.ndarray:
    """Orthonormal DCT-II over the last axis of log mel energies; keeps ``n_mfcc`` coefficients.

    ``drop_energy=True`` drops c0 (proportional to the mean log energy) and returns c1..c_n_mfcc.
    A constant log-mel vector gives zeros for every c >= 1.
    """
    c = dct(log_mel, type=2, norm="ortho", axis=-1)
    first = 1 if drop_energy else 0
    if first + n_mfcc > c.shape[-1]:
        raise ValueError(f"{n_mfcc} coefficients{' after c0' if drop_energy else ''} need more than "
                         f"{c.shape[-1]} mel bands")
    return c[..., first:first + n_mfcc]


def mfcc(
    x: np.ndarray,
    rate: int,
    win_ms: float = 20.0,
    hop_ms: float = 10.0,
    n_mfcc: int = 12,
    n_mels: int = 26,
    drop_energy: bool = True,
    preemphasis: float | None = 0.97,
    n_fft: int | None = None,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """MFCCs (..., frames, n_mfcc): pre-emphasis ``y[t] = x[t] - a x[t-1]`` (None: off), Hamming window,
    power spectrum, mel filterbank, ``ln(. + LOG_EPS)``, orthonormal DCT-II, c0 dropped when
    ``drop_energy`` (the IMA setting: 12 coefficients without the energy term)."""
    x = np.asarray(x, dtype=np.float64)
    if preemphasis:
        x = np.concatenate([x[..., :1], x[..., 1:] - preemphasis * x[..., :-1]], axis=-1)
    n = window_samples(rate, win_ms) if n_fft is None else int(n_fft)
    power = spectrogram(x, rate, win_ms, hop_ms, "hamming", log=False, n_fft=n)
    fb = mel_filterbank(n_mels, n, rate, fmin, fmax)
    return cepstrum(np.log(power @ fb.T + LOG_EPS), n_mfcc, drop_energy)


def center_frames(feats: np.ndarray, half: int = 29, pad_value: float = 0.0) -> np.ndarray:
    """The ``2 * half`` frames around the utterance midpoint: (2 * half, d).

    "``half`` frames either side of the midpoint" is read as: the midpoint is a point in time, ``half``
    frames lie before it and ``half`` after, so there is no separate middle frame and ``half=29`` gives
    58 frames (58 x 12 = 696 for the IMA speech features). With ``n`` frames the window starts at
    ``(n - 2 half) // 2``; for odd ``n`` the frame containing the midpoint counts as the first one after.
    Clips shorter than ``2 * half`` frames are padded symmetrically with ``pad_value`` (the odd extra
    frame at the end). For MFCCs without c0 the default 0 is what silence gives (a flat log-mel spectrum
    has zero cepstrum beyond c0); for a log spectrogram pass ``pad_value=log(LOG_EPS)``.
    """
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"expected (frames, dims) features, got shape {feats.shape}")
    if half < 1:
        raise ValueError(f"half must be >= 1, got {half}")
    k, n = 2 * half, feats.shape[0]
    if n >= k:
        s = (n - k) // 2
        return feats[s:s + k]
    before = (k - n) // 2
    return np.pad(feats, ((before, k - n - before), (0, 0)), constant_values=pad_value)


def utterance_mfcc(x: np.ndarray, rate: int, new_rate: int | None = 12_500, half: int = 29, **mfcc_kw) -> np.ndarray:
    """One fixed-size vector per utterance, the IMA (A.1.2) speech setting by default: resample to
    12.5 kHz, MFCC (20 ms / 10 ms, 12 coefficients without energy), the 58 frames around the midpoint
    (zero-padded), flattened frame by frame: (2 * half * n_mfcc,) = (696,)."""
    if new_rate is not None and new_rate != rate:
        x, rate = resample(np.asarray(x, dtype=np.float64), rate, new_rate), new_rate
    return center_frames(mfcc(x, rate, **mfcc_kw), half).reshape(-1)
