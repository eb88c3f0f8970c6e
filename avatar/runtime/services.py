"""What every session shares, loaded once at start-up: the models, each behind the part of the runtime
that schedules it between sessions (``recognition``, ``replies``, ``speech``), the faces, the memory store,
the knowledge base and the render threads. A component is given the parts it uses, not the whole."""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from avatar.config import REPO_ROOT, Config
from avatar.conversation.memory import MemoryStore
from avatar.media.audio import resample_linear
from avatar.runtime.recognition import ASR_THREADS, Recognition
from avatar.runtime.replies import Replies
from avatar.runtime.speech import TTS_THREADS, Speech

log = logging.getLogger(__name__)

RENDER_THREADS = 2
MALLOC_ARENAS = 2  # glibc heaps, see cap_malloc_arenas
# One sentence nearly as long as the longest clause the reply splitter hands to TTS (avatar.conversation.clauses,
# max_chars 220): the memory TTS needs grows with the sentence.
WARM_UP_TEXT = ("Thank you for waiting, I looked into it and here is what I found, the shop opens at nine in "
                "the morning on weekdays and at ten on Saturdays, and it is closed on Sundays and on holidays.")


def face_dirs(config: Config) -> list:
    """Where faces come from: the package's, then the operator's data folder (later ones win)."""
    return [REPO_ROOT / "faces", config.data_path / "faces"]


