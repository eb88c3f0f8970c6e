"""avatar/language.py: language codes as configured, Chinese told by its script, the clause rules, and the
places that use them (a kiosk set to "zh-CN" greets in Chinese)."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.config import PersonaConfig, TTSConfig, load_config
from avatar.events import TurnEnded
from avatar.kiosk.visit import DEFAULT_LINES, KioskVisit
from avatar.knowledge.grounding import approx_tokens, language_of
from avatar.language import (CHINESE, CJK_WIDTH, ENGLISH, Language, count_cjk, has_cjk, index_at_width, join_clauses,
                             spoken_prefix, spoken_units, spoken_width)
from avatar.live.comments import Comment, prompt_for
from avatar.models.loading import tts_backend
from avatar.models.tts.espeak import voice_for
from tests.harness import open_harness, wait_for
from tests.test_kiosk_visit import FACE, MarkerDetector, of


@pytest.mark.parametrize("tag, code", [
    ("zh-CN", "zh"), ("zh_TW", "zh"), ("ZH", "zh"), ("zh-Hans-CN", "zh"), (" zh ", "zh"),
    ("yue", "yue"), ("yue-HK", "yue"), ("cmn", "cmn"),
    ("en-US", "en"), ("en", "en"), ("de_DE", "de"),
    ("", "en"), (None, "en"),
])
def test_a_tag_is_normalised_to_its_primary_code(tag, code):
    assert Language.parse(tag).code == code
    assert str(Language.parse(tag)) == code


def test_chinese_languages():
    assert all(Language.parse(tag).is_chinese for tag in ("zh", "zh-CN", "zh_TW", "yue-HK", "cmn"))
    assert not any(Language.parse(tag).is_chinese for tag in ("en", "en-US", "ja", "", None))
    assert Language.parse("zh-CN") == CHINESE and Language.parse(None) == ENGLISH
    assert Language.parse(CHINESE) is CHINESE  # a Language passes through


def test_the_script_tells_chinese_in_mixed_text():
    assert has_cjk("我用iPhone 15") and count_cjk("我用iPhone 15") == 2
    assert not has_cjk("Hello, 15%!") and count_cjk("Hello") == 0
    # Extension A (㐀) and a compatibility ideograph (U+F900) are Han; kana, hangul and the Yijing
    # hexagram symbols between Extension A and the main block are not.
    assert count_cjk("㐀\uf900") == 2
    assert not has_cjk("ひらがなカタカナ한국어\u4dc0")
    assert Language.of("请问几点开门？") == CHINESE
    assert Language.of("What time do you open?") == ENGLISH
    assert Language.of("OK", default="zh-CN") == CHINESE  # Latin text: the default, normalised
    assert Language.of("OK", default="yue").code == "yue"


def test_clause_widths_count_a_han_character_as_a_syllable():
    assert spoken_width("Hello") == 5
    assert spoken_width("你好") == 2 * CJK_WIDTH
    assert spoken_width("OK你好") == 2 + 2 * CJK_WIDTH
    assert spoken_units("Hello there") == 2
    assert spoken_units("你好 there") == 3
    # Where a run-on text passes a width: after the last character that fits.
    assert index_at_width("abcdef", 3) == 3
    assert index_at_width("你好世界", 7) == 2  # 你好 is 6 units, 世 would make 9
    assert index_at_width("short", 100) == 5


def test_cutting_and_joining_spoken_text():
    # Chinese is cut at a character, other text at a word.
    assert spoken_prefix("我想买一件衣服", 0.5) == "我想买"
    assert spoken_prefix("one two three four", 0.5) == "one two"
    assert spoken_prefix("one two", 0.1) == ""
    # No space where a Han character meets the join; one between other clauses; empty clauses dropped.
    assert join_clauses(["您好。", "欢迎光临！"]) == "您好。欢迎光临！"
    assert join_clauses(["Hello.", "", "Welcome!"]) == "Hello. Welcome!"
    assert join_clauses(["Hello.", "欢迎！"]) == "Hello.欢迎！"
    assert join_clauses([]) == ""


def test_the_places_that_read_persona_language_agree():
    """zh-CN and zh_Hans mean Chinese to the system prompt, the TTS choice, the knowledge fallback and the
    live host's comment prompt, as plain zh does."""
    for tag in ("zh", "zh-CN", "zh_Hans", "ZH"):
        config = load_config(overrides={"persona": {"language": tag}})
        assert config.system_prompt.endswith("请用简体中文回答。"), tag
        assert tts_backend(TTSConfig(), PersonaConfig(language=tag)) == "kokoro", tag  # zf_xiaoxiao
        assert voice_for(TTSConfig(), PersonaConfig(language=tag)) == "cmn-latn-pinyin", tag
        assert language_of("OK", tag) == "zh", tag
        assert prompt_for(Comment("amy", "多少钱？"), Language.parse(tag).code).startswith("观众")
    assert load_config(overrides={"persona": {"language": "yue-HK"}}).system_prompt.endswith("请用粤语回答。")
    assert tts_backend(TTSConfig(), PersonaConfig(language="en-US")) == "kokoro"
    assert tts_backend(TTSConfig(), PersonaConfig(language="yue-HK")) == "espeak"  # no Cantonese Kokoro voice
    assert voice_for(TTSConfig(), PersonaConfig(language="fr-FR")) == "fr-fr"  # a tag espeak-ng knows as a voice
    assert language_of("你好", "en") == "zh" and language_of("Hi", "fr") == "en"


