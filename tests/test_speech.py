"""One way to speak: every line, whatever its source, is a turn of the session with a ``SpeechHandle`` to await
and interrupt (avatar/conversation/speech.py). Fast tests on the fakes; the real models speak a whole show in
tests/test_live.py."""

from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager

import pytest

from avatar.config import load_config
from avatar.conversation.memory import MemoryStore, Turn
from avatar.events import Interrupted, StateChanged, TurnEnded, TurnStarted
from avatar.live.comments import Comment
from avatar.live.show import parse_show
from avatar.runtime.services import Services
from tests.fakes import fake_models
from tests.harness import open_harness, open_show_host, wait_for
from tests.test_live import show_data

LINE = ("First up, our trail runner shoes. They weigh only two hundred and forty grams. The sole grips wet rock. "
        "Just eighty nine dollars.")
CUE = "(The show goes on: Trail runner shoes.)"


@asynccontextmanager
async def live_host(tmp_path, *, answer: str = "between"):
    """A show host on the livestream's own timeline (fake models, no video), its clock running."""
    data = show_data()
    data["show"]["answer"] = answer
    show = parse_show(data)
    config = load_config(None, {"server": {"data_dir": str(tmp_path)}, "video": {"enabled": False}})
    services = Services(config, fake_models(), MemoryStore(tmp_path / "m.sqlite3"))
    host, desk, timeline, report = open_show_host(services, show)
    events: list = []
    host.bus.subscribe(events.append)
    host.open()
    timeline.start()
    try:
        yield host, events
    finally:
        host.session.close()
        timeline.close()
        await asyncio.to_thread(timeline.join)
        services.close()


async def test_a_show_line_is_a_turn_with_latency_marks_state_and_memory(tmp_path):
    async with live_host(tmp_path) as (host, events):
        said = await host.speak(LINE, "script", cue=CUE)
        session = host.session
        stored = host.services.memory.history(session_id=session.session_id)
        assert said.done() and not said.interrupted and not said.failed
        assert said.reply == LINE and said.heard == LINE
        started = [e for e in events if isinstance(e, TurnStarted)]
        ended = [e for e in events if isinstance(e, TurnEnded)]
        assert [(e.turn_id, e.user_text, e.source) for e in started] == [(said.turn_id, CUE, "script")]
        end = ended[0]
        assert (end.turn_id, end.source, end.reply, end.heard, end.interrupted) == (said.turn_id, "script", LINE,
                                                                                      LINE, False)
        # Measured like any reply, from the moment the line was asked for.
        for stage in ("first_clause", "tts_first_audio", "audio_out", "first_frame"):
            assert end.latency_ms[stage] is not None, stage
        assert end.latency_ms["audio_out"] >= end.latency_ms["tts_first_audio"]
        assert end.audio_samples > 0
        assert [e.state for e in events if isinstance(e, StateChanged)] == ["listening", "thinking",
                                                                              "speaking", "listening"]
        # Remembered: later answers know what the host said, and the report counted it.
        assert session.conversation.history == [Turn(CUE, LINE, False)]
        assert stored == [Turn(CUE, LINE, False)]
        assert host.report.turns.value(source="script") == 1
        assert not host.timeline.is_playing()  # heard to the end when the handle was done


async def test_a_show_line_cut_through_its_handle_keeps_what_was_heard(tmp_path):
    async with live_host(tmp_path) as (host, events):
        speech = host.session.say_line(LINE, "script", cue=CUE)
        await wait_for(lambda: len(speech.heard.split()) >= 3)  # heard so far, while it plays
        speech.interrupt("comment")
        assert speech.done() and speech.interrupted and not speech.failed  # at once: no wait for the runner
        heard = speech.heard
        assert heard and LINE.startswith(heard) and len(heard) < len(LINE)
        cut = [e for e in events if isinstance(e, Interrupted)]
        assert [(e.turn_id, e.reason) for e in cut] == [(speech.turn_id, "comment")]
        end = [e for e in events if isinstance(e, TurnEnded)][-1]
        assert end.interrupted and end.heard == heard and end.reply == LINE
        assert host.session.conversation.history == [Turn(CUE, heard, True)]
        assert host.services.memory.history(session_id=host.session.session_id) == [Turn(CUE, heard, True)]
        assert await speech is speech  # a finished handle answers at once
        # A handle cuts only its own turn: the next line plays on.
        following = host.session.say_line("Next, the rain jacket.", "script", cue=CUE)
        speech.interrupt("comment")
        await following
        assert not following.interrupted and following.heard == "Next, the rain jacket."
        assert len([e for e in events if isinstance(e, Interrupted)]) == 1


