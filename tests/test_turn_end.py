"""End of turn: the Smart Turn model, the policy that weighs it against the silence and the speaker's
rhythm, and the listener's two decisions (complete: answer soon; not yet: keep listening)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from avatar.config import TurnConfig
from avatar.conversation.endofturn import EndOfTurnPolicy
from tests.fakes import fake_models, speech_like
from tests.harness import feed, open_harness, wait_for


def human_clip(name: str) -> np.ndarray:
    """A real human recording from pytest-audioeval, without its trailing silence."""
    import importlib.util

    from avatar.tools.client import read_wav

    spec = importlib.util.find_spec("pytest_audioeval")
    if spec is None:
        pytest.skip("pytest-audioeval (test extra) is not installed")
    audio = read_wav(Path(list(spec.submodule_search_locations)[0]) / "samples" / "audio" / name)
    loud = np.nonzero(np.abs(audio) > 0.02)[0]
    return audio[: loud[-1] + 1]


def test_smart_turn_tells_a_finished_sentence_from_a_cut_one():
    from avatar.models.smart_turn import SmartTurnModel

    model = SmartTurnModel()
    speech = human_clip("en/quick_brown_fox.wav")  # "The quick brown fox jumps over the lazy dog."
    pause = np.zeros(3200, np.float32)  # 200 ms into the silence, when the listener first asks
    finished = model.probability(np.concatenate([speech, pause]))
    cut = model.probability(np.concatenate([speech[: int(len(speech) * 0.6)], pause]))  # "...jumps ov-"
    assert finished > 0.9 and cut < 0.5, (finished, cut)
    assert model.input_features(speech).shape == (1, 80, 800)


def test_policy_waits_longer_when_unsure_and_learns_the_speakers_pauses():
    cfg = TurnConfig()
    policy = EndOfTurnPolicy(cfg)
    assert policy.complete(0.99, cfg.ask_after_ms)  # a clear end: at the first ask
    assert not policy.complete(0.5, cfg.ask_after_ms) and not policy.complete(0.5, 500)
    needed = [policy.needed_silence_ms(p) for p in (0.99, 0.8, 0.5, 0.2, 0.0)]
    assert needed == sorted(needed) and needed[-1] == cfg.max_silence_ms
    assert policy.complete(0.0, cfg.max_silence_ms)  # the cap ends any turn
    # A reader who paused 700 ms and went on: an end waits past their rhythm.
    before = policy.needed_silence_ms(0.9)
    policy.went_on(700)
    rhythm = 700 * cfg.rhythm_factor + cfg.rhythm_margin_ms
    assert rhythm > 700 + cfg.rhythm_margin_ms  # longer than the pause itself, by more than the margin
    assert policy.needed_silence_ms(0.9) >= rhythm > before
    # A reader's sentences are complete too: even a near-certain end waits past their pauses.
    assert not policy.complete(0.99, 800) and policy.complete(0.99, rhythm)
    policy.went_on(50)  # too short to be a pause between sentences: not rhythm
    assert policy.pauses == [700]


def test_the_speakers_rhythm_is_forgotten_after_a_while():
    now = [0.0]
    policy = EndOfTurnPolicy(TurnConfig(), clock=lambda: now[0])
    policy.went_on(800)
    policy.went_on(900)
    assert not policy.complete(0.99, 300)
    now[0] += 31
    assert policy.pauses == [] and policy.complete(0.99, 300)


class FixedTurnModel:
    """An end-of-turn model that always says ``p``; records how much audio it was asked about."""

    sample_rate = 16000

    def __init__(self, p: float):
        self.p, self.asked = p, []

    def probability(self, audio):
        self.asked.append(len(audio))
        return self.p


def _session(tmp_path, p: float, **turn):
    models = fake_models()
    models.turn_end = FixedTurnModel(p)
    harness = open_harness(tmp_path, models=models, overrides={"turn": turn} if turn else None)
    return harness, models.turn_end


async def test_a_complete_turn_is_answered_without_waiting_for_the_silence_rule(tmp_path):
    harness, model = _session(tmp_path, 0.99)
    try:
        await feed(harness.session, np.concatenate([speech_like(1.0), np.zeros(int(0.7 * 16000), np.float32)]))
        # Only 0.7 s of silence, far below turn.max_silence_ms: the model's "complete" ended the turn.
        await wait_for(lambda: harness.wire.of("turn_start"), 5)
        assert model.asked and [e["event"] for e in harness.wire.of("vad")] == ["speech_start", "speech_end"]
        await wait_for(lambda: harness.wire.of("latency"), 10)
        latency = harness.wire.of("latency")[0]
        assert latency["endpoint_ms"] < 480  # sooner than the old fixed silence rule (vad.end_silence_ms)
    finally:
        harness.close()


async def test_an_unfinished_turn_keeps_listening_until_the_cap(tmp_path):
    harness, model = _session(tmp_path, 0.05, max_silence_ms=1200)
    try:
        await feed(harness.session, np.concatenate([speech_like(1.0), np.zeros(int(0.8 * 16000), np.float32)]))
        await asyncio.sleep(0.2)
        assert len(model.asked) >= 2  # asked at 200 ms, and again as the silence went on
        assert not harness.wire.of("turn_start") and [e["event"] for e in harness.wire.of("vad")] == ["speech_start"]
        await feed(harness.session, np.zeros(int(0.6 * 16000), np.float32))  # past the 1.2 s cap
        await wait_for(lambda: harness.wire.of("turn_start"), 5)
    finally:
        harness.close()


@pytest.mark.slow
async def test_a_speaker_who_goes_on_after_a_pause_gets_one_turn(tmp_path):
    harness, model = _session(tmp_path, 0.3, max_silence_ms=1500)
    try:
        pause = np.zeros(int(0.7 * 16000), np.float32)
        await feed(harness.session, np.concatenate([speech_like(0.8), pause, speech_like(0.8),
                                                    np.zeros(int(1.7 * 16000), np.float32)]))
        await wait_for(lambda: harness.wire.of("turn_end"), 10)
        # The speculative turn started in the first pause was never released: one turn, for both parts.
        assert len(harness.wire.of("turn_start")) == 1
        assert harness.session.listener.policy.pauses  # the first pause taught it the speaker's rhythm
    finally:
        harness.close()


async def test_a_question_about_a_pause_that_is_over_is_withdrawn(tmp_path):
    """The model is busy (the first question blocks) while the speaker pauses and goes on twice: the
    question about the second pause is withdrawn before it reaches the model, the last pause's is answered."""
    gate = threading.Event()

    class SlowTurnModel(FixedTurnModel):
        def probability(self, audio):
            if not self.asked:
                gate.wait(10)
            return super().probability(audio)

    models = fake_models()
    models.turn_end = model = SlowTurnModel(0.99)
    harness = open_harness(tmp_path, models=models, overrides={"turn": {"max_silence_ms": 3000}})
    try:
        def pause(seconds: float) -> np.ndarray:
            return np.zeros(int(seconds * 16000), np.float32)

        await feed(harness.session, np.concatenate([speech_like(0.8), pause(0.3), speech_like(0.5), pause(0.3),
                                                    speech_like(0.5)]))
        assert model.asked == []  # the first question still blocks the model
        gate.set()
        await feed(harness.session, pause(0.8))
        await wait_for(lambda: harness.wire.of("turn_start"), 5)  # the last pause's answer ended the turn
        # The first pause's question (its 0.8 s of speech), then only questions about the last pause (all
        # 2.4 s of it): none about the second pause (1.6 s).
        first, *last = model.asked
        assert first < 1.6 * 16000 and last and all(n >= 2.4 * 16000 for n in last), model.asked
    finally:
        gate.set()
        harness.close()


