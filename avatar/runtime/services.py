"""What all sessions share: the configuration, the models (loaded once), the memory store, the faces,
and the worker threads that run blocking model calls off the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np

from avatar.media.audio import resample_linear
from avatar.config import REPO_ROOT, Config
from avatar.errors import StageError
from avatar.models.llm.base import lower_thread_priority, prime_slots
from avatar.conversation.memory import MemoryStore
from avatar.conversation.pacing import ReplyPacing
from avatar.runtime.scheduling import FairQueue, SessionGone
from avatar.runtime.threads import iterate_in_thread

log = logging.getLogger(__name__)

ASR_THREADS = 2
TTS_THREADS = 2
RENDER_THREADS = 2
MALLOC_ARENAS = 2  # glibc heaps, see cap_malloc_arenas
LLM_NICE = 5  # added to the niceness of LLM threads (Linux: per thread): a 3:1 share against other stages
# Transcriptions by urgency: the final one is on the critical path; a speculative one (at the first silent
# frame) may become it; partials are only shown while the user speaks.
ASR_KINDS = ("final", "speculative", "partial")
# A reply's first clause is what its listener waits for; later clauses are already behind speech that
# plays for seconds, so they wait for it (as avatar.conversation.pacing lets replies not yet speaking go first).
TTS_KINDS = ("first", "later")
LLM_WAIT_REPORT_S = 1.0  # a session that waits longer than this for the language model is logged
# One sentence nearly as long as the longest clause the reply splitter hands to TTS (avatar.conversation.clauses, max_chars
# 220): the memory TTS needs grows with the sentence.
WARM_UP_TEXT = ("Thank you for waiting, I looked into it and here is what I found, the shop opens at nine in "
                "the morning on weekdays and at ten on Saturdays, and it is closed on Sundays and on holidays.")


@dataclass
class Services:
    config: Config
    models: object  # avatar.models.loading.Models: vad, asr, llm, tts
    memory: MemoryStore
    faces: object | None = None  # avatar.face.FaceLibrary when video is on
    knowledge: object | None = None  # avatar.knowledge.Knowledge when knowledge.path is set
    faults: list = field(default_factory=list)  # avatar.faults.Fault, only when AVATAR_FAULTS was set at start-up

    def __post_init__(self) -> None:
        sessions = max(2, self.config.limits.max_sessions)
        # ASR and TTS calls are short; LLM streams hold a thread for a whole reply, so they get a pool as
        # large as the session limit (the model itself bounds how many generate at once).
        self.asr_pool = ThreadPoolExecutor(ASR_THREADS, thread_name_prefix="asr")
        # Frames and audio are due within a tenth of a second; a reply's text is read out over seconds. When
        # the CPU is short (several sessions on 2 cores), generation yields to them rather than make
        # the face stutter.
        self.llm_pool = ThreadPoolExecutor(sessions, thread_name_prefix="llm", initializer=lower_thread_priority,
                                           initargs=(LLM_NICE,))
        self.tts_pool = ThreadPoolExecutor(TTS_THREADS, thread_name_prefix="tts")
        # One prefill at a time, for a conversation alone on the server (Services.prefill).
        self.prefill_pool = ThreadPoolExecutor(1, thread_name_prefix="llm-prefill", initializer=lower_thread_priority,
                                               initargs=(LLM_NICE,))
        self._prefilling = False
        self.open_sessions: set[str] = set()  # Session ids from Session() until Session.close
        self.render_pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
        # End-of-turn questions are short (40-60 ms) and on the critical path: their own thread, so they
        # never wait behind a transcription. Sessions take turns at it: three people chattering on pause
        # every 0.2-1 s, and a fourth one's question waited behind their questions (its turn ended 640 ms
        # after its speech instead of 240 ms, tests/test_fairness.py).
        self.turn_end_pool = ThreadPoolExecutor(1, thread_name_prefix="turn-end")
        self.turn_end_queue = FairQueue(1)
        # Fair turns between sessions on each shared stage (avatar.runtime.scheduling), one turn per worker thread;
        # the language model's turns are its parallel slots.
        # One recogniser thread is kept for final transcriptions. A speculative one cannot be stopped when
        # its speaker goes on, so three chattering sessions kept both threads busy with transcriptions
        # nobody would read, and a fourth session's final one waited 280 ms for a thread (tests/test_fairness.py).
        self.asr_queue = FairQueue(ASR_THREADS, ASR_KINDS, reserved=1)
        self.tts_queue = FairQueue(TTS_THREADS, TTS_KINDS)
        llm = getattr(self.models, "llm", None)
        self.llm_queue = FairQueue(max(1, int(getattr(llm, "max_concurrent", 1))))
        self.pacing = ReplyPacing(self.config.llm.hold_ahead_s)  # replies not yet speaking go first
        self._primed: str | None = None  # the system prompt last put into every LLM slot
        self._token_cache: dict[str, int] = {}
        self._token_lock = threading.Lock()

    @property
    def output_rate(self) -> int:
        return int(self.models.tts.sample_rate)

    @classmethod
    def load(cls, config: Config, *, progress: Callable[[str], None] = print) -> "Services":
        from avatar.models.loading import load_models

        from avatar import faults as fault_injection

        t0 = time.monotonic()
        injected = fault_injection.faults_from_env()  # read first: a typo fails before minutes of loading
        models = load_models(config, progress=progress)
        memory_path = config.data_path / "memory.sqlite3"
        memory = MemoryStore(memory_path)
        progress(f"memory: {memory_path}")
        faces = None
        if config.video.enabled:
            import cv2

            from avatar.face import FaceLibrary

            # Each frame renders on one core; sessions render in parallel on the render pool instead.
            cv2.setNumThreads(1)

            faces = FaceLibrary([REPO_ROOT / "faces", config.data_path / "faces"], size=config.video.size,
                                progress=progress)
            progress(f"faces: {', '.join(faces.names) or '(none)'}")
        knowledge = None
        if config.knowledge.path:
            from avatar.knowledge import Knowledge

            # Passages are sized with a tokenizer-free estimate: ground() runs on the event loop, and the
            # xllamacpp tokenizer is a 3 ms localhost round trip per text (BENCHMARKS.md: estimate vs count).
            knowledge = Knowledge.open(config, progress=progress)
        runtime = cls(config, models, memory, faces, knowledge, injected)
        if knowledge is not None and knowledge.watcher is not None:
            knowledge.watcher.on_change = runtime._knowledge_changed
        if config.server.warm_up:
            runtime.warm_up(progress)
        if injected:
            fault_injection.install(models, injected)
            progress(f"WARNING: fault injection is ON ({fault_injection.ENV}="
                     f"{','.join(str(f) for f in injected)}); never use this in production")
        progress(f"models ready in {time.monotonic() - t0:.1f} s")
        return runtime

    def warm_up(self, progress: Callable[[str], None]) -> None:
        """Run every model before the first user arrives (ASR, TTS and the renderer on each of the threads
        that run them in service), with work as large as service brings: the first calls of a fresh model
        pay for page faults and allocations (seconds for the LLM), the LLM keeps the system prompt's KV
        cache that every new conversation starts with, and memory pools (onnxruntime's arena, CTranslate2's
        buffers, glibc's per-thread heaps) reach their working size now, so resident memory stays flat in
        service."""
        t0 = time.monotonic()
        models, config = self.models, self.config
        language = config.persona.language or None
        progress("warming up the models...")

        def speak() -> np.ndarray:
            return np.concatenate([chunk.audio for chunk in models.tts.synthesize(WARM_UP_TEXT)])

        speech = [f.result() for f in [self.tts_pool.submit(speak) for _ in range(TTS_THREADS)]][0]
        # Real speech, so that the recogniser decodes words rather than an empty window.
        heard = resample_linear(speech / 32768.0, self.output_rate, models.asr.sample_rate)
        for f in [self.asr_pool.submit(models.asr.transcribe, heard, language=language) for _ in range(ASR_THREADS)]:
            f.result()
        if self.faces is not None and self.faces.names:
            from avatar.face.animator import build_animator

            animator = build_animator(self.faces.get(self.faces.names[0]), sample_rate=self.output_rate,
                                      video=config.video)
            animator.add_speech(0, speech[: self.output_rate])
            frames = [i * self.output_rate // 10 for i in range(10)]  # mouth moving, a blink or not
            for f in [self.render_pool.submit(lambda: [animator.jpeg_at(p) for p in frames])
                      for _ in range(RENDER_THREADS)]:
                f.result()
        messages = self._first_prompt()
        slots = "LLM"
        try:
            slots = f"LLM ({prime_slots(models.llm, messages)} slots)"
            self._primed = messages[0]["content"]
        except Exception as exc:  # noqa: BLE001 - e.g. a remote LLM server not up yet: say so, serve anyway
            progress(f"WARNING: the LLM did not answer a warm-up prompt ({exc}); replies will fail until it does")
        progress(f"warmed up ASR, TTS, {slots} and the face renderer in {time.monotonic() - t0:.1f} s")

    def _first_prompt(self) -> list[dict]:
        """How every conversation's prompt starts (the system prompt, with a standing knowledge folder), and
        a greeting: what the warm-up evaluates into every LLM slot."""
        from avatar.conversation.prompt import build_prompt

        config, llm = self.config, self.models.llm
        system = config.system_prompt if self.knowledge is None else self.knowledge.system_prompt(config.system_prompt)
        return build_prompt(system, [], "Hello!", count_tokens=llm.count_tokens, budget_tokens=llm.context_tokens,
                            max_turns=0)

    def _knowledge_changed(self, report) -> None:
        """The knowledge folder changed (the watcher's thread). When that changed the system prompt (a
        folder standing in it), the new one goes into the LLM slots free now, so that the next turns do
        not each evaluate it (10 s for the test folder on 2 cores, BENCHMARKS.md)."""
        reprime = getattr(self.models.llm, "reprime_free_slots", None)
        messages = self._first_prompt()
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

    def close(self) -> None:
        if self.faults:
            from avatar.faults import release_hangs

            release_hangs()
        for pool in (self.asr_pool, self.llm_pool, self.prefill_pool, self.tts_pool, self.render_pool,
                     self.turn_end_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        close_llm = getattr(getattr(self.models, "llm", None), "close", None)
        if close_llm is not None:
            close_llm()  # stops its generations: one still running when the process exits crashes it
        if self.knowledge is not None:
            self.knowledge.close()
        self.memory.close()

    # -- model calls, off the event loop --------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        with self._token_lock:
            count = self._token_cache.get(text)
        if count is None:
            count = self.models.llm.count_tokens(text)
            with self._token_lock:
                if len(self._token_cache) > 4096:
                    self._token_cache.clear()
                self._token_cache[text] = count
        return count

    async def transcribe(self, audio: np.ndarray, *, kind: str | None = None, session: str = "",
                         partial: bool = False) -> str | None:
        """Text of ``audio``, or None when the job was skipped or dropped.

        ``kind`` is "final" (on the critical path: served first), "speculative" or "partial" (``partial=True``
        is the old spelling of the last). A partial transcript is best effort: it is skipped (None) while
        any other transcription runs or waits, so that partials never delay a final one, and while a reply
        is being generated. Sessions take
        turns round-robin within a kind; a cancelled caller leaves the queue at once."""
        kind = kind or ("partial" if partial else "final")
        # A partial only uses a CPU nothing urgent needs: not while another transcription runs or waits,
        # nor while any session's reply is being generated. With four people talking at once on 2 cores,
        # partials re-transcribing everyone's growing utterance kept the recogniser busy whenever it was
        # free and took the CPU from the replies in flight (BENCHMARKS.md, issue 10).
        if kind == "partial" and (self.asr_queue.busy() or self.llm_queue.busy()):
            return None
        language = self.config.persona.language or None
        try:
            async with self.asr_queue.turn(session, kind):
                result = await self._in_worker(
                    self.asr_pool, lambda: self.models.asr.transcribe(audio, language=language), "speech recognition")
        except SessionGone:
            return None
        return result.text.strip()

    @property
    def turn_end(self):
        """The end-of-turn model, or None (the silence rule ends turns)."""
        return getattr(self.models, "turn_end", None)

    async def turn_end_probability(self, audio: np.ndarray, *, session: str = "") -> float | None:
        """How likely the user has finished, from the utterance so far; None when the model failed (the
        silence rule then decides, so a broken model costs latency, never a turn) or ``session`` left while
        the question waited. Cancel a question whose pause is over: one still waiting leaves the queue."""
        model = self.turn_end
        if model is None:
            return None
        try:
            async with self.turn_end_queue.turn(session):
                return await self._in_worker(self.turn_end_pool, lambda: model.probability(audio), "end-of-turn model")
        except SessionGone:
            return None
        except Exception as exc:  # noqa: BLE001
            log.warning("end-of-turn model failed (%r); the silence rule decides", exc)
            return None

    async def _in_worker(self, pool: ThreadPoolExecutor, work: Callable, what: str):
        """``work()`` in one of ``pool``'s threads, within ``limits.stage_timeout_s``; called holding a turn
        of the pool's FairQueue.

        A worker thread cannot be stopped. When the caller is cancelled (a speculation the user talked
        over, a session that left), the turn is held until the thread is free again: released at once, it
        let the next job queue inside the pool behind the abandoned one, unseen by the fair order. Three
        chattering sessions had their dropped speculations running that way, and a fourth session's
        speculative transcription of 2 s took 913 ms instead of 50-70 ms."""
        call = asyncio.get_running_loop().run_in_executor(pool, work)
        call.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, whoever waits
        timeout = self.config.limits.stage_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(call), timeout)
        except asyncio.TimeoutError:
            raise StageError(f"{what} took longer than {timeout:.0f} s") from None
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.shield(call), timeout)
            except BaseException:  # noqa: BLE001 - its result is unwanted; a second cancel ends the wait
                pass
            raise

    def promote_transcription(self, session: str) -> None:
        """The speech ended: ``session``'s waiting speculative transcription is now the final one."""
        self.asr_queue.promote(session, "speculative", "final")

    def forget_session(self, session: str) -> None:
        """``session`` went: drop its waiting transcriptions, syntheses and replies (their callers get None or
        an empty stream) and the language model's cache of its conversation. Work already running stops
        through the turn's cancel event. (A dropped speculation needs only its task cancelled.)"""
        queues = (self.asr_queue, self.tts_queue, self.llm_queue, self.turn_end_queue)
        dropped = sum(q.forget(session) for q in queues)
        if dropped:
            log.info("session %s: dropped %d queued jobs", session[:8], dropped)
        forget = getattr(self.models.llm, "forget", None)
        if forget is not None:
            forget(session)
        self.open_sessions.discard(session)

    async def stream_chat(self, messages: list[dict], cancel: threading.Event, *, session: str = "",
                          hold: Callable[[], bool] | None = None) -> AsyncIterator[str]:
        cfg = self.config.llm
        llm = self.models.llm
        options = {"hold": hold} if hold is not None and getattr(llm, "can_pause", False) else {}
        make = lambda: llm.stream_chat(  # noqa: E731
            messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, cancel=cancel,
            conversation=session or None, **options)
        finished = False
        # Sessions beyond the model's parallel slots queue here, in turn. Waiting is not a hang, so the
        # stage timeouts start only once this reply has a slot; a long wait is reported in the log.
        try:
            async with self.llm_queue.turn(session) as waited:
                if waited > LLM_WAIT_REPORT_S:
                    log.info("session %s waited %.1f s for the language model (%d sessions generating, %d waiting)",
                             session[:8], waited, self.llm_queue.running, self.llm_queue.queued)
                if cancel.is_set():  # barged in while waiting
                    return
                try:
                    async for piece in _with_timeouts(iterate_in_thread(make, self.llm_pool), self.config.limits,
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
        prefill = getattr(self.models.llm, "prefill", None)
        if prefill is None or not self.config.turn.prefill or self._prefilling or self._others_busy():
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

    def _others_busy(self) -> bool:
        """Some session is being answered: a reply written or waited for, speech synthesised or recognised."""
        return self.llm_queue.busy() or self.tts_queue.busy() or self.asr_queue.busy()

    async def synthesize(self, text: str, cancel: threading.Event, *, session: str = "",
                         first: bool = False) -> AsyncIterator:
        """Speech chunks for ``text``; ``first``: a reply's first clause, synthesised before others' later
        clauses."""
        def chunks():
            for chunk in self.models.tts.synthesize(text):
                yield chunk
                if cancel.is_set():
                    return

        try:
            async with self.tts_queue.turn(session, TTS_KINDS[0] if first else TTS_KINDS[1]):
                if cancel.is_set():
                    return
                async for chunk in _with_timeouts(iterate_in_thread(chunks, self.tts_pool), self.config.limits,
                                                  "speech synthesis", cancel):
                    yield chunk
        except SessionGone:
            return


async def _with_timeouts(items: AsyncIterator, limits, what: str, cancel: threading.Event) -> AsyncIterator:
    """A stage that hangs, before its first output (``limits.stage_timeout_s``) or between two outputs
    (``limits.item_timeout_s``), becomes a StageError instead of a stuck turn; ``cancel`` tells the worker
    thread to stop."""
    iterator = items.__aiter__()
    first = True
    try:
        while True:
            timeout = limits.stage_timeout_s if first else limits.item_timeout_s
            try:
                item = await asyncio.wait_for(iterator.__anext__(), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                cancel.set()
                if first:
                    raise StageError(f"{what} gave no output within {timeout:g} s; try again or check the "
                                     "server log") from None
                raise StageError(f"{what} stalled for {timeout:g} s in the middle of a reply; try again or "
                                 "check the server log") from None
            first = False
            yield item
    finally:
        await iterator.aclose()


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc to ``arenas`` heaps (call before the worker threads start); True when it was applied.

    glibc gives threads that allocate at the same time their own heap, up to 8 per core, and memory freed
    in one heap is not reused by another, so a server with dozens of worker threads creeps upwards. With
    two heaps, 4 soak clients started 45 MB lower and grew 61 MB in 3 minutes instead of 69-86 MB.
    ``MALLOC_ARENA_MAX`` in the environment, when set, wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX in malloc.h
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to cap
        return False
