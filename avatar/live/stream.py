"""Encoding the show: H.264 + AAC with PyAV to RTMP (FLV), HLS segments and/or an MP4 recording.

Every output runs on its own thread with its own encoders and a short queue, so a stalled RTMP server
never holds up the recording or the show: when its queue is full, its frames are dropped and counted.
All outputs get the same frames: frame ``i`` is at ``i / fps`` and its audio (the samples of that frame's
time) at the same place, so audio and video stay on one clock in every file.

RTMP reconnects: when writing fails (the server went away), the output closes, waits (1 s, doubling up
to 30 s) and opens a new connection, with fresh encoders (the first frame is a keyframe) and timestamps
from zero; the show goes on meanwhile. A file output that fails is logged and stops; the others go on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

AUDIO_RATE = 44100  # platforms' ingest expects 44.1 or 48 kHz AAC; the voice is resampled once per output
QUEUE_FRAMES = 50  # two seconds of frames wait for a slow output before its frames are dropped
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0


@dataclass
class StreamSettings:
    fps: int
    size: int
    sample_rate: int  # the voice's rate (TTS output)
    video_bitrate: int = 1_000_000
    audio_bitrate: int = 96_000
    keyframe_s: float = 2.0  # platforms ask for a keyframe at least every 2-4 s


class Output(threading.Thread):
    """One destination: ``kind`` "rtmp", "hls" or "mp4"."""

    def __init__(self, kind: str, target: str, settings: StreamSettings):
        super().__init__(name=f"live-{kind}", daemon=True)
        self.kind = kind
        self.target = target
        self.settings = settings
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.frames_written = 0
        self.frames_dropped = 0
        self.bytes_written = 0
        self.reconnects = 0
        self.connected = False
        self.failed: str | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (time, bytes) of the last seconds, for rates
        self._lock = threading.Lock()

    # -- fed by the show's clock --------------------------------------------------------------------
    def put(self, index: int, image: np.ndarray, audio: np.ndarray) -> None:
        if self.failed is not None:
            return
        try:
            self._queue.put_nowait((index, image, audio))
        except queue.Full:
            self.frames_dropped += 1

    def close(self) -> None:
        self._queue.put(None)

    # -- health -------------------------------------------------------------------------------------
    def rates(self, window_s: float = 5.0) -> tuple[float, float]:
        """(frames per second, bits per second) written over the last ``window_s``."""
        now = time.monotonic()
        with self._lock:
            while self._recent and now - self._recent[0][0] > window_s:
                self._recent.popleft()
            frames = len(self._recent)
            nbytes = sum(b for _, b in self._recent)
        return frames / window_s, nbytes * 8 / window_s

    # -- the writer ---------------------------------------------------------------------------------
    def _open(self):
        import av

        s = self.settings
        if self.kind == "rtmp":
            # No write timeout: PyAV installs its interrupt callback only on inputs and opens outputs with
            # avio_open (no rw_timeout). A server that vanishes without a reset blocks this thread until TCP
            # gives up; the show and the other outputs go on, and this output's frames are dropped (counted).
            container = av.open(self.target, mode="w", format="flv")
        elif self.kind == "hls":
            folder = Path(self.target)
            folder.mkdir(parents=True, exist_ok=True)
            container = av.open(str(folder / "live.m3u8"), mode="w", format="hls",
                                options={"hls_time": "2", "hls_list_size": "10", "hls_flags": "delete_segments",
                                         "hls_segment_filename": str(folder / "live%06d.ts")})
        else:
            container = av.open(self.target, mode="w", format="mp4",
                                # Fragmented: a recording cut short (a crash, a power cut) still plays.
                                options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        video = container.add_stream("libx264", rate=Fraction(s.fps, 1))
        video.width = video.height = s.size
        video.pix_fmt = "yuv420p"
        video.bit_rate = s.video_bitrate
        keyint = max(1, int(s.keyframe_s * s.fps))
        video.options = {"preset": "veryfast", "tune": "zerolatency",
                         "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
        video.codec_context.thread_count = 1
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "mono"
        audio.bit_rate = s.audio_bitrate
        return container, video, audio

    def run(self) -> None:
        delay = RECONNECT_FIRST_S
        stop = False
        while not stop:
            try:
                container, video, audio = self._open()
            except Exception as exc:  # noqa: BLE001 - a server that is not up (yet): try again
                if self.kind != "rtmp":
                    self._fail(f"cannot open {self.target}: {exc}")
                    return
                log.warning("live: cannot connect to %s (%s); retrying in %.0f s", self.target, exc, delay)
                stop = self._drop_for(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.connected = True  # until the first write fails (an RTMP connection is made at the header)
            log.info("live: %s output: %s", self.kind, self.target)
            try:
                stop = self._write(container, video, audio)
                delay = RECONNECT_FIRST_S
            except Exception as exc:  # noqa: BLE001 - the server went away, a disk filled up
                self.connected = False
                self._close_quietly(container)
                if self.kind != "rtmp":
                    self._fail(f"writing {self.target} failed: {exc}")
                    return
                self.reconnects += 1
                log.warning("live: the RTMP connection to %s failed (%s); reconnecting in %.0f s (reconnect %d)",
                            self.target, exc, delay, self.reconnects)
                stop = self._drop_for(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.connected = False
            self._close_quietly(container, flush=(video, audio))

    def _drop_for(self, seconds: float) -> bool:
        """Wait ``seconds``, dropping the frames that come meanwhile; True when the show ended."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if item is None:
                return True
            self.frames_dropped += 1

    def _write(self, container, video, audio) -> bool:
        """Encode and mux until the show ends (True) or writing fails (raises)."""
        import av

        first: int | None = None
        samples = 0
        rate = self.settings.sample_rate
        while True:
            item = self._queue.get()
            if item is None:
                return True
            index, image, pcm = item
            if first is None:
                first = index
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index - first
            nbytes = sum(self._mux(container, p) for p in video.encode(frame))
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                               format="s16", layout="mono")
            block.sample_rate = rate
            block.pts = samples
            block.time_base = Fraction(1, rate)
            samples += len(pcm)
            nbytes += sum(self._mux(container, p) for p in audio.encode(block))
            self.frames_written += 1
            with self._lock:
                self._recent.append((time.monotonic(), nbytes))

    def _mux(self, container, packet) -> int:
        container.mux(packet)
        self.bytes_written += packet.size
        return packet.size

    def _close_quietly(self, container, flush=()) -> None:
        try:
            for stream in flush:
                for packet in stream.encode(None):
                    container.mux(packet)
        except Exception as exc:  # noqa: BLE001 - closing after a failure: nothing more to save
            log.debug("live: flushing %s: %s", self.target, exc)
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("live: closing %s: %s", self.target, exc)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        log.error("live: %s output stopped: %s", self.kind, reason)


class Streamer:
    """All outputs of the show, fed one frame (image + its audio) at a time from the show's clock."""

    def __init__(self, settings: StreamSettings, *, rtmp: str | None = None, hls: str | None = None,
                 record: str | None = None):
        self.settings = settings
        self.outputs = [Output(kind, target, settings)
                        for kind, target in (("rtmp", rtmp), ("hls", hls), ("mp4", record)) if target]

    def start(self) -> None:
        for output in self.outputs:
            output.start()

    def put(self, index: int, image: np.ndarray, audio: np.ndarray) -> None:
        for output in self.outputs:
            output.put(index, image, audio)

    def close(self, timeout: float = 10.0) -> None:
        for output in self.outputs:
            output.close()
        for output in self.outputs:
            output.join(timeout)
