"""Replies that have not started speaking go first on the shared LLM (avatar.conversation.pacing): a reply far ahead of
its listener pauses while another waits for its first words."""

from __future__ import annotations

import pytest

from avatar.conversation.pacing import ReplyPacing, speech_seconds
from tests.fakes import WordLLM, fake_models
from tests.harness import open_harness, wait_for


def test_a_spoken_reply_far_ahead_holds_only_while_another_is_starting():
    pacing = ReplyPacing(hold_ahead_s=4.0)
    ahead = {"s": 5.0}
    speaking = pacing.reply(lambda: ahead["s"])
    assert speaking.hold() is False  # still waiting for its own first clause: never holds itself
    speaking.started()
    speaking.started()  # idempotent
    assert pacing.starting == 0
    assert speaking.hold() is False  # nobody waits
    other = pacing.reply(lambda: 0.0)
    assert pacing.starting == 1
    assert speaking.hold() is True
    ahead["s"] = 3.5
    assert speaking.hold() is True  # paused: goes on only below resume_ahead_s (3 s)
    ahead["s"] = 2.9
    assert speaking.hold() is False
    ahead["s"] = 3.5
    assert speaking.hold() is False  # going again: pauses only above 4 s
    ahead["s"] = 6.0
    assert speaking.hold() is True
    other.started()
    assert speaking.hold() is False  # the other reply spoke: nobody waits


def test_pacing_off_gives_no_hold_and_speech_time_counts_chinese_wider():
    assert ReplyPacing(hold_ahead_s=0).reply(lambda: 99.0).hold is None
    assert speech_seconds("你好") == pytest.approx(speech_seconds("abcdef"))
    assert 0.5 < speech_seconds("We open at nine in the morning.") < 3.0


class PausingLLM(WordLLM):
    """A backend that can pause: records what ``hold`` says after each word."""

    can_pause = True

    def __init__(self):
        super().__init__(reply="Sure, " + "this is a long answer that goes on and on for a while. " * 6, delay=0.005)
        self.answers: list[bool] = []

    def stream_chat(self, messages, *, hold=None, **kwargs):
        for piece in super().stream_chat(messages, **kwargs):
            yield piece
            self.answers.append(hold())


@pytest.mark.slow
async def test_a_turn_passes_its_pace_to_a_backend_that_can_pause(tmp_path):
    llm = PausingLLM()
    harness = open_harness(tmp_path, models=fake_models(llm=llm))
    try:
        other = harness.services.replies.pacing.reply(lambda: 0.0)  # another session's reply, not speaking yet
        harness.session.on_text("Tell me everything.")
        await wait_for(lambda: len(llm.answers) == len(llm.reply.split(" ")))
        # The reply's text runs ~20 s of speech ahead of its listener: once its first clause was out and
        # it was 4 s ahead, it was told to hold, every word after that.
        assert llm.answers[0] is False
        assert True in llm.answers
        first = llm.answers.index(True)
        assert all(llm.answers[first:])
        assert speech_seconds(" ".join(llm.reply.split(" ")[:first + 1])) > 4.0
        other.started()
        await wait_for(lambda: harness.wire.of("turn_end"))
        assert harness.services.replies.pacing.starting == 0  # the turn counted itself out at its first clause
    finally:
        harness.close()


async def test_backends_that_cannot_pause_get_no_hold(tmp_path):
    llm = WordLLM()  # its stream_chat has no ``hold``: a call with one would fail the turn
    harness = open_harness(tmp_path, models=fake_models(llm=llm), heard_everything=True)
    try:
        harness.services.replies.pacing.reply(lambda: 0.0)
        harness.session.on_text("Hello?")
        await wait_for(lambda: harness.wire.of("turn_end"))
        assert not harness.wire.of("error")
        assert harness.wire.of("turn_end")[0]["reply"].startswith("Sure")
    finally:
        harness.close()
