"""The page in Chinese: a persona with language "zh" gets Chinese labels, a Chinese message and its spoken
reply go through, and the visitor's language choice wins over the persona's and survives a reload."""

from __future__ import annotations

import pytest

from tests.conftest import FAST
from tests.test_web_client import CHROMIUM, browser, open_page, question_wav, stats, wait_turn_done  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium is not installed at {CHROMIUM}"),
]


def labels(page) -> dict:
    return {
        "send": page.inner_text("#send-btn"),
        "mic": page.inner_text("#mic-label"),
        "interrupt": page.inner_text("#interrupt-btn"),
        "placeholder": page.get_attribute("#text-input", "placeholder"),
        "lang": page.evaluate("document.documentElement.lang"),
        "picker": page.input_value("#lang-picker"),
        "state": page.inner_text("#agent-state"),
    }


@pytest.mark.timeout(180)
def test_chinese_persona_gets_a_chinese_page(server_factory, browser):  # noqa: F811
    srv = server_factory(overrides={**FAST, "persona.language": "zh", "video.enabled": "false"})
    page, watch = open_page(browser, srv.http_url + "/")
    try:
        zh = labels(page)
        assert zh == {"send": "发送", "mic": "打开麦克风", "interrupt": "打断", "placeholder": "输入消息…",
                      "lang": "zh-CN", "picker": "zh", "state": "正在听"}, zh
        page.fill("#text-input", "你好，今天是2024年3月5日。")
        page.press("#text-input", "Enter")
        wait_turn_done(page, 1, timeout_ms=120000)
        assert "你好，今天是2024年3月5日。" in page.inner_text("#chat-log")  # the caption keeps the digits
        s = stats(page)
        assert s["audioChunksPlayed"] > 0 and s["audioSecondsScheduled"] > 0.3, s  # espeak-ng Mandarin spoke

        page.select_option("#lang-picker", "en")  # the visitor's choice wins over the persona's ...
        en = labels(page)
        assert (en["send"], en["mic"], en["lang"], en["state"]) == ("Send", "Start microphone", "en", "listening"), en
        page.reload()
        page.wait_for_function("window.avatarStats && window.avatarStats.connection === 'connected'", timeout=30000)
        assert labels(page)["send"] == "Send"  # ... and is kept
        assert not watch.errors, watch.errors
    except Exception:
        print("\n".join(["--- page console ---", *watch.console[-60:], "--- server log ---", srv.log()[-6000:]]))
        raise
