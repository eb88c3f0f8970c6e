"""Fair turns on a shared stage (speech recognition, synthesis, the language model) for many sessions.

Without it the worker pools serve calls in arrival order, so three sessions that stream audio at the rate
limit queue dozens of transcriptions ahead of a fourth session's one question: its reply took 21.5 s
instead of 1.2 s, and their transcriptions ran on for 23 s after they disconnected. Here:

- more urgent kinds go first (a final transcription before a speculative one before a partial one);
- within a kind, sessions take turns round-robin, so one session's backlog never delays another's
  next job by more than one job per other session;
- a session's queued jobs are dropped when it goes (``forget``), and a waiter whose task is cancelled (a
  dropped speculation) leaves the queue at once;
- ``reserved`` turns are kept for the most urgent kind: a job already running cannot be stopped, so
  without a free turn a final transcription waited for other sessions' speculative ones to finish.

Runs on the event loop (no locks): ``async with queue.turn(session, kind): ...``. Waiting here is not a
hang, so callers start their stage timeouts only once they hold a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from typing import AsyncIterator


class SessionGone(Exception):
    """The session was forgotten while this job waited; the job never ran."""


class FairQueue:
    def __init__(self, capacity: int, kinds: tuple[str, ...] = ("default",), reserved: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0 <= reserved < capacity:
            raise ValueError(f"reserved must leave a turn for the other kinds: 0 <= {reserved} < {capacity}")
        self.capacity = capacity
        self.kinds = kinds  # most urgent first
        self.reserved = reserved  # turns only the most urgent kind may take
        # kind -> session -> its waiting jobs, oldest first; the session order is the round-robin order
        self._queues: dict[str, OrderedDict[str, deque[asyncio.Future]]] = {k: OrderedDict() for k in kinds}
        self.running = 0
        self._running_others = 0  # turns held by jobs of the less urgent kinds

    @property
    def queued(self) -> int:
        return sum(len(jobs) for sessions in self._queues.values() for jobs in sessions.values())

    def busy(self) -> bool:
        return self.running > 0 or self.queued > 0

    def queued_for(self, session: str) -> int:
        return sum(len(q.get(session, ())) for q in self._queues.values())

    @contextlib.asynccontextmanager
    async def turn(self, session: str, kind: str | None = None) -> AsyncIterator[float]:
        """Hold one of ``capacity`` turns; yields the seconds waited. Raises SessionGone when ``forget``
        dropped the job while it waited."""
        kind = kind or self.kinds[0]
        if kind not in self._queues:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(self.kinds)}")
        started = time.monotonic()
        grant: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queues[kind].setdefault(session, deque()).append(grant)
        self._dispatch()
        try:
            granted_kind = await grant  # promote may have changed it while it waited
        except BaseException:
            if grant.done() and not grant.cancelled() and grant.exception() is None:
                self._release(grant.result())  # granted just as the waiter was cancelled: hand the turn on
            else:
                self._withdraw(kind, session, grant)
            raise
        try:
            yield time.monotonic() - started
        finally:
            self._release(granted_kind)

    def forget(self, session: str) -> int:
        """Drop every job ``session`` has waiting; returns how many. Their waiters get SessionGone."""
        dropped = 0
        for sessions in self._queues.values():
            for grant in sessions.pop(session, ()):
                if not grant.done():
                    grant.set_exception(SessionGone(session))
                    grant.exception()  # retrieved here: a waiter cancelled meanwhile must not warn about it
                    dropped += 1
        return dropped

    def promote(self, session: str, from_kind: str, to_kind: str) -> None:
        """Move ``session``'s waiting ``from_kind`` jobs to ``to_kind`` (a speculation becomes the final)."""
        jobs = self._queues[from_kind].pop(session, None)
        if jobs:
            self._queues[to_kind].setdefault(session, deque()).extend(jobs)

    def _withdraw(self, kind: str, session: str, grant: asyncio.Future) -> None:
        for sessions in self._queues.values():  # promote may have moved it
            jobs = sessions.get(session)
            if jobs is not None and grant in jobs:
                jobs.remove(grant)
                if not jobs:
                    del sessions[session]
                return

    def _release(self, kind: str) -> None:
        self.running -= 1
        if kind != self.kinds[0]:
            self._running_others -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            kind, grant = self._next()
            if grant is None:
                return
            self.running += 1
            if kind != self.kinds[0]:
                self._running_others += 1
            grant.set_result(kind)

    def _next(self) -> tuple[str, asyncio.Future | None]:
        for kind in self.kinds:
            if kind != self.kinds[0] and self._running_others >= self.capacity - self.reserved:
                break  # the rest is kept for the most urgent kind
            sessions = self._queues[kind]
            while sessions:
                session, jobs = sessions.popitem(last=False)  # the session whose turn it is
                grant = jobs.popleft()
                if jobs:
                    sessions[session] = jobs  # back of the line for its next job
                if not grant.done():
                    return kind, grant
        return "", None
