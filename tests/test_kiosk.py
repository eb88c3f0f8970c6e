"""Kiosk mode (/kiosk, avatar/kiosk/visit.py, docs/kiosk.md) in headless Chromium with a fake camera and microphone.

The fake camera plays a .y4m made here from faces/astronaut.png: a face, then an empty room, then a face
again (the next visitor), then an empty room. The fake microphone plays espeak-ng speech on the same
80-second loop: the first visitor gives their name and asks a question, the second asks what their name
is. The test checks, as a person watching the kiosk would:
- the agent greets when the face appears, and answers a spoken question;
- the visit ends when the face leaves (visit_end, a new conversation opens);
- the second visitor's answer does not know the first visitor's name, and the first visit's turns are
  gone from the database (kiosk.retention = "none");
- the page recovers on its own when the server restarts mid-visit.
Screenshots (landscape and portrait) are written to docs/images/kiosk_*.png.

The unit tests at the top run the real presence detector and denoiser without a browser.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, REPO
from tests.speech import espeak_wav

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = REPO / "docs" / "images"
FPS = 5
W, H = 320, 240
LOOP_S = 100.0
# (start, end) of the visitors' faces on the fake camera, in seconds of the loop. The empty room between
# them is long: a visit lasts until the reply has been heard, and on a busy 2-core machine the first
# answer may take 20 s; a face that came back before the visit ended would be the same visit.
FACES = [(0.0, 22.0), (60.0, 82.0)]
# what each visitor says, and when (the microphone is only sent while a visitor is there)
SPEECH = [(6.0, "My name is Oscar. What is the capital of France?"), (66.0, "Do you know what my name is?")]
SECRET = "oscar"


def portrait_frame() -> np.ndarray:
    import cv2

    face = cv2.resize(cv2.imread(str(REPO / "faces" / "astronaut.png")), (H, H))
    frame = empty_frame()
    frame[:, (W - H) // 2:(W + H) // 2] = face
    return frame


def empty_frame() -> np.ndarray:
    """A plain room: a wall, a floor, a door; no face."""
    frame = np.empty((H, W, 3), np.uint8)
    frame[:] = (150, 160, 170)
    frame[170:] = (70, 80, 95)
    frame[40:170, 220:280] = (60, 90, 130)
    return frame


def write_y4m(path: Path) -> Path:
    """Raw YUV4MPEG2 (4:2:0), what Chromium's --use-file-for-fake-video-capture reads."""
    import cv2

    planes = {k: cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420).tobytes()
              for k, f in (("face", portrait_frame()), ("empty", empty_frame()))}
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(int(LOOP_S * FPS)):
            t = i / FPS
            kind = "face" if any(a <= t < b for a, b in FACES) else "empty"
            out.write(b"FRAME\n" + planes[kind])
    return path


def write_speech(folder: Path) -> Path:
    rate = 48000
    audio = np.zeros(int(LOOP_S * rate), np.float32)
    for i, (start, text) in enumerate(SPEECH):
        said = espeak_wav(text, folder / f"visitor{i}.wav", rate=rate)
        audio[int(start * rate):int(start * rate) + len(said)] = said
    path = folder / "kiosk_mic.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


# ------------------------------------------------------------------------------------ without a browser

def test_presence_detector_sees_a_face_and_an_empty_room():
    import cv2

    from avatar.errors import ProtocolError
    from avatar.kiosk.presence import FaceDetector

    detector = FaceDetector.shared()
    face = detector.detect(cv2.imencode(".jpg", portrait_frame())[1].tobytes())
    assert face.faces == 1 and face.largest > 0.2, face
    assert detector.detect(cv2.imencode(".jpg", empty_frame())[1].tobytes()).faces == 0
    with pytest.raises(ProtocolError, match="not a JPEG"):
        detector.detect(b"not an image")
    png = cv2.imencode(".png", portrait_frame())[1].tobytes()
    with pytest.raises(ProtocolError, match="not a JPEG"):
        detector.detect(png)
    jpeg = cv2.imencode(".jpg", portrait_frame())[1].tobytes()
    with pytest.raises(ProtocolError, match="not a JPEG"):
        detector.detect(jpeg[:200])  # cut short
    # A frame header that declares 60000x60000 pixels is refused before anything is decoded.
    sof = jpeg.index(b"\xff\xc0")
    bomb = jpeg[:sof + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[sof + 9:]
    with pytest.raises(ProtocolError, match="too large"):
        detector.detect(bomb)


def test_denoiser_raises_snr_of_speech_in_noise(tmp_path):
    from avatar.media.denoise import Denoiser, denoise_file

    speech = espeak_wav("The museum opens at nine in the morning.", tmp_path / "s.wav", 16000)
    noise = np.random.default_rng(0).normal(0, 1, len(speech)).astype(np.float32)
    noisy = speech + noise * np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2) / 10 ** (5 / 10))

    def snr(x):
        return 10 * np.log10(np.sum(speech ** 2) / np.sum((x - speech) ** 2))

    cleaned = denoise_file(noisy)
    assert len(cleaned) == len(noisy)
    assert snr(cleaned) > snr(noisy) + 4, (snr(noisy), snr(cleaned))
    denoiser = Denoiser()  # the session's path: any chunk size, the same length out as in
    for size in (320, 100, 0, 1024):
        chunk = denoiser.process(noisy[:size])
        assert chunk.shape == (size,) and chunk.dtype == np.float32


