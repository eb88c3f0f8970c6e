"""The listener: microphone audio in, the user's utterances out.

mic audio -> VAD per frame -> endpointer (speech start / pause / resume / end) -> transcripts.
It owns the pre-roll (audio from just before the start decision, so the first word is not clipped),
partial transcripts while the user speaks, speculation and the end-of-turn decision:

    at the first silent frame (a pause), transcribe and tell the session to start a speculative turn;
    if the user goes on (resume), tell it to drop that turn; if the silence lasts (end of speech), tell it
    the utterance is final, so the held reply is released at once, or a new turn starts.

With an end-of-turn model (avatar/models/smart_turn.py), the end of speech is decided during the pause: the model
is asked ``turn.ask_after_ms`` into the silence and again every ``turn.ask_every_ms``, and
``EndOfTurnPolicy`` weighs its answer against the silence so far and the speaker's rhythm; the silence
rule (``turn.max_silence_ms``) remains the cap. Without the model, ``vad.end_silence_ms`` of silence ends it.

It knows nothing of replies: what to do with an utterance is the session's business (``ListenerEvents``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from typing import Protocol

import numpy as np

from avatar.config import Config
from avatar.conversation.endofturn import EndOfTurnPolicy
from avatar.conversation.ports import Recognizer
from avatar.errors import StageError
from avatar.events import Transcript, VoiceActivity
from avatar.media.audio import INPUT_SAMPLE_RATE
from avatar.models.vad.base import Endpointer

log = logging.getLogger(__name__)

# Whisper reads 30 s windows: a longer monologue is transcribed in parts (see _carry_over), not cut into turns.
MAX_UTTERANCE_S = 28.0
MIN_HEAD_S = 5.0  # a part ends at the utterance's last pause if that leaves at least this much speech before it
# Speech starting this soon after the last turn's speech ended means the speaker had only paused.
RESUMED_WITHIN_MS = 2500.0


class ListenerEvents(Protocol):
    """What the listener tells its session."""

    def emit(self, event) -> None: ...  # VoiceActivity, Transcript and errors, for the client

    def agent_speaking(self) -> bool: ...  # the echo guard asks for clearer speech while the agent talks

    def user_started(self) -> None: ...  # speech began (a barge-in if the agent was talking)

    def heard_so_far(self, text: str) -> None: ...  # a partial transcript: get the reply's prompt ready

    def speculate(self, text: str, t_pause: float) -> None: ...  # start answering, hold the output

    def drop_speculation(self) -> None: ...  # the user went on: forget the held answer

    def utterance(self, text: str, t_end: float, t_decision: float) -> None: ...  # the user's turn is over


class Listener:
    def __init__(self, recognition: Recognizer, vad, config: Config, session: ListenerEvents, *, session_id: str):
        self.recognition = recognition  # shared: transcriptions and end-of-turn questions, in fair turns
        self.vad = vad  # the shared VAD model; each listener has its own stream of it
        self.config = config
        self.session = session
        self.session_id = session_id
        self.vad_stream = vad.new_stream()
        self.detector = recognition.turn_end  # shared end-of-turn model, or None
        vad_cfg = config.vad
        if self.detector is not None:  # the model decides; silence alone ends a turn only at the cap
            vad_cfg = dataclasses.replace(vad_cfg, end_silence_ms=config.turn.max_silence_ms)
        self.endpointer = Endpointer(vad_cfg, vad.sample_rate, vad.frame_samples)
        self.policy = EndOfTurnPolicy(config.turn)
        self._padding = np.zeros(int(config.turn.asr_padding_ms * vad.sample_rate / 1000), np.float32)
        self._pause = 0  # counts pauses, so a late model answer is not applied to a later pause
        self._pause_ms = 0.0  # how long the current pause has lasted
        self._next_ask_ms = 0.0
        self._asking: asyncio.Task | None = None
        self._decided: asyncio.Future | None = None  # woken at each frame while an early answer waits
        self._last_end_sample: int | None = None  # input position where the last utterance's speech ended
        self._pending_input = np.zeros(0, dtype=np.float32)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, config.turn.pre_roll_ms * vad.sample_rate // 1000 // vad.frame_samples))
        self._utterance: list[np.ndarray] | None = None
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=400)  # (input samples so far, time)
        self._input_samples = 0
        self._partial_task: asyncio.Task | None = None
        self._last_partial_at = 0.0
        self._speculation: asyncio.Task | None = None  # the ASR of the utterance up to the pause
        self._heads: list[asyncio.Task] = []  # transcripts of a long utterance's earlier parts, in order
        self._pause_frame = 0  # where in the utterance its last pause began (frames)
        self._tasks: set[asyncio.Task] = set()

    def _task(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _arrival_time(self, sample: int) -> float:
        """When the input sample ``sample`` reached the server (for latency from the real end of speech)."""
        for end, at in reversed(self._arrivals):
            if end <= sample:
                return at
        return self._arrivals[0][1] if self._arrivals else time.monotonic()

    # -- audio in ---------------------------------------------------------------------------------------
    def on_audio(self, samples: np.ndarray) -> None:
        self._input_samples += len(samples)
        self._arrivals.append((self._input_samples, time.monotonic()))
        vad = self.vad
        data = np.concatenate([self._pending_input, samples]) if len(self._pending_input) else samples
        n = vad.frame_samples
        usable = len(data) - len(data) % n
        self._pending_input = data[usable:].copy()
        for start in range(0, usable, n):
            frame = data[start : start + n]
            prob = self.vad_stream.probability(frame)
            if self._utterance is not None:
                self._utterance.append(frame)
            else:
                self._pre_roll.append(frame)
            for event in self.endpointer.update(prob, agent_speaking=self.session.agent_speaking()):
                self._on_vad(event.kind, event.sample)
            if self._decided is not None and not self._decided.done():
                self._decided.set_result(None)  # an early answer waiting for the silence looks again
            if self.endpointer.paused:
                self._pause_ms = self.endpointer.silence_ms
                self._maybe_ask_turn_end()
        if self._utterance is not None:
            self._maybe_partial()
            if len(self._utterance) * n >= MAX_UTTERANCE_S * vad.sample_rate:
                self._carry_over(n, vad.sample_rate)

    def _on_vad(self, kind: str, sample: int) -> None:
        t_ms = round(sample * 1000.0 / INPUT_SAMPLE_RATE, 1)
        if kind == "speech_start":
            if self._last_end_sample is not None:
                # Speech again soon after a turn ended: the speaker had only paused (a reader between
                # sentences). Their rhythm, so the next such pause does not end a turn.
                gap_ms = (sample - self._last_end_sample) * 1000.0 / INPUT_SAMPLE_RATE
                if gap_ms < RESUMED_WITHIN_MS:
                    self.policy.went_on(gap_ms)
            self._utterance = list(self._pre_roll)
            self._pre_roll.clear()
            self._heads, self._pause_frame = [], 0
            self._last_partial_at = time.monotonic()
            self.session.emit(VoiceActivity("speech_start", t_ms))
            self.session.user_started()
        elif kind == "pause":
            self._pause += 1
            self._pause_frame = len(self._utterance or ())
            cfg = self.config.turn
            self._next_ask_ms = cfg.ask_after_ms + cfg.ask_every_ms  # the early answer covers the first ask
            self._speculate()
            self._ask_early()
        elif kind == "resume":
            self.policy.went_on(self._pause_ms)
            self._pause_ms = 0.0
            self._cancel_asking()  # its answer is about a pause that is over
            if self._speculation is not None:
                self._speculation.cancel()
                self._speculation = None
                self.session.drop_speculation()
        elif kind == "speech_end":
            self._last_end_sample = sample
            self.session.emit(VoiceActivity("speech_end", t_ms))
            self._end_utterance(self._arrival_time(sample))

    def _carry_over(self, frame_samples: int, sample_rate: int) -> None:
        """A monologue reached MAX_UTTERANCE_S: transcribe it up to its last pause now and keep listening.
        The text of that part starts the utterance's transcripts. Ending the turn here instead answered a
        reader in mid-reading: 2 of the 3 premature turns in avatar bench's 80 s reading came from it."""
        frames = self._utterance or []
        cut = self._pause_frame
        if cut * frame_samples < MIN_HEAD_S * sample_rate or cut >= len(frames):
            cut = len(frames)  # no usable pause: cut here, maybe inside a word
        head = np.concatenate(frames[:cut] + [self._padding])
        del frames[:cut]
        self._pause_frame = 0
        self._heads.append(self._task(self.recognition.transcribe(head, kind="speculative", session=self.session_id)))

    async def _with_heads(self, heads: list[asyncio.Task], text: str) -> str:
        """``text`` after the transcripts of the utterance's earlier parts."""
        parts = [await head for head in heads] + [text]
        return " ".join(part.strip() for part in parts if part and part.strip())

    def _utterance_audio(self, padded: bool = False) -> np.ndarray:
        """The utterance so far; ``padded``: with trailing silence, as the recogniser likes it."""
        parts = list(self._utterance or [])
        if padded:
            parts.append(self._padding)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    # -- the end-of-turn model ----------------------------------------------------------------------------
    def _ask_early(self) -> None:
        """At the first silent frame, ask about the utterance followed by ``ask_after_ms`` of digital
        silence, so the answer is ready when the real silence gets there (the model takes 40-150 ms)."""
        if self.detector is None or self._utterance is None:
            return
        self._cancel_asking()  # still about an earlier pause
        ask_after = self.config.turn.ask_after_ms
        silence = np.zeros(int(ask_after * INPUT_SAMPLE_RATE / 1000), np.float32)
        self._asking = self._ask(np.concatenate([self._utterance_audio(), silence]), ask_after)

    def _cancel_asking(self) -> None:
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()  # a question still waiting for the model leaves its queue
        self._asking = None

    def _maybe_ask_turn_end(self) -> None:
        """While paused: ask again every ``ask_every_ms`` once the early answer has been weighed."""
        if self.detector is None or self._utterance is None or self._pause_ms < self._next_ask_ms:
            return
        if self._asking is not None and not self._asking.done():
            return  # an answer is on its way: it decides when it comes
        self._next_ask_ms = self._pause_ms + self.config.turn.ask_every_ms
        self._asking = self._ask(self._utterance_audio(), self._pause_ms)

    def _ask(self, audio: np.ndarray, at_silence_ms: float) -> asyncio.Task:
        pause = self._pause

        async def ask() -> None:
            probability = await self.recognition.turn_end_probability(audio, session=self.session_id)
            if probability is None:
                return  # the model failed: the silence rule decides
            while pause == self._pause and self.endpointer.paused and self._utterance is not None:
                silence_ms = self.endpointer.silence_ms
                if silence_ms >= at_silence_ms:  # the early answer waits for the silence it assumed
                    log.debug("end of turn? p=%.2f after %.0f ms of silence", probability, silence_ms)
                    if self.policy.complete(probability, silence_ms):
                        event = self.endpointer.end_now()
                        self._on_vad(event.kind, event.sample)
                    return
                self._decided = asyncio.get_running_loop().create_future()
                await self._decided  # the next microphone frame (see on_audio)

        return self._task(ask())

    def _maybe_partial(self) -> None:
        interval = self.config.asr.partial_interval_ms / 1000.0
        if self._partial_task is not None and not self._partial_task.done():
            return
        if time.monotonic() - self._last_partial_at < interval or self.endpointer.paused:
            return
        self._last_partial_at = time.monotonic()
        audio = self._utterance_audio()
        heads = [head for head in self._heads if head.done() and not head.cancelled() and not head.exception()]

        async def partial() -> None:
            try:
                text = await self._with_heads(heads, await self.recognition.transcribe(
                    audio, kind="partial", session=self.session_id))
            except Exception as exc:  # noqa: BLE001 - partials are best effort; the final reports errors
                log.debug("partial ASR failed: %r", exc)
                return
            if text and self._utterance is not None:
                self.session.emit(Transcript(text, final=False))
                self.session.heard_so_far(text)

        self._partial_task = self._task(partial())

    # -- end of speech and speculation ------------------------------------------------------------------
    def _speculate(self) -> None:
        """At the first silent frame, transcribe and have the session start answering, output held back."""
        if not self.config.turn.speculative or self._utterance is None:
            return
        audio = self._utterance_audio(padded=True)
        t_pause = time.monotonic()
        heads = list(self._heads)

        async def speculate() -> str:
            text = await self._with_heads(heads, await self.recognition.transcribe(
                audio, kind="speculative", session=self.session_id))
            if text and self._speculation is asyncio.current_task():
                self.session.speculate(text, t_pause)
            return text

        self._speculation = self._task(speculate())

    def _end_utterance(self, t_end: float) -> None:
        t_decision = time.monotonic()
        audio = self._utterance_audio(padded=True)
        self._pause_ms = 0.0
        speculation = self._speculation
        heads, self._heads = self._heads, []
        self._utterance = None
        self._speculation = None
        if self._partial_task is not None:
            self._partial_task.cancel()
        if speculation is not None:
            self.recognition.promote_transcription(self.session_id)  # still queued: it is the final one now

        async def finish() -> None:
            try:
                if speculation is not None:
                    text = await speculation
                else:
                    text = await self._with_heads(heads, await self.recognition.transcribe(
                        audio, kind="final", session=self.session_id))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.session.emit_error(StageError(f"speech recognition failed: {exc}. Please say that again."),
                                        where="ASR")
                return
            if text:
                self.session.emit(Transcript(text, final=True))
                self.session.utterance(text, t_end, t_decision)

        self._task(finish())

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
