"""Replies that have not started speaking go first on the shared language model.

The model generates several conversations' replies at once (xllamacpp's slots), and on a small CPU each
extra reply in the batch slows every other one. A reply that is already being spoken needs only to stay
ahead of its playback (speech uses about 3 tokens a second), while a reply that has not said its first
words yet is what a user is waiting for. So while some reply waits for its first clause, a reply that is
already ``hold_ahead_s`` of speech ahead of what its listener has heard pauses, and goes on once it is
down to ``resume_ahead_s`` or nobody waits any more (the backend stops the request and later continues
the same assistant message; the slot keeps its cache, so going on costs one token's evaluation).

``ReplyPacing`` is shared by every session (``Replies.pacing``, avatar/runtime/replies.py); ``ReplyPacing.reply`` gives one reply
the ``hold`` callable it passes to ``ChatLLM.stream_chat``.
"""

from __future__ import annotations

import threading
from typing import Callable

from avatar.language import spoken_width

# Speech time of a letter: Piper's English speaks about 0.065 s a letter (avatar/language.py), and
# ``spoken_width`` counts a Chinese character as 3 letters. An estimate: the thresholds leave seconds to spare.
SECONDS_PER_LETTER = 0.065


def speech_seconds(text: str) -> float:
    """About how long ``text`` takes to say."""
    return spoken_width(text) * SECONDS_PER_LETTER


class ReplyPacing:
    """Counts the replies still waiting for their first clause; thread-safe."""

    def __init__(self, hold_ahead_s: float = 4.0):
        self.hold_ahead_s = float(hold_ahead_s)  # 0: replies never pause
        # A paused reply goes on a second before its listener would catch up with it: time for the next
        # clause to be written and synthesised (a clause took 0.3-1.2 s at 1-4 sessions, BENCHMARKS.md).
        self.resume_ahead_s = 0.75 * self.hold_ahead_s
        self._starting = 0
        self._lock = threading.Lock()

    @property
    def starting(self) -> int:
        """Replies asked for that have not produced their first clause yet."""
        return self._starting

    def reply(self, ahead_s: Callable[[], float]) -> "PacedReply":
        """A reply starts. ``ahead_s()``: how many seconds of its speech are written but not yet heard."""
        with self._lock:
            self._starting += 1
        return PacedReply(self, ahead_s)

    def _started(self) -> None:
        with self._lock:
            self._starting -= 1


class PacedReply:
    def __init__(self, pacing: ReplyPacing, ahead_s: Callable[[], float]):
        self._pacing = pacing
        self._ahead_s = ahead_s
        self._starting = True
        self._paused = False

    def started(self) -> None:
        """The reply said its first clause, or ended without one (idempotent)."""
        if self._starting:
            self._starting = False
            self._pacing._started()

    @property
    def hold(self) -> Callable[[], bool] | None:
        """What ``ChatLLM.stream_chat`` asks before each token (None: pacing is off)."""
        return self._hold if self._pacing.hold_ahead_s > 0 else None

    def _hold(self) -> bool:
        """True while the reply should pause: it has spoken, it is far enough ahead of its listener, and
        another reply waits for its first words."""
        pacing = self._pacing
        if self._starting or pacing.starting <= 0:
            self._paused = False
        else:
            limit = pacing.resume_ahead_s if self._paused else pacing.hold_ahead_s
            self._paused = self._ahead_s() > limit
        return self._paused
