"""The show loop: the host presents each segment, answers viewers' comments, and goes back to the show.

The host is one ``Session`` (avatar/conversation/session.py) opened by the ``SessionFactory`` on a headless output
timeline (avatar/live/sink.py). Everything it says is a turn of that session, with its events, latency marks
and memory: an improvised segment and a comment's answer through the LLM (``Session.say``: LLM -> clauses ->
TTS -> timeline + face); a script line, the viewer's name and comment read out before the answer, and the
line that returns to the show as written (``Session.say_line``: TTS only). The host awaits each turn's
``SpeechHandle`` together with the arrival of a comment, and cuts a turn through its handle.

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
import logging
import time

from avatar.conversation.factory import SessionFactory
from avatar.conversation.speech import SpeechHandle
from avatar.events import EventBus
from avatar.language import Language
from avatar.live.comments import Comment, CommentDesk, lead_in, prompt_for
from avatar.live.show import Segment, Show

log = logging.getLogger(__name__)

BACK_TO_SHOW = {"en": "Now, back to the show.", "zh": "好，我们回到节目。"}
KEEP_HISTORY_TURNS = 40  # the prompt holds at most memory.max_turns_in_prompt; hours of show stay small
CLOSING_GRACE_S = 120.0  # after --minutes, comments still waiting are answered for at most this long
# The user's side of a line said as written, in memory and in TurnStarted: there is no user, the show goes on.
SCRIPT_CUE = "(The show goes on: {segment}.)"
LEAD_IN_CUE = "(A viewer's comment is read out.)"
BACK_CUE = "(The comments are answered; the show goes on.)"


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
        left = self._time_left()
        return self.stopping or (left is not None and left <= 0.0)

    def _time_left(self) -> float | None:
        """Seconds until ``_over`` comes true by the clock alone; None without a deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline + (self.closing_grace_s if self._closing else 0.0) - time.monotonic())

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
        cue = SCRIPT_CUE.format(segment=segment.name)
        while True:
            said = await self.speak(text, "script", cue=cue, pausable=self.show.answer == "pause")
            if said.failed or self._over():
                return not said.failed
            rest = _unsaid(text, said.heard)
            await self.answer_comments()
            if not rest:
                return True
            text = rest

    async def _present_improvised(self, segment: Segment, request: str) -> bool:
        while True:
            speech = self.session.say(request, "segment", about=segment.name)
            cut = await self._hear_out(speech, pausable=self.show.answer == "pause")
            if not cut:
                return not self._over()
            if self._over():
                return False
            await self.answer_comments()
            request = (f"Finish presenting {segment.name} in one or two short sentences; you had said: "
                       f"\"{speech.heard}\"")

    async def _hear_out(self, speech: SpeechHandle, *, pausable: bool) -> bool:
        """Wait until ``speech`` has been heard to the end; True when it was cut for comments (or the end).
        Woken by whichever comes first: the end of the speech, a comment, ``stop``, or the deadline."""
        try:
            while not speech.done():
                if self._over() or (pausable and self.desk.waiting()):
                    speech.interrupt("comment" if not self._over() else "shutdown")
                    return True
                self._comment_waiting.clear()
                heard_out = asyncio.ensure_future(speech.wait())
                comment = asyncio.ensure_future(self._comment_waiting.wait())
                try:
                    await asyncio.wait((heard_out, comment), timeout=self._time_left(),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    heard_out.cancel()  # the waits, not the speech
                    comment.cancel()
            return False
        finally:
            self._trim_history()

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
            # Not remembered: the same words after every break tell later answers nothing, and would crowd
            # the history the prompt keeps.
            await self.speak(self.back_line, "script", cue=BACK_CUE, remember=False)
        return answered

    async def answer(self, comment: Comment) -> None:
        # Not remembered: the answer's own turn quotes the comment in the user role (prompt_for); stored as
        # the host's words, a viewer's text would reach the prompt as the assistant's, unquoted.
        await self.speak(lead_in(comment), "lead_in", cue=LEAD_IN_CUE, remember=False)
        speech = self.session.say(prompt_for(comment, self.language), "comment", about=comment.text)
        await self._hear_out(speech, pausable=False)
        reply = speech.reply
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
    async def speak(self, text: str, source: str, *, cue: str, remember: bool = True,
                    pausable: bool = False) -> SpeechHandle:
        """Say ``text`` as written, as a turn of the host's session (``cue``: the user's side of it in
        memory). Returns its handle once it is over: ``heard`` is all of ``text`` unless it was cut for
        comments (``pausable``) or the end of the show; ``failed`` when synthesis failed."""
        speech = self.session.say_line(text, source, cue=cue, remember=remember)
        await self._hear_out(speech, pausable=pausable)
        return speech


def _unsaid(text: str, heard: str) -> str:
    """The part of a script line after what was heard (heard_text joins chunks with spaces)."""
    if text.startswith(heard):
        return text[len(heard):].strip()
    words = text.split()
    return " ".join(words[len(heard.split()):])
