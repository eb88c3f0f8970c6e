"""Checks of a received live stream (an FLV recorded by the RTMP server, an MP4, HLS), from the stream alone:
does it decode throughout, how long are its gaps, what does its audio say, does the mouth follow the voice."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from avatar.face.controls import rms_envelope
from avatar.face.lipsync import MouthMeter, correlate


@dataclass
class ReceivedStream:
    fps: float
    video_times: np.ndarray  # seconds, per decoded frame
    opening: np.ndarray  # mouth opening per frame (MouthMeter), NaN where no face was found
    audio: np.ndarray  # float mono, from audio_start
    audio_rate: int
    audio_start: float
    audio_gaps_s: float  # missing audio between decoded audio frames
    errors: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return float(self.video_times[-1] - self.video_times[0]) + 1.0 / self.fps if len(self.video_times) else 0.0

    def video_gaps_s(self) -> float:
        """Time without frames beyond the frame interval (a late or missing frame counts its delay)."""
        steps = np.diff(self.video_times)
        late = steps[steps > 1.5 / self.fps]
        return float(np.sum(late - 1.0 / self.fps))

    def loudness(self) -> np.ndarray:
        """Audio RMS over a one-frame window centred on each video frame's time."""
        return rms_envelope(self.audio, self.audio_rate, self.video_times - self.audio_start, 1.0 / self.fps)

    def lipsync(self, max_lag: int = 5) -> tuple[float, int]:
        r, lag, _ = correlate(self.opening, self.loudness(), max_lag)
        return r, lag


def decode(path: str, *, measure_mouth: bool = True) -> ReceivedStream:
    import av

    meter = MouthMeter() if measure_mouth else None
    times, opening, chunks, errors = [], [], [], []
    audio_start, audio_rate, expected, gaps = None, 0, None, 0.0
    try:
        with av.open(path) as container:
            vstream = container.streams.video[0]
            fps = float(vstream.average_rate or vstream.guessed_rate or 25)
            resampler = av.AudioResampler(format="flt", layout="mono")
            try:
                for packet in container.demux():
                    for frame in packet.decode():
                        if isinstance(frame, av.VideoFrame):
                            times.append(float(frame.time))
                            if meter is not None:
                                opening.append(meter.measure(frame.to_ndarray(format="bgr24")))
                        elif isinstance(frame, av.AudioFrame):
                            t = float(frame.time)
                            if audio_start is None:
                                audio_start, audio_rate = t, frame.sample_rate
                            elif expected is not None and t - expected > 0.001:
                                gaps += t - expected
                            expected = t + frame.samples / frame.sample_rate
                            for out in resampler.resample(frame):
                                chunks.append(out.to_ndarray().reshape(-1))
            except av.error.FFmpegError as exc:
                errors.append(repr(exc))
    finally:
        if meter is not None:
            meter.close()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return ReceivedStream(fps=fps, video_times=np.array(times), opening=np.array(opening, dtype=np.float64),
                          audio=audio, audio_rate=audio_rate or 44100, audio_start=audio_start or 0.0,
                          audio_gaps_s=gaps, errors=errors)


def transcribe(stream: ReceivedStream) -> str:
    """What the stream's audio says, by the default recogniser (faster-whisper, config defaults)."""
    from avatar.config import ASRConfig
    from avatar.media.audio import resample_linear
    from avatar.models.loading import load_asr

    asr = load_asr(ASRConfig())
    heard = resample_linear(stream.audio.astype(np.float32), stream.audio_rate, asr.sample_rate)
    return asr.transcribe(heard).text


STOP_WORDS = {"this", "that", "with", "have", "your", "they", "them", "there", "their", "what", "will", "would",
              "about", "just", "from", "very", "also", "into", "been", "were", "when", "which", "here", "it's",
              "i'm", "you're", "we're", "does", "some", "more", "than", "then"}


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 4 and w not in STOP_WORDS}


if __name__ == "__main__":  # python -m tests.stream_check RECORDING: the figures of a received stream
    import sys

    received = decode(sys.argv[1])
    r, lag = received.lipsync()
    steps = np.diff(received.video_times)
    print(f"{received.duration_s:.1f} s, {len(received.video_times)} frames "
          f"({len(received.video_times) / received.duration_s:.3f} fps; frame interval min/max "
          f"{1000 * steps.min():.1f}/{1000 * steps.max():.1f} ms), gaps {1000 * received.video_gaps_s():.0f} ms video "
          f"+ {1000 * received.audio_gaps_s:.0f} ms audio, lip-sync r={r:.2f} at lag {lag} frames "
          f"({1000 * lag / received.fps:.0f} ms), decode errors: {received.errors or 'none'}")
