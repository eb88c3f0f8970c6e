"""Speech synthesis shared by every session: its worker threads and the fair queue where a reply's first
clause goes ahead of other replies' later clauses."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from avatar.config import Config
from avatar.runtime.scheduling import FairQueue, SessionGone
from avatar.runtime.threads import iterate_in_thread, with_timeouts

TTS_THREADS = 2
# A reply's first clause is what its listener waits for; later clauses are already behind speech that
# plays for seconds, so they wait for it (as avatar.conversation.pacing lets replies not yet speaking go first).
TTS_KINDS = ("first", "later")


class Speech:
    def __init__(self, config: Config, models):
        self.config = config
        self.models = models  # read at each call: fault injection (avatar.faults) wraps them after start-up
        self.pool = ThreadPoolExecutor(TTS_THREADS, thread_name_prefix="tts")
        self.queue = FairQueue(TTS_THREADS, TTS_KINDS)

    @property
    def tts(self):
        return self.models.tts

    @property
    def sample_rate(self) -> int:
        return int(self.tts.sample_rate)

    def busy(self) -> bool:
        return self.queue.busy()

    async def synthesize(self, text: str, cancel: threading.Event, *, session: str = "",
                         first: bool = False) -> AsyncIterator:
        """Speech chunks for ``text``; ``first``: a reply's first clause, synthesised before others' later
        clauses."""
        def chunks():
            for chunk in self.tts.synthesize(text):
                yield chunk
                if cancel.is_set():
                    return

        try:
            async with self.queue.turn(session, TTS_KINDS[0] if first else TTS_KINDS[1]):
                if cancel.is_set():
                    return
                async for chunk in with_timeouts(iterate_in_thread(chunks, self.pool), self.config.limits,
                                                 "speech synthesis", cancel):
                    yield chunk
        except SessionGone:
            return

    def forget(self, session: str) -> int:
        """Drop ``session``'s waiting syntheses; how many were dropped."""
        return self.queue.forget(session)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