class LengthASR:
    """Says how many seconds of audio it was given, so a transcript shows which parts it was made of."""

    sample_rate = 16000

    def transcribe(self, audio, *, language=None):
        from avatar.models.asr.base import Transcript

        return Transcript(f"part{len(audio) / 16000:.1f}")


@pytest.mark.slow
async def test_a_monologue_longer_than_whisper_reads_is_one_turn(tmp_path, monkeypatch):
    import avatar.conversation.listener

    monkeypatch.setattr(avatar.conversation.listener, "MAX_UTTERANCE_S", 3.0)
    monkeypatch.setattr(avatar.conversation.listener, "MIN_HEAD_S", 1.0)
    harness, _ = _session(tmp_path, 0.3, max_silence_ms=1500)
    harness.services.models.asr = LengthASR()
    try:
        pause = np.zeros(int(0.6 * 16000), np.float32)
        await feed(harness.session, np.concatenate([speech_like(1.4), pause, speech_like(1.4), pause,
                                                    speech_like(1.4), np.zeros(int(1.7 * 16000), np.float32)]))
        await wait_for(lambda: harness.wire.of("turn_end"), 10)
        # Past MAX_UTTERANCE_S the first part was transcribed on its own, cut at a pause, and the reader
        # was not answered mid-reading: one turn whose text joins the parts.
        assert len(harness.wire.of("turn_start")) == 1
        words = harness.wire.of("turn_start")[0]["user_text"].split()
        assert len(words) >= 2 and all(w.startswith("part") for w in words), words
        first_part_s = float(words[0][4:]) - 0.5  # less the recogniser's trailing padding
        assert first_part_s < 2.0, words  # cut at the first pause (after 1.4 s of speech), not at the 3 s cap
    finally:
        harness.close()


async def test_without_the_model_the_silence_rule_ends_turns(tmp_path):
    # What load_models gives for turn.detector = "silence", or when the model is not installed.
    harness = open_harness(tmp_path, models=fake_models(), overrides={"turn": {"detector": "silence"}})
    try:
        assert harness.session.listener.detector is None
        await feed(harness.session, np.concatenate([speech_like(1.0), np.zeros(16000, np.float32)]))
        await wait_for(lambda: harness.wire.of("turn_start"), 5)
        await wait_for(lambda: harness.wire.of("latency"), 10)
        assert harness.wire.of("latency")[0]["endpoint_ms"] >= 400  # waited for vad.end_silence_ms (480)
    finally:
        harness.close()
