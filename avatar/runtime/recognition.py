"""Speech recognition and the end-of-turn model, shared by every session: their worker threads and the
fair queues that sessions take turns in (avatar.runtime.scheduling)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from avatar.config import Config
from avatar.runtime.scheduling import FairQueue, SessionGone
from avatar.runtime.threads import run_in_worker

log = logging.getLogger(__name__)

ASR_THREADS = 2
# Transcriptions by urgency: the final one is on the critical path; a speculative one (at the first silent
# frame) may become it; partials are only shown while the user speaks.
ASR_KINDS = ("final", "speculative", "partial")


class Recognition:
    def __init__(self, config: Config, models, *, replies_busy: Callable[[], bool] = lambda: False):
        self.config = config
        self.models = models  # read at each call: fault injection (avatar.faults) wraps them after start-up
        self.replies_busy = replies_busy  # some session's reply is being generated
        self.pool = ThreadPoolExecutor(ASR_THREADS, thread_name_prefix="asr")
        # One recogniser thread is kept for final transcriptions. A speculative one cannot be stopped when
        # its speaker goes on, so three chattering sessions kept both threads busy with transcriptions
        # nobody would read, and a fourth session's final one waited 280 ms for a thread (tests/test_fairness.py).
        self.queue = FairQueue(ASR_THREADS, ASR_KINDS, reserved=1)
        # End-of-turn questions are short (40-60 ms) and on the critical path: their own thread, so they
        # never wait behind a transcription. Sessions take turns at it: three people chattering on pause
        # every 0.2-1 s, and a fourth one's question waited behind their questions (its turn ended 640 ms
        # after its speech instead of 240 ms, tests/test_fairness.py).
        self.turn_end_pool = ThreadPoolExecutor(1, thread_name_prefix="turn-end")
        self.turn_end_queue = FairQueue(1)

    @property
    def asr(self):
        return self.models.asr

    @property
    def turn_end(self):
        """The end-of-turn model, or None (the silence rule ends turns)."""
        return getattr(self.models, "turn_end", None)

    def busy(self) -> bool:
        return self.queue.busy()

    async def transcribe(self, audio: np.ndarray, *, kind: str = "final", session: str = "") -> str | None:
        """Text of ``audio``, or None when the job was skipped or dropped.

        ``kind`` is "final" (on the critical path: served first), "speculative" or "partial". A partial
        transcript is best effort: it is skipped (None) while any other transcription runs or waits, so
        that partials never delay a final one, and while a reply is being generated. Sessions take turns
        round-robin within a kind; a cancelled caller leaves the queue at once."""
        # A partial only uses a CPU nothing urgent needs: not while another transcription runs or waits,
        # nor while any session's reply is being generated. With four people talking at once on 2 cores,
        # partials re-transcribing everyone's growing utterance kept the recogniser busy whenever it was
        # free and took the CPU from the replies in flight (BENCHMARKS.md, issue 10).
        if kind == "partial" and (self.queue.busy() or self.replies_busy()):
            return None
        language = self.config.persona.language or None
        try:
            async with self.queue.turn(session, kind):
                result = await run_in_worker(self.pool, lambda: self.asr.transcribe(audio, language=language),
                                             "speech recognition", self.config.limits.stage_timeout_s)
        except SessionGone:
            return None
        return result.text.strip()

    async def turn_end_probability(self, audio: np.ndarray, *, session: str = "") -> float | None:
        """How likely the user has finished, from the utterance so far; None when the model failed (the
        silence rule then decides, so a broken model costs latency, never a turn) or ``session`` left while
        the question waited. Cancel a question whose pause is over: one still waiting leaves the queue."""
        model = self.turn_end
        if model is None:
            return None
        try:
            async with self.turn_end_queue.turn(session):
                return await run_in_worker(self.turn_end_pool, lambda: model.probability(audio), "end-of-turn model",
                                           self.config.limits.stage_timeout_s)
        except SessionGone:
            return None
        except Exception as exc:  # noqa: BLE001
            log.warning("end-of-turn model failed (%r); the silence rule decides", exc)
            return None

    def promote_transcription(self, session: str) -> None:
        """The speech ended: ``session``'s waiting speculative transcription is now the final one."""
        self.queue.promote(session, "speculative", "final")

    def forget(self, session: str) -> int:
        """Drop ``session``'s waiting transcriptions and end-of-turn questions; how many were dropped."""
        return self.queue.forget(session) + self.turn_end_queue.forget(session)

    def close(self) -> None:
        for pool in (self.pool, self.turn_end_pool):
            pool.shutdown(wait=False, cancel_futures=True)
