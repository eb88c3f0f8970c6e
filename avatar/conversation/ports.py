"""What a conversation asks of the shared runtime, one small interface per part: the runtime
(avatar/runtime/) implements them once for every session, a test may pass fakes. A component is given
the parts it uses, not the whole of ``Services``."""

from __future__ import annotations

import threading
from typing import AsyncIterator, Callable, Protocol

import numpy as np

from avatar.config import Config
from avatar.conversation.memory import MemoryStore
from avatar.conversation.pacing import ReplyPacing


class Recognizer(Protocol):
    """Speech recognition and the end-of-turn model (avatar.runtime.recognition.Recognition)."""

    turn_end: object | None  # the end-of-turn model, or None: the silence rule ends turns

    async def transcribe(self, audio: np.ndarray, *, kind: str = "final", session: str = "") -> str | None: ...

    async def turn_end_probability(self, audio: np.ndarray, *, session: str = "") -> float | None: ...

    def promote_transcription(self, session: str) -> None: ...


class ReplyWriter(Protocol):
    """The language model (avatar.runtime.replies.Replies)."""

    pacing: ReplyPacing
    context_tokens: int

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(self, messages: list[dict], cancel: threading.Event, *, session: str = "",
                    hold: Callable[[], bool] | None = None) -> AsyncIterator[str]: ...

    async def prefill(self, messages: list[dict], *, session: str) -> bool: ...


class Voice(Protocol):
    """Speech synthesis (avatar.runtime.speech.Speech)."""

    sample_rate: int

    def synthesize(self, text: str, cancel: threading.Event, *, session: str = "",
                   first: bool = False, voice: str = "") -> AsyncIterator: ...

    def voice_for(self, face: str | None) -> str:
        """The voice a session whose face is ``face`` speaks with."""


class TurnServices(Protocol):
    """What the turn runner uses: the settings, the stores and the two stages of a reply."""

    config: Config
    memory: MemoryStore
    knowledge: object | None  # avatar.knowledge.Knowledge, or None
    replies: ReplyWriter
    speech: Voice
