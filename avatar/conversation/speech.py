"""What a caller holds while the agent speaks: one handle per turn, whatever the turn's source.

``Session.say`` (a reply from the LLM) and ``Session.say_line`` (a fixed line: a kiosk's greeting, a show's
script) both return a ``SpeechHandle``. The caller awaits it to learn when the listener has heard the turn
to the end (or when it was cut), and can cut it itself with ``interrupt``. The model is LiveKit Agents'
``SpeechHandle``: ``await handle``, ``done()``, ``interrupted``, ``interrupt()``.

The turn runner (avatar/conversation/turns.py) resolves the handle when the turn ends (``TurnRunner._finish``),
when a speculative turn is dropped, and when a turn fails: an asyncio future, never a polling loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generator

from avatar.conversation.clauses import heard_text

if TYPE_CHECKING:
    from avatar.conversation.turns import TurnRunner, TurnState


class SpeechHandle:
    """One turn's speech, as its caller sees it: await it, ask what was heard, or cut it."""

    def __init__(self, turn: TurnState, runner: TurnRunner):
        self._turn = turn
        self._runner = runner
        self._over: asyncio.Future[SpeechHandle] = asyncio.get_running_loop().create_future()
        self._heard = ""
        self._interrupted = False
        self._failed = False

    @property
    def turn_id(self) -> int:
        return self._turn.turn_id

    @property
    def source(self) -> str:
        return self._turn.source

    @property
    def reply(self) -> str:
        """Everything the turn was to say: the LLM's reply after the knowledge check, or the fixed line."""
        return self._turn.reply.strip()

    @property
    def heard(self) -> str:
        """What the listener heard: all of ``reply`` when the turn played to its end, the part before the cut
        when it was interrupted, and while it is still playing, the part heard so far."""
        if self.done():
            return self._heard
        return heard_text(self._turn.spans, self._runner.timeline.clock())

    @property
    def interrupted(self) -> bool:
        """The turn ended before the listener heard all of it: cut, dropped, or failed."""
        return self._interrupted

    @property
    def failed(self) -> bool:
        """The turn ended on an error (reported as an ``ErrorRaised`` event): the LLM or the TTS failed."""
        return self._failed

    def done(self) -> bool:
        return self._over.done()

    def interrupt(self, reason: str) -> None:
        """Cut this turn (``Interrupted`` with ``reason``, memory keeps what was heard). Nothing happens when the
        turn is over or another one is being answered: a caller cannot cut speech it does not own."""
        self._runner.interrupt(reason, turn=self._turn)

    async def wait(self) -> SpeechHandle:
        """Return when the turn is over: heard to its end, cut, dropped or failed. Cancelling the wait leaves
        the speech alone."""
        return await asyncio.shield(self._over)

    def __await__(self) -> Generator[object, None, SpeechHandle]:
        return self.wait().__await__()

    # -- told by the turn runner ----------------------------------------------------------------------------
    def resolve(self, heard: str, *, interrupted: bool, failed: bool = False) -> None:
        """The turn is over (``TurnRunner``); later calls change nothing."""
        if self._over.done():
            return
        self._heard, self._interrupted, self._failed = heard, interrupted, failed
        self._over.set_result(self)

    def __repr__(self) -> str:
        state = "interrupted" if self._interrupted else "done" if self.done() else "speaking"
        return f"<SpeechHandle turn {self.turn_id} ({self.source}) {state}>"
