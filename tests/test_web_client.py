"""The browser client (web_client/) in headless Chromium against a real ``avatar serve``.

Chromium's fake microphone plays an espeak-ng question. The test checks the loop as a person would
meet it: the final transcript, the reply text, reply audio scheduled and played, the face drawn and
its mouth moving while the reply plays, lips on the audio clock (A/V offset), a typed message, and a
reload that resumes the conversation. A second test runs a server with video off.

Run: ``pytest -m browser tests/test_web_client.py -s`` (``-s`` prints the A/V offset figures).
Screenshots are written to /tmp/web_client_*.png.
"""

from __future__ import annotations

import base64
import io
import statistics
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST
from tests.speech import espeak_wav

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp")
QUESTION = "What is the capital of France?"
# Chromium loops the fake-microphone file: the silence after the question must outlast one whole
# reply on a slow machine, or the question comes round again and barges in.
TRAILING_SILENCE_S = 30.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium is not installed at {CHROMIUM} "
                       "(apt-get install chromium); the browser tests need it"),
]


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """The question at 48 kHz 16-bit mono (what Chromium's fake capture reads), then silence."""
    folder = tmp_path_factory.mktemp("mic")
    speech = espeak_wav(QUESTION, folder / "speech.wav", rate=48000)
    rate = 48000
    audio = np.concatenate([np.zeros(int(0.3 * rate), np.float32), speech,
                            np.zeros(int(TRAILING_SILENCE_S * rate), np.float32)])
    path = folder / "question.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def browser(question_wav):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={question_wav}",
            "--autoplay-policy=no-user-gesture-required",
        ])
        try:
            yield b
        finally:
            b.close()


# ------------------------------------------------------------------------------------------ helpers

class PageWatch:
    """Collects page errors and console output (printed when a test fails)."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))


def open_page(browser, url: str, *, init_script: str | None = None):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    watch = PageWatch(page)
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    wait_ready(page)
    return page, watch


def wait_ready(page, timeout_ms: int = 30000) -> None:
    page.wait_for_function("window.avatarStats && window.avatarStats.sessionId && "
                           "window.avatarStats.connection === 'connected'", timeout=timeout_ms)


def stats(page) -> dict:
    return page.evaluate("({...window.avatarStats})")


def canvas_image(page) -> np.ndarray:
    """What the face canvas holds now, as an RGB array (independent of anything drawn over it)."""
    url = page.evaluate("document.getElementById('face').toDataURL('image/png')")
    return decode_data_url(url)


def decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def agent_messages(page) -> list[str]:
    return page.eval_on_selector_all(".msg.agent .text", "els => els.map(e => e.textContent.trim())")


def wait_turn_done(page, n_agent: int, timeout_ms: int) -> None:
    """Until the n-th agent message is complete (turn_end) and the agent is listening again."""
    page.wait_for_function(
        """n => {
            const m = document.querySelectorAll('.msg.agent');
            if (m.length < n) return false;
            const last = m[n - 1];
            return !last.classList.contains('streaming') && last.querySelector('.text').textContent.trim() !== ''
                && window.avatarStats.agentState === 'listening' && !window.avatarStats.audioPlaying;
        }""", arg=n_agent, timeout=timeout_ms)


# Runs in the page: samples the A/V offset on every animation frame while reply audio plays, and takes
# canvas snapshots every `snapMs`, until playback is over and the agent is listening again.
SAMPLE_PLAYBACK_JS = """
async ({maxMs, snapMs, maxSnaps}) => {
  const s = window.avatarStats;
  const canvas = document.getElementById('face');
  const video = !canvas.classList.contains('hidden');
  const offsets = [], snaps = [], leads = [];
  const late0 = s.framesLate, received0 = s.framesReceived;
  let lastReceived = s.framesReceived;
  const t0 = performance.now();
  let lastSnap = -1e9, playingFrames = 0, seenPlaying = false;
  while (performance.now() - t0 < maxMs) {
    await new Promise(r => requestAnimationFrame(r));
    if (s.audioPlaying) {
      seenPlaying = true;
      playingFrames += 1;
      if (video && s.avOffsetMs !== null) offsets.push(s.avOffsetMs);
      if (s.framesReceived !== lastReceived && s.frameArrivalLeadMs !== null) leads.push(s.frameArrivalLeadMs);
      lastReceived = s.framesReceived;
      const now = performance.now();
      if (video && snaps.length < maxSnaps && now - lastSnap >= snapMs && s.lastDrawnTurn) {
        snaps.push(canvas.toDataURL('image/png'));
        lastSnap = now;
      }
    } else if (seenPlaying && s.agentState === 'listening') {
      break;
    }
  }
  return {offsets, snaps, leads, playingFrames, ms: performance.now() - t0,
          framesLate: s.framesLate - late0, framesReceived: s.framesReceived - received0};
}
"""


def mouth_region(img: np.ndarray) -> np.ndarray:
    """Around the mouth in the renderer's portrait crop (the face is centred, mouth a little below middle)."""
    h, w = img.shape[:2]
    return img[int(0.48 * h): int(0.70 * h), int(0.32 * w): int(0.68 * w)]