def test_kiosk_config_checks_and_wire_events():
    from avatar.config import load_config
    from avatar.errors import ConfigError
    from avatar.events import Presence, VisitEnded, to_wire

    cfg = load_config(overrides={"kiosk": {"visit_timeout_s": 5}})
    assert cfg.kiosk.retention == "none" and cfg.kiosk.visit_timeout_s == 5.0 and cfg.audio.denoise == "off"
    with pytest.raises(ConfigError, match="retention"):
        load_config(overrides={"kiosk": {"retention": "forever"}})
    with pytest.raises(ConfigError, match="denoise"):
        load_config(overrides={"audio": {"denoise": "rnnoise"}})
    assert to_wire(Presence(True, "camera")) == [{"type": "presence", "present": True, "source": "camera"}]
    assert to_wire(VisitEnded("left", 12.34, 2)) == [{"type": "visit_end", "reason": "left", "duration_s": 12.3,
                                                      "turns": 2}]


# ------------------------------------------------------------------------------------------- the page

@pytest.fixture(scope="module")
def fake_media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kiosk_media")
    return write_y4m(folder / "visitors.y4m"), write_speech(folder)


def kiosk_stats(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.kioskStats))")


def wait_for(page, expression: str, timeout_s: float, arg=None) -> None:
    page.wait_for_function(expression, arg=arg, timeout=timeout_s * 1000)


def replies_in(stats: dict, session: str, source: str) -> list[str]:
    return [r["text"] for r in stats["replies"] if r["session"] == session and r["source"] == source]


def turns_of(data_dir: Path, session: str) -> int:
    with sqlite3.connect(data_dir / "memory.sqlite3") as db:
        return db.execute("SELECT count(*) FROM turns WHERE session_id=?", (session,)).fetchone()[0]


def turns_with(data_dir: Path, word: str) -> int:
    with sqlite3.connect(data_dir / "memory.sqlite3") as db:
        return db.execute("SELECT count(*) FROM turns WHERE lower(user_text) LIKE ? OR lower(reply_text) LIKE ?",
                          (f"%{word}%", f"%{word}%")).fetchone()[0]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium is not installed at {CHROMIUM}")
@pytest.mark.timeout(420)
def test_kiosk_greets_answers_forgets_and_recovers(server_factory, fake_media, tmp_path):
    from playwright.sync_api import sync_playwright

    y4m, wav = fake_media
    data_dir = tmp_path / "data"
    # The visitor says two sentences with espeak-ng's short sentence gap; Smart Turn may call the first one a
    # turn (tests/test_turn_end.py covers that decision). This test is about visits: the silence rule.
    overrides = {**FAST, "kiosk.visit_timeout_s": 3.0, "llm.max_tokens": 32, "turn.detector": "silence"}
    srv = server_factory(overrides=overrides, data_dir=data_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}", f"--use-file-for-fake-audio-capture={wav}"])
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            _visits(page, srv, server_factory, overrides, data_dir)
        except Exception:
            print("\n".join(["--- page console ---", *console[-60:], "--- kiosk stats ---", str(kiosk_stats(page)),
                             "--- server log ---", srv.log()[-8000:]]))
            raise
        finally:
            browser.close()
    assert not [c for c in console if c.startswith("pageerror")], console


def next_event(ws, kind: str) -> dict:
    """The next JSON message of type ``kind`` (media frames and other events are skipped)."""
    import json

    while True:
        message = ws.recv(timeout=30)
        if isinstance(message, str) and (event := json.loads(message))["type"] == kind:
            return event


