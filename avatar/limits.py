"""Per-connection and per-client limits (``[limits]`` in the config; docs/security.md).

Each connection has a ``ConnectionGuard``: a token bucket on messages, one on microphone samples (no
faster than real time, with ``audio_rate_slack`` and ``audio_burst_s`` of slack), a sliding window on
turns per minute, and the time of the last client message (idle timeout). A message over a limit is
dropped and the client is told with a ``rate_limited`` error that names the setting, at most once every
``REPORT_EVERY_S`` per limit so that a flood does not turn into a flood of errors. ``AddressBook`` counts
connections per client address for ``max_sessions_per_client``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from avatar.events import ErrorRaised, Event, TurnStarted
from avatar.protocol import INPUT_SAMPLE_RATE

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