def eyes_region(img: np.ndarray) -> np.ndarray:
    """Eyes and forehead: moves with the head (idle sway, blinks) but not with speech."""
    h, w = img.shape[:2]
    return img[int(0.15 * h): int(0.40 * h), int(0.30 * w): int(0.70 * w)]


def motion(images: list[np.ndarray], region) -> float:
    """Median mean-absolute change of a region between consecutive images (0-255 scale)."""
    return float(np.median([np.abs(region(a) - region(b)).mean() for a, b in zip(images, images[1:])]))


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.timeout(240)
def test_voice_text_and_resume(shared_server, browser):
    srv = shared_server
    page, watch = open_page(browser, srv.http_url + "/")
    try:
        _voice_text_and_resume(page, watch)
    except Exception:
        print("\n".join(["--- page console ---", *watch.console[-60:], "--- server log ---", srv.log()[-6000:]]))
        raise


def _voice_text_and_resume(page, watch) -> None:
    page.screenshot(path=str(SHOTS / "web_client_start.png"))
    assert page.is_visible("#start-overlay"), "the page should first ask for a click to start"
    assert "Click to start" in page.inner_text("#start-overlay")
    session_id = stats(page)["sessionId"]
    video = page.is_visible("#face")

    idle: list[np.ndarray] = []
    if video:
        # The idle face is drawn on the audio clock before anyone speaks (autoplay is allowed here).
        page.wait_for_function("window.avatarStats.framesDrawn > 3", timeout=30000)
        for _ in range(6):
            idle.append(canvas_image(page))
            time.sleep(0.15)
        assert idle[0].std() > 10 and len(np.unique(idle[0].reshape(-1, 3), axis=0)) > 200, \
            "the face canvas is blank or flat"

    # Speak: the fake microphone plays the question once the capture starts.
    page.click("#start-overlay")
    page.wait_for_function("window.avatarStats.micFramesSent > 10", timeout=15000)
    assert page.get_attribute("#mic-btn", "aria-pressed") == "true"
    page.wait_for_function("document.getElementById('transcript').classList.contains('final')", timeout=60000)
    transcript = page.inner_text("#transcript")
    assert any(w in transcript.lower() for w in ("capital", "france")), transcript
    user_msgs = page.eval_on_selector_all(".msg.user .text", "els => els.map(e => e.textContent)")
    assert any("capital" in m.lower() or "france" in m.lower() for m in user_msgs), user_msgs

    # The reply: audio scheduled on the output timeline, the face following the same clock.
    page.wait_for_function("window.avatarStats.audioChunksScheduled > 0", timeout=90000)
    sampled = page.evaluate(SAMPLE_PLAYBACK_JS, {"maxMs": 60000, "snapMs": 150, "maxSnaps": 16})
    wait_turn_done(page, 1, timeout_ms=60000)
    s = stats(page)
    assert s["audioChunksPlayed"] > 0, s
    assert s["audioSecondsScheduled"] > 0.5, s
    assert sampled["playingFrames"] > 0, "reply audio never sounded"
    replies = agent_messages(page)
    assert replies and len(replies[0]) > 3, replies
    page.screenshot(path=str(SHOTS / "web_client_voice_turn.png"))

    if video:
        offsets = sampled["offsets"]
        assert len(offsets) >= 10, f"too few A/V samples during playback: {len(offsets)}"
        mags = [abs(o) for o in offsets]
        print(f"\nA/V offset during reply playback (frame position - audio clock), {len(offsets)} samples "
              f"over {sampled['ms'] / 1000:.1f} s: mean {statistics.fmean(offsets):+.1f} ms, "
              f"median |offset| {statistics.median(mags):.1f} ms, "
              f"p95 |offset| {float(np.percentile(mags, 95)):.1f} ms, max |offset| {max(mags):.1f} ms")
        leads = sampled["leads"]
        print(f"video frames during playback: {sampled['framesReceived']} received, {sampled['framesLate']} arrived "
              f"after their time on the audio clock; median arrival lead "
              f"{statistics.median(leads) if leads else float('nan'):+.1f} ms (server sends frames ~72 ms ahead)")
        assert statistics.median(mags) <= 40, (
            f"lips and voice out of step: median |offset| {statistics.median(mags):.1f} ms; "
            f"{sampled['framesLate']} of {sampled['framesReceived']} frames reached the page after their time "
            "(late frames point at the server's renderer or a CPU overloaded by other work)")

        # The mouth moves while the reply plays: around the mouth, speaking frames change from one
        # snapshot to the next much more than idle frames do, and more than the eyes do (so it is not
        # just the head swaying).
        snaps = [decode_data_url(u) for u in sampled["snaps"]]
        assert len(snaps) >= 4, f"too few canvas snapshots during playback: {len(snaps)}"
        mouth_speaking, mouth_idle = motion(snaps, mouth_region), motion(idle, mouth_region)
        eyes_speaking = motion(snaps, eyes_region)
        mouth_vs_idle_face = max(float(np.abs(mouth_region(x) - mouth_region(idle[0])).mean()) for x in snaps)
        print(f"mouth-region change between snapshots 150 ms apart (mean |difference|, 0-255): speaking "
              f"{mouth_speaking:.1f}, idle {mouth_idle:.1f}; eyes region while speaking {eyes_speaking:.1f}; "
              f"largest mouth-region difference from the idle face {mouth_vs_idle_face:.1f}")
        assert mouth_vs_idle_face > 3.0, "the mouth region never differed from the idle face during the reply"
        assert mouth_speaking > max(1.5, 1.5 * mouth_idle), \
            f"the mouth did not move while the reply played ({mouth_speaking:.1f} vs idle {mouth_idle:.1f})"
        assert mouth_speaking > eyes_speaking, \
            f"the change is head motion, not the mouth ({mouth_speaking:.1f} vs eyes {eyes_speaking:.1f})"

    # Typed message (microphone off, so the looping fake capture cannot start another turn).
    page.click("#mic-btn")
    assert page.get_attribute("#mic-btn", "aria-pressed") == "false"
    before_audio = stats(page)["audioSecondsScheduled"]
    page.fill("#text-input", "Please tell me one fact about Paris.")
    page.click("#send-btn")
    assert page.input_value("#text-input") == ""
    wait_turn_done(page, 2, timeout_ms=90000)
    replies = agent_messages(page)
    assert len(replies) >= 2 and len(replies[1]) > 3, replies
    assert stats(page)["audioSecondsScheduled"] > before_audio + 0.3
    latency_chips = page.eval_on_selector_all(".msg.agent .latency .lat", "els => els.length")
    assert latency_chips > 0, "latency figures are not shown"
    page.screenshot(path=str(SHOTS / "web_client_conversation.png"))
    assert not watch.errors, watch.errors

    # Reload: the same session comes back with its history.
    users_before = page.eval_on_selector_all(".msg.user .text", "els => els.map(e => e.textContent.trim())")
    page.reload()
    wait_ready(page)
    assert stats(page)["sessionId"] == session_id, "a reload should resume the same session"
    page.wait_for_selector(".msg.agent")
    users_after = page.eval_on_selector_all(".msg.user .text", "els => els.map(e => e.textContent.trim())")
    agents_after = agent_messages(page)
    assert any("paris" in u.lower() for u in users_after), users_after
    assert len(users_after) >= 2 and len(agents_after) >= 2, (users_after, agents_after)
    assert all(u in users_after for u in users_before), (users_before, users_after)
    assert "Conversation resumed" in page.inner_text("#chat-log")
    if video:
        page.wait_for_function("window.avatarStats.framesDrawn > 0", timeout=15000)
    page.screenshot(path=str(SHOTS / "web_client_resumed.png"))
    assert not watch.errors, watch.errors