def check_camera_frame_errors(ws_url: str) -> None:
    """Bad camera frames get a clear error and the connection goes on."""
    import base64
    import json

    from websockets.sync.client import connect

    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "hello", "video": False}))
        next_event(ws, "ready")
        ws.send(json.dumps({"type": "camera_frame", "jpeg": "AAAA"}))
        assert "kiosk" in next_event(ws, "error")["message"]
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "hello", "video": False, "kiosk": True}))
        next_event(ws, "ready")
        ws.send(json.dumps({"type": "camera_frame", "jpeg": "not base64!"}))
        assert "base64" in next_event(ws, "error")["message"]
        ws.send(json.dumps({"type": "camera_frame", "jpeg": base64.b64encode(b"GIF89a...").decode()}))
        error = next_event(ws, "error")
        assert error["code"] != "internal" and "JPEG" in error["message"], error
        ws.send(json.dumps({"type": "ping"}))
        next_event(ws, "pong")


def _visits(page, srv, server_factory, overrides, data_dir) -> None:
    check_camera_frame_errors(srv.ws_url)
    page.goto(srv.http_url + "/kiosk")
    wait_for(page, "window.kioskStats.sessionId && window.kioskStats.connection === 'connected'", 30)
    assert page.is_visible("#arm"), "the operator's one click comes first"
    wait_for(page, "window.kioskStats.framesDrawn > 0", 30)  # the idle face, before anyone is armed
    assert kiosk_stats(page)["micFramesSent"] == 0
    page.click("#arm")  # the operator's one click: sound, microphone, camera
    wait_for(page, "window.kioskStats.armed && window.kioskStats.camera", 15)
    first = kiosk_stats(page)["sessionId"]

    # Visitor 1 appears: a greeting, then the spoken question is answered.
    wait_for(page, "window.kioskStats.present && window.kioskStats.greetings >= 1", 30)
    wait_for(page, "s => window.kioskStats.replies.some(r => r.session === s && r.source === 'presence')", 60, first)
    wait_for(page, "s => window.kioskStats.replies.some(r => r.session === s && r.source === 'voice')", 120, first)
    s = kiosk_stats(page)
    said = " ".join(t["text"].lower() for t in s["transcripts"] if t["session"] == first)
    assert SECRET in said or "france" in said, s["transcripts"]
    assert [r["full"] for r in s["replies"] if r["session"] == first and r["source"] == "presence"] == [
        "Hello, welcome! How can I help you today?"], s["replies"]
    assert any(len(r) > 3 for r in replies_in(s, first, "voice")), s["replies"]
    assert s["audioSecondsScheduled"] > 1.0 and s["micFramesSent"] > 0, s
    page.screenshot(path=str(IMAGES / "kiosk_landscape.png"))
    assert turns_of(data_dir, first) >= 2, "the visit's turns are stored while it lasts"

    # Visitor 1 leaves: the visit ends, a fresh conversation opens, and their turns are deleted.
    wait_for(page, "s => window.kioskStats.visitEnds >= 1 && window.kioskStats.sessionId !== s && "
             "window.kioskStats.connection === 'connected'", 90, first)
    s = kiosk_stats(page)
    second = s["sessionId"]
    assert not s["present"]
    assert turns_of(data_dir, first) == 0 and turns_with(data_dir, SECRET) == 0, \
        "the first visitor's words outlived the visit"
    with urllib.request.urlopen(srv.http_url + "/metrics") as r:
        metrics = r.read().decode()
    assert 'avatar_kiosk_visits_total{reason="left"} 1' in metrics, metrics[-1500:]

    # Visitor 2: greeted in the new conversation; the answer knows nothing of visitor 1.
    page.set_viewport_size({"width": 720, "height": 1280})
    wait_for(page, "s => window.kioskStats.replies.some(r => r.session === s && r.source === 'presence')", 90, second)
    wait_for(page, "s => window.kioskStats.replies.some(r => r.session === s && r.source === 'voice')", 120, second)
    s = kiosk_stats(page)
    page.screenshot(path=str(IMAGES / "kiosk_portrait.png"))
    answers = replies_in(s, second, "voice")
    assert answers and SECRET not in answers[0].lower(), answers
    said = " ".join(t["text"].lower() for t in s["transcripts"] if t["session"] == second)
    assert "name" in said and SECRET not in said, said

    # The server restarts mid-visit: the page reconnects by itself into a new, working conversation.
    sessions = s["sessions"]
    port = srv.port
    srv.stop()
    wait_for(page, "window.kioskStats.connection !== 'connected'", 15)
    server_factory(overrides=overrides, data_dir=data_dir, port=port)
    wait_for(page, "n => window.kioskStats.sessions > n && window.kioskStats.connection === 'connected'", 60,
             sessions)
    drawn = kiosk_stats(page)["framesDrawn"]
    wait_for(page, "n => window.kioskStats.framesDrawn > n", 30, drawn)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
        assert b'"kiosks": 1' in r.read()
    page.set_viewport_size({"width": 1280, "height": 720})
    time.sleep(0.2)
