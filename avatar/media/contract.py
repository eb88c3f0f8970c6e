"""The timeline contract: what every output of a conversation implements, and what it calls back.

Audio, video frames and events share one timeline counted in samples at the output rate. The turn runner
places reply audio on it and the face renders the frame for any position on it, so lips, audio and
barge-in agree on one clock. Two outputs implement ``Timeline`` today: the browser's WebSocket
(``avatar.net.timeline.MediaTimeline``) and the livestream's encoders (``avatar.live.sink.LiveTimeline``).
A new sink (an MP4 file, a kiosk log) implements it the same way; nothing in ``conversation/`` needs to know.
``played_out`` waits, on any timeline, until its listener has heard the audio placed so far.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from avatar.events import Event


class MediaListener(Protocol):
    """Told what actually went out, on the timeline: the turn runner marks its latencies from these."""

    def audio_sent(self, turn_id: int, position: int, at: float) -> None: ...

    def frame_sent(self, position: int, at: float) -> None: ...


class VideoSource(Protocol):
    """Frames for the timeline (avatar.media.face_video.FaceVideo): rendered on demand, just before they are due."""

    fps: int

    async def render(self, position: int) -> tuple[int, bytes | None]:
        """(turn_id, JPEG) of the frame at ``position``; JPEG None: nothing to send for this frame."""


class Timeline(Protocol):
    """One output's timeline, in samples at ``rate``."""

    rate: int
    audio_end: int  # position where the last placed audio ends

    def clock(self) -> int:
        """The position the listener hears now."""

    def is_playing(self) -> bool:
        """Placed audio is still ahead of the clock."""

    def place_audio(self, turn_id: int, pcm: np.ndarray) -> int:
        """Queue ``pcm`` after the audio already placed; returns the position where it starts."""

    def flush_audio(self, turn_id: int, from_position: int) -> None:
        """Drop ``turn_id``'s audio from ``from_position`` on (a barge-in)."""

    def add_listener(self, listener: MediaListener) -> None: ...

    def attach_video(self, video: VideoSource | None) -> None: ...

    def send_event(self, event: Event) -> None: ...

    def report_playback(self, position: float) -> None:
        """The client's own playback clock, in seconds (a browser reports it; a headless sink ignores it)."""


# The least time between two looks at the clock: one that moves in steps (a stream takes 40 ms of samples at a
# time) or has stopped (a closed stream) is not asked in a busy loop.
_LEAST_WAIT_S = 0.01


async def played_out(timeline: Timeline) -> None:
    """Return when the listener has heard all the audio placed on ``timeline`` so far. A timer sleeps until the
    end that is known now and looks again: the clock may have run late (a browser's clock follows what it
    reports), and more audio may have been placed meanwhile. A flush (barge-in) only brings the end closer: the
    wait then lasts until the end known before it at most (the turn runner cancels a cut turn's wait anyway)."""
    while (left := timeline.audio_end - timeline.clock()) > 0:
        await asyncio.sleep(max(left / timeline.rate, _LEAST_WAIT_S))
