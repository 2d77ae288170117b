"""Speech features and PCA whitening on synthetic signals (no data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from sklearn.decomposition import PCA

from commonspace.data.dataset import DataError
from commonspace.data.features import (
    PCAWhitener,
    center_frames,
    frame,
    mel_filterbank,
    mfcc,
    pca,
    read_wav,
    resample,
    spectrogram,
    utterance_mfcc,
)
from commonspace.data.features.audio import LOG_EPS, cepstrum, hz_to_mel, mel_to_hz

RATE = 8000


def tone(freq: float, seconds: float = 0.5, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_read_wav_int16_and_stereo(tmp_path):
    pcm = np.array([0, 16384, -32768, 32767, -1], dtype=np.int16)
    wavfile.write(tmp_path / "a.wav", RATE, pcm)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == RATE and x.dtype == np.float32
    np.testing.assert_array_equal(x, pcm / 32768.0)
    assert x.min() >= -1.0 and x.max() < 1.0
    wavfile.write(tmp_path / "s.wav", RATE, np.stack([pcm, np.zeros_like(pcm)], 1))
    s, _ = read_wav(tmp_path / "s.wav")
    np.testing.assert_allclose(s, pcm / 65536.0)  # stereo averaged to mono


def test_resample_reduced_fraction_keeps_frequency():
    x = tone(440.0, 1.0)
    y = resample(x, 8000, 12_500)
    assert y.shape == (12_500,) and y.dtype == np.float32  # up 25 / down 16 of 8000 samples
    spec = np.abs(np.fft.rfft(y))
    assert np.argmax(spec) == 440  # 1 s at 12.5 kHz: bin k is k Hz
    assert resample(x, 8000, 8000) is x or np.array_equal(resample(x, 8000, 8000), x)


def test_frame_is_a_strided_view():
    x = np.arange(1000.0)
    f = frame(x, 160, 80)
    assert f.shape == (1 + (1000 - 160) // 80, 160)  # whole frames only, no end padding
    for i in (0, 3, f.shape[0] - 1):
        np.testing.assert_array_equal(f[i], x[i * 80:i * 80 + 160])
    assert np.shares_memory(f, x)  # no copy
    assert frame(np.zeros(100), 160, 80).shape == (0, 160)
    batch = frame(np.stack([x, -x]), 160, 80)
    assert batch.shape == (2, *f.shape)
    np.testing.assert_array_equal(batch[1], -f)


def test_spectrogram_hand_computation_and_tone_peak():
    x = tone(1000.0)
    s = spectrogram(x, RATE, log=False)
    # 20 ms = 160 samples, 10 ms hop = 80: 4000 samples -> 49 frames; 160-point FFT -> 81 bins of 50 Hz
    assert s.shape == (1 + (4000 - 160) // 80, 81)
    assert np.all(np.argmax(s, axis=1) == 20)  # 1000 Hz / 50 Hz
    n = np.arange(160)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * n / 160)  # periodic Hamming
    seg = x[5 * 80:5 * 80 + 160].astype(np.float64)
    want = np.abs(np.fft.rfft(seg * hamming)) ** 2
    np.testing.assert_allclose(s[5], want, rtol=1e-9, atol=1e-12)
    logs = spectrogram(x, RATE)
    np.testing.assert_allclose(logs, np.log(s + LOG_EPS))
    silent = spectrogram(np.zeros(800), RATE)
    np.testing.assert_allclose(silent, np.log(LOG_EPS))
    assert spectrogram(x, RATE, log=False, n_fft=256).shape[1] == 129


def test_mel_filterbank_shape_and_peaks():
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # the HTK scale's anchor point
    np.testing.assert_allclose(mel_to_hz(hz_to_mel([0.0, 300.0, 4000.0])), [0.0, 300.0, 4000.0], atol=1e-9)
    fb = mel_filterbank(26, 512, 16000)
    assert fb.shape == (26, 257) and fb.min() >= 0.0 and fb.max() <= 1.0
    assert np.all(fb.sum(1) > 0)  # no empty filter
    peaks = np.argmax(fb, axis=1)
    assert np.all(np.diff(peaks) >= 0)  # centres increase
    narrow = mel_filterbank(26, 160, 8000)  # low filters narrower than a 50 Hz bin still see a bin
    assert np.all(narrow.sum(1) > 0)
    with pytest.raises(ValueError):
        mel_filterbank(26, 160, 8000, fmax=5000)


def test_cepstrum_is_orthonormal_dct_and_drops_energy():
    flat = np.full((3, 26), -4.0)
    c = cepstrum(flat, 12, drop_energy=True)
    assert c.shape == (3, 12)
    np.testing.assert_allclose(c, 0.0, atol=1e-12)  # a flat log-mel spectrum has no shape: all c>=1 zero
    c0 = cepstrum(flat, 12, drop_energy=False)[:, 0]
    np.testing.assert_allclose(c0, -4.0 * np.sqrt(26))  # orthonormal c0 = sqrt(M) * mean
    rng = np.random.default_rng(0)
    v = rng.normal(size=26)
    m, k = 26, np.arange(26)[:, None]
    basis = np.sqrt(2.0 / m) * np.cos(np.pi * k * (2 * np.arange(m) + 1) / (2 * m))
    basis[0] /= np.sqrt(2.0)
    np.testing.assert_allclose(cepstrum(v, 12), (basis @ v)[1:13], atol=1e-12)
    with pytest.raises(ValueError):
        cepstrum(v, 26, drop_energy=True)


def test_mfcc_pipeline_by_hand_and_gain_invariance():
    rng = np.random.default_rng(1)
    x = rng.normal(scale=0.1, size=4000)
    got = mfcc(x, RATE, preemphasis=0.97)
    assert got.shape == (49, 12)
    y = np.append(x[0], x[1:] - 0.97 * x[:-1])
    n = np.arange(160)
    frames = np.stack([y[i * 80:i * 80 + 160] for i in range(49)]) * (0.54 - 0.46 * np.cos(2 * np.pi * n / 160))
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    logmel = np.log(power @ mel_filterbank(26, 160, RATE).T + LOG_EPS)
    from scipy.fft import dct

    np.testing.assert_allclose(got, dct(logmel, norm="ortho", axis=1)[:, 1:13], rtol=1e-9, atol=1e-9)
    # a gain adds a constant to every log-mel band, which only c0 sees
    np.testing.assert_allclose(mfcc(10 * x, RATE), got, atol=1e-6)
    assert not np.allclose(mfcc(x, RATE, drop_energy=False)[:, 0], mfcc(10 * x, RATE, drop_energy=False)[:, 0])


def test_center_frames_reading_and_padding():
    f = np.arange(100)[:, None] * np.ones((1, 3))
    c = center_frames(f, 29)
    assert c.shape == (58, 3)
    assert c[0, 0] == 50 - 29 and c[-1, 0] == 50 + 28  # 29 frames before the midpoint, 29 after
    c_odd = center_frames(f[:101 - 2], 29)  # 99 frames: midpoint inside frame 49, which starts the second half
    assert c_odd[29, 0] == 49
    short = center_frames(np.ones((10, 2)), 29)
    assert short.shape == (58, 2)
    assert np.all(short[:24] == 0) and np.all(short[24:34] == 1) and np.all(short[34:] == 0)
    short_odd = center_frames(np.ones((11, 2)), 29, pad_value=-7.0)
    assert np.all(short_odd[:23] == -7) and np.all(short_odd[23:34] == 1) and np.all(short_odd[34:] == -7)
    assert center_frames(np.zeros((0, 4)), 2).shape == (4, 4)


@pytest.mark.parametrize("seconds", [0.25, 1.0])
def test_ima_speech_vector_is_696(seconds):
    x = tone(700.0, seconds) + np.random.default_rng(0).normal(scale=0.01, size=int(seconds * RATE))
    v = utterance_mfcc(x, RATE)
    assert v.shape == (696,)  # 58 frames x 12 coefficients
    rows = v.reshape(58, 12)
    if seconds < 0.5:  # 0.25 s at 12.5 kHz -> 24 MFCC frames, zero-padded 17 before and after
        assert np.all(rows[:17] == 0) and np.all(rows[-17:] == 0) and np.all(rows[17:41] != 0)
    else:
        assert np.all(np.any(rows != 0, axis=1))


# ----------------------------------------------------------------- PCA whitening


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(5.0, 0.5, d)
    return rng.normal(size=(n, d)) @ np.diag(scales) @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 3.0


@pytest.mark.parametrize("n,d,dense_max", [(400, 30, 1000), (40, 120, 1000), (300, 200, 50), (150, 300, 50)])
def test_whitened_train_covariance_is_identity(n, d, dense_max, monkeypatch):
    # covariance and Gram paths, each with dense LAPACK and with Lanczos (forced by a low DENSE_MAX)
    monkeypatch.setattr(pca, "DENSE_MAX", dense_max)
    x = _data(n, d)
    w = PCAWhitener(10, eps=0.0).fit(x)
    z = w.transform(x)
    assert z.shape == (n, 10) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z.T), np.eye(10), atol=1e-4)
    ref = PCA(10, whiten=True, svd_solver="full").fit(x)
    np.testing.assert_allclose(w.variance, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(z), np.abs(ref.transform(x)), atol=1e-3)  # equal up to sign
    assert np.all(np.diff(w.variance) <= 0)
    np.testing.assert_allclose(w.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-8)


def test_whitener_fits_on_train_rows_only():
    x = _data(300, 20)
    train = np.arange(200)
    w = PCAWhitener(5).fit(x, train)
    moved = x.copy()
    moved[200:] = 1e3 * np.random.default_rng(5).normal(size=(100, 20))  # change only non-train rows
    w2 = PCAWhitener(5).fit(moved, torch.as_tensor(train))
    np.testing.assert_array_equal(w.components, w2.components)
    np.testing.assert_array_equal(w.transform(x[:200]), w2.transform(x[:200]))
    z = w.transform(x)
    np.testing.assert_allclose(np.cov(z[train].T), np.eye(5), atol=1e-4)
    assert not np.allclose(np.cov(z[200:].T), np.eye(5), atol=1e-4)  # held-out rows are not exactly white


def test_whitener_state_dict_round_trip(tmp_path):
    x = _data(100, 12)
    w = PCAWhitener(4, eps=1e-3).fit(x)
    state = w.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in state.values())
    assert state["components"].shape == (4, 12)
    w2 = PCAWhitener(1).load_state_dict(state)
    assert w2.n_components == 4 and w2.eps == 1e-3
    np.testing.assert_array_equal(w2.transform(x), w.transform(x))
    proj = (x[:3] - w.mean) @ w.components.T @ w.components + w.mean  # rank-4 projection
    np.testing.assert_allclose(w.inverse_transform(w.transform(x[:3])), proj, atol=1e-4)
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(state, str(tmp_path / "w.safetensors"))
    w3 = PCAWhitener(1).load_state_dict(safetensors.load_file(str(tmp_path / "w.safetensors")))
    np.testing.assert_array_equal(w3.transform(x), w.transform(x))


def test_whitener_errors():
    with pytest.raises(DataError, match="before fit"):
        PCAWhitener(2).transform(np.zeros((3, 4)))
    with pytest.raises(DataError, match="at most 4"):
        PCAWhitener(10).fit(np.random.default_rng(0).normal(size=(5, 8)))
    w = PCAWhitener(2).fit(_data(50, 6))
    with pytest.raises(DataError, match="fitted on 6"):
        w.transform(np.zeros((3, 5)))
    with pytest.raises(DataError, match="inconsistent"):
        PCAWhitener(2).load_state_dict({"mean": torch.zeros(3), "components": torch.zeros(2, 4),
                                        "variance": torch.ones(2)})
