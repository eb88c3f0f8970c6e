"""Failures that must cost little: a client that stops reading, a renderer that fails or hangs, a stage that
raises or hangs (fake models wrapped by avatar.faults). Split from test_hardening.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from avatar.errors import ConfigError
from avatar.faults import install, parse_faults
from avatar.net.protocol import KIND_AUDIO, KIND_VIDEO, parse_media_frame
from avatar.net.timeline import MediaTimeline
from tests.fakes import WordLLM, fake_models, speech_like
from tests.harness import open_harness, wait_for


# -- slow clients and renderers (MediaTimeline) -----------------------------------------------------------
class Socket:
    """A client socket: records frames; ``block`` makes sends hang (a client that stopped reading)."""

    def __init__(self):
        self.frames: list = []
        self.block = asyncio.Event()
        self.block.set()
        self.buffered = 0

    async def send(self, message):
        await self.block.wait()
        self.frames.append(message)

    def events(self):
        return [json.loads(m) for m in self.frames if isinstance(m, str)]

    def media(self, kind):
        return [parse_media_frame(m) for m in self.frames if isinstance(m, bytes) and m[2] == kind]


async def test_a_stalled_client_is_given_up_and_nothing_piles_up():
    sock = Socket()
    stalls = []
    out = MediaTimeline(sock.send, sample_rate=16000, send_stall_s=0.5, max_queued_bytes=10**6, on_stall=stalls.append)
    sender = asyncio.create_task(out.run())
    out.send_json({"type": "state", "state": "listening"})
    await asyncio.sleep(0.05)
    sock.block.clear()  # the client stops reading
    out.place_audio(1, np.zeros(16000 * 3, np.int16))
    await asyncio.wait_for(sender, 3)
    assert stalls and "limits.send_stall_s" in stalls[0] and out.closed and out.queued_bytes() == 0
    out.send_json({"type": "state", "state": "thinking"})  # after the stall: ignored, not queued
    assert out.queued_bytes() == 0
    # A client that lets too much pile up is given up at once.
    out2 = MediaTimeline(sock.send, sample_rate=16000, max_queued_bytes=50_000, on_stall=stalls.append)
    out2.place_audio(1, np.zeros(16000 * 2, np.int16))
    assert "limits.max_queued_bytes" in stalls[-1] and out2.closed


async def test_video_is_dropped_first_audio_is_never_reordered():
    sock = Socket()

    class Video:
        fps = 25

        async def render(self, position):
            return 0, b"\xff\xd8jpeg"

    out = MediaTimeline(sock.send, sample_rate=16000, video=Video(), buffered=lambda: sock.buffered,
                        video_buffer_bytes=1000)
    sender = asyncio.create_task(out.run())
    out.place_audio(1, np.zeros(16000, np.int16))
    await asyncio.sleep(0.4)
    assert sock.media(KIND_VIDEO)
    sock.buffered = 10_000  # the socket's buffer is full: frames are skipped, audio goes on
    before = len(sock.media(KIND_VIDEO))
    dropped = out.frames_dropped
    await asyncio.sleep(0.5)
    assert len(sock.media(KIND_VIDEO)) == before and out.frames_dropped > dropped + 5
    sock.buffered = 0
    await asyncio.sleep(0.7)
    audio = sock.media(KIND_AUDIO)
    assert sum(len(a[3]) // 2 for a in audio) == 16000
    positions = [a[2] for a in audio]
    assert positions == sorted(positions) and all(b - a == 1600 for a, b in zip(positions, positions[1:]))
    out.close()
    sender.cancel()


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_a_broken_renderer_costs_frames_never_audio(mode):
    sock = Socket()

    class Video:
        fps = 25

        async def render(self, position):
            if mode == "raise":
                raise RuntimeError("renderer exploded")
            await asyncio.sleep(3600)

    out = MediaTimeline(sock.send, sample_rate=16000, video=Video(), render_timeout_s=0.2)
    sender = asyncio.create_task(out.run())
    out.place_audio(1, np.zeros(16000, np.int16))
    await asyncio.sleep(1.4)
    errors = [e for e in sock.events() if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "stage_failed" and "renderer" in errors[0]["message"]
    assert sum(len(a[3]) // 2 for a in sock.media(KIND_AUDIO)) == 16000  # all the audio, in time
    assert out.render_errors >= 2 and not sender.done()
    out.close()
    sender.cancel()


def test_bogus_playback_reports_are_clamped():
    out = MediaTimeline(lambda m: None, sample_rate=16000)
    for bogus in (10**400, -5, float("nan"), 1e300):
        out.report_playback(bogus)
        assert 0 <= out.clock() < 16000 * 600
        out.place_audio(1, np.zeros(10, np.int16))


# -- stage faults (fake models wrapped by avatar.faults) ----------------------------------------------
class EchoLLM(WordLLM):
    """Says the user's words back, then a longer tail (so that a TTS fault can be aimed with a word)."""

    def stream_chat(self, messages, **kwargs):
        words = messages[-1]["content"].rsplit("\n", 1)[-1]
        self.reply = f"{words}. And that is all I have to say about it."
        return super().stream_chat(messages, **kwargs)


