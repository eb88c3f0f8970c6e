"""Per-connection and per-client limits (``[limits]`` in the config; docs/security.md).

Each connection has a ``ConnectionGuard``: a token bucket on messages, one on microphone samples (no
faster than real time, with ``audio_rate_slack`` and ``audio_burst_s`` of slack), a sliding window on
turns per minute, and the time of the last client message (idle timeout). A message over a limit is
dropped and the client is told with a ``rate_limited`` error that names the setting, at most once every
``REPORT_EVERY_S`` per limit so that a flood does not turn into a flood of errors. ``AddressBook`` counts
connections per client address for ``max_sessions_per_client``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from avatar.events import ErrorRaised, Event, TurnStarted
from avatar.media.audio import INPUT_SAMPLE_RATE

log = logging.getLogger(__name__)

REPORT_EVERY_S = 2.0


class TokenBucket:
    """``rate`` units per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.level = float(capacity)
        self._clock = clock
        self._at = clock()

    def take(self, amount: float) -> bool:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now
        if amount <= self.level:
            self.level -= amount
            return True
        return False


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def _trim(self) -> float:
        now = self._clock()
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return now

    def full(self) -> bool:
        self._trim()
        return len(self._times) >= self.limit

    def add(self) -> None:
        self._times.append(self._trim())


@dataclass
class LimitHit:
    limit: str  # the setting, e.g. "limits.turns_per_minute"
    message: str
    code: str = "rate_limited"

    def error(self, *, fatal: bool = False) -> ErrorRaised:
        return ErrorRaised(self.code, self.message, fatal=fatal, limit=self.limit)


class ConnectionGuard:
    def __init__(self, limits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self.messages = TokenBucket(limits.messages_per_second, max(1, limits.message_burst), clock)
        audio_rate = INPUT_SAMPLE_RATE * max(1.0, limits.audio_rate_slack)
        self.audio = TokenBucket(audio_rate, max(audio_rate * 0.1, INPUT_SAMPLE_RATE * limits.audio_burst_s), clock)
        self.turns = SlidingWindow(max(1, limits.turns_per_minute), 60.0, clock)
        self.last_message = clock()
        self._reported: dict[str, float] = {}
        self.dropped_messages = 0
        self.dropped_samples = 0

    # -- checks (None: go on; a LimitHit: drop the message, report it if ``should_report``) -------------
    def on_message(self) -> LimitHit | None:
        self.last_message = self._clock()
        if self.messages.take(1):
            return None
        self.dropped_messages += 1
        return LimitHit("limits.messages_per_second",
                        f"more than {self.limits.messages_per_second:g} messages per second "
                        f"(limits.messages_per_second, burst limits.message_burst={self.limits.message_burst}); "
                        "messages are being dropped")

    def on_audio(self, samples: int) -> LimitHit | None:
        if samples > self.audio.capacity:  # could never pass the rate limit, however long the client waits
            self.dropped_samples += samples
            return LimitHit("limits.audio_burst_s",
                            f"an audio frame of {samples / INPUT_SAMPLE_RATE:.2f} s is longer than the "
                            f"{self.audio.capacity / INPUT_SAMPLE_RATE:g} s one frame may hold "
                            "(limits.audio_burst_s); it was dropped. Send audio in frames of 20-100 ms",
                            code="bad_message")
        if self.turns.full():
            self.dropped_samples += samples
            return self._turns_hit()
        if self.audio.take(samples):
            return None
        self.dropped_samples += samples
        return LimitHit("limits.audio_rate_slack",
                        f"microphone audio arrives faster than real time (more than "
                        f"{self.limits.audio_rate_slack:g} x 16000 samples per second: limits.audio_rate_slack, "
                        f"limits.audio_burst_s={self.limits.audio_burst_s:g}); audio is being dropped. Send "
                        "audio as it is recorded")

    def on_text_turn(self) -> LimitHit | None:
        if self.turns.full():
            return self._turns_hit()
        return None

    def _turns_hit(self) -> LimitHit:
        return LimitHit("limits.turns_per_minute",
                        f"more than {self.limits.turns_per_minute} turns in a minute (limits.turns_per_minute); "
                        "wait a little before the next one")

    def observe(self, event: Event) -> None:
        """Event bus subscriber: every turn the agent starts answering (typed or spoken) counts."""
        if isinstance(event, TurnStarted):
            self.turns.add()

    def should_report(self, hit: LimitHit) -> bool:
        now = self._clock()
        last = self._reported.get(hit.limit)
        if last is not None and now - last < REPORT_EVERY_S:
            return False
        self._reported[hit.limit] = now
        return True

    def touch(self) -> None:
        """Activity that is not a client message (a reply being spoken) also keeps the connection alive."""
        self.last_message = self._clock()

    def idle_for(self) -> float:
        return self._clock() - self.last_message


class StallWatch:
    """Cut a connection whose client stopped reading, whatever it sends, with or without a session.

    MediaTimeline notices a stalled client only when it has media to send. Control frames are another way to
    fill the send buffer: websockets answers every ping with a pong written straight to the transport, so
    a client that sends pings and never reads grows the server's memory, and websockets' own keepalive
    cannot help (its ping waits for the full buffer to drain, so ``ping_timeout`` never starts). This
    task samples the transport's write buffer: over ``max_bytes`` the connection is cut at once; above the
    transport's high-water mark (writing paused) without ever shrinking for ``stall_s``, it is cut too
    (aborted: ``on_stall`` is told why, for metrics).
    A slow client that reads at all shrinks the buffer now and then and is left alone."""

    def __init__(self, transport: Callable[[], object], stall_s: float, max_bytes: int,
                 on_stall: Callable[[str], None], interval: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.transport, self.stall_s, self.max_bytes = transport, stall_s, max_bytes
        self.on_stall, self.interval, self._clock = on_stall, interval, clock
        self._since: float | None = None  # when the buffer last shrank or went below the high-water mark
        self._last = 0

    def check(self) -> str | None:
        """One sample: why to cut the connection, or None."""
        transport = self.transport()
        if transport is None or transport.is_closing():
            return None
        size = transport.get_write_buffer_size()
        high = transport.get_write_buffer_limits()[1]
        now = self._clock()
        shrank, self._last = size < self._last, size
        if size > self.max_bytes:
            return f"{size} bytes wait to be sent (limits.max_queued_bytes={self.max_bytes})"
        if size <= high or shrank or self._since is None:
            self._since = now
        elif self.stall_s > 0 and now - self._since >= self.stall_s:
            return f"nothing read for {now - self._since:.1f} s with {size} bytes waiting (limits.send_stall_s)"
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            transport = self.transport()
            if transport is None or transport.is_closing():
                return
            reason = self.check()
            if reason is not None:
                # No close handshake: the close frame would wait behind the full buffer.
                log.info("cut a connection from %s that stopped reading: %s",
                         transport.get_extra_info("peername"), reason)
                transport.abort()
                self.on_stall(reason)
                return


class AddressBook:
    """Open connections per client address."""

    def __init__(self):
        self._counts: dict[str, int] = {}

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def add(self, address: str) -> None:
        self._counts[address] = self._counts.get(address, 0) + 1

    def remove(self, address: str) -> None:
        left = self._counts.get(address, 0) - 1
        if left > 0:
            self._counts[address] = left
        else:
            self._counts.pop(address, None)

    def total(self) -> int:
        return sum(self._counts.values())
