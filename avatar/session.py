"""One conversation: microphone audio in, spoken (and animated) reply out.

Per-session state only; the models are shared (see ``runtime.Runtime``). The flow:

    audio -> VAD/endpointer -> partial ASR while speaking
          -> at the first pause: final ASR and a *speculative* turn (LLM -> clauses -> TTS) whose
             output is held back
          -> if the silence lasts (end of speech) the held output is released at once; if the user
             goes on speaking it is dropped.
    speech while the agent talks (barge-in) -> cancel LLM/TTS, flush queued audio, tell the client,
             remember only what the user heard.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np

from avatar.clauses import ClauseSplitter, heard_text
from avatar.errors import AvatarError, StageError
from avatar.memory import Turn, build_prompt
from avatar.outbound import Outbound
from avatar.protocol import INPUT_SAMPLE_RATE, error_event
from avatar.vad.base import Endpointer

log = logging.getLogger(__name__)

MAX_UTTERANCE_S = 28.0  # Whisper sees 30 s windows; a longer monologue is cut into turns
_DONE = object()


async def iterate_in_thread(make_iter: Callable[[], Iterator[Any]], executor=None) -> AsyncIterator[Any]:
    """Run a blocking generator in a worker thread and yield its items in the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed while the worker was busy (shutdown)
            pass

    def work() -> None:
        try:
            for item in make_iter():
                put((item, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            put((None, exc))
            return
        put((_DONE, None))

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                break
            yield item
    finally:
        if future.done():
            future.exception()  # collected, so asyncio does not warn about it


@dataclass
class TurnState:
    turn_id: int
    user_text: str
    source: str  # "voice" | "text"
    t_ref: float  # monotonic time of the end of the user's speech (or the text's arrival)
    released: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)
    held: list[Callable[[], None]] = field(default_factory=list)  # output kept back until release
    reply: str = ""
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # audio on the timeline + its text
    first_audio_position: int | None = None
    marks: dict[str, float] = field(default_factory=dict)  # stage -> monotonic time of its first output
    task: asyncio.Task | None = None
    finished: bool = False
    sources: list[str] = field(default_factory=list)  # knowledge files the reply could draw on

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, at if at is not None else time.monotonic())

    def latency_ms(self, name: str) -> float | None:
        at = self.marks.get(name)
        return None if at is None else round((at - self.t_ref) * 1000.0, 1)