@pytest.fixture
def faulty_session(tmp_path):
    made = []

    def make(spec: str, **limits):
        models = install(fake_models(llm=EchoLLM(delay=0.005)), parse_faults(spec))
        harness = open_harness(tmp_path, models=models, name=f"m{len(made)}", heard_everything=True,
                               overrides={"limits": {"stage_timeout_s": 1.0, "item_timeout_s": 0.5, **limits}})
        made.append(harness)
        return harness.session, harness.wire

    yield make
    for harness in made:
        harness.close()


@pytest.mark.parametrize("spec, expect", [
    ("llm:raise@BREAK", "injected fault"),
    ("llm:hang@BREAK", "no output within"),
    ("llm:hang_mid@BREAK", "stalled"),
    ("llm:raise_mid@BREAK", "injected fault"),
    ("tts:raise@BREAK", "injected fault"),
    ("tts:hang:3", "no output within"),
])
async def test_a_failing_or_hanging_stage_ends_the_turn_and_the_session_goes_on(faulty_session, spec, expect):
    session, wire = faulty_session(spec)
    session.on_text("BREAK please")
    await wait_for(lambda: wire.of("error") and wire.of("turn_end"), 8)
    error = wire.of("error")[0]
    assert error["code"] == "stage_failed" and expect in error["message"] and not error["fatal"]
    if spec.endswith("@BREAK"):
        session.on_text("hello again")  # the way to continue: the next turn works
        await wait_for(lambda: len(wire.of("turn_end")) == 2, 8)
        assert not wire.of("turn_end")[1]["interrupted"] and wire.of("turn_end")[1]["reply"]


@pytest.mark.parametrize("spec", ["asr:raise", "asr:hang:5"])
async def test_failing_speech_recognition_reports_and_typing_still_works(faulty_session, spec):
    session, wire = faulty_session(spec)
    audio = np.concatenate([speech_like(1.0), np.zeros(16000, np.float32)])
    for i in range(0, len(audio), 320):
        session.on_audio(audio[i : i + 320])
        await asyncio.sleep(0.02)
    await wait_for(lambda: wire.of("error"), 8)
    assert wire.of("error")[0]["code"] == "stage_failed"
    session.on_text("typed instead")
    await wait_for(lambda: wire.of("turn_end"), 8)


def test_fault_specs_are_checked():
    assert str(parse_faults("llm:slow:0.5@X")[0]) == "llm:slow:0.5@X"
    for bad in ("gpu:raise", "llm:explode", "llm:slow:soon", "asr:raise@X"):
        with pytest.raises(ConfigError):
            parse_faults(bad)
