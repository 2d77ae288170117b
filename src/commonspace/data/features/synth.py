"""Offline spoken digits from the eSpeak NG speech synthesiser (library and data from ``espeakng-loader``).

:func:`synthesize_digits` speaks the words "zero".."nine" with a seeded random voice, speed, pitch and
intonation range per utterance and returns float waveforms in [-1, 1] at the requested sample rate.

eSpeak NG keeps hidden state in C statics that survive ``espeak_Terminate`` / ``espeak_Initialize`` (for
example the pitch-flutter phase in the wave generator), so an utterance's samples depend on everything the
process synthesised before it. To make the output a function of the arguments only, the library is never
loaded in the calling process: the utterances are cut into fixed chunks of :data:`CHUNK` and each chunk is
synthesised by a fresh Python process running this file as a script (numpy and ctypes only, about 0.1 s to
start), which initialises eSpeak once. The chunking does not depend on the number of parallel workers.

eSpeak NG is GPL-3.0; commonspace does not include or link it, it only loads the shared library from the
``espeakng-loader`` wheel at run time in that helper process.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["CHUNK", "DIGIT_WORDS", "ENGLISH_VOICES", "SynthesisError", "espeak_paths", "resample_many",
           "synthesize_digits"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# eSpeak "<voice>+<variant>" names: 9 English accents ("en" is British), male (m) and female (f) variants
ENGLISH_VOICES = (
    "en-us", "en-us+f2", "en", "en+f3", "en-gb-scotland+m3", "en-gb-x-rp+f4", "en-029+m2", "en-us-nyc+f1",
    "en-gb-x-gbclan+m4", "en-gb-x-gbcwmd+f5",
)
CHUNK = 500  # utterances per helper process; part of what determines the output, so fixed
LIB_ENV, DATA_ENV = "COMMONSPACE_ESPEAK_LIBRARY", "COMMONSPACE_ESPEAK_DATA"

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when the data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_EXIT_UNAVAILABLE, _EXIT_FAILED = 3, 4


class SynthesisError(RuntimeError):
    """eSpeak NG could not be loaded or failed; the message says what failed."""


def espeak_paths() -> tuple[str, str]:
    """(shared library, ``espeak-ng-data`` folder): ``$COMMONSPACE_ESPEAK_LIBRARY`` / ``$COMMONSPACE_ESPEAK_DATA``
    if set, else the copies inside the ``espeakng-loader`` wheel."""
    lib, data = os.environ.get(LIB_ENV), os.environ.get(DATA_ENV)
    if not (lib and data):
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SynthesisError(
                "eSpeak NG is not available: the Python package 'espeakng-loader' (which ships libespeak-ng and "
                f"its data) is not installed ({exc}); run `pip install espeakng-loader`, or set {LIB_ENV} and "
                f"{DATA_ENV} to a libespeak-ng shared library and its espeak-ng-data folder") from exc
        try:
            lib = lib or espeakng_loader.get_library_path()
            data = data or espeakng_loader.get_data_path()
        except Exception as exc:  # the loader raises RuntimeError when its data folder is missing
            raise SynthesisError(f"espeakng-loader is installed but broken: {exc}; reinstall it") from exc
    if not os.path.isfile(lib):
        raise SynthesisError(f"eSpeak NG library {lib} does not exist (set {LIB_ENV} or reinstall espeakng-loader)")
    if not os.path.isdir(data):
        raise SynthesisError(f"eSpeak NG data folder {data} does not exist (set {DATA_ENV} or reinstall "
                             "espeakng-loader)")
    return lib, data


def _draw(n_per_digit: int, seed: int, voices: Sequence[str], speed_range: tuple[int, int],
          pitch_range: tuple[int, int], intonation_range: tuple[int, int]) -> dict[str, list]:
    """Per-utterance settings, digit-major (all zeros, then all ones, ...), from one seeded generator."""
    rng = np.random.default_rng(seed)
    n = 10 * n_per_digit
    return {
        "word": [DIGIT_WORDS[d] for d in range(10) for _ in range(n_per_digit)],
        "voice": [voices[i] for i in rng.integers(0, len(voices), n)],
        "speed": rng.integers(speed_range[0], speed_range[1] + 1, n).tolist(),
        "pitch": rng.integers(pitch_range[0], pitch_range[1] + 1, n).tolist(),
        "range": rng.integers(intonation_range[0], intonation_range[1] + 1, n).tolist(),
        # eSpeak's own random source (noise excitation) is reseeded per utterance
        "rand_seed": rng.integers(0, 2**31 - 1, n).tolist(),
    }


def resample_many(waves: list[np.ndarray], rate: int, new_rate: int) -> list[np.ndarray]:
    """``audio.resample`` of every clip (float32), with scipy's default anti-aliasing filter designed once instead
    of per clip (the design dominated: 5000 clips 22050 -> 12500 Hz took 7 s, now about 1 s); same output up to float32
    rounding."""
    from math import gcd

    from scipy.signal import firwin, resample_poly  # kept out of the helper process's imports

    g = gcd(rate, new_rate)
    up, down = new_rate // g, rate // g
    if up == down:
        return [np.asarray(w, dtype=np.float32) for w in waves]
    max_rate = max(up, down)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))  # resample_poly's default design
    return [resample_poly(np.asarray(w, dtype=np.float32), up, down, window=h).astype(np.float32, copy=False)
            for w in waves]


def _run_chunk(lib: str, data: str, items: list[dict]) -> tuple[int, str, list[np.ndarray]]:
    """Synthesise ``items`` in a fresh helper process: (native rate, eSpeak version, int16 waveforms)."""
    request = json.dumps({"lib": lib, "data": data, "items": items}).encode()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__)], input=request, capture_output=True,
                              env=env, check=False)
    except OSError as exc:  # e.g. an embedded interpreter without a usable sys.executable
        raise SynthesisError(f"could not start the eSpeak helper process with {sys.executable!r}: {exc}") from exc
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SynthesisError(msg[-1] if msg else f"the eSpeak helper process exited with code {proc.returncode}")
    out = proc.stdout
    (hlen,) = struct.unpack("<Q", out[:8])
    head = json.loads(out[8:8 + hlen])
    samples = np.frombuffer(out[8 + hlen:], dtype="<i2")
    if samples.size != sum(head["lengths"]):
        raise SynthesisError("the eSpeak helper process returned truncated audio")
    waves = np.split(samples, np.cumsum(head["lengths"])[:-1])
    return int(head["rate"]), str(head["version"]), waves


def synthesize_digits(
    n_per_digit: int,
    seed: int = 0,
    rate: int = 8000,
    voices: Sequence[str] = ENGLISH_VOICES,
    speed_range: tuple[int, int] = (130, 210),
    pitch_range: tuple[int, int] = (25, 75),
    intonation_range: tuple[int, int] = (30, 70),
    workers: int | None = None,
) -> tuple[list[np.ndarray], int, np.ndarray, dict]:
    """``n_per_digit`` utterances of each digit word: (float32 waveforms in [-1, 1], ``rate``, int64 labels, meta).

    Rows are digit-major (label ``d`` = the word ``DIGIT_WORDS[d]``). Per utterance a voice is drawn uniformly
    from ``voices`` (eSpeak voice names, ``"<voice>+<variant>"`` allowed), and integers uniformly from
    ``speed_range`` (words per minute, eSpeak default 175), ``pitch_range`` (base pitch, 0-100, default 50) and
    ``intonation_range`` (pitch range, 0-100, default 50), all from ``seed``. eSpeak's native output (22050 Hz)
    is resampled to ``rate``. The result depends only on the arguments and the eSpeak build (see the module
    docstring); ``workers`` (default: CPU count) only changes how many helper processes run at once.
    ``meta`` holds the per-utterance settings, the native rate and the eSpeak version.
    """
    if n_per_digit < 1:
        raise ValueError(f"n_per_digit must be >= 1, got {n_per_digit}")
    if not voices:
        raise ValueError("voices must name at least one eSpeak voice")
    for what, (lo, hi), (a, b) in (("speed_range", speed_range, (80, 450)), ("pitch_range", pitch_range, (0, 100)),
                                   ("intonation_range", intonation_range, (0, 100))):
        if not a <= lo <= hi <= b:
            raise ValueError(f"{what} must satisfy {a} <= low <= high <= {b}, got {(lo, hi)}")
    lib, data = espeak_paths()
    spec = _draw(n_per_digit, seed, list(voices), speed_range, pitch_range, intonation_range)
    items = [dict(zip(spec, v, strict=True)) for v in zip(*spec.values(), strict=True)]
    chunks = [items[s:s + CHUNK] for s in range(0, len(items), CHUNK)]
    n_workers = max(1, min(len(chunks), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(n_workers) as pool:  # threads only wait on the helper processes
        results = list(pool.map(lambda c: _run_chunk(lib, data, c), chunks))
    native, version = results[0][0], results[0][1]
    raw = [w for r in results for w in r[2]]
    waves = resample_many([w.astype(np.float32) / 32768.0 for w in raw], native, rate)
    labels = np.repeat(np.arange(10, dtype=np.int64), n_per_digit)
    meta = {"engine": f"eSpeak NG {version}", "native_rate": native, "seed": seed, "voices": list(voices),
            "speed_range": list(speed_range), "pitch_range": list(pitch_range),
            "intonation_range": list(intonation_range), "chunk": CHUNK,
            **{k: v for k, v in spec.items() if k != "rand_seed"}}
    return waves, rate, labels, meta


# ----------------------------------------------------------------- helper process (run as a script)

_ENGINE: tuple[ctypes.CDLL, int] | None = None
_LOCK = threading.Lock()
_BUFFER: list[np.ndarray] = []
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@_CALLBACK_TYPE
def _collect(wav, n, _events):
    if wav and n > 0:  # the final call of an utterance has no samples
        _BUFFER.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0  # 0 = continue synthesis


def _engine(lib_path: str, data_path: str) -> tuple[ctypes.CDLL, int]:
    """Load and initialise eSpeak NG once per process (its state is global): (library, native rate)."""
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            try:
                lib = ctypes.CDLL(lib_path)
            except OSError as exc:
                raise SynthesisError(f"could not load the eSpeak NG library {lib_path}: {exc}") from exc
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_Initialize.restype = ctypes.c_int
            lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                         ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            lib.espeak_Info.argtypes = [ctypes.c_void_p]
            lib.espeak_Info.restype = ctypes.c_char_p
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise SynthesisError(f"espeak_Initialize failed (returned {rate}) with data folder {data_path}")
            lib.espeak_SetSynthCallback(_collect)
            _ENGINE = (lib, rate)
    return _ENGINE


def _speak(lib: ctypes.CDLL, item: dict) -> np.ndarray:
    if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52
        lib.espeak_ng_SetRandSeed(ctypes.c_long(int(item["rand_seed"])))
    if lib.espeak_SetVoiceByName(item["voice"].encode()) != 0:
        raise SynthesisError(f"eSpeak NG has no voice {item['voice']!r}")
    # parameters after the voice, which may reset them
    for param, value in ((_RATE, item["speed"]), (_PITCH, item["pitch"]), (_RANGE, item["range"]), (_VOLUME, 100)):
        lib.espeak_SetParameter(param, int(value), 0)
    _BUFFER.clear()
    text = item["word"].encode()
    err = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0 or lib.espeak_Synchronize() != 0:
        raise SynthesisError(f"espeak_Synth failed (error {err}) for {item}")
    return np.concatenate(_BUFFER) if _BUFFER else np.zeros(0, np.int16)


def _helper_main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    try:
        lib, rate = _engine(request["lib"], request["data"])
    except SynthesisError as exc:
        print(exc, file=sys.stderr)
        return _EXIT_UNAVAILABLE
    try:
        waves = [_speak(lib, it) for it in request["items"]]
    except SynthesisError as exc:
        print(exc, file=sys.stderr)
        return _EXIT_FAILED
    version = (lib.espeak_Info(None) or b"?").decode()
    head = json.dumps({"rate": rate, "version": version, "lengths": [int(w.size) for w in waves]}).encode()
    out = sys.stdout.buffer
    out.write(struct.pack("<Q", len(head)) + head)
    out.write(np.concatenate(waves).astype("<i2").tobytes() if waves else b"")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_helper_main())
