"""Which conversation holds which of a local model's parallel slots (one KV cache each).

A conversation that comes back to the slot it used last finds its whole history already evaluated, so its
turn evaluates only the new messages. Sessions take turns fairly when every slot is busy: the first to
wait is the first served. A free slot goes to a returning conversation first, then to a slot nobody owns,
then to the slot that was idle longest (its conversation pays one full prompt evaluation when it returns,
less when llama.cpp's host-memory prompt cache still holds it).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass


@dataclass
class _Slot:
    owner: str | None = None
    busy: bool = False
    last_used: float = 0.0


class SlotTable:
    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"a model needs at least one slot, got {slots}")
        self._slots = [_Slot() for _ in range(slots)]
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[tuple[int, str | None]] = []  # (ticket, conversation) in arrival order

    def __len__(self) -> int:
        return len(self._slots)

    def acquire(self, conversation: str | None, cancel: threading.Event | None = None) -> tuple[int, float] | None:
        """(slot index, seconds waited) once a slot is free and every earlier waiter that can be served is
        served, or None as soon as ``cancel`` is set (a barge-in while waiting)."""
        started = time.monotonic()
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append((ticket, conversation))
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        return None
                    index = self._slot_for(ticket)
                    if index is not None:
                        slot = self._slots[index]
                        slot.busy, slot.owner = True, conversation
                        return index, time.monotonic() - started
                    # Woken on every release; the timeout only bounds how late a cancel is noticed.
                    self._cond.wait(0.05)
            finally:
                self._waiting.remove((ticket, conversation))
                self._cond.notify_all()

    def _slot_for(self, ticket: int) -> int | None:
        """The slot this waiter gets now: earlier waiters that can be served choose first (first come, first
        served), and one waiting for its own busy slot holds up nobody else."""
        claimed: set[int] = set()
        for waiting, conversation in self._waiting:
            index = self._pick(conversation, claimed)
            if waiting == ticket:
                return index
            if index is not None:
                claimed.add(index)
        return None

    def _pick(self, conversation: str | None, claimed: set[int]) -> int | None:
        if conversation is not None:
            for i, slot in enumerate(self._slots):
                if slot.owner == conversation:
                    # Its own slot, even if that means waiting: another one holds none of its prompt (a
                    # turn right after a cancelled reply whose prompt is still being read would evaluate
                    # the whole conversation again).
                    return i if not slot.busy and i not in claimed else None
        free = [i for i, s in enumerate(self._slots) if not s.busy and i not in claimed]
        if not free:
            return None
        unowned = [i for i in free if self._slots[i].owner is None]
        if unowned:
            return unowned[0]
        return min(free, key=lambda i: self._slots[i].last_used)

    def try_acquire(self, conversation: str | None) -> int | None:
        """A slot for ``conversation`` now, marked busy, only while this model is idle (no slot busy, nobody
        waiting); else None. For work ahead of a turn (``prefill``) that must never take a core from a reply
        being written."""
        with self._cond:
            if self._waiting or any(slot.busy for slot in self._slots):
                return None
            index = self._pick(conversation, set())
            if index is not None:
                slot = self._slots[index]
                slot.busy, slot.owner = True, conversation
            return index

    def take_free(self) -> list[int]:
        """Every slot free now, marked busy (their owners kept), unless someone waits for a slot: then
        none. For background work that must never delay a conversation (``release`` each when done)."""
        with self._cond:
            if self._waiting:
                return []
            free = [i for i, s in enumerate(self._slots) if not s.busy]
            for i in free:
                self._slots[i].busy = True
            return free

    def release(self, index: int) -> None:
        with self._cond:
            slot = self._slots[index]
            slot.busy, slot.last_used = False, time.monotonic()
            self._cond.notify_all()

    def forget(self, conversation: str) -> None:
        """The conversation ended: its slots become the first choice for newcomers."""
        with self._cond:
            for slot in self._slots:
                if slot.owner == conversation:
                    slot.owner = None
            self._cond.notify_all()

    def owner(self, index: int) -> str | None:
        with self._cond:
            return self._slots[index].owner

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)