@dataclass
class Services:
    config: Config
    models: object  # avatar.models.loading.Models: vad, asr, llm, tts, turn_end
    memory: MemoryStore
    faces: object | None = None  # avatar.face.FaceLibrary when video is on
    knowledge: object | None = None  # avatar.knowledge.Knowledge when knowledge.path is set
    faults: list = field(default_factory=list)  # avatar.faults.Fault, only when AVATAR_FAULTS was set at start-up
    face_voices: dict = field(default_factory=dict)  # face name -> {language: voice} (avatar.face.library)

    def __post_init__(self) -> None:
        models = self.models
        self.open_sessions: set[str] = set()  # Session ids from Session() until Session.close
        from avatar.runtime.capacity import capacity

        # Until size() measures it (Services.load): the configured number, or the ceiling.
        self.capacity = capacity(self.config.limits.max_sessions, None)
        self._warm_speech = np.zeros(1, np.int16)
        self.recognition = Recognition(self.config, models, replies_busy=lambda: self.replies.busy())
        self.speech = Speech(self.config, models, self.face_voices)
        self.replies = Replies(self.config, models, knowledge=self.knowledge, open_sessions=self.open_sessions,
                               others_busy=lambda: self.speech.busy() or self.recognition.busy())
        self.render_pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
        watcher = getattr(self.knowledge, "watcher", None)
        if watcher is not None:  # a changed folder goes into the LLM's free slots
            watcher.subscribe(self.replies.knowledge_changed)

    @property
    def output_rate(self) -> int:
        return self.speech.sample_rate

    @classmethod
    def load(cls, config: Config, *, progress: Callable[[str], None] = print) -> "Services":
        from avatar import faults as fault_injection
        from avatar.models.loading import load_models

        t0 = time.monotonic()
        injected = fault_injection.faults_from_env()  # read first: a typo fails before minutes of loading
        from avatar.face.library import face_voices

        # Each face declares its voice (faces/NAME.json); the persona's face chooses the server's default voice.
        voices = face_voices(face_dirs(config))
        models = load_models(config, progress=progress, face_voices=voices.get(config.persona.face))
        memory_path = config.data_path / "memory.sqlite3"
        memory = MemoryStore(memory_path)
        progress(f"memory: {memory_path}")
        faces = None
        if config.video.enabled:
            import cv2

            from avatar.face import FaceLibrary

            # Each frame renders on one core; sessions render in parallel on the render pool instead.
            cv2.setNumThreads(1)

            faces = FaceLibrary(face_dirs(config), size=config.video.size,
                                progress=progress)
            progress(f"faces: {', '.join(faces.names) or '(none)'}")
        knowledge = None
        if config.knowledge.path:
            from avatar.knowledge import Knowledge

            # Passages are sized with a tokenizer-free estimate: ground() runs on the event loop, and the
            # xllamacpp tokenizer is a 3 ms localhost round trip per text (BENCHMARKS.md: estimate vs count).
            knowledge = Knowledge.open(config, progress=progress)
        runtime = cls(config, models, memory, faces, knowledge, injected, voices)
        if config.server.warm_up:
            runtime.warm_up(progress)
        runtime.size(progress)
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

        # Kokoro costs ~0.9 CPU-s per second of speech: a short sentence warms it (and its memory) enough.
        text = WARM_UP_TEXT if getattr(getattr(models.tts, "choice", None), "backend", "") != "kokoro" else \
            WARM_UP_TEXT.split(", the shop")[0] + "."

        def speak() -> np.ndarray:
            return np.concatenate([chunk.audio for chunk in models.tts.synthesize(text)])

        speech = [f.result() for f in [self.speech.pool.submit(speak) for _ in range(TTS_THREADS)]][0]
        self._warm_speech = speech
        # Real speech, so that the recogniser decodes words rather than an empty window.
        heard = resample_linear(speech / 32768.0, self.output_rate, models.asr.sample_rate)
        for f in [self.recognition.pool.submit(models.asr.transcribe, heard, language=language)
                  for _ in range(ASR_THREADS)]:
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
        slots = "LLM"
        try:
            slots = f"LLM ({self.replies.prime()} slots)"
        except Exception as exc:  # noqa: BLE001 - e.g. a remote LLM server not up yet: say so, serve anyway
            progress(f"WARNING: the LLM did not answer a warm-up prompt ({exc}); replies will fail until it does")
        progress(f"warmed up ASR, TTS, {slots} and the face renderer in {time.monotonic() - t0:.1f} s")

    def size(self, progress: Callable[[str], None]) -> None:
        """Set ``capacity``: the conversations admitted at once, measured from what speech and the face cost here
        (avatar.runtime.capacity), unless limits.max_sessions names a number. Measured after warm-up only."""
        from avatar.runtime import capacity

        configured = self.config.limits.max_sessions
        costs = None
        if self.config.server.warm_up:
            render = None
            if self.faces is not None and self.faces.names:
                from avatar.face.animator import build_animator

                animator = build_animator(self.faces.get(self.faces.names[0]), sample_rate=self.output_rate,
                                          video=self.config.video)
                animator.add_speech(0, self._warm_speech[: self.output_rate])
                render = lambda i: animator.jpeg_at(i * self.output_rate // 10)  # noqa: E731
            costs = capacity.measure(self.models.tts, render, self.config.video.fps)
        measured = capacity.capacity(0, *costs) if costs else None
        self.capacity = capacity.capacity(configured, *(costs or (None,)))
        progress(f"capacity: {self.capacity.describe()}")
        if configured and measured is not None and configured > measured.limit:
            progress(f"WARNING: limits.max_sessions = {configured} is more than the {measured.limit} conversations "
                     f"this machine voices in real time ({measured.describe()}); replies will fall behind when "
                     "that many speak")

    @property
    def session_limit(self) -> int:
        return self.capacity.limit

    def close(self, *, close_llm: bool = True) -> None:
        """Stop the worker threads and close the models and the stores; ``close_llm=False`` leaves the
        language model open (a test's model shared with other tests)."""
        if self.faults:
            from avatar.faults import release_hangs

            release_hangs()
        self.recognition.close()
        self.speech.close()
        self.replies.close(close_llm=close_llm)
        self.render_pool.shutdown(wait=False, cancel_futures=True)
        if self.knowledge is not None:
            self.knowledge.close()
        self.memory.close()

    def forget_session(self, session: str) -> None:
        """``session`` went: drop its waiting transcriptions, syntheses and replies (their callers get None or
        an empty stream) and the language model's cache of its conversation. Work already running stops
        through the turn's cancel event. (A dropped speculation needs only its task cancelled.)"""
        dropped = self.recognition.forget(session) + self.speech.forget(session) + self.replies.forget(session)
        if dropped:
            log.info("session %s: dropped %d queued jobs", session[:8], dropped)
        self.open_sessions.discard(session)


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
