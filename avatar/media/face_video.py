"""The face as a video source, for any output: the browser socket, an RTMP stream, an MP4 file.

``FaceVideo`` holds one session's animator and its video policy: which frames to render, which to skip
(a resting face that looks the same as the frame on screen), and the animation-controls events for clients
that draw the face themselves. Reply speech is added on the same sample timeline as the audio, tagged
with its turn, so a frame knows which reply it shows.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from avatar.events import Event, FaceControls


class FaceVideo:
    """One session's face on the output timeline (an avatar.media.contract.VideoSource)."""

    def __init__(self, animator, *, fps: int, render_pool=None, frames: bool = True, controls: bool = False,
                 emit: Callable[[Event], None] | None = None, name: str | None = None):
        self.animator = animator
        self.name = name  # the face's name in the library
        self.fps = fps
        self.render_pool = render_pool  # renders run here, off the event loop
        self.frames = frames  # JPEG frames are sent
        self.controls = controls  # animation controls are sent (clients that render the face themselves)
        self.emit = emit
        self._turns: list[tuple[int, int, int]] = []  # (start, end, turn_id) of speech on the timeline

    def set_animator(self, animator) -> None:
        """Switch faces; the new face starts at rest."""
        self.animator = animator
        self._turns.clear()

    # -- speech on the timeline ---------------------------------------------------------------------------
    def add_speech(self, turn_id: int, position: int, audio, phonemes=()) -> None:
        self.animator.add_speech(position, audio, phonemes)
        self._turns.append((position, position + len(audio), turn_id))
        if len(self._turns) > 256:  # long sessions: spans far in the past are of no use
            del self._turns[:128]

    def clear_speech(self, position: int) -> None:
        """A barge-in: the mouth stops at ``position``."""
        self.animator.clear_speech(position)
        self._turns = [(start, min(end, position), turn) for start, end, turn in self._turns if start < position]

    def turn_at(self, position: int) -> int:
        """The turn whose reply is being spoken at ``position``; 0 when the face is at rest."""
        for start, end, turn_id in reversed(self._turns):
            if start <= position < end:
                return turn_id if self.animator.is_speaking(position) else 0
        return 0

    # -- frames -----------------------------------------------------------------------------------------
    def frame(self, position: int) -> tuple[int, bytes | None]:
        """The frame at ``position`` (blocking: run it on a render thread). JPEG None: a resting frame that
        looks the same as the one on screen, so the client keeps showing that (when only frames are sent)."""
        animator = self.animator
        turn_id = self.turn_at(position)
        if self.frames and not self.controls and not turn_id and animator.unchanged(position):
            return turn_id, None
        return turn_id, animator.jpeg_at(position) if self.frames else None

    def image(self, position: int):
        """The BGR frame at ``position`` for outputs that show every frame (a video stream), or None when
        the resting face looks the same as the last frame (blocking: run it off the event loop)."""
        if not self.turn_at(position) and self.animator.unchanged(position):
            return None
        return self.animator.frame_at(position)

    async def render(self, position: int) -> tuple[int, bytes | None]:
        if self.controls and self.emit is not None:
            values = self.animator.controls_at(position)
            self.emit(FaceControls(position, self.turn_at(position), values))
        if not self.frames:
            return self.turn_at(position), None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.render_pool, self.frame, position)
