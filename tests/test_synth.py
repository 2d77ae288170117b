"""eSpeak NG digit synthesis: plausible audio, distinguishable words, determinism, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commonspace.data.features import synth
from commonspace.data.features.audio import resample, utterance_mfcc


@pytest.fixture(scope="module")
def espeak():
    try:
        return synth.espeak_paths()
    except synth.SynthesisError as exc:
        pytest.skip(f"eSpeak NG not available: {exc}")


@pytest.fixture(scope="module")
def four(espeak):
    return synth.synthesize_digits(4, seed=0)


def test_audio_is_plausible_speech(four):
    waves, rate, labels, meta = four
    assert rate == 8000 and len(waves) == 40
    assert labels.tolist() == [d for d in range(10) for _ in range(4)]
    assert meta["word"][::4] == list(synth.DIGIT_WORDS) and meta["native_rate"] == 22050
    assert meta["engine"].startswith("eSpeak NG")
    assert all(len(meta[k]) == 40 for k in ("voice", "speed", "pitch", "range"))
    assert set(meta["voice"]) <= set(synth.ENGLISH_VOICES) and len(set(meta["voice"])) > 3
    assert all(130 <= s <= 210 for s in meta["speed"]) and all(25 <= p <= 75 for p in meta["pitch"])
    dur = np.array([w.size / rate for w in waves])
    assert dur.min() > 0.2 and dur.max() < 1.5, dur
    for w in waves:
        assert w.dtype == np.float32 and np.abs(w).max() <= 1.0
        assert np.abs(w).max() > 0.1 and np.sqrt(np.mean(w**2)) > 0.01  # not silent


def test_digits_are_distinguishable(four):
    waves, rate, labels, _ = four
    f = np.stack([utterance_mfcc(w, rate) for w in waves])
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    # leave-one-out 1-NN on the IMA speech vectors across random voices, speeds and pitches (chance 0.1)
    assert (labels[d.argmin(1)] == labels).mean() > 0.5


def test_deterministic_and_independent_of_workers(espeak, four, monkeypatch):
    again = synth.synthesize_digits(4, seed=0, workers=1)
    assert all(np.array_equal(a, b) for a, b in zip(four[0], again[0], strict=True))
    other = synth.synthesize_digits(4, seed=1)
    assert other[3]["voice"] != four[3]["voice"] or other[3]["speed"] != four[3]["speed"]
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(four[0], other[0], strict=True))
    # several helper processes at once give what one gives: chunks, not workers, define the output
    monkeypatch.setattr(synth, "CHUNK", 7)
    one = synth.synthesize_digits(2, seed=3, workers=1, rate=22050)[0]
    many = synth.synthesize_digits(2, seed=3, workers=3, rate=22050)[0]
    assert all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))


def test_speed_and_pitch_take_effect(espeak):
    kw = dict(voices=("en-us",), intonation_range=(0, 0), rate=22050)
    slow = synth.synthesize_digits(1, speed_range=(100, 100), pitch_range=(50, 50), **kw)[0]
    fast = synth.synthesize_digits(1, speed_range=(300, 300), pitch_range=(50, 50), **kw)[0]
    assert sum(w.size for w in slow) > 2 * sum(w.size for w in fast)

    def f0(w: np.ndarray, rate: int = 22050) -> float:
        x = w[w.size // 4: 3 * w.size // 4].astype(np.float64)
        ac = np.fft.irfft(np.abs(np.fft.rfft(x, 8 * x.size)) ** 2)
        return rate / (60 + int(np.argmax(ac[60:500])))

    low = synth.synthesize_digits(1, speed_range=(175, 175), pitch_range=(0, 0), **kw)[0][1]  # "one": voiced
    high = synth.synthesize_digits(1, speed_range=(175, 175), pitch_range=(100, 100), **kw)[0][1]
    assert f0(high) > 1.5 * f0(low)


def test_resampling_matches_audio_resample():
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-1, 1, n).astype(np.float32) for n in (5000, 9001, 17)]
    for a, b in ((22050, 8000), (22050, 12500), (22050, 22050)):
        got = synth.resample_many(waves, a, b)
        for g, w in zip(got, waves, strict=True):
            np.testing.assert_allclose(g, resample(w, a, b), atol=1e-5)


def test_errors_say_what_failed(espeak, monkeypatch, tmp_path):
    with pytest.raises(synth.SynthesisError, match="no voice 'xx-nope'"):
        synth.synthesize_digits(1, voices=("xx-nope",))
    with pytest.raises(ValueError, match="speed_range"):
        synth.synthesize_digits(1, speed_range=(50, 100))
    with pytest.raises(ValueError, match="n_per_digit"):
        synth.synthesize_digits(0)
    monkeypatch.setenv(synth.LIB_ENV, "/nonexistent/libespeak-ng.so")
    monkeypatch.setenv(synth.DATA_ENV, espeak[1])
    with pytest.raises(synth.SynthesisError, match="does not exist"):
        synth.synthesize_digits(1)
    monkeypatch.setenv(synth.LIB_ENV, str(Path(espeak[1]) / "phontab"))  # a file, but not a shared library
    with pytest.raises(synth.SynthesisError, match="could not load the eSpeak NG library"):
        synth.synthesize_digits(1)
    monkeypatch.setenv(synth.LIB_ENV, espeak[0])
    monkeypatch.setenv(synth.DATA_ENV, str(tmp_path))  # an empty folder: no voices, no phoneme tables
    with pytest.raises(synth.SynthesisError, match="espeak_Initialize failed"):
        synth.synthesize_digits(1)
