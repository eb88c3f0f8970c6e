"""The session's orchestration with small fake models: turns, speculation, barge-in, memory, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.fakes import FixedASR, WordLLM, fake_models, speech_like
from tests.harness import feed, open_harness, wait_for


@pytest.fixture
def make_session(tmp_path):
    made = []

    def make(**models):
        harness = open_harness(tmp_path, models=fake_models(**models), name=f"m{len(made)}")
        made.append(harness)
        return harness.services, harness.session, harness.wire

    yield make
    for harness in made:
        harness.close()


async def test_text_turn_streams_reply_audio_and_is_remembered(make_session):
    rt, session, wire = make_session()
    session.on_text("Can you help me?")
    await wait_for(lambda: wire.of("turn_end"))
    start, end = wire.of("turn_start")[0], wire.of("turn_end")[0]
    assert start["user_text"] == "Can you help me?" and start["source"] == "text"
    assert "".join(e["text"] for e in wire.of("reply_delta")).strip() == end["reply"]
    assert not end["interrupted"] and end["heard"] == end["reply"]
    # Audio is contiguous on the timeline, in order.
    positions = [(p, n) for t, p, n in wire.audio]
    assert all(p1 + n1 == p2 for (p1, n1), (p2, _) in zip(positions, positions[1:]))
    assert end["audio_samples"] == sum(n for _, n in positions)
    latency = wire.of("latency")[0]
    assert latency["llm_first_token_ms"] is not None and latency["audio_out_ms"] >= latency["tts_first_audio_ms"]
    states = [e["state"] for e in wire.of("state")]
    assert states == ["listening", "thinking", "speaking", "listening"]
    assert rt.memory.history(session_id=session.session_id)[0].heard_text == end["reply"]


async def test_voice_turn_is_answered_after_the_pause(make_session):
    rt, session, wire = make_session()
    await feed(session, np.concatenate([np.zeros(3200, np.float32), speech_like(1.0), np.zeros(16000, np.float32)]))
    await wait_for(lambda: wire.of("turn_end"))
    assert [e["event"] for e in wire.of("vad")] == ["speech_start", "speech_end"]
    assert wire.of("transcript")[-1] == {"type": "transcript", "text": "hello there", "final": True}
    latency = wire.of("latency")[0]
    # Speculation: the answer was being prepared during the end-of-speech silence.
    assert latency["llm_first_token_ms"] < latency["endpoint_ms"]
    assert latency["audio_out_ms"] >= latency["endpoint_ms"]


async def test_speculative_turn_is_dropped_when_the_user_goes_on(make_session):
    rt, session, wire = make_session(asr=FixedASR(delay=0.01))
    pause = np.zeros(int(0.3 * 16000), np.float32)  # shorter than end_silence_ms
    await feed(session, np.concatenate([speech_like(0.6), pause, speech_like(0.6), np.zeros(16000, np.float32)]))
    await wait_for(lambda: wire.of("turn_end"))
    assert len(wire.of("turn_start")) == 1  # the first, speculative, turn never reached the client
    assert [e["event"] for e in wire.of("vad")] == ["speech_start", "speech_end"]


async def test_barge_in_stops_audio_and_keeps_only_what_was_heard(make_session):
    llm = WordLLM(reply=" ".join(f"word{i}." for i in range(80)), delay=0.04)
    rt, session, wire = make_session(llm=llm)
    session.on_text("Tell me a long story.")
    await wait_for(lambda: wire.audio)
    await asyncio.sleep(0.8)
    sent_before = len(wire.audio)
    await feed(session, speech_like(0.3))
    await wait_for(lambda: wire.of("interrupt"))
    # The interrupt goes out in the same step as the speech-start decision, before any other event.
    types = [e["type"] for e in wire.events]
    assert types[types.index("vad") + 1] == "interrupt"
    interrupt = wire.of("interrupt")[0]
    assert interrupt["reason"] == "barge_in"
    end = wire.of("turn_end")[0]
    assert end["interrupted"] and end["heard"] and len(end["heard"]) < len(end["reply"])
    await asyncio.sleep(0.5)
    # Nothing of the interrupted turn at or after the interrupt position is sent afterwards.
    later = wire.audio[sent_before:]
    assert all(p < interrupt["position"] + 0.45 * 22050 for t, p, n in later if t == interrupt["turn_id"])
    stored = rt.memory.history(session_id=session.session_id)[0]
    assert stored.interrupted and stored.heard_text == end["heard"]
    assert llm.cancelled.is_set()


async def test_a_failing_stage_reports_an_error_and_the_session_goes_on(make_session):
    class BrokenLLM(WordLLM):
        def stream_chat(self, *a, **kw):
            raise RuntimeError("out of memory")
            yield  # pragma: no cover

    rt, session, wire = make_session(llm=BrokenLLM())
    session.on_text("hi")
    await wait_for(lambda: wire.of("error"))
    assert wire.of("error")[0]["code"] == "stage_failed" and "out of memory" in wire.of("error")[0]["message"]
    rt.models.llm = WordLLM()
    session.on_text("hi again")
    await wait_for(lambda: [e for e in wire.of("turn_end") if not e["interrupted"]])


async def test_history_reaches_the_prompt(make_session):
    llm = WordLLM(reply="Noted.")
    rt, session, wire = make_session(llm=llm)
    session.on_text("My name is Ada.")
    await wait_for(lambda: wire.of("turn_end"))
    session.on_text("What is my name?")
    await wait_for(lambda: len(wire.of("turn_end")) == 2)
    roles = [(m["role"], m["content"]) for m in llm.prompts[-1]]
    assert ("user", "My name is Ada.") in roles and ("assistant", "Noted.") in roles
    assert roles[-1] == ("user", "What is my name?")


class PrefillLLM(WordLLM):
    """A backend with slots: records what it is asked to evaluate ahead of a turn."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.prefilled: list[tuple[list[dict], str]] = []

    def prefill(self, messages, conversation):
        self.prefilled.append((messages, conversation))
        return True


