"""Silero VAD (v6) through onnxruntime, from the ONNX file that faster-whisper ships (no torch)."""

from __future__ import annotations

import numpy as np

from avatar.errors import ModelMissingError
from avatar.models.weights import Part, package_file

SILERO_ONNX = Part("faster-whisper==1.2.1", "faster_whisper", "assets/silero_vad_v6.onnx")
_CONTEXT = 64  # the model sees the previous frame's last 64 samples before each 512-sample frame


class SileroStream:
    def __init__(self, model: SileroVAD):
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)

    def probability(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, np.float32).reshape(-1)
        if frame.shape[0] != self._model.frame_samples:
            raise ValueError(f"Silero VAD takes {self._model.frame_samples}-sample frames, got {frame.shape[0]}")
        window = np.concatenate([self._context, frame])[None, :]
        prob, self._h, self._c = self._model.session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = frame[-_CONTEXT:].copy()
        return float(prob.reshape(-1)[0])


class SileroVAD:
    """One shared onnxruntime session; each ``SileroStream`` keeps its own recurrent state."""

    sample_rate = 16000
    frame_samples = 512

    def __init__(self, path: str | None = None):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        # A 32 ms frame takes well under a millisecond; more threads only add contention.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        model_path = path or package_file(SILERO_ONNX)
        try:
            self.session = onnxruntime.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise ModelMissingError(
                f"cannot load Silero VAD from {model_path}: {exc}. Fix: pip install --force-reinstall "
                f"{SILERO_ONNX.pip}"
            ) from None

    def new_stream(self) -> SileroStream:
        return SileroStream(self)