class Session:
    def __init__(self, runtime, outbound: Outbound, *, session_id: str, user_id: str | None,
                 history: list[Turn], animator=None):
        self.rt = runtime
        self.out = outbound
        self.session_id = session_id
        self.user_id = user_id
        self.history = history
        self.animator = animator
        cfg = runtime.config
        vad = runtime.models.vad
        self.vad_stream = vad.new_stream()
        self.endpointer = Endpointer(cfg.vad, vad.sample_rate, vad.frame_samples)
        self._pending_input = np.zeros(0, dtype=np.float32)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, cfg.vad.pre_roll_ms * vad.sample_rate // 1000 // vad.frame_samples))
        self._utterance: list[np.ndarray] | None = None
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=400)  # (input samples so far, time)
        self._input_samples = 0
        self._partial_task: asyncio.Task | None = None
        self._last_partial_at = 0.0
        self._speculation: tuple[int, asyncio.Task] | None = None  # (utterance length, ASR task)
        self.turn: TurnState | None = None  # the turn being answered (released or speculative)
        self._turn_ids = itertools.count(1)
        self._state = ""
        self.closed = False
        self.out.on_audio_sent = self._on_audio_sent
        self.out.on_first_frame = self._on_frame_sent
        self.set_state("listening")

    # -- small helpers ---------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.out.send_json({"type": "state", "state": state})

    def error(self, exc: BaseException, *, where: str) -> None:
        if isinstance(exc, AvatarError):
            code, message = exc.code, exc.message
        else:
            code, message = "stage_failed", f"{where} failed: {exc!r}. The conversation goes on; try again."
        log.warning("session %s: %s: %s", self.session_id[:8], where, message,
                    exc_info=not isinstance(exc, AvatarError))
        self.out.send_json(error_event(code, message))

    def _arrival_time(self, sample: int) -> float:
        """When the input sample ``sample`` reached the server (for latency from the real end of speech)."""
        for end, at in reversed(self._arrivals):
            if end <= sample:
                return at
        return self._arrivals[0][1] if self._arrivals else time.monotonic()

    def agent_speaking(self) -> bool:
        return (self.turn is not None and self.turn.released) or self.out.is_playing()

    # -- input ------------------------------------------------------------------------------------------
    def on_audio(self, samples: np.ndarray) -> None:
        self._input_samples += len(samples)
        self._arrivals.append((self._input_samples, time.monotonic()))
        vad = self.rt.models.vad
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
            for event in self.endpointer.update(prob, agent_speaking=self.agent_speaking()):
                self._on_vad(event.kind, event.sample)
        if self._utterance is not None:
            self._maybe_partial()
            if len(self._utterance) * n >= MAX_UTTERANCE_S * vad.sample_rate:
                self.endpointer.reset()
                self._on_vad("speech_end", self.endpointer.position)

    def _on_vad(self, kind: str, sample: int) -> None:
        t_ms = round(sample * 1000.0 / INPUT_SAMPLE_RATE, 1)
        if kind == "speech_start":
            self._utterance = list(self._pre_roll)
            self._pre_roll.clear()
            self._last_partial_at = time.monotonic()
            self.out.send_json({"type": "vad", "event": "speech_start", "t_ms": t_ms})
            if self.turn is not None:
                self.interrupt("barge_in")
        elif kind == "pause":
            self._speculate()
        elif kind == "resume":
            self._drop_speculation()
        elif kind == "speech_end":
            self.out.send_json({"type": "vad", "event": "speech_end", "t_ms": t_ms})
            self._end_utterance(self._arrival_time(sample))

    def _utterance_audio(self) -> np.ndarray:
        return np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)

    def _maybe_partial(self) -> None:
        interval = self.rt.config.asr.partial_interval_ms / 1000.0
        if self._partial_task is not None and not self._partial_task.done():
            return
        if time.monotonic() - self._last_partial_at < interval or self.endpointer.paused:
            return
        self._last_partial_at = time.monotonic()
        audio = self._utterance_audio()

        async def partial() -> None:
            try:
                text = await self.rt.transcribe(audio, kind="partial", session=self.session_id)
            except Exception as exc:  # noqa: BLE001 - partials are best effort; the final reports errors
                log.debug("partial ASR failed: %r", exc)
                return
            if text and self._utterance is not None:
                self.out.send_json({"type": "transcript", "text": text, "final": False})

        self._partial_task = asyncio.create_task(partial())

    # -- end of speech and speculative turns ----------------------------------------------------------------
    def _speculate(self) -> None:
        """At the first silent frame, transcribe and start answering, holding the output back."""
        if not self.rt.config.vad.speculative or self._utterance is None:
            return
        audio = self._utterance_audio()
        t_pause = time.monotonic()

        async def speculate() -> str:
            text = await self.rt.transcribe(audio, kind="speculative", session=self.session_id)
            if text and self._speculation is not None and self._speculation[1] is asyncio.current_task():
                self._start_turn(text, "voice", t_ref=t_pause, released=False)
                self.turn.mark("asr_final")
            return text

        self._speculation = (len(self._utterance), asyncio.create_task(speculate()))

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation[1].cancel()  # its queued transcription goes too
            self._speculation = None
            if self.turn is not None and not self.turn.released:
                self._cancel_turn(self.turn)
                self.turn = None

    def _end_utterance(self, t_end: float) -> None:
        t_decision = time.monotonic()
        audio = self._utterance_audio()
        speculation = self._speculation
        self._utterance = None
        self._speculation = None
        if self._partial_task is not None:
            self._partial_task.cancel()
        if speculation is not None:
            self.rt.promote_transcription(self.session_id)  # still queued: it is the final one now

        async def finish() -> None:
            try:
                text = await (speculation[1] if speculation is not None else self.rt.transcribe(audio, kind="final", session=self.session_id))
            except Exception as exc:  # noqa: BLE001
                self.error(StageError(f"speech recognition failed: {exc}. Please say that again."),
                           where="ASR")
                return
            if not text:
                return
            self.out.send_json({"type": "transcript", "text": text, "final": True})
            turn = self.turn
            if turn is not None and not turn.released and turn.user_text == text:
                self._release(turn)
            else:
                self._start_turn(text, "voice", t_ref=t_end)
                self.turn.mark("asr_final")
            # Latency counts from the real end of speech, also for work that started before it was known.
            self.turn.t_ref = t_end
            self.turn.mark("endpoint", t_decision)

        asyncio.create_task(finish())

    # -- turns ------------------------------------------------------------------------------------------
    def on_text(self, text: str) -> None:
        if self.turn is not None:
            self.interrupt("text")
        self.out.send_json({"type": "transcript", "text": text, "final": True})
        self._start_turn(text, "text", t_ref=time.monotonic())

    def _start_turn(self, text: str, source: str, *, t_ref: float, released: bool = True) -> None:
        if self.turn is not None:
            self.interrupt("barge_in")
        turn = TurnState(next(self._turn_ids), text, source, t_ref, released=released)
        self.turn = turn
        self._emit(turn, lambda: self.out.send_json(
            {"type": "turn_start", "turn_id": turn.turn_id, "user_text": text, "source": source}))
        self._emit(turn, lambda: self.set_state("thinking"))
        turn.task = asyncio.create_task(self._run_turn(turn))

    def _emit(self, turn: TurnState, action: Callable[[], None]) -> None:
        """Do ``action`` now, or at release for a speculative turn."""
        if turn.released:
            action()
        else:
            turn.held.append(action)

    def _release(self, turn: TurnState) -> None:
        turn.released = True
        held, turn.held = turn.held, []
        for action in held:
            action()

    def _cancel_turn(self, turn: TurnState) -> None:
        turn.cancel.set()
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()

    async def _run_turn(self, turn: TurnState) -> None:
        rt = self.rt
        try:
            # Knowledge (issue 13): retrieve before the prompt is built; None when knowledge.path is "".
            grounding = rt.knowledge.ground(turn.user_text, self.history) if rt.knowledge is not None else None
            turn.sources = grounding.sources if grounding is not None else []
            messages = build_prompt(
                rt.config.system_prompt, self.history, turn.user_text,
                count_tokens=rt.count_tokens,
                budget_tokens=int(rt.models.llm.context_tokens * rt.config.memory.prompt_budget)
                - (grounding.tokens if grounding is not None else 0),
                max_turns=rt.config.memory.max_turns_in_prompt,
            )
            if grounding is not None:
                messages = grounding.apply(messages)
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            speaker = asyncio.create_task(self._speak(turn, clauses))
            splitter = ClauseSplitter()

            def say(clause: str) -> None:
                if grounding is not None:
                    # Checked before it is spoken, shown or remembered; the text streams clause by clause.
                    clause = grounding.check(clause)
                    if not clause:
                        return
                    turn.reply += clause + " "
                    self._emit(turn, lambda c=clause: self.out.send_json(
                        {"type": "reply_delta", "turn_id": turn.turn_id, "text": c + " "}))
                turn.mark("first_clause")
                clauses.put_nowait(clause)

            try:
                async for piece in rt.stream_chat(messages, turn.cancel, session=self.session_id):
                    turn.mark("llm_first_token")
                    if grounding is None:
                        turn.reply += piece
                        self._emit(turn, lambda p=piece: self.out.send_json(
                            {"type": "reply_delta", "turn_id": turn.turn_id, "text": p}))
                    for clause in splitter.push(piece):
                        say(clause)
                for clause in splitter.flush():
                    say(clause)
            finally:
                clauses.put_nowait(None)
            await speaker
            # The turn lasts until the user has heard it all: a barge-in until then truncates it.
            while not turn.released or self.out.is_playing():
                await asyncio.sleep(0.05)
            self._finish_turn(turn, interrupted=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed turn must not end the session
            self.error(exc, where="reply")
            if turn.released:
                self._finish_turn(turn, interrupted=True)
            elif self.turn is turn:
                self.turn = None

    async def _speak(self, turn: TurnState, clauses: asyncio.Queue) -> None:
        rt = self.rt
        while (clause := await clauses.get()) is not None:
            async for chunk in rt.synthesize(clause, turn.cancel, session=self.session_id):
                turn.mark("tts_first_audio")
                self._emit(turn, lambda c=chunk: self._place(turn, c))

    def _place(self, turn: TurnState, chunk) -> None:
        if turn.finished or turn.cancel.is_set():
            return
        audio = chunk.audio
        position = self.out.place_audio(turn.turn_id, audio)
        if turn.first_audio_position is None:
            turn.first_audio_position = position
        turn.spans.append((position, position + len(audio), chunk.text))
        if self.animator is not None:
            self.animator.add_speech(position, audio, chunk.phonemes)

    def _on_audio_sent(self, turn_id: int, position: int, at: float) -> None:
        turn = self.turn
        if turn is not None and turn.turn_id == turn_id and "audio_out" not in turn.marks:
            turn.mark("audio_out", at)
            self.set_state("speaking")

    def _on_frame_sent(self, position: int, at: float) -> None:
        turn = self.turn
        if turn is not None and turn.first_audio_position is not None and position >= turn.first_audio_position:
            turn.mark("first_frame", at)

    def interrupt(self, reason: str) -> None:
        """Stop the agent: cancel generation, flush audio, keep only what was heard."""
        turn = self.turn
        if turn is None:
            return
        if not turn.released:  # a speculative turn nobody heard of: drop it silently
            self._cancel_turn(turn)
            self.turn = None
            return
        self._cancel_turn(turn)
        position = self.out.clock()
        self.out.flush_audio(turn.turn_id, position)
        if self.animator is not None:
            self.animator.clear_speech(position)
        self.out.send_json({"type": "interrupt", "turn_id": turn.turn_id, "position": position, "reason": reason})
        self._finish_turn(turn, interrupted=True, position=position)

    def _finish_turn(self, turn: TurnState, *, interrupted: bool, position: int | None = None) -> None:
        if turn.finished:
            return
        turn.finished = True
        if interrupted:
            heard = heard_text(turn.spans, self.out.clock() if position is None else position)
        else:
            heard = turn.reply.strip()
        record = Turn(turn.user_text, heard, interrupted)
        self.history.append(record)
        try:
            self.rt.memory.add_turn(self.session_id, self.user_id, record, turn.reply)
        except Exception as exc:  # noqa: BLE001 - the reply was given; report that it was not saved
            self.error(StageError(f"could not save the turn to memory: {exc}"), where="memory")
        audio_samples = sum(end - start for start, end, _ in turn.spans)
        names = ("endpoint", "asr_final", "llm_first_token", "first_clause", "tts_first_audio",
                 "audio_out", "first_frame")
        # Latency first: a client may hang up as soon as it sees turn_end.
        self.out.send_json({"type": "latency", "turn_id": turn.turn_id, "source": turn.source,
                            **{f"{name}_ms": turn.latency_ms(name) for name in names}})
        self.out.send_json({"type": "turn_end", "turn_id": turn.turn_id, "reply": turn.reply.strip(),
                            "heard": heard, "interrupted": interrupted, "audio_samples": audio_samples,
                            "sources": turn.sources})
        if self.turn is turn:
            self.turn = None
        self.set_state("listening")

    def close(self) -> None:
        self.closed = True
        if self.turn is not None:
            self._cancel_turn(self.turn)
        for task in (self._partial_task, self._speculation[1] if self._speculation else None):
            if task is not None:
                task.cancel()
        self.rt.forget_session(self.session_id)  # its queued transcriptions, syntheses and replies
