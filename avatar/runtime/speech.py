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
    def __init__(self, config: Config, models, face_voices: dict[str, dict[str, str]] | None = None):
        self.config = config
        self.models = models  # read at each call: fault injection (avatar.faults) wraps them after start-up
        self.face_voices = face_voices or {}  # face name -> {language: voice} (avatar.face.library.face_voices)
        self.pool = ThreadPoolExecutor(TTS_THREADS, thread_name_prefix="tts")
        self.queue = FairQueue(TTS_THREADS, TTS_KINDS)

    def voice_for(self, face: str | None) -> str:
        """The voice a session with ``face`` speaks with: the face's own in the persona's language when the model
        has it (Kokoro: one model, every voice) and the operator named none; else the server's voice."""
        from avatar.models.voices import describe_voice, face_voice

        choice = getattr(self.models.tts, "choice", None)
        if choice is None:
            return ""
        own, _ = face_voice(self.face_voices.get(face or "", {}), self.config.persona.language)
        if not choice.explicit and choice.backend == describe_voice(own).backend == "kokoro":
            return own
        return choice.voice.name

    @property
    def tts(self):
        return self.models.tts

    @property
    def sample_rate(self) -> int:
        return int(self.tts.sample_rate)

    def busy(self) -> bool:
        return self.queue.busy()

    async def synthesize(self, text: str, cancel: threading.Event, *, session: str = "",
                         first: bool = False, voice: str = "") -> AsyncIterator:
        """Speech chunks for ``text``; ``first``: a reply's first clause, synthesised before others' later
        clauses; ``voice``: from voice_for (the session's face), "" for the server's."""
        def chunks():
            for chunk in self.tts.synthesize(text, voice or None):
                yield chunk
                if cancel.is_set():
                    return

        try:
            async with self.queue.turn(session, TTS_KINDS[0] if first else TTS_KINDS[1]):
                if cancel.is_set():
                    return
                # Each chunk is a whole sentence, and Kokoro takes about as long as the sentence lasts (6.3 s of
                # speech took 4.6-6.7 s on two threads of a loaded 2-core VM): longer than the pause that means
                # a stream has stalled (limits.item_timeout_s), so each sentence gets the first one's time.
                async for chunk in with_timeouts(iterate_in_thread(chunks, self.pool), self.config.limits,
                                                 "speech synthesis", cancel, each_like_first=True):
                    yield chunk
        except SessionGone:
            return

    def forget(self, session: str) -> int:
        """Drop ``session``'s waiting syntheses; how many were dropped."""
        return self.queue.forget(session)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
