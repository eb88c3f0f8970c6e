"""When a pause ends the user's turn: the model's probability, the length of the silence, and the speaker's
own rhythm, combined.

A model alone is not enough. Asked 200 ms into each of the 7 pauses between the sentences of a 44-second
human reading, Smart Turn v3.2 said 0.25, 0.64, 0.74, 0.17, 0.51, 0.14, 0.98: at a plain 0.5 threshold
4 of the 7 would become turns. So the silence a turn needs grows as the model's confidence falls:

    needed(p) = ask_after + (max_silence - ask_after) * (1 - p) ** sharpness

A clear end (p at least ``sure_probability``, 0.8) ends the turn at the first ask, ~200 ms into the
silence; an unsure one waits up to ``max_silence``. And a speaker who has already paused and gone on (a reader between
sentences, someone thinking aloud) has shown how long their pauses run: until the silence is longer than
their longest recent pause x ``rhythm_factor`` (1.25) plus a margin, not even a near-certain model ends the turn: a reader's
sentences are complete too. Pauses older than 30 s are forgotten: a reader who stops reading and asks a
question is answered quickly again.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

RHYTHM_WINDOW_S = 30.0  # pauses older than this no longer describe how the speaker talks now


class EndOfTurnPolicy:
    """Per session (it learns the speaker's pauses); see the module doc. ``config``: avatar.config.TurnConfig."""

    def __init__(self, config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._pauses: deque[tuple[float, float]] = deque(maxlen=8)  # (ms, when) of pauses the speaker went on after

    @property
    def pauses(self) -> list[float]:
        """Recent pauses (ms) after which the speaker went on."""
        now = self._clock()
        return [ms for ms, at in self._pauses if now - at <= RHYTHM_WINDOW_S]

    def needed_silence_ms(self, probability: float) -> float:
        cfg = self.config
        if probability >= cfg.sure_probability:  # a clear end goes at the first ask...
            needed = float(cfg.ask_after_ms)
        else:
            doubt = min(1.0, max(0.0, 1.0 - probability))
            needed = cfg.ask_after_ms + (cfg.max_silence_ms - cfg.ask_after_ms) * doubt ** cfg.sharpness
        pauses = self.pauses
        if pauses:  # ...unless this speaker has just paused that long and gone on (a reader)
            needed = max(needed, max(pauses) * cfg.rhythm_factor + cfg.rhythm_margin_ms)
        return min(needed, cfg.max_silence_ms)

    def complete(self, probability: float, silence_ms: float) -> bool:
        """Has the turn ended, ``silence_ms`` into a pause, with the model's ``probability``?"""
        return silence_ms >= self.needed_silence_ms(probability)

    def went_on(self, pause_ms: float) -> None:
        """The speaker resumed after a pause of ``pause_ms``: their rhythm."""
        if pause_ms >= self.config.ask_after_ms:
            self._pauses.append((pause_ms, self._clock()))
