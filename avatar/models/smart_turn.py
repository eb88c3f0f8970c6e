"""Smart Turn v3.2 (pipecat-ai, BSD-2-Clause): an audio model that says whether a speaker has finished.

Input: Whisper log-mel features (80 x 800) of the last 8 s of the utterance at 16 kHz, left-padded with
silence; output: the probability that the turn is complete. About 40-60 ms per call on one thread of a
2-core machine. The ONNX file ships inside the ``pipecat-ai==1.14.0`` wheel, installed without its
dependencies (they conflict with mediapipe's protobuf); avatar/models/weights.py finds it and checks its sha256.
The features come from faster-whisper's own Whisper feature extractor (numpy), after the waveform
normalisation that the model was trained with.
"""

from __future__ import annotations

import threading

import numpy as np

from avatar.errors import ModelMissingError

SAMPLE_RATE = 16000
WINDOW_S = 8


class SmartTurnModel:
    """Shared by all sessions; ``probability`` is thread-safe (onnxruntime sessions allow concurrent runs)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, path=None, *, threads: int = 1):
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        from avatar.models.weights import smart_turn_onnx

        self.path = path or smart_turn_onnx()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), sess_options=opts,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise ModelMissingError(f"cannot load the end-of-turn model {self.path}: {exc}") from None
        self.features = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S)
        self._lock = threading.Lock()  # the feature extractor keeps no state, but be safe with numpy's FFT plans

    def input_features(self, audio: np.ndarray) -> np.ndarray:
        """(1, 80, 800) float32 features of the last 8 s of ``audio`` (float32, 16 kHz)."""
        n = SAMPLE_RATE * WINDOW_S
        audio = np.asarray(audio, dtype=np.float32)[-n:]
        if len(audio) < n:
            audio = np.concatenate([np.zeros(n - len(audio), np.float32), audio])
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)  # the model's waveform normalisation
        mel = self.features(audio, padding=0)[:, : n // 160]
        return mel[np.newaxis].astype(np.float32)

    def probability(self, audio: np.ndarray) -> float:
        """How likely the speaker has finished, given the utterance so far (ending in the current silence)."""
        features = self.input_features(audio)
        (out,) = self.session.run(None, {"input_features": features})
        return float(np.asarray(out).reshape(-1)[0])
