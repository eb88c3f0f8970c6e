"""Everything the server sends to one client, placed on the connection's output timeline.

Audio and video share one timeline counted in samples at the output rate. Reply audio is placed a little
ahead of the client's playback clock and sent no more than ``max_lead_s`` ahead of it, so a barge-in has
little to flush and a slow client cannot make the server buffer a whole reply. Video frames are rendered
just before they are due; when the client falls behind, frames are skipped (never audio).

A slow or stalled client cannot make the server hold more than it must: video frames are skipped while
the socket's send buffer is full (``buffered() > video_buffer_bytes``), audio is never dropped or
reordered, and a client that reads nothing for ``send_stall_s`` (one send blocked that long), or lets
more than ``max_queued_bytes`` pile up, is given up: ``on_stall(reason)`` is called and the sender stops.
The renderer runs beside the sender, so a slow, failing or hung renderer costs frames, never audio.
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
from websockets.exceptions import ConnectionClosed

from avatar.events import ErrorRaised, Event, to_wire
from avatar.media.contract import MediaListener, VideoSource
from avatar.net.protocol import KIND_AUDIO, KIND_VIDEO, media_frame

log = logging.getLogger(__name__)

AUDIO_PACKET_S = 0.1  # audio is sent in packets this long, so pacing and flushing are fine-grained


class _Stalled(Exception):
    """The client is given up on; the sender stops."""


@dataclass
class _AudioPacket:
    turn_id: int
    position: int
    pcm: bytes


class MediaTimeline:
    """One connection's output: JSON events, reply audio and video frames on one sample timeline (it implements
    avatar.media.contract.Timeline)."""

    def __init__(
        self,
        send: Callable[[str | bytes], Awaitable[None]],
        *,
        sample_rate: int,
        audio_lead_s: float = 0.12,
        max_lead_s: float = 0.4,
        video: VideoSource | None = None,
        emit: Callable[[Event], None] | None = None,
        on_stall: Callable[[str], None] | None = None,
        send_stall_s: float | None = None,
        max_queued_bytes: int | None = None,
        buffered: Callable[[], int] | None = None,
        video_buffer_bytes: int = 256 * 1024,
        render_timeout_s: float = 2.0,
    ):
        self._send = send
        self.rate = sample_rate
        self.audio_lead = int(audio_lead_s * sample_rate)
        self.max_lead = int(max_lead_s * sample_rate)
        self.video = video
        self._control: deque[str] = deque()
        self._audio: deque[_AudioPacket] = deque()
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._report: tuple[float, float] | None = None  # (client position, monotonic time)
        self.audio_end = 0  # timeline position where the last placed audio ends
        self._next_frame = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self._listeners: list[MediaListener] = []
        self.emit = emit or self.send_event  # the connection's event bus, for the timeline's own errors
        self.on_stall = on_stall  # the client stopped reading: close it
        self.send_stall_s = send_stall_s
        self.max_queued_bytes = max_queued_bytes
        self.buffered = buffered  # bytes waiting in the socket's send buffer
        self.video_buffer_bytes = video_buffer_bytes
        self.render_timeout_s = render_timeout_s
        self._render: tuple[asyncio.Task, int, float] | None = None  # (task, frame index, started)
        self.render_errors = 0
        self._render_error_reported = -1e9
        self._control_bytes = 0
        self._audio_bytes = 0
        self.stalled: str | None = None
        self.sealed = False  # after a fatal error event, nothing more is queued
        self.closed = False

    @property
    def fps(self) -> int:
        return self.video.fps if self.video is not None else 0

    def attach_video(self, video: VideoSource | None) -> None:
        self.video = video
        self._wake.set()

    def add_listener(self, listener: MediaListener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    # -- the playback clock -------------------------------------------------------------------------
    def clock(self) -> int:
        """The client's playback position now: from its last report when it reports, else wall time."""
        now = time.monotonic()
        if self._report is not None:
            position, at = self._report
            return int(position + (now - at) * self.rate)
        return int((now - self._t0) * self.rate)

    def report_playback(self, position: float) -> None:
        # A client's clock is only trusted within sane bounds: never negative, never far beyond what
        # was sent (a bogus huge number must not push media off the 64-bit timeline).
        now = time.monotonic()
        ceiling = max(self.audio_end, int((now - self._t0) * self.rate)) + 60 * self.rate
        if not isinstance(position, int):
            position = float(position) if position == position else 0.0  # NaN -> 0
        self._report = (float(min(max(0, position), ceiling)), now)
        self._wake.set()

    def is_playing(self) -> bool:
        return self.clock() < self.audio_end

    # -- queueing ------------------------------------------------------------------------------------
    def send_event(self, event: Event) -> None:
        """An event bus subscriber: the event's wire JSON goes out in order with the media."""
        for message in to_wire(event):
            self.send_json(message)

    def send_json(self, event: dict) -> None:
        if self.closed or self.sealed:
            return
        try:
            text = json.dumps(event, ensure_ascii=False)
            text.encode("utf-8")
        except (TypeError, ValueError) as exc:  # a bug: drop the event rather than the connection
            log.error("cannot send event %r: %s", event.get("type"), exc)
            return
        self._control.append(text)
        self._control_bytes += len(text)
        if event.get("type") == "error" and event.get("fatal"):
            self.sealed = True  # the connection is about to close: this is the last thing the client gets
        self._check_queue()
        self._wake.set()

    def _check_queue(self) -> None:
        if self.max_queued_bytes is not None and self._control_bytes + self._audio_bytes > self.max_queued_bytes:
            self._stall(f"more than {self.max_queued_bytes} bytes waited to be sent (limits.max_queued_bytes): "
                        "the client does not read fast enough")

    def place_audio(self, turn_id: int, pcm: np.ndarray) -> int:
        """Put int16 audio on the timeline right after the previous audio, or a little ahead of the
        playback clock if that is later. Returns its position."""
        position = max(self.audio_end, self.clock() + self.audio_lead)
        step = int(AUDIO_PACKET_S * self.rate)
        for offset in range(0, len(pcm), step):
            piece = pcm[offset : offset + step]
            if self.sealed:
                break
            self._audio.append(_AudioPacket(turn_id, position + offset, piece.astype("<i2").tobytes()))
            self._audio_bytes += 2 * len(piece)
        self.audio_end = position + len(pcm)
        self._check_queue()
        self._wake.set()
        return position

    def flush_audio(self, turn_id: int, from_position: int) -> None:
        """Barge-in: forget this turn's audio at or after ``from_position`` that is not sent yet."""
        self._audio = deque(p for p in self._audio if p.turn_id != turn_id or p.position < from_position)
        self._audio_bytes = sum(len(p.pcm) for p in self._audio)
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
        except _Stalled:
            pass
        except Exception as exc:  # noqa: BLE001 - the connection closed, or a bug: never a silent stuck sender
            if not isinstance(exc, ConnectionClosed):
                log.exception("sending to a client failed")
                self._stall(f"internal error while sending: {exc!r}")
        finally:
            self.closed = True
            if self._render is not None:
                self._render[0].cancel()

    def _stall(self, reason: str) -> None:
        if self.stalled is None:
            self.stalled = reason
            log.warning("giving up on a client: %s", reason)
            self._control.clear()
            self._audio.clear()
            self._control_bytes = self._audio_bytes = 0
            if self.on_stall is not None:
                self.on_stall(reason)
        self.closed = True
        self._wake.set()

    async def _send_one(self, message: str | bytes) -> None:
        if self.stalled is not None:
            raise _Stalled()
        if self.send_stall_s is None:
            await self._send(message)
            return
        try:
            await asyncio.wait_for(self._send(message), self.send_stall_s)
        except asyncio.TimeoutError:
            self._stall(f"the client read nothing for {self.send_stall_s:g} s (limits.send_stall_s)")
            raise _Stalled() from None

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the queued events are sent: before a deliberate close."""
        deadline = time.monotonic() + timeout
        while self._control and not self.closed and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)

    async def _send_due(self) -> None:
        while self._control:
            text = self._control.popleft()
            self._control_bytes -= len(text)
            await self._send_one(text)
        now = self.clock()
        while self._audio and self._audio[0].position < now + self.max_lead:
            packet = self._audio.popleft()
            self._audio_bytes -= len(packet.pcm)
            await self._send_one(media_frame(KIND_AUDIO, packet.turn_id, packet.position, packet.pcm))
            for listener in self._listeners:
                listener.audio_sent(packet.turn_id, packet.position, time.monotonic())
            if self._control:  # events queued meanwhile (an interrupt) go first
                return
        if self.video is not None:
            await self._send_video(self.clock())

    async def _send_video(self, now: int) -> None:
        if self._render is not None:
            await self._collect_frame()
            return
        position = self._frame_position(self._next_frame)
        if position >= self._video_horizon(now):
            return
        # A frame whose time has passed is useless: skip to the current one.
        current = int(max(0, now) * self.fps // self.rate)
        if self._next_frame < current:
            self.frames_dropped += current - self._next_frame
            self._next_frame = current
            position = self._frame_position(current)
        if self.buffered is not None and self.buffered() > self.video_buffer_bytes:
            self.frames_dropped += 1  # the client is behind: it gets audio first, video when it catches up
            self._next_frame += 1
            return
        task = asyncio.ensure_future(self.video.render(position))
        task.add_done_callback(lambda _: self._wake.set())
        self._render = (task, self._next_frame, time.monotonic())

    async def _collect_frame(self) -> None:
        task, index, started = self._render
        if not task.done():
            if time.monotonic() - started > self.render_timeout_s:
                task.cancel()
                self._render = None
                self._next_frame = index + 1
                self.frames_dropped += 1
                self._render_failed(f"the face renderer gave no frame within {self.render_timeout_s:g} s "
                                    "(limits.render_timeout_s)")
            return
        self._render = None
        self._next_frame = index + 1
        try:
            turn_id, jpeg = task.result()
        except asyncio.CancelledError:
            self.frames_dropped += 1
            return
        except Exception as exc:  # noqa: BLE001 - a renderer bug costs frames, never the conversation
            self.frames_dropped += 1
            log.warning("rendering a frame failed: %r", exc, exc_info=self.render_errors == 0)
            self._render_failed(f"the face renderer failed: {exc!r}")
            return
        position = self._frame_position(index)
        if jpeg is None:  # a controls-only session: the controls went out as an event
            return
        await self._send_one(media_frame(KIND_VIDEO, turn_id, position, jpeg))
        self.frames_sent += 1
        for listener in self._listeners:
            listener.frame_sent(position, time.monotonic())

    def _render_failed(self, what: str) -> None:
        self.render_errors += 1
        now = time.monotonic()
        if now - self._render_error_reported >= 30.0:  # one error event per 30 s, not one per frame
            self._render_error_reported = now
            self.emit(ErrorRaised("stage_failed", f"{what}; video frames are skipped until it "
                                  "recovers, the voice goes on"))

    def _frame_position(self, index: int) -> int:
        return index * self.rate // self.fps

    def _video_horizon(self, now: int) -> int:
        """How far ahead frames may be rendered: new speech is always placed at least audio_lead ahead of
        the clock, so frames before that cannot miss it; frames inside speech already placed are final
        too (up to the sending limit). Rendering ahead gives the client frames before it needs them,
        the first frame of a reply included."""
        return max(now + self.audio_lead, min(self.audio_end, now + self.max_lead))

    async def _sleep_until_due(self) -> None:
        if self._control:
            return
        now = self.clock()
        waits = [0.25]
        if self._audio:
            waits.append((self._audio[0].position - self.max_lead - now) / self.rate)
        if self.video is not None:
            if self._render is None:
                waits.append((self._frame_position(self._next_frame) - self._video_horizon(now)) / self.rate)
            else:  # woken when the frame is ready; else look again when it is overdue
                waits.append(self._render[2] + self.render_timeout_s - time.monotonic() + 0.01)
        timeout = max(0.0, min(waits))
        if timeout <= 0:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
