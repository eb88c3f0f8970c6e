"""The headless output timeline: a session's speech and its face as one stream, paced in real time.

``LiveTimeline`` implements the contract a ``Session`` needs from its output timeline
(avatar.media.contract.Timeline, as the browser's avatar.net.timeline.MediaTimeline does). Instead of a
browser's playback clock it has its own: ``clock()`` is the next sample the stream takes. A clock thread
takes one frame's worth of samples at a time (silence where nothing was placed), renders the face at that
frame's position (``FaceVideo.image``: the resting face is not re-rendered when it looks the same) and
hands both to the outputs (avatar/live/stream.py), at exactly ``fps`` frames per second of stream time.

Pacing: frame ``i`` is taken ``ahead_s`` before its wall-clock time, so a slow frame or two cost nothing.
When the machine falls behind real time anyway (more than ``late_s``), frames repeat the last picture
instead of rendering until the clock has caught up: the stream keeps its constant frame rate and all of
its audio, and only the picture is briefly frozen (counted in ``frames_repeated``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class LiveTimeline:
    def __init__(self, *, sample_rate: int, fps: int, size: int, output: Callable[[int, np.ndarray, np.ndarray], None],
                 loop: asyncio.AbstractEventLoop, audio_lead_s: float = 0.12, ahead_s: float = 0.2,
                 late_s: float = 0.2):
        self.rate = sample_rate
        self.fps = fps
        self.size = size
        self.output = output  # (frame index, BGR image, int16 audio of that frame)
        self.loop = loop  # listeners (the turn runner) live on the event loop
        self.audio_lead = int(audio_lead_s * sample_rate)
        self.ahead_s = ahead_s
        self.late_s = late_s
        self.video = None  # avatar.media.face_video.FaceVideo
        self.audio_end = 0
        self.frames = 0
        self.frames_repeated = 0
        self.render_errors = 0
        self.closed = False
        self._position = 0  # the clock: the next sample the stream takes
        self._audio: deque[tuple[int, int, np.ndarray]] = deque()  # (turn_id, position, int16 pcm)
        self._lock = threading.Lock()
        self._listeners: list = []
        self._image = np.zeros((size, size, 3), np.uint8)
        self._thread = threading.Thread(target=self._run, name="live-clock", daemon=True)
        self.started_at: float | None = None

    # -- the contract of a session's timeline ----------------------------------------------------------
    def attach_video(self, video) -> None:
        self.video = video

    def add_listener(self, listener) -> None:
        self._listeners.append(listener)

    def send_event(self, event) -> None:
        """Events are not part of the stream (they go to logs and metrics through the bus)."""

    def report_playback(self, position: float) -> None:
        """The stream's own clock is the playback clock: nothing reports one."""

    def clock(self) -> int:
        return self._position

    def is_playing(self) -> bool:
        return self._position < self.audio_end

    def place_audio(self, turn_id: int, pcm: np.ndarray) -> int:
        with self._lock:
            position = max(self.audio_end, self._position + self.audio_lead)
            self._audio.append((turn_id, position, np.asarray(pcm, dtype=np.int16).reshape(-1)))
            self.audio_end = position + len(pcm)
        return position

    def flush_audio(self, turn_id: int, from_position: int) -> None:
        with self._lock:
            kept: deque = deque()
            for tid, position, pcm in self._audio:
                if tid == turn_id and position + len(pcm) > from_position:
                    if position >= from_position:
                        continue
                    pcm = pcm[: from_position - position]
                kept.append((tid, position, pcm))
            self._audio = kept
            self.audio_end = min(self.audio_end, max(from_position, self._position))

    def close(self) -> None:
        self.closed = True

    # -- the clock thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def _frame_position(self, index: int) -> int:
        return index * self.rate // self.fps

    def _take(self, start: int, end: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The mixed audio of [start, end) and the (turn, position) of the pieces that began in it."""
        block = np.zeros(end - start, np.int16)
        began = []
        with self._lock:
            for tid, position, pcm in self._audio:
                if position >= end:
                    break
                lo, hi = max(start, position), min(end, position + len(pcm))
                if lo < hi:
                    block[lo - start:hi - start] = pcm[lo - position:hi - position]
                if start <= position < end:
                    began.append((tid, position))
            while self._audio and self._audio[0][1] + len(self._audio[0][2]) <= end:
                self._audio.popleft()
            self._position = end
        return block, began

    def _picture(self, position: int, late: bool) -> np.ndarray:
        video = self.video
        if video is None or late:
            if late:
                self.frames_repeated += 1
            return self._image
        try:
            image = video.image(position)
        except Exception as exc:  # noqa: BLE001 - a renderer bug freezes the picture, never the stream
            self.render_errors += 1
            if self.render_errors == 1 or self.render_errors % 250 == 0:
                log.warning("live: rendering a frame failed (%d so far): %r", self.render_errors, exc)
            return self._image
        if image is not None:
            self._image = image
        return self._image

    def _run(self) -> None:
        t0 = self.started_at
        index = 0
        try:
            while not self.closed:
                start, end = self._frame_position(index), self._frame_position(index + 1)
                due = t0 + end / self.rate - self.ahead_s
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                late = time.monotonic() - (t0 + end / self.rate) > self.late_s
                audio, began = self._take(start, end)
                image = self._picture(start, late)
                self.output(index, image, audio)
                self.frames = index = index + 1
                if index % (10 * self.fps) == 0:
                    self._forget(start)
                if began or self._listeners:
                    self.loop.call_soon_threadsafe(self._tell, began, start)
        except RuntimeError as exc:  # the event loop closed under us at shutdown
            log.debug("live: clock stopped: %s", exc)
        except Exception:  # noqa: BLE001 - never a silent stuck stream
            log.exception("live: the stream clock failed")
            self.closed = True

    def _forget(self, position: int) -> None:
        """Speech that ended over 10 s ago is of no more use to the face (hours of show stay flat)."""
        animator = getattr(self.video, "animator", None)
        if animator is not None and hasattr(animator, "forget_speech_before"):
            animator.forget_speech_before(position - 10 * self.rate)

    def _tell(self, began: list[tuple[int, int]], frame_position: int) -> None:
        now = time.monotonic()
        for listener in self._listeners:
            for turn_id, position in began:
                listener.audio_sent(turn_id, position, now)
            listener.frame_sent(frame_position, now)
