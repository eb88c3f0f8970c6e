"""The language model shared by every session: its worker threads, the fair queue over its parallel slots,
the pacing of replies, the token counts the prompt window needs, the prefill of words said so far, and
the system prompt kept in every slot."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable

from avatar.config import Config
from avatar.conversation.pacing import ReplyPacing
from avatar.conversation.prompt import build_prompt
from avatar.models.llm.base import lower_thread_priority, prime_slots
from avatar.runtime.capacity import CEILING
from avatar.runtime.scheduling import FairQueue, SessionGone
from avatar.runtime.threads import iterate_in_thread, with_timeouts

log = logging.getLogger(__name__)

LLM_NICE = 5  # added to the niceness of LLM threads (Linux: per thread): a 3:1 share against other stages
LLM_WAIT_REPORT_S = 1.0  # a session that waits longer than this for the language model is logged


class Replies:
    def __init__(self, config: Config, models, *, knowledge=None, open_sessions: set[str] | None = None,
                 others_busy: Callable[[], bool] = lambda: False):
        self.config = config
        self.models = models  # read at each call: fault injection (avatar.faults) wraps them after start-up
        self.knowledge = knowledge  # avatar.knowledge.Knowledge or None: a small folder stands in the system prompt
        self.open_sessions = open_sessions if open_sessions is not None else set()
        self.others_busy = others_busy  # speech is being recognised or synthesised for some session
        sessions = max(2, config.limits.max_sessions or CEILING)  # 0: measured at start, at most the ceiling
        # LLM streams hold a thread for a whole reply, so they get a pool as large as the session limit (the
        # model itself bounds how many generate at once). Frames and audio are due within a tenth of a
        # second; a reply's text is read out over seconds. When the CPU is short (several sessions on 2
        # cores), generation yields to them rather than make the face stutter.
        self.pool = ThreadPoolExecutor(sessions, thread_name_prefix="llm", initializer=lower_thread_priority,
                                       initargs=(LLM_NICE,))
        # One prefill at a time, for a conversation alone on the server (Replies.prefill).
        self.prefill_pool = ThreadPoolExecutor(1, thread_name_prefix="llm-prefill", initializer=lower_thread_priority,
                                               initargs=(LLM_NICE,))
        self._prefilling = False
        # Fair turns between sessions (avatar.runtime.scheduling): the language model's turns are its slots.
        self.queue = FairQueue(max(1, int(getattr(self.llm, "max_concurrent", 1))))
        self.pacing = ReplyPacing(config.llm.hold_ahead_s)  # replies not yet speaking go first
        self._primed: str | None = None  # the system prompt last put into every LLM slot
        self._token_cache: dict[str, int] = {}
        self._token_lock = threading.Lock()

    @property
    def llm(self):
        return getattr(self.models, "llm", None)

    @property
    def context_tokens(self) -> int:
        return int(self.llm.context_tokens)

    def busy(self) -> bool:
        return self.queue.busy()

    # -- the system prompt in every slot --------------------------------------------------------------
    def first_prompt(self) -> list[dict]:
        """How every conversation's prompt starts (the system prompt, with a standing knowledge folder), and
        a greeting: what the warm-up evaluates into every LLM slot."""
        config, llm = self.config, self.llm
        system = config.system_prompt if self.knowledge is None else self.knowledge.system_prompt(config.system_prompt)
        return build_prompt(system, [], "Hello!", count_tokens=llm.count_tokens, budget_tokens=llm.context_tokens,
                            max_turns=0)

    def prime(self) -> int:
        """Evaluate the first prompt into every slot (at start-up); how many slots hold it."""
        messages = self.first_prompt()
        slots = prime_slots(self.llm, messages)
        self._primed = messages[0]["content"]
        return slots

    def knowledge_changed(self, report) -> None:
        """The knowledge folder changed (the watcher's thread). When that changed the system prompt (a
        folder standing in it), the new one goes into the LLM slots free now, so that the next turns do
        not each evaluate it (10 s for the test folder on 2 cores, BENCHMARKS.md)."""
        reprime = getattr(self.llm, "reprime_free_slots", None)
        messages = self.first_prompt()
        if reprime is None or messages[0]["content"] == self._primed:
            return
        t0 = time.monotonic()
        try:
            primed = reprime(messages)
        except Exception as exc:  # noqa: BLE001 - the turns evaluate it themselves, as without this
            log.warning("knowledge: could not put the new system prompt into the LLM's slots: %s", exc)
            return
        self._primed = messages[0]["content"]
        log.info("knowledge: the new system prompt is in %d free LLM slots (%.1f s)", primed, time.monotonic() - t0)

    # -- calls ----------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        with self._token_lock:
            count = self._token_cache.get(text)
        if count is None:
            count = self.llm.count_tokens(text)
            with self._token_lock:
                if len(self._token_cache) > 4096:
                    self._token_cache.clear()
                self._token_cache[text] = count
        return count

    async def stream_chat(self, messages: list[dict], cancel: threading.Event, *, session: str = "",
                          hold: Callable[[], bool] | None = None) -> AsyncIterator[str]:
        cfg = self.config.llm
        llm = self.llm
        options = {"hold": hold} if hold is not None and getattr(llm, "can_pause", False) else {}
        make = lambda: llm.stream_chat(  # noqa: E731
            messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, cancel=cancel,
            conversation=session or None, **options)
        finished = False
        # Sessions beyond the model's parallel slots queue here, in turn. Waiting is not a hang, so the
        # stage timeouts start only once this reply has a slot; a long wait is reported in the log.
        try:
            async with self.queue.turn(session) as waited:
                if waited > LLM_WAIT_REPORT_S:
                    log.info("session %s waited %.1f s for the language model (%d sessions generating, %d waiting)",
                             session[:8], waited, self.queue.running, self.queue.queued)
                if cancel.is_set():  # barged in while waiting
                    return
                try:
                    async for piece in with_timeouts(iterate_in_thread(make, self.pool), self.config.limits,
                                                     "the language model", cancel):
                        yield piece
                    finished = True
                finally:
                    if not finished:
                        cancel.set()  # a reply abandoned half-way frees the model at the next token
        except SessionGone:
            return

    async def prefill(self, messages: list[dict], *, session: str) -> bool:
        """Evaluate ``messages`` (a turn's prompt with the user's words so far) into ``session``'s LLM slot
        while the user still speaks, so that the turn evaluates only the words after them. Best effort:
        skipped while anything else is being answered, and while another session is open at all: with
        several people, another's turn may need the cores at any moment, and `avatar bench --sessions
        1,2,4` gave 4-session p95s of 3.5-4.9 s with prefills between their turns against 3.1-3.8 s
        without (2026-12-03, noisy). One conversation (a kiosk, one web visitor) has the cores to itself
        while its user speaks. Skipped too on a backend without slots. True when it ran.

        The first 70% of the words of the six shop questions evaluated ahead (the 0.5B alone, one thread,
        2-core AMD EPYC, 2026-12-03): a turn evaluated 9 prompt tokens instead of 13, and its first token
        came after 213 ms instead of 276 (229 instead of 304 with the test folder in the system prompt).
        Voice to voice, 22 ms less at p50 (96 turns with it, 48 without; BENCHMARKS.md): short questions
        leave the prefill little time before the final transcription needs the cores."""
        prefill = getattr(self.llm, "prefill", None)
        if prefill is None or not self.config.turn.prefill or self._prefilling or self.busy() or self.others_busy():
            return False
        if self.open_sessions - {session}:
            return False
        self._prefilling = True
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.prefill_pool, lambda: prefill(messages, session))
        except Exception as exc:  # noqa: BLE001 - the turn evaluates the words itself, as without this
            log.debug("prefill for session %s failed: %r", session[:8], exc)
            return False
        finally:
            self._prefilling = False

    def forget(self, session: str) -> int:
        """Drop ``session``'s waiting replies and the language model's cache of its conversation."""
        dropped = self.queue.forget(session)
        forget = getattr(self.llm, "forget", None)
        if forget is not None:
            forget(session)
        return dropped

    def close(self, *, close_llm: bool = True) -> None:
        for pool in (self.pool, self.prefill_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.llm, "close", None) if close_llm else None
        if close is not None:
            close()  # stops its generations: one still running when the process exits crashes it
