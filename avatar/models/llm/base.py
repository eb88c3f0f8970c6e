"""Chat LLM interface: stream the reply to a list of chat messages, token piece by token piece, and the
helpers every local backend shares."""

from __future__ import annotations

import os
import threading
from typing import Iterator, Protocol


class ChatLLM(Protocol):
    context_tokens: int  # prompt + reply of one conversation must fit in this many tokens
    # Replies generated at once; sessions queue fairly beyond that (avatar.runtime.services.Services.stream_chat).
    max_concurrent: int

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self,
        messages: list[dict],  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
        conversation: str | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated. Blocking; run it in a worker thread.

        Stops early (without raising) when ``cancel`` is set; implementations check it between tokens so
        that a barge-in frees the model within one token's time. ``conversation`` is a stable id of the
        conversation (the session): a backend that keeps a prompt cache per conversation uses it so that
        the next turn evaluates only the new messages; others ignore it.

        A backend whose ``can_pause`` is True also takes ``hold``, a callable asked before each token:
        while it returns True the reply pauses and keeps its place (avatar.conversation.pacing).
        """

    def forget(self, conversation: str) -> None:
        """The conversation ended: its cached prompt may go (optional; backends without caches omit it)."""


def plain_messages(messages: list[dict]) -> list[dict]:
    """Messages whose text cannot forge chat-template markers such as ``<|im_start|>system``.

    Chat prompts are tokenised with special tokens enabled, so a user who types a marker could open a
    new system turn; breaking the ``<|`` opener keeps the text readable but inert.
    """
    return [{**m, "content": str(m.get("content", "")).replace("<|", "< |")} for m in messages]


def acquire_unless_cancelled(lock: threading.Lock, cancel: threading.Event | None) -> bool:
    """Wait for ``lock``, giving up as soon as ``cancel`` is set (a barge-in while another session talks)."""
    while not lock.acquire(timeout=0.02):
        if cancel is not None and cancel.is_set():
            return False
    if cancel is not None and cancel.is_set():
        lock.release()
        return False
    return True


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread (and the threads it starts afterwards) ``nice`` steps nicer."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (AttributeError, OSError):  # not Linux, where priorities are per process: leave it
        pass



def prime_slots(llm, messages: list[dict]) -> int:
    """Evaluate ``messages`` (the system prompt every conversation starts with) before the first user:
    into every slot of a backend that keeps slots (its own ``prime_slots``), else once. Returns how many
    slots were primed."""
    own = getattr(llm, "prime_slots", None)
    if own is not None:
        return own(messages)
    for _ in llm.stream_chat(messages, max_tokens=1, temperature=0.0, cancel=threading.Event()):
        pass
    return 1