async def test_words_heard_so_far_go_into_the_llm_before_the_turn(make_session):
    """A partial transcript while the user speaks: the prompt the turn will send, with the words so far,
    goes to the LLM's prefill (same history, same conversation), so the turn evaluates only the rest."""
    llm = PrefillLLM(reply="Noted.")
    rt, session, wire = make_session(llm=llm, asr=FixedASR("what time do you", delay=0.01))
    session.on_text("My name is Ada.")
    await wait_for(lambda: wire.of("turn_end"))
    await wait_for(lambda: not session.busy())
    assert llm.prefilled == []  # typed text has no partials
    # 2.5 s of speech: a partial transcript comes 1.5 s in (asr.partial_interval_ms).
    await feed(session, np.concatenate([speech_like(2.5), np.zeros(16000, np.float32)]))
    await wait_for(lambda: len(wire.of("turn_end")) == 2)
    assert llm.prefilled, "no prefill while the user spoke"
    messages, conversation = llm.prefilled[0]
    assert conversation == session.session_id == llm.conversations[-1]
    turn_prompt = llm.prompts[-1]
    assert messages[:-1] == turn_prompt[:-1]  # the system prompt and history, as the turn sent them
    assert messages[-1] == {"role": "user", "content": "what time do you"}


async def test_no_prefill_while_a_reply_is_playing_or_when_turned_off(make_session):
    """While the agent talks, speech is a barge-in (the slot is busy, the words may be dropped); and
    turn.prefill = false turns it off."""
    llm = PrefillLLM(reply="One two three four five six seven eight nine ten eleven twelve.", delay=0.05)
    rt, session, wire = make_session(llm=llm)
    session.on_text("Count for me.")
    await wait_for(lambda: wire.of("reply_delta"))
    session.turns.prefill("hello")
    assert llm.prefilled == []
    session.interrupt("test")
    await wait_for(lambda: not session.busy())
    rt.config.turn.prefill = False
    session.turns.prefill("hello")
    await asyncio.sleep(0.1)
    assert llm.prefilled == []
    rt.config.turn.prefill = True
    session.turns.prefill("hello")
    await wait_for(lambda: llm.prefilled)
    assert llm.prefilled[0][0][-1]["content"].endswith("hello")  # after the cut-off turn's words


async def test_no_prefill_beside_another_session(make_session):
    """Only a conversation alone on the server prefills: another session's speech being synthesised (or
    recognised, or its reply written), or another session merely open, may need the cores."""
    llm = PrefillLLM()
    rt, session, wire = make_session(llm=llm)
    for queue, kind in ((rt.speech.queue, "first"), (rt.recognition.queue, "final"), (rt.replies.queue, None)):
        async with queue.turn("someone-else", kind):
            assert await rt.replies.prefill([{"role": "user", "content": "hello"}], session=session.session_id) is False
    rt.open_sessions.add("someone-else")  # open, idle: their next turn may need the cores at any moment
    assert await rt.replies.prefill([{"role": "user", "content": "hello"}], session=session.session_id) is False
    assert llm.prefilled == []
    rt.forget_session("someone-else")  # closed
    assert rt.open_sessions == {session.session_id}
    assert await rt.replies.prefill([{"role": "user", "content": "hello"}], session=session.session_id) is True
    assert llm.prefilled == [([{"role": "user", "content": "hello"}], session.session_id)]
