"""The whole loop over a real WebSocket against a real ``avatar serve`` process with real models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from avatar.net.protocol import KIND_AUDIO, parse_media_frame
from avatar.tools.client import talk
from tests.speech import espeak_wav

NO_VIDEO = {"video.enabled": False}


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    espeak_wav("What is the capital of France?", path)
    return path


def test_talk_wav_through_the_default_models(server_factory, question_wav, tmp_path):
    """`avatar talk --wav` against the default models: transcript, spoken reply, every latency figure."""
    server = server_factory(NO_VIDEO)
    out = tmp_path / "reply.wav"
    run = subprocess.run([sys.executable, "-m", "avatar", "talk", "--url", server.ws_url, "--wav", str(question_wav),
                          "--json", "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert "capital" in summary["transcript"].lower() and "france" in summary["transcript"].lower()
    assert "paris" in summary["reply"].lower()
    assert summary["audio_seconds"] > 0.5 and out.stat().st_size > 44 + 2 * 22050 * 0.5
    for name in ("voice_to_voice", "asr_final", "llm_first_token", "tts_first_audio"):
        assert isinstance(summary["latency_ms"][name], float), name
    kinds = {line["type"] for line in lines}
    assert {"ready", "vad", "transcript", "turn_start", "reply_delta", "audio", "turn_end", "latency"} <= kinds
    print("voice_to_voice_ms", summary["latency_ms"]["voice_to_voice"])


def test_memory_survives_a_restart(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(NO_VIDEO, data_dir=data)
    first = asyncio.run(talk(server.ws_url, text="Hello! My name is Priya and I live in Oslo.", video=False))
    assert first.reply
    server.stop()
    server = server_factory(NO_VIDEO, data_dir=data)
    second = asyncio.run(talk(server.ws_url, text="What is my name?", session_id=first.session_id, video=False))
    ready = next(e for e in second.events if e["type"] == "ready")
    assert ready["resumed"] and ready["history"][0] == {"role": "user",
                                                        "text": "Hello! My name is Priya and I live in Oslo."}
    assert "priya" in second.reply.lower()


async def _collect_until(ws, predicate, timeout=60.0):
    """Events until ``predicate`` holds for one, or until ``timeout`` (then what came so far)."""
    events = []
    try:
        async with asyncio.timeout(timeout):
            await _collect_into(ws, predicate, events)
    except TimeoutError:
        pass
    return events


async def _collect_into(ws, predicate, events):
    async for message in ws:
        if isinstance(message, bytes):
            kind, turn_id, position, payload = parse_media_frame(message)
            event = {"type": "audio" if kind == KIND_AUDIO else "video", "turn_id": turn_id,
                     "position": position, "samples": len(payload) // 2}
        else:
            event = json.loads(message)
        events.append(event)
        if predicate(event):
            return


@pytest.mark.slow
def test_barge_in_over_a_real_socket(shared_server, tmp_path):
    server = shared_server
    speech = espeak_wav("Stop, wait a moment please.", tmp_path / "stop.wav")

    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "video": False}))
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about a dragon and a knight."}))
            before = await _collect_until(ws, lambda e: e["type"] == "audio" and e["position"] > 0, 120)
            await asyncio.sleep(0.6)  # the agent is talking
            pcm = (np.concatenate([speech, np.zeros(8000, np.float32)]) * 32767).astype("<i2")

            async def speak():
                for i in range(0, len(pcm), 320):
                    await ws.send(pcm[i : i + 320].tobytes())
                    await asyncio.sleep(0.02)

            speaker = asyncio.create_task(speak())
            after = await _collect_until(ws, lambda e: e["type"] == "turn_end", 60)
            trailing = await _collect_until(ws, lambda e: False, 1.0)
            await speaker
            return ready, before, after, trailing

    ready, before, after, trailing = asyncio.run(scenario())
    assert any(e["type"] == "audio" for e in before)
    interrupts = [e for e in after if e["type"] == "interrupt"]
    assert interrupts and interrupts[0]["reason"] == "barge_in"
    stop = interrupts[0]
    end = next(e for e in after if e["type"] == "turn_end")
    assert end["interrupted"] and len(end["heard"]) < len(end["reply"])
    # After the interrupt, no audio of that turn beyond what was already queued near the stop point.
    late = [e for e in after[after.index(stop):] + trailing if e["type"] == "audio" and e["turn_id"] == stop["turn_id"]]
    assert not late
    # The stored reply is what was heard.
    resumed = asyncio.run(talk(server.ws_url, text="Thanks.", session_id=f"{ready['session_id']}:{ready['resume_key']}",
                               video=False))
    history = next(e for e in resumed.events if e["type"] == "ready")["history"]
    assert history[1] == {"role": "assistant", "text": end["heard"]}


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving(shared_server):
    server = shared_server

    async def scenario():
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "session_id": "no-such-session", "video": False}))
            first = json.loads(await ws.recv())
            ready = json.loads(await ws.recv())
            async def next_of(kind):
                while (event := json.loads(await ws.recv()))["type"] != kind:
                    pass
                return event

            errors = []
            for bad in ["{nope", json.dumps([1]), json.dumps({"type": "fly"}), json.dumps({"type": "text"}),
                        json.dumps({"type": "text", "text": "  "}), json.dumps({"type": "text", "text": "x" * 5000}),
                        b"\x01\x02\x03", json.dumps({"type": "hello"})]:
                await ws.send(bad)
                errors.append(await next_of("error"))
            await ws.send(json.dumps({"type": "ping"}))
            pong = await next_of("pong")
        # A frame over the size limit closes that connection (1009) ...
        async with connect(server.ws_url, max_size=None) as ws:
            await ws.send(b"\x00" * 300000)  # over limits.max_message_bytes (256 KiB by default)
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(10):
                    await ws.recv()
            code = closed.value.rcvd.code if closed.value.rcvd else None
        # ... and the server still serves others.
        reply = await talk(server.ws_url, text="Say hello.", video=False)
        return first, ready, errors, pong, code, reply

    first, ready, errors, pong, code, reply = asyncio.run(scenario())
    assert first["type"] == "error" and first["code"] == "unknown_session"
    assert ready["type"] == "ready" and not ready["resumed"]
    assert all(e["code"] == "bad_message" for e in errors)
    assert "JSON" in errors[0]["message"] and "known types" in errors[2]["message"]
    assert "limit is 2000" in errors[5]["message"] and "even number of bytes" in errors[6]["message"]
    assert pong == {"type": "pong"}
    assert code == 1009
    assert reply.reply
    assert server.proc.poll() is None


def test_the_page_and_health_are_served(shared_server):
    server = shared_server
    with urllib.request.urlopen(server.http_url + "/healthz") as response:
        assert json.loads(response.read())["status"] == "ok"
    with urllib.request.urlopen(server.http_url + "/") as response:
        assert b"<html" in response.read().lower()
    for path in ("/nope.js", "/../pyproject.toml", "/%2e%2e/pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.http_url + path)
        assert err.value.code == 404


def test_a_client_can_take_the_face_controls_instead_of_frames(shared_server):
    """The animation controls are a stream of their own: a client may render the face itself."""
    server = shared_server

    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "video": False, "controls": True}))
            await ws.send(json.dumps({"type": "text", "text": "Say hello to me."}))
            return await _collect_until(ws, lambda e: e["type"] == "turn_end", 120)

    for _ in range(3):  # the sampled small model now and then answers with emoji alone: nothing to speak
        events = asyncio.run(scenario())
        if any(e["type"] == "controls" and e["turn_id"] for e in events):
            break
    ready = events[0]
    assert ready["type"] == "ready" and ready["video"] is None
    assert "jaw_open" in ready["controls"]["ranges"]
    assert not [e for e in events if e["type"] == "video"]  # no JPEG frames were asked for
    controls = [e for e in events if e["type"] == "controls"]
    positions = [c["position"] for c in controls]
    assert len(controls) > 10 and positions == sorted(positions)
    speaking = [c for c in controls if c["turn_id"]]
    assert speaking, [e for e in events if e["type"] in ("turn_end", "error")]  # what was said, if anything
    assert max(c["values"]["jaw_open"] for c in speaking) > max(
        c["values"]["jaw_open"] for c in controls if not c["turn_id"])