@pytest.mark.timeout(150)
def test_audio_only_server_and_unknown_session(server_factory, browser):
    srv = server_factory(overrides={**FAST, "video.enabled": "false"})
    # A session id the server never saw: the page must drop it and go on with a new conversation.
    page, watch = open_page(browser, srv.http_url + "/",
                            init_script="localStorage.setItem('avatar.session_id', 'no-such-session')")
    try:
        page.wait_for_function("window.avatarStats.sessionId !== 'no-such-session'", timeout=10000)
        assert page.is_hidden("#face"), "with video off the canvas should be hidden"
        assert page.is_visible("#no-video")
        page.fill("#text-input", "Hello! Who are you?")
        page.press("#text-input", "Enter")
        wait_turn_done(page, 1, timeout_ms=90000)
        s = stats(page)
        assert s["audioChunksPlayed"] > 0 and s["audioSecondsScheduled"] > 0.5, s
        assert s["framesDrawn"] == 0
        assert page.evaluate("localStorage.getItem('avatar.session_id')") == s["sessionId"]
        users = page.eval_on_selector_all(".msg.user", "els => els.length")
        assert users == 1, "a typed message should show once (the server echoes it as a transcript)"

        # The Interrupt button silences the reply at once; the turn is marked interrupted.
        page.fill("#text-input", "Tell me a long story about a dragon who lives in a library.")
        page.click("#send-btn")
        page.wait_for_function("window.avatarStats.audioPlaying", timeout=90000)
        page.click("#interrupt-btn")
        page.wait_for_function("!window.avatarStats.audioPlaying", timeout=300)
        page.wait_for_selector(".msg.agent.interrupted .tag", timeout=10000)
        assert "(interrupted)" in page.inner_text(".msg.agent.interrupted")
        page.screenshot(path=str(SHOTS / "web_client_audio_only.png"))
        assert not watch.errors, watch.errors
    except Exception:
        print("\n".join(["--- page console ---", *watch.console[-60:], "--- server log ---", srv.log()[-6000:]]))
        raise


def test_chat_shows_the_sources_of_a_reply(server_factory, browser):
    shop = Path(__file__).resolve().parent / "data" / "kb" / "shop"
    srv = server_factory(overrides={**FAST, "video.enabled": "false", "knowledge.path": str(shop)})
    page, watch = open_page(browser, srv.http_url + "/")
    try:
        page.fill("#text-input", "When do you close on Saturday?")
        page.press("#text-input", "Enter")
        wait_turn_done(page, 1, timeout_ms=90000)
        shown = page.inner_text(".msg.agent .sources")
        assert shown.startswith("Sources: opening-hours.md"), shown
        page.fill("#text-input", "Hello!")
        page.press("#text-input", "Enter")
        wait_turn_done(page, 2, timeout_ms=90000)
        assert page.eval_on_selector_all(".msg.agent .sources", "els => els[1].textContent") == ""
        assert not watch.errors, watch.errors
    except Exception:
        print("\n".join(["--- page console ---", *watch.console[-60:], "--- server log ---", srv.log()[-6000:]]))
        raise
