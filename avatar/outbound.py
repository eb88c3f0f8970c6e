"""Everything the server sends to one client, placed on the connection's output timeline.

Audio and video share one timeline counted in samples at the output rate. Reply audio is placed a little
ahead of the client's playback clock and sent no more than ``max_lead_s`` ahead of it, so a barge-in has
little to flush and a slow client cannot make the server buffer a whole reply. Video frames are rendered
just before they are due; when the client falls behind, frames are skipped (never audio).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from avatar.protocol import KIND_AUDIO, KIND_VIDEO, media_frame

log = logging.getLogger(__name__)

AUDIO_PACKET_S = 0.1  # audio is sent in packets this long, so pacing and flushing are fine-grained


@dataclass
class _AudioPacket:
    turn_id: int
    position: int
    pcm: bytes


class Outbound:
    def __init__(
        self,
        send: Callable[[str | bytes], Awaitable[None]],
        *,
        sample_rate: int,
        audio_lead_s: float = 0.12,
        max_lead_s: float = 0.4,
        fps: int = 0,
        render_frame: Callable[[int], Awaitable[tuple[int, bytes]]] | None = None,
    ):
        self._send = send
        self.rate = sample_rate
        self.audio_lead = int(audio_lead_s * sample_rate)
        self.max_lead = int(max_lead_s * sample_rate)
        # Frames are rendered after the audio they show has been placed (audio_lead), never before.
        self.video_lead = int(min(audio_lead_s * 0.6, max_lead_s) * sample_rate)
        self.fps = fps
        self.render_frame = render_frame  # (position) -> (turn_id, jpeg)
        self._control: deque[str] = deque()
        self._audio: deque[_AudioPacket] = deque()
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._report: tuple[float, float] | None = None  # (client position, monotonic time)
        self.audio_end = 0  # timeline position where the last placed audio ends
        self._next_frame = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.on_first_frame: Callable[[int, float], None] | None = None  # (position, monotonic time)
        self.on_audio_sent: Callable[[int, int, float], None] | None = None  # (turn_id, position, time)
        self.closed = False

    # -- the playback clock -------------------------------------------------------------------------
    def clock(self) -> int:
        """The client's playback position now: from its last report when it reports, else wall time."""
        now = time.monotonic()
        if self._report is not None:
            position, at = self._report
            return int(position + (now - at) * self.rate)
        return int((now - self._t0) * self.rate)

    def report_playback(self, position: float) -> None:
        self._report = (float(position), time.monotonic())
        self._wake.set()

    def is_playing(self) -> bool:
        return self.clock() < self.audio_end

    # -- queueing ------------------------------------------------------------------------------------
    def send_json(self, event: dict) -> None:
        self._control.append(json.dumps(event, ensure_ascii=False))
        self._wake.set()

    def place_audio(self, turn_id: int, pcm: np.ndarray) -> int:
        """Put int16 audio on the timeline right after the previous audio, or a little ahead of the
        playback clock if that is later. Returns its position."""
        position = max(self.audio_end, self.clock() + self.audio_lead)
        step = int(AUDIO_PACKET_S * self.rate)
        for offset in range(0, len(pcm), step):
            piece = pcm[offset : offset + step]
            self._audio.append(_AudioPacket(turn_id, position + offset, piece.astype("<i2").tobytes()))
        self.audio_end = position + len(pcm)
        self._wake.set()
        return position

    def flush_audio(self, turn_id: int, from_position: int) -> None:
        """Barge-in: forget this turn's audio at or after ``from_position`` that is not sent yet."""
        self._audio = deque(p for p in self._audio if p.turn_id != turn_id or p.position < from_position)
        self.audio_end = min(self.audio_end, max(from_position, self.clock()))
        self._wake.set()

    def queued_bytes(self) -> int:
        return sum(len(p.pcm) for p in self._audio) + sum(len(c) for c in self._control)

    # -- the sender ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send until the connection closes. One task per connection, so order is preserved."""
        try:
            while not self.closed:
                await self._send_due()
                await self._sleep_until_due()
        finally:
            self.closed = True

    async def _send_due(self) -> None:
        while self._control:
            await self._send(self._control.popleft())
        now = self.clock()
        while self._audio and self._audio[0].position < now + self.max_lead:
            packet = self._audio.popleft()
            await self._send(media_frame(KIND_AUDIO, packet.turn_id, packet.position, packet.pcm))
            if self.on_audio_sent:
                self.on_audio_sent(packet.turn_id, packet.position, time.monotonic())
            if self._control:  # events queued meanwhile (an interrupt) go first
                return
        if self.fps and self.render_frame is not None:
            await self._send_video(self.clock())

    async def _send_video(self, now: int) -> None:
        position = self._frame_position(self._next_frame)
        if position >= now + self.video_lead:
            return
        # A frame whose time has passed is useless: skip to the current one.
        current = int(max(0, now) * self.fps // self.rate)
        if self._next_frame < current:
            self.frames_dropped += current - self._next_frame
            self._next_frame = current
            position = self._frame_position(current)
        turn_id, jpeg = await self.render_frame(position)
        await self._send(media_frame(KIND_VIDEO, turn_id, position, jpeg))
        self.frames_sent += 1
        if self.on_first_frame:
            self.on_first_frame(position, time.monotonic())
        self._next_frame += 1

    def _frame_position(self, index: int) -> int:
        return index * self.rate // self.fps

    async def _sleep_until_due(self) -> None:
        if self._control:
            return
        now = self.clock()
        waits = [0.25]
        if self._audio:
            waits.append((self._audio[0].position - self.max_lead - now) / self.rate)
        if self.fps and self.render_frame is not None:
            waits.append((self._frame_position(self._next_frame) - self.video_lead - now) / self.rate)
        timeout = max(0.0, min(waits))
        if timeout <= 0:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
