"""The turn runner: a user's text in, a spoken (and animated) reply out.

text -> LLM (streamed) -> clauses -> TTS -> audio placed on the connection's media timeline (and the face).
A turn can start from any source: the microphone (through the listener), typed text, a script line, a
viewer comment. It may start *speculatively*: everything runs, but what it would show or play is held back
until ``release`` (the user's pause became the end of the turn) or dropped (the user went on).

The runner owns the turn's state, the latency marks (one per stage in ``events.LATENCY_STAGES``) and
heard-text truncation: when a reply is cut, memory keeps only the words whose audio had played. Every turn
has a ``SpeechHandle`` (avatar/conversation/speech.py) that its caller awaits and may interrupt; the runner
resolves it when the turn ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from avatar.conversation.clauses import ClauseSplitter, heard_text
from avatar.conversation.memory import Turn
from avatar.conversation.pacing import speech_seconds
from avatar.conversation.ports import TurnServices
from avatar.conversation.prompt import PromptWindow, build_prompt
from avatar.conversation.speech import SpeechHandle
from avatar.errors import AvatarError, StageError
from avatar.events import (LATENCY_STAGES, ErrorRaised, Event, Interrupted, ReplyDelta, StateChanged, TurnEnded,
                           TurnStarted)
from avatar.media.contract import Timeline, played_out

log = logging.getLogger(__name__)


@dataclass
class TurnState:
    turn_id: int
    user_text: str
    source: str  # "voice" | "text" | ...
    t_ref: float  # monotonic time of the end of the user's speech (or the text's arrival)
    released: bool = True
    release_event: asyncio.Event = field(default_factory=asyncio.Event)  # set when ``released`` becomes True
    cancel: threading.Event = field(default_factory=threading.Event)
    held: list[Callable[[], None]] = field(default_factory=list)  # output kept back until release
    reply: str = ""
    written: str = ""  # what the LLM wrote so far (before the knowledge check)
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # audio on the timeline + its text
    first_audio_position: int | None = None
    marks: dict[str, float] = field(default_factory=dict)  # stage -> monotonic time of its first output
    task: asyncio.Task | None = None
    finished: bool = False
    line: str | None = None  # a fixed line to say (a kiosk's greeting) instead of asking the LLM
    remember: bool = True  # stored in memory (an attract line said to an empty room is not)
    sources: list[str] = field(default_factory=list)  # knowledge files the reply could draw on
    # What the knowledge base searches for and checks the reply against, when not user_text: a viewer's
    # own words, not the prompt that quotes them (avatar/live/host.py).
    about: str | None = None
    # Seconds this turn spent in the knowledge base (retrieval before the prompt, the check of each clause),
    # all of it on the way to the reply's audio; None without a knowledge base.
    knowledge_s: float | None = None
    handle: SpeechHandle | None = None  # what the caller awaits (TurnRunner.start makes it)

    def __post_init__(self) -> None:
        if self.released:
            self.release_event.set()

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, at if at is not None else time.monotonic())

    def latency_ms(self, name: str) -> float | None:
        at = self.marks.get(name)
        return None if at is None else round((at - self.t_ref) * 1000.0, 1)


@dataclass
class Conversation:
    """Who is talking and what was said before: the turn runner's view of the session."""

    session_id: str
    user_id: str | None
    history: list[Turn]
    prompt_window: PromptWindow = field(default_factory=PromptWindow)  # keeps the LLM's prompt cache useful


def report_error(emit: Callable[[Event], None], exc: BaseException, *, where: str, session_id: str) -> None:
    """A failed stage as an error event the user can act on; the conversation goes on."""
    if isinstance(exc, AvatarError):
        code, message = exc.code, exc.message
    else:
        code, message = "stage_failed", f"{where} failed: {exc!r}. The conversation goes on; try again."
    log.warning("session %s: %s: %s", session_id[:8], where, message, exc_info=not isinstance(exc, AvatarError))
    emit(ErrorRaised(code, message))