def test_approx_tokens_counts_every_han_character_as_one():
    assert approx_tokens("你好") == 2
    assert approx_tokens("\uf900\uf901") == 2  # compatibility ideographs are Chinese here too now
    assert approx_tokens("abcdefgh") == 2


def test_whisper_gets_the_primary_code():
    """faster-whisper refuses "zh-CN" ("not a valid language code"): the adapter passes "zh"."""
    from avatar.models.asr.faster_whisper import FasterWhisperASR

    class Model:
        def transcribe(self, audio, *, language, **_):
            self.language = language
            return [], type("Info", (), {"language": language or "en"})()

    asr = FasterWhisperASR.__new__(FasterWhisperASR)
    asr.model, asr.multilingual, asr.window_s, asr.beam_size = Model(), True, 0, 1
    audio = np.zeros(16000, np.float32)
    assert asr.transcribe(audio, language="zh-CN").language == "zh" and asr.model.language == "zh"
    asr.transcribe(audio, language=None)
    assert asr.model.language is None  # no language set: Whisper detects it
    asr.multilingual = False
    asr.transcribe(audio, language="zh-CN")
    assert asr.model.language == "en"  # an English-only model


async def test_a_kiosk_set_to_zh_cn_greets_in_chinese(tmp_path):
    """The issue: kiosk.py looked "zh-CN" up as it was written, found no Chinese lines, and greeted in English."""
    h = open_harness(tmp_path, heard_everything=True, overrides={
        "persona": {"language": "zh-CN"}, "kiosk": {"attract_interval_s": 0.2}})
    visit = KioskVisit(h.services, h.session, emit=h.bus.emit, end_connection=lambda: None,
                       detector=MarkerDetector())
    h.session.kiosk = visit
    h.bus.subscribe(visit.observe)
    try:
        await wait_for(lambda: any(e.source == "attract" for e in of(h, TurnEnded)), timeout=5)
        assert [e for e in of(h, TurnEnded) if e.source == "attract"][0].reply == DEFAULT_LINES["zh"]["attract_line"]
        visit.camera_frame({"jpeg": FACE})
        await wait_for(lambda: any(e.source == "presence" for e in of(h, TurnEnded)))
        greeting = [e for e in of(h, TurnEnded) if e.source == "presence"][0]
        assert greeting.reply == DEFAULT_LINES["zh"]["greeting"] == "您好，欢迎光临！请问有什么可以帮您？"
    finally:
        h.close()
