"""One test harness: a real session (factory, listener, turn runner, media timeline, event bus) on small
fake models, with a ``Wire`` that collects what a client would receive."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np

from avatar.config import load_config
from avatar.conversation.factory import SessionFactory
from avatar.conversation.memory import MemoryStore
from avatar.conversation.session import Session
from avatar.events import Event, EventBus
from avatar.net.protocol import KIND_AUDIO, parse_media_frame
from avatar.net.timeline import MediaTimeline
from avatar.runtime.services import Services
from tests.fakes import fake_models


class Wire:
    """Collects what the server sends, like a client that plays audio in real time."""

    def __init__(self):
        self.events: list[dict] = []
        self.audio: list[tuple[int, int, int]] = []  # (turn_id, position, samples)

    async def send(self, message):
        if isinstance(message, bytes):
            kind, turn_id, position, payload = parse_media_frame(message)
            if kind == KIND_AUDIO:
                self.audio.append((turn_id, position, len(payload) // 2))
        else:
            self.events.append(json.loads(message))

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]


@dataclass
class Harness:
    services: Services
    session: Session
    wire: Wire
    timeline: MediaTimeline
    bus: EventBus
    typed: list[Event] = field(default_factory=list)  # every event on the bus, as objects
    sender: asyncio.Task | None = None

    def close(self, *, shared_llm: bool = False) -> None:
        """``shared_llm``: the language model is shared with other tests (a module fixture): keep it open."""
        self.session.close()
        self.timeline.close()
        if self.sender is not None:
            self.sender.cancel()
        self.services.close(close_llm=not shared_llm)


def open_harness(tmp_path, *, models=None, overrides: dict | None = None, hello: dict | None = None,
                 heard_everything: bool = False, name: str = "m", config=None, knowledge=None) -> Harness:
    """A session on fake models (``models``: from tests.fakes.fake_models) with a fresh memory store.
    ``heard_everything``: the client reports a playback clock far ahead, so turns end as soon as sent."""
    config = config or load_config(None, {"server": {"data_dir": str(tmp_path)}, **(overrides or {})})
    services = Services(config, models or fake_models(), MemoryStore(tmp_path / f"{name}.sqlite3"),
                        knowledge=knowledge)
    wire = Wire()
    timeline = MediaTimeline(wire.send, sample_rate=services.output_rate)
    if heard_everything:
        timeline.report_playback(10**9)
    bus = EventBus()
    typed: list[Event] = []
    bus.subscribe(timeline.send_event)
    bus.subscribe(typed.append)
    session = SessionFactory(services).open(timeline, hello or {}, emit=bus.emit)
    harness = Harness(services, session, wire, timeline, bus, typed)
    harness.sender = asyncio.create_task(timeline.run())
    return harness


async def feed(session: Session, audio: np.ndarray, realtime: bool = True):
    """Microphone audio in 20 ms frames, paced in real time unless ``realtime`` is False."""
    hop = 320
    for i in range(0, len(audio), hop):
        session.on_audio(audio[i : i + hop])
        if realtime:
            await asyncio.sleep(hop / 16000)


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def open_show_host(services: Services, show, *, output=lambda index, image, audio: None, minutes: float | None = None):
    """A livestream host on its own headless timeline, wired as ``avatar live`` wires it (not yet opened or
    started): (host, desk, timeline, report). Call from the event loop."""
    from avatar.live.comments import CommentDesk
    from avatar.live.host import ShowHost
    from avatar.live.report import LiveReport
    from avatar.live.sink import LiveTimeline

    report = LiveReport()
    desk = CommentDesk(on_change=report.comment)
    timeline = LiveTimeline(sample_rate=services.output_rate, fps=25, size=32, loop=asyncio.get_running_loop(),
                            output=output)
    report.attach(timeline=timeline, desk=desk)
    return ShowHost(services, show, desk, timeline, report, minutes=minutes), desk, timeline, report