async def _said(line: str):
    """A fixed line as if the LLM had written it in one piece."""
    yield line


class TurnRunner:
    def __init__(self, services: TurnServices, conversation: Conversation, *, emit: Callable[[Event], None],
                 timeline: Timeline, face=None):
        self.services = services
        self.conversation = conversation
        self.emit = emit
        self.timeline = timeline  # where reply audio is placed: the browser's socket, a livestream
        self.face = face  # avatar.media.face_video.FaceVideo or None: animated with the same audio
        self.turn: TurnState | None = None  # the turn being answered (released or speculative)
        self._turn_ids = itertools.count(1)
        self.state = ""
        self._prefilling: asyncio.Task | None = None  # Replies.prefill of the words heard so far
        self.closed = False  # the connection is gone: nothing more is reported
        self.set_state("listening")

    # -- state ----------------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.emit(StateChanged(state))

    def speaking(self) -> bool:
        """The agent is talking (or about to): a released turn, or reply audio still playing."""
        return (self.turn is not None and self.turn.released) or self.timeline.is_playing()

    def error(self, exc: BaseException, *, where: str) -> None:
        report_error(self.emit, exc, where=where, session_id=self.conversation.session_id)

    # -- turns ------------------------------------------------------------------------------------------
    def start(self, text: str, source: str, *, t_ref: float, released: bool = True, line: str | None = None,
              remember: bool = True, about: str | None = None) -> TurnState:
        """Answer ``text`` (or, with ``line``, say that line as the reply without asking the LLM)."""
        if self.turn is not None:
            self.interrupt("barge_in")
        turn = TurnState(next(self._turn_ids), text, source, t_ref, released=released, line=line, remember=remember,
                         about=about)
        turn.handle = SpeechHandle(turn, self)
        self.turn = turn
        self._emit(turn, lambda: self.emit(TurnStarted(turn.turn_id, text, source)))
        self._emit(turn, lambda: self.set_state("thinking"))
        turn.task = asyncio.create_task(self._run(turn))
        return turn

    def release(self, turn: TurnState) -> None:
        """A speculative turn becomes real: everything it held back goes out now."""
        turn.released = True
        turn.release_event.set()
        held, turn.held = turn.held, []
        for action in held:
            action()

    def drop(self, turn: TurnState) -> None:
        """Forget a speculative turn nobody heard of."""
        self._cancel(turn)
        if self.turn is turn:
            self.turn = None
        turn.handle.resolve("", interrupted=True)

    def _emit(self, turn: TurnState, action: Callable[[], None]) -> None:
        """Do ``action`` now, or at release for a speculative turn."""
        if turn.released:
            action()
        else:
            turn.held.append(action)

    @staticmethod
    def _cancel(turn: TurnState) -> None:
        turn.cancel.set()
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()

    def prefill(self, text: str) -> None:
        """The user is still speaking and has said ``text`` so far: have the LLM evaluate the prompt this
        turn would get (history, ``text``) into the conversation's slot, so that the turn evaluates only
        the words after ``text`` (Replies.prefill). Not while a turn runs or a reply plays (the slot is
        busy, and a barge-in's words may be dropped), nor when this turn's facts would go into its user
        message (a folder too large to stand in the system prompt: they depend on the whole question)."""
        if self.closed or self.turn is not None or self.timeline.is_playing():
            return
        if self._prefilling is not None and not self._prefilling.done():
            return
        services = self.services
        grounding = services.knowledge.ground(text, self.conversation.history) if services.knowledge else None
        if grounding is not None and not grounding.standing:
            return
        # On a copy of the window: where the history starts is the turn's to decide.
        messages = self._prompt(text, grounding, window=dataclasses.replace(self.conversation.prompt_window))
        self._prefilling = asyncio.create_task(services.replies.prefill(messages, session=self.conversation.session_id))

    def _prompt(self, user_text: str, grounding, window: PromptWindow | None = None) -> list[dict]:
        services = self.services
        messages = build_prompt(
            services.config.system_prompt, self.conversation.history, user_text,
            count_tokens=services.replies.count_tokens,
            budget_tokens=int(services.replies.context_tokens * services.config.memory.prompt_budget)
            - (grounding.tokens if grounding is not None else 0),
            max_turns=services.config.memory.max_turns_in_prompt,
            window=window if window is not None else self.conversation.prompt_window,
        )
        return grounding.apply(messages) if grounding is not None else messages

    async def _run(self, turn: TurnState) -> None:
        services = self.services
        paced = None
        try:
            grounding = None
            if turn.line is not None:
                pieces = _said(turn.line)
            else:
                # Knowledge (avatar/knowledge/): passages retrieved before the prompt is built.
                if services.knowledge is not None:
                    started = time.perf_counter()
                    grounding = services.knowledge.ground(turn.about or turn.user_text, self.conversation.history)
                    turn.knowledge_s = time.perf_counter() - started
                    turn.sources = grounding.sources
                messages = self._prompt(turn.user_text, grounding)
                paced = services.replies.pacing.reply(lambda: self._ahead_s(turn))
                pieces = services.replies.stream_chat(messages, turn.cancel, session=self.conversation.session_id,
                                                      hold=paced.hold)
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            speaker = asyncio.create_task(self._speak(turn, clauses))
            splitter = ClauseSplitter()

            def say(clause: str | None) -> None:
                if grounding is not None:
                    # Checked before it is spoken, shown or remembered: the text streams a sentence at a
                    # time (None: the reply ended, its last unfinished sentence may go).
                    started = time.perf_counter()
                    clause = grounding.check(clause) if clause is not None else grounding.finish()
                    turn.knowledge_s += time.perf_counter() - started
                    if not clause:
                        return
                    turn.reply += clause + " "
                    self._emit(turn, lambda c=clause: self.emit(ReplyDelta(turn.turn_id, c + " ")))
                turn.mark("first_clause")
                if paced is not None:
                    paced.started()
                clauses.put_nowait(clause)

            try:
                async for piece in pieces:
                    turn.mark("llm_first_token")
                    turn.written += piece
                    if grounding is None:
                        turn.reply += piece
                        self._emit(turn, lambda p=piece: self.emit(ReplyDelta(turn.turn_id, p)))
                    for clause in splitter.push(piece):
                        say(clause)
                for clause in splitter.flush():
                    say(clause)
                if grounding is not None:
                    say(None)
            finally:
                clauses.put_nowait(None)
            await speaker
            # The turn lasts until the user has heard it all: a barge-in until then truncates it (and
            # cancels this wait). A speculative turn's audio is placed when it is released.
            await turn.release_event.wait()
            await played_out(self.timeline)
            self._finish(turn, interrupted=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed turn must not end the session
            self.error(exc, where="reply")
            if turn.released:
                self._finish(turn, interrupted=True, failed=True)
            else:
                if self.turn is turn:
                    self.turn = None
                turn.handle.resolve("", interrupted=True, failed=True)
        finally:
            if paced is not None:
                paced.started()  # a reply that ended before its first clause waits no more

    def _ahead_s(self, turn: TurnState) -> float:
        """Seconds of the reply written but not heard yet (avatar.conversation.pacing; asked from the LLM's thread)."""
        start = turn.first_audio_position
        heard = 0.0 if start is None else max(0, self.timeline.clock() - start) / self.timeline.rate
        return speech_seconds(turn.written) - heard

    async def _speak(self, turn: TurnState, clauses: asyncio.Queue) -> None:
        first = True
        speech = self.services.speech
        voice = speech.voice_for(self.face.name if self.face is not None else None)  # the face's own voice
        while (clause := await clauses.get()) is not None:
            async for chunk in speech.synthesize(clause, turn.cancel, session=self.conversation.session_id,
                                                 first=first, voice=voice):
                turn.mark("tts_first_audio")
                self._emit(turn, lambda c=chunk: self._place(turn, c))
            first = False

    def _place(self, turn: TurnState, chunk) -> None:
        if turn.finished or turn.cancel.is_set():
            return
        audio = chunk.audio
        position = self.timeline.place_audio(turn.turn_id, audio)
        if turn.first_audio_position is None:
            turn.first_audio_position = position
        turn.spans.append((position, position + len(audio), chunk.text))
        if self.face is not None:
            self.face.add_speech(turn.turn_id, position, audio, chunk.phonemes)

    # -- what the media timeline reports (avatar.media.contract.MediaListener) --------------------------------
    def audio_sent(self, turn_id: int, position: int, at: float) -> None:
        turn = self.turn
        if turn is not None and turn.turn_id == turn_id and "audio_out" not in turn.marks:
            turn.mark("audio_out", at)
            self.set_state("speaking")

    def frame_sent(self, position: int, at: float) -> None:
        turn = self.turn
        if turn is not None and turn.first_audio_position is not None and position >= turn.first_audio_position:
            turn.mark("first_frame", at)

    # -- ending -----------------------------------------------------------------------------------------
    def interrupt(self, reason: str, *, turn: TurnState | None = None) -> None:
        """Stop the agent: cancel generation, flush audio, keep only what was heard. With ``turn`` (a
        ``SpeechHandle``'s), only if that turn is still the one being answered."""
        if turn is None:
            turn = self.turn
        elif turn is not self.turn:
            return
        if turn is None:
            return
        if not turn.released:  # a speculative turn nobody heard of: drop it silently
            self.drop(turn)
            return
        self._cancel(turn)
        position = self.timeline.clock()
        self.timeline.flush_audio(turn.turn_id, position)
        if self.face is not None:
            self.face.clear_speech(position)
        self.emit(Interrupted(turn.turn_id, position, reason))
        self._finish(turn, interrupted=True, position=position)

    def _finish(self, turn: TurnState, *, interrupted: bool, position: int | None = None,
                failed: bool = False) -> None:
        if turn.finished:
            return
        turn.finished = True
        if interrupted:
            heard = heard_text(turn.spans, self.timeline.clock() if position is None else position)
        else:
            heard = turn.reply.strip()
        record = Turn(turn.user_text, heard, interrupted)
        conversation = self.conversation
        try:  # queued for the memory writer thread: never waits for the disk
            if turn.remember:
                conversation.history.append(record)
                self.services.memory.add_turn(conversation.session_id, conversation.user_id, record, turn.reply)
        except Exception as exc:  # noqa: BLE001 - the reply was given; report that it was not saved
            if not self.closed:  # storage_full / storage_unavailable keep their codes
                self.error(exc if isinstance(exc, AvatarError) else
                           StageError(f"could not save the turn to memory: {exc}"), where="memory")
        self.emit(TurnEnded(turn.turn_id, turn.source, turn.reply.strip(), heard, interrupted,
                            sum(end - start for start, end, _ in turn.spans),
                            {stage: turn.latency_ms(stage) for stage in LATENCY_STAGES}, list(turn.sources),
                            None if turn.knowledge_s is None else round(turn.knowledge_s * 1000.0, 2)))
        if self.turn is turn:
            self.turn = None
        self.set_state("listening")
        turn.handle.resolve(heard, interrupted=interrupted, failed=failed)

    def close(self) -> None:
        """The connection is gone: stop generating, and keep the part of a reply in progress that was
        heard, as a barge-in would (a client that drops mid-reply resumes with that turn in memory)."""
        self.closed = True
        if self._prefilling is not None:
            self._prefilling.cancel()
        turn = self.turn
        if turn is None:
            return
        self._cancel(turn)
        if turn.released and not turn.finished:
            self._finish(turn, interrupted=True, position=self.timeline.clock())
        turn.handle.resolve("", interrupted=True)  # a speculative turn nobody heard of (else: already resolved)