async def test_the_host_cuts_a_pausable_line_for_a_comment_and_goes_on_from_the_unsaid_part(tmp_path):
    from avatar.live.host import _unsaid

    async with live_host(tmp_path, answer="pause") as (host, events):
        async def comment_while_it_plays():
            await wait_for(lambda: host.session.turn is not None and host.session.turn.handle.heard)
            host.desk.submit(Comment("ann", "Is it waterproof?"))

        commenting = asyncio.create_task(comment_while_it_plays())
        said = await asyncio.wait_for(host.speak(LINE, "script", cue=CUE, pausable=True), 10)
        await commenting
        assert said.interrupted and LINE.startswith(said.heard) and said.heard != LINE
        assert [e.reason for e in events if isinstance(e, Interrupted)] == ["comment"]
        rest = _unsaid(LINE, said.heard)
        assert rest and LINE.endswith(rest)
        assert host.desk.waiting() == 1  # the comment waits for its answer


async def test_awaiting_a_handle_returns_when_the_audio_has_played_without_polling(tmp_path, monkeypatch):
    harness = open_harness(tmp_path)  # a browser's timeline: its clock is wall time until a client reports
    sleeps: list[tuple[str, float]] = []
    real_sleep = asyncio.sleep

    def counted_sleep(delay, *args, **kwargs):
        sleeps.append((sys._getframe(1).f_globals.get("__name__", ""), delay))
        return real_sleep(delay, *args, **kwargs)

    timeline = harness.timeline
    try:
        monkeypatch.setattr(asyncio, "sleep", counted_sleep)
        speech = harness.session.say_line(LINE, "presence", cue="(A visitor walks up to the kiosk.)")
        assert await asyncio.wait_for(speech.wait(), 10) is speech
        end, now = timeline.audio_end, timeline.clock()
        monkeypatch.undo()
        assert not speech.interrupted and speech.heard == LINE
        seconds = sum(n for _, _, n in harness.wire.audio) / timeline.rate
        assert seconds > 0.8  # long enough that a 50 ms poll would have looked a dozen times
        assert 0 <= now - end < 0.25 * timeline.rate  # done once the audio had played, not long after
        waits = [delay for module, delay in sleeps if module.startswith("avatar.")]
        # One timer until the known end (and at most a couple more if the clock ran late), no fixed poll.
        assert 1 <= len(waits) <= 3, sleeps
        assert max(waits) > 0.5
    finally:
        monkeypatch.undo()
        harness.close()


async def test_a_dropped_or_failed_turn_resolves_its_handle(tmp_path):
    class BrokenTTS:
        sample_rate = 22050

        def synthesize(self, text, voice=None):
            raise RuntimeError("the voice is gone")
            yield  # a generator, like the real ones

    harness = open_harness(tmp_path, models=fake_models(tts=BrokenTTS()), heard_everything=True)
    try:
        session = harness.session
        failed = await asyncio.wait_for(session.say("Hello?", "text"), 10)
        assert failed.done() and failed.failed and failed.interrupted and failed.heard == ""
        # A speculative turn nobody heard of: dropped when the user goes on, and its handle says so.
        session.speculate("hello there", 0.0)
        held = session.turn.handle
        session.drop_speculation()
        assert held.done() and held.interrupted and held.heard == "" and not held.failed
    finally:
        harness.close()


@pytest.mark.parametrize("source", ["lead_in", "script"])
async def test_lines_said_between_answers_are_turns_but_not_remembered(tmp_path, source):
    async with live_host(tmp_path) as (host, events):
        said = await host.speak("Now, back to the show.", source, cue="(The show goes on.)", remember=False)
        assert not said.interrupted and said.heard == "Now, back to the show."
        assert [type(e).__name__ for e in events if isinstance(e, (TurnStarted, TurnEnded))] == ["TurnStarted",
                                                                                                 "TurnEnded"]
        assert host.session.conversation.history == []
        assert host.report.turns.value(source=source) == 1
