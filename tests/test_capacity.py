"""The session limit is derived from what speech and the face cost on this machine (avatar/runtime/capacity.py)."""

from __future__ import annotations

import threading
import time

import numpy as np

from avatar.models.tts.base import SpeechChunk
from avatar.runtime import capacity
from avatar.runtime.capacity import CEILING, limit_for


def test_the_limit_follows_the_cost_of_a_speaking_session():
    # Kokoro with video on 2 cores (about 1.2 CPU-s per audio-s and 0.25 per video-s): two conversations.
    assert limit_for(1.2, 0.25, 2) == 2
    assert limit_for(1.2, 0.25, 8) == 8
    assert limit_for(0.05, 0.25, 2) == 10  # Piper: the face is most of the cost
    assert limit_for(0.01, 0.0, 2) == CEILING  # espeak-ng without video: other limits come first
    assert limit_for(3.0, 0.5, 1) == 1  # always at least one


class BusyTTS:
    """Burns ``cost`` CPU-s per second of audio on a thread of its own, as onnxruntime's pool does."""

    sample_rate = 16000

    def __init__(self, cost: float):
        self.cost = cost

    def synthesize(self, text, voice=None):
        def spin(until):
            x = 0
            while time.thread_time() < until:
                x += 1

        worker = threading.Thread(target=lambda: spin(time.thread_time() + self.cost * 2.0))
        worker.start()
        worker.join()
        yield SpeechChunk(np.zeros(2 * self.sample_rate, np.int16), text, [])


def test_measure_counts_the_cpu_of_the_models_own_threads():
    speech, face = capacity.measure(BusyTTS(0.3), render_frame=lambda i: time.sleep(0.001), fps=25)
    assert 0.25 <= speech <= 0.45, speech
    assert face < 0.25  # sleeping costs no CPU


def test_a_configured_limit_is_kept_and_an_unmeasured_server_gets_the_ceiling():
    assert capacity.capacity(5, 1.2, 0.25).limit == 5 and not capacity.capacity(5, 1.2, 0.25).measured
    assert capacity.capacity(0, None).limit == CEILING
    measured = capacity.capacity(0, 1.2, 0.25)
    assert measured.measured and measured.limit == limit_for(1.2, 0.25, capacity.cores())
    assert "measured: speech costs 1.20 CPU-s per second of audio" in measured.describe()


def test_a_server_admits_the_measured_number_and_names_it_when_full(server_factory):
    """The default server (Kokoro, video on) measures its capacity at start, prints it, reports it on /healthz,
    and refuses the next conversation with a 503 that says why."""
    import asyncio
    import json
    import re
    import urllib.request

    import pytest
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from tests.conftest import FAST

    server = server_factory(FAST)
    line = re.search(r"capacity: (\d+) conversations at once, measured: speech costs ([\d.]+) CPU-s", server.log())
    assert line, server.log()[-3000:]
    limit, cost = int(line.group(1)), float(line.group(2))
    assert 0.3 < cost < 5  # Kokoro: about 1 CPU-s per second of audio on the 2-core VM
    with urllib.request.urlopen(server.http_url + "/healthz") as response:
        assert json.loads(response.read())["max_sessions"] == limit

    async def fill() -> str:
        open_ = []
        try:
            for _ in range(limit):
                ws = await connect(server.ws_url, max_size=None)
                await ws.send(json.dumps({"type": "hello", "video": False}))
                assert json.loads(await ws.recv())["type"] == "ready"
                open_.append(ws)
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url)
            return refused.value.response.status_code, refused.value.response.body.decode()
        finally:
            for ws in open_:
                await ws.close()

    status, body = asyncio.run(fill())
    assert status == 503 and f"maximum of {limit} conversations" in body and "measured" in body, body
