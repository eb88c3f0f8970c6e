"""KioskVisit (avatar/kiosk/visit.py) in-process on fake models: arrival, greeting without the LLM, the end of a
visit and what is forgotten, attract lines, waking on speech without a camera. The real face detector and
the page are in tests/test_kiosk.py."""

from __future__ import annotations

import asyncio
import base64

from avatar.events import Presence, TurnEnded, TurnStarted, VisitEnded
from avatar.kiosk.presence import Sighting
from avatar.kiosk.visit import KioskVisit
from tests.fakes import speech_like
from tests.harness import feed, open_harness, wait_for

FACE = base64.b64encode(b"face").decode()
EMPTY = base64.b64encode(b"empty").decode()


class MarkerDetector:
    """Sees a face in frames that say "face" (the real MediaPipe detector is tested in test_kiosk.py)."""

    async def detect_async(self, jpeg: bytes) -> Sighting:
        await asyncio.sleep(0)
        return Sighting(1, 0.3) if jpeg == b"face" else Sighting(0, 0.0)


def kiosk(tmp_path, **settings):
    h = open_harness(tmp_path, heard_everything=True, overrides={"kiosk": {"visit_timeout_s": 0.6, **settings}})
    ended = []
    visit = KioskVisit(h.services, h.session, emit=h.bus.emit, end_connection=lambda: ended.append(True),
                       detector=MarkerDetector())
    h.session.on_close(visit.close)
    h.bus.subscribe(visit.observe)
    return h, visit, ended


def of(h, kind):
    return [e for e in h.typed if isinstance(e, kind)]


async def test_a_face_is_greeted_and_forgotten_when_it_leaves(tmp_path):
    h, visit, ended = kiosk(tmp_path, greeting="Hi, I am the museum's guide.")
    try:
        visit.camera_frame({"jpeg": EMPTY})
        await asyncio.sleep(0.2)
        assert visit.state == "idle" and not of(h, Presence)
        visit.camera_frame({"jpeg": FACE})
        await wait_for(lambda: any(e.source == "presence" for e in of(h, TurnEnded)))
        assert of(h, Presence)[0] == Presence(True, "camera")
        greeting = [e for e in of(h, TurnEnded) if e.source == "presence"][0]
        assert greeting.reply == "Hi, I am the museum's guide." and greeting.audio_samples > 0
        assert h.services.models.llm.prompts == [], "a greeting is a fixed line: no LLM call"

        # The visitor asks something; it is answered and stored while the visit lasts.
        h.session.on_text("Where are the dinosaurs?")
        await wait_for(lambda: any(e.source == "text" for e in of(h, TurnEnded)))
        assert len(h.services.memory.history(session_id=h.session.session_id)) == 2

        # Keep the face there for a while: the visit goes on.
        for _ in range(4):
            visit.camera_frame({"jpeg": FACE})
            await asyncio.sleep(0.2)
        assert visit.state == "visit"
        # The face leaves: after the timeout the visit ends, its turns are deleted, the connection closes.
        visit.camera_frame({"jpeg": EMPTY})
        await wait_for(lambda: ended, timeout=5)
        end = of(h, VisitEnded)[0]
        assert end.reason == "left" and end.turns == 1
        assert of(h, Presence)[-1].present is False
        assert h.services.memory.history(session_id=h.session.session_id) == []
        assert h.session.conversation.history == []
        assert not h.services.memory.session_exists(h.session.session_id)
    finally:
        h.close()


async def test_retention_keep_stores_the_visit(tmp_path):
    h, visit, ended = kiosk(tmp_path, retention="keep")
    try:
        visit.camera_frame({"jpeg": FACE})
        await wait_for(lambda: any(e.source == "presence" for e in of(h, TurnEnded)))
        await wait_for(lambda: ended, timeout=5)
        assert len(h.services.memory.history(session_id=h.session.session_id)) == 1
    finally:
        h.close()


async def test_attract_line_while_nobody_is_there_is_not_remembered(tmp_path):
    h, visit, ended = kiosk(tmp_path, attract_interval_s=0.3, attract_line="Ask me about the museum!")
    try:
        await wait_for(lambda: any(e.source == "attract" for e in of(h, TurnEnded)), timeout=5)
        attract = [e for e in of(h, TurnEnded) if e.source == "attract"][0]
        assert attract.reply == "Ask me about the museum!"
        assert h.services.memory.history(session_id=h.session.session_id) == []
        assert visit.state == "idle" and not ended
    finally:
        h.close()


async def test_without_a_camera_speech_starts_the_visit(tmp_path):
    h, visit, ended = kiosk(tmp_path)
    try:
        await feed(h.session, speech_like(0.8))
        await feed(h.session, speech_like(0.8) * 0)
        await wait_for(lambda: of(h, Presence), timeout=5)
        assert of(h, Presence)[0] == Presence(True, "speech")
        assert not [e for e in of(h, TurnStarted) if e.source == "presence"], "no greeting: the speech is answered"
        await wait_for(lambda: any(e.source == "voice" for e in of(h, TurnEnded)), timeout=10)
        await wait_for(lambda: ended, timeout=5)
        assert of(h, VisitEnded)[0].turns == 1
    finally:
        h.close()


async def test_closing_mid_visit_ends_and_forgets_it(tmp_path):
    h, visit, ended = kiosk(tmp_path)
    visit.camera_frame({"jpeg": FACE})
    await wait_for(lambda: any(e.source == "presence" for e in of(h, TurnEnded)))
    session_id = h.session.session_id
    h.session.close()
    assert of(h, VisitEnded)[0].reason == "disconnected"
    assert h.services.memory.history(session_id=session_id) == []
    h.timeline.close()
    h.sender.cancel()
    h.services.close()


def test_default_lines_follow_the_persona_language():
    from avatar.config import load_config
    from avatar.kiosk.visit import kiosk_line

    zh = load_config(overrides={"persona": {"language": "zh"}})
    assert kiosk_line(zh, "greeting").startswith("您好")
    assert "走近" in kiosk_line(zh, "attract_line")
    own = load_config(overrides={"persona": {"language": "zh"}, "kiosk": {"greeting": "欢迎来到博物馆！"}})
    assert kiosk_line(own, "greeting") == "欢迎来到博物馆！"
    assert kiosk_line(load_config(), "greeting") == "Hello, welcome! How can I help you today?"


class BrokenDetector:
    async def detect_async(self, jpeg: bytes) -> Sighting:
        raise RuntimeError("the detector's graph failed")


async def test_a_broken_detector_falls_back_to_waking_on_speech(tmp_path):
    from avatar.events import ErrorRaised

    h = open_harness(tmp_path, heard_everything=True, overrides={"kiosk": {"visit_timeout_s": 0.6}})
    visit = KioskVisit(h.services, h.session, emit=h.bus.emit, end_connection=lambda: None,
                       detector=BrokenDetector())
    h.bus.subscribe(visit.observe)
    try:
        visit.camera_frame({"jpeg": FACE})
        await wait_for(lambda: of(h, ErrorRaised))
        assert [e.code for e in of(h, ErrorRaised)] == ["presence_unavailable"]
        visit.camera_frame({"jpeg": FACE})  # ignored, not reported again
        await asyncio.sleep(0.1)
        assert len(of(h, ErrorRaised)) == 1 and not visit.camera
        await feed(h.session, speech_like(0.8))
        await wait_for(lambda: of(h, Presence), timeout=5)
        assert of(h, Presence)[0] == Presence(True, "speech")
    finally:
        visit.close()
        h.close()
