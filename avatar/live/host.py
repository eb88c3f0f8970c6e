"""The show loop: the host presents each segment, answers viewers' comments, and goes back to the show.

The host is one ``Session`` (avatar/conversation/session.py) opened by the ``SessionFactory`` on a headless output
timeline (avatar/live/sink.py). An improvised segment and a comment's answer are turns of that session
(``Session.say``: LLM -> clauses -> TTS -> timeline + face); a script line, the viewer's name and comment
read out before the answer, and the line that returns to the show are spoken as written (TTS only).

When comments are answered:
- ``answer = "between"``: after each segment, up to ``max_comments_per_break`` comments, most urgent first;
- ``answer = "pause"``: also during a segment: it is cut at once (what was said stays in memory as heard),
  the comments are answered, and the segment goes on (a script from the first word not yet heard; an
  improvised one is asked to finish briefly).

The persona and the show's rules are the system prompt (set before the models load, avatar/live/cli.py);
a comment only ever enters the conversation as a quoted user-role message (``comments.prompt_for``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time

from avatar.conversation.clauses import heard_text
from avatar.events import EventBus, TurnEnded, TurnStarted
from avatar.language import Language
from avatar.conversation.factory import SessionFactory
from avatar.live.comments import Comment, CommentDesk, lead_in, prompt_for
from avatar.live.show import Segment, Show

log = logging.getLogger(__name__)

BACK_TO_SHOW = {"en": "Now, back to the show.", "zh": "好，我们回到节目。"}
KEEP_HISTORY_TURNS = 40  # the prompt holds at most memory.max_turns_in_prompt; hours of show stay small
CLOSING_GRACE_S = 120.0  # after --minutes, comments still waiting are answered for at most this long
SCRIPT_TURN_IDS = 1_000_000  # spoken-as-written turns get ids apart from the session's own turns


class ShowHost:
    def __init__(self, services, show: Show, desk: CommentDesk, timeline, report, *,
                 minutes: float | None = None):
        self.services = services
        self.show = show
        self.desk = desk
        self.timeline = timeline  # avatar.live.sink.LiveTimeline
        self.report = report  # avatar.live.report.LiveReport
        self.minutes = minutes
        self.bus = EventBus()
        self.bus.subscribe(report.observe)
        self.session = None
        self._comment_waiting = asyncio.Event()
        self._script_ids = itertools.count(SCRIPT_TURN_IDS)
        self._deadline: float | None = None
        self._closing = False  # past --minutes: answering the comments still waiting
        self.closing_grace_s = CLOSING_GRACE_S
        self.stopping = False
        language = Language.parse(services.config.persona.language).code
        self.language = language
        self.back_line = show.back_line if show.back_line is not None else BACK_TO_SHOW.get(language, "")

    # -- set-up -------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the host's session on the timeline (the face is attached to it)."""
        loop = asyncio.get_running_loop()
        self.session = SessionFactory(self.services).open(self.timeline, {"video": True}, emit=self.bus.emit)
        self.desk.add_waker(lambda: loop.call_soon_threadsafe(self._comment_waiting.set))

    def stop(self) -> None:
        self.stopping = True
        self._comment_waiting.set()

    def _over(self) -> bool:
        """Time to stop talking: stopped, or past the deadline (in the closing answers: past their grace)."""
        if self.stopping or self._deadline is None:
            return self.stopping
        return time.monotonic() >= self._deadline + (self.closing_grace_s if self._closing else 0.0)

    # -- the show -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.session is None:
            self.open()
        if self.minutes is not None:
            self._deadline = time.monotonic() + self.minutes * 60.0
        self.report.note("show_start", f"show {self.show.title!r} starts: {len(self.show.segments)} segments, "
                         f"loop={self.show.loop}, answer={self.show.answer}", title=self.show.title)
        try:
            for round_no, segment in self.show.running_order():
                if self._over():
                    break
                await self.answer_comments()
                if self._over():
                    break
                self.report.note("segment_start", f"segment {segment.name!r} (round {round_no + 1})",
                                 segment=segment.name, round=round_no + 1)
                if await self.present(segment):
                    self.report.segments_done.inc()
                    self.report.note("segment_done", f"segment {segment.name!r} done", segment=segment.name)
            # A show that ends still answers the viewers who wrote (for at most closing_grace_s more).
            self._closing = True
            while not self._over() and self.desk.waiting():
                await self.answer_comments()
        finally:
            self.session.close()
            self.report.note("show_end", "the show ended")

    async def present(self, segment: Segment) -> bool:
        """Present one segment; True when it was presented to the end."""
        if segment.script:
            return await self._present_script(segment, segment.script)
        return await self._present_improvised(segment, segment.request())

    async def _present_script(self, segment: Segment, text: str) -> bool:
        while True:
            spoken = await self.speak(text, "script", pausable=self.show.answer == "pause")
            if spoken is None or self._over():
                return spoken is not None
            rest = _unsaid(text, spoken)
            await self.answer_comments()
            if not rest:
                return True
            text = rest

    async def _present_improvised(self, segment: Segment, request: str) -> bool:
        while True:
            turn = self.session.say(request, "segment", about=segment.name)
            cut = await self._wait_turn(turn, pausable=self.show.answer == "pause")
            self._trim_history()
            if not cut:
                return not self._over()
            if self._over():
                return False
            await self.answer_comments()
            request = (f"Finish presenting {segment.name} in one or two short sentences; you had said: "
                       f"\"{heard_text(turn.spans, self.timeline.clock())}\"")

    async def _wait_turn(self, turn, *, pausable: bool) -> bool:
        """Wait until ``turn`` has been heard to the end; True when it was cut for comments (or the end)."""
        while not turn.finished:
            if self._over() or (pausable and self.desk.waiting()):
                self.session.interrupt("comment" if not self._over() else "shutdown")
                return True
            self._comment_waiting.clear()
            try:
                await asyncio.wait_for(self._comment_waiting.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        return False

    # -- comments -----------------------------------------------------------------------------------------
    async def answer_comments(self) -> int:
        answered = 0
        while answered < self.show.max_comments_per_break and not self._over():
            comment = self.desk.next()
            if comment is None:
                break
            await self.answer(comment)
            answered += 1
        if answered and self.back_line and not self._over():
            await self.speak(self.back_line, "script")
        return answered

    async def answer(self, comment: Comment) -> None:
        await self.speak(lead_in(comment), "lead_in")
        turn = self.session.say(prompt_for(comment, self.language), "comment", about=comment.text)
        await self._wait_turn(turn, pausable=False)
        self._trim_history()
        reply = turn.reply.strip()
        if not reply:  # the language model failed (an error event was logged): the viewer got no answer
            self.report.dropped.inc(reason="answer_failed")
            self.report.note("comment_dropped", f"no answer for {comment.user}", user=comment.user,
                             text=comment.text, reason="answer_failed")
            return
        self.report.answered.inc()
        self.report.note("comment_answered", f"answered {comment.user}: {reply[:120]!r}", user=comment.user,
                         text=comment.text, also=comment.also, answer=reply,
                         waited_s=round(time.monotonic() - comment.received, 1))

    def _trim_history(self) -> None:
        history = self.session.conversation.history
        if len(history) > KEEP_HISTORY_TURNS:
            del history[: len(history) - KEEP_HISTORY_TURNS]

    # -- speaking as written ------------------------------------------------------------------------------
    async def speak(self, text: str, source: str, *, pausable: bool = False) -> str | None:
        """Say ``text`` as written. Returns what was heard (all of it unless cut for comments), None when
        synthesis failed."""
        session, timeline = self.session, self.timeline
        turn_id = next(self._script_ids)
        cancel = threading.Event()
        spans: list[tuple[int, int, str]] = []
        self.bus.emit(TurnStarted(turn_id, text, source))
        cut = False
        try:
            async for chunk in self.services.speech.synthesize(text, cancel, session=session.session_id):
                position = timeline.place_audio(turn_id, chunk.audio)
                spans.append((position, position + len(chunk.audio), chunk.text))
                if session.face is not None:
                    session.face.add_speech(turn_id, position, chunk.audio, chunk.phonemes)
                if self._over() or (pausable and self.desk.waiting()):
                    cut = True
                    break
            while not cut and timeline.is_playing():
                if self._over() or (pausable and self.desk.waiting()):
                    cut = True
                    break
                self._comment_waiting.clear()
                try:
                    await asyncio.wait_for(self._comment_waiting.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
        except Exception as exc:  # noqa: BLE001 - one failed line must not end the show
            session.emit_error(exc, where="speech")
            return None
        finally:
            cancel.set()
        position = timeline.clock()
        if cut:
            timeline.flush_audio(turn_id, position)
            if session.face is not None:
                session.face.clear_speech(position)
        heard = heard_text(spans, position) if cut else text
        self.bus.emit(TurnEnded(turn_id, source, text, heard, cut, sum(e - s for s, e, _ in spans)))
        return heard


def _unsaid(text: str, heard: str) -> str:
    """The part of a script line after what was heard (heard_text joins chunks with spaces)."""
    if text.startswith(heard):
        return text[len(heard):].strip()
    words = text.split()
    return " ".join(words[len(heard.split()):])
