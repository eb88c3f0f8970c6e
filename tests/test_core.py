"""Unit tests of the model-free core: protocol, config, clauses, memory, end-pointing."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.config import EndpointerConfig, load_config
from avatar.conversation.clauses import ClauseSplitter, heard_text, speakable
from avatar.conversation.memory import MemoryStore, Turn
from avatar.conversation.prompt import build_prompt
from avatar.errors import ConfigError, ProtocolError
from avatar.models.vad.base import Endpointer
from avatar.net.protocol import KIND_AUDIO, media_frame, parse_audio_message, parse_media_frame, parse_text_message


def test_parse_text_messages():
    assert parse_text_message('{"type": "text", "text": "hi"}').fields == {"text": "hi"}
    hello = parse_text_message('{"type": "hello", "session_id": "abc", "video": false}')
    assert hello.type == "hello" and hello.fields == {"session_id": "abc", "video": False}
    assert parse_text_message('{"type": "playback", "position": 12.5}').fields["position"] == 12.5


@pytest.mark.parametrize("raw, words", [
    ("not json", "JSON"),
    ("[1, 2]", "object"),
    ('{"type": "dance"}', "unknown message type"),
    ('{"text": "no type"}', "unknown message type"),
    ('{"type": "text"}', "needs a 'text' field"),
    ('{"type": "text", "text": 5}', "must be str"),
    ('{"type": "playback", "position": true}', "must be int or float"),
    ('{"type": "hello", "session_id": ""}', "printable"),
    ('{"type": "hello", "session_id": "' + "x" * 500 + '"}', "printable"),
])
def test_bad_text_messages_say_what_is_wrong(raw, words):
    with pytest.raises(ProtocolError, match=words):
        parse_text_message(raw)


def test_audio_and_media_frames():
    pcm = np.array([0, 16384, -32768], dtype="<i2")
    audio = parse_audio_message(pcm.tobytes())
    assert audio.dtype == np.float32 and audio.tolist() == [0.0, 0.5, -1.0]
    with pytest.raises(ProtocolError, match="even number of bytes"):
        parse_audio_message(b"\x00\x01\x02")
    frame = media_frame(KIND_AUDIO, 7, 22050, b"payload")
    assert len(frame) == 16 + 7
    assert parse_media_frame(frame) == (KIND_AUDIO, 7, 22050, b"payload")


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "avatar.toml"
    path.write_text('[persona]\nname = "Max"\n[llm]\nmax_tokens = 64\n[limits]\nidle_timeout_s = 5\n')
    config = load_config(path, {"llm": {"model": "smollm2-135m"}})
    assert config.persona.name == "Max" and config.llm.max_tokens == 64
    assert config.llm.model == "smollm2-135m" and config.limits.idle_timeout_s == 5.0
    assert "Max" in config.system_prompt
    with pytest.raises(ConfigError, match="unknown setting 'llm.modle'"):
        load_config(None, {"llm": {"modle": "x"}})
    with pytest.raises(ConfigError, match="should be int"):
        load_config(None, {"server": {"port": "80"}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_clauses_start_early_then_follow_sentences():
    splitter = ClauseSplitter()
    out = []
    for word in "Well, the capital of France is Paris. It is known for art, food and the Eiffel Tower. Bye".split():
        out += splitter.push(word + " ")
    out += splitter.flush()
    assert out[0] == "Well, the capital of France is Paris."  # no first phrase of one word: a gap would follow
    assert out[-1] == "Bye"
    assert "".join(out).replace(" ", "") == "Well,thecapitalofFranceisParis.Itisknownforart,foodandtheEiffelTower.Bye"
    assert speakable("**Hello** 😀 `code`") == "Hello code"


def test_the_first_phrase_goes_as_soon_as_it_is_safe():
    def split(reply: str) -> tuple[list[str], list[str]]:
        splitter, out, first_seen_with = ClauseSplitter(), [], []
        for word in reply.split(" "):
            got = splitter.push(word + " ")
            if got and not out:
                first_seen_with.append(word)
            out += got
        return out + splitter.flush(), first_seen_with

    out, when = split("Hello! I am Sam, your digital human.")
    assert out[0] == "Hello!" and when == ["Hello!"]  # "!" needs no next token
    out, _ = split("Paris is lovely, and it is big.")
    assert out[0] == "Paris is lovely,"
    out, _ = split("Spiders have eight legs and they use them to walk.")
    assert out == ["Spiders have eight legs", "and they use them to walk."]  # before a new phrase
    out, _ = split("It costs 3.5 dollars a kilo today.")
    assert out[0] != "It costs 3." and "3.5" in out[0]  # a decimal point is not a sentence end


def test_heard_text_cuts_at_the_playback_position():
    spans = [(0, 100, "One two three four."), (100, 200, "Five six seven eight.")]
    assert heard_text(spans, 0) == ""
    assert heard_text(spans, 100) == "One two three four."
    assert heard_text(spans, 150) == "One two three four. Five six"
    assert heard_text(spans, 10_000) == "One two three four. Five six seven eight."


def test_memory_persists_whole_turns(tmp_path):
    db = tmp_path / "m.sqlite3"
    store = MemoryStore(db)
    sid = store.create_session("alice")
    store.add_turn(sid, "alice", Turn("My name is Alice.", "Nice to meet you, Alice."), "Nice to meet you, Alice.")
    store.add_turn(sid, "alice", Turn("Tell me a story.", "Once upon", True), "Once upon a time there was...")
    store.close()
    store = MemoryStore(db)  # as after a restart
    assert store.session_exists(sid) and store.session_user(sid) == "alice"
    history = store.history(session_id=sid)
    assert [t.user_text for t in history] == ["My name is Alice.", "Tell me a story."]
    assert history[1].heard_text == "Once upon" and history[1].interrupted
    other = store.create_session("bob")
    assert store.history(session_id=other, user_id="bob") == []
    assert len(store.history(session_id=other, user_id="alice")) == 2
    assert store.integrity_ok()


def test_prompt_keeps_recent_turns_within_budget():
    history = [Turn(f"question {i} " + "word " * 20, f"answer {i}") for i in range(50)]
    count = lambda text: len(text.split())  # noqa: E731
    messages = build_prompt("sys", history, "latest?", count_tokens=count, budget_tokens=200, max_turns=24)
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[-1] == {"role": "user", "content": "latest?"}
    assert sum(count(m["content"]) for m in messages) <= 200
    assert "question 49" in messages[-3]["content"]  # the newest turns are the ones kept
    assert len(messages) < 2 * 24
    # A turn cut off before any reply does not leave two user messages in a row.
    messages = build_prompt("sys", [Turn("first", "")], "second", count_tokens=count, budget_tokens=99,
                            max_turns=5)
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == "first\nsecond"


def test_the_prompt_keeps_its_start_while_it_fits_so_the_llm_cache_holds():
    from avatar.conversation.prompt import PromptWindow

    count = lambda text: len(text.split())  # noqa: E731
    window, history, starts = PromptWindow(), [], []
    for i in range(60):
        messages = build_prompt("sys", history, f"question {i}", count_tokens=count, budget_tokens=120,
                                max_turns=24, window=window)
        assert sum(count(m["content"]) for m in messages) <= 120 and len(messages) <= 2 * 24 + 2
        starts.append(messages[1]["content"])  # the oldest turn in the prompt, or this question
        history.append(Turn(f"old {i} " + "word " * 6, f"answer {i}"))
    # Without a window the start moves on every turn once the history is full; with one it stays for
    # several turns, then jumps (one full prompt evaluation) to a window half the budget.
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    assert moves <= 60 // 3, moves
    assert "old 59" in build_prompt("sys", history, "q", count_tokens=count, budget_tokens=120, max_turns=24,
                                    window=window)[-3]["content"]  # the newest turns are always there
    fixed = [build_prompt("sys", history[:n], "q", count_tokens=count, budget_tokens=120,
                          max_turns=24)[1]["content"] for n in range(40, 50)]
    assert len(set(fixed)) == 10  # the plain budget rule: a new start every turn


def _feed(endpointer, probs, **kw):
    return [(e.kind, e.sample) for p in probs for e in endpointer.update(p, **kw)]


def test_endpointer_start_pause_resume_end():
    cfg = EndpointerConfig(min_speech_ms=64, end_silence_ms=320)
    ep = Endpointer(cfg, 16000, 512)  # 32 ms frames
    events = _feed(ep, [0.1] * 3 + [0.9] * 10 + [0.1] * 3 + [0.9] * 5 + [0.0] * 12)
    kinds = [k for k, _ in events]
    assert kinds == ["speech_start", "pause", "resume", "pause", "speech_end"]
    start = dict(events)["speech_start"]
    assert start == 3 * 512  # the utterance starts where speech started, not where it was confirmed
    assert events[-1][1] == (3 + 10 + 3 + 5) * 512  # the end is the last speech frame


def test_endpointer_is_stricter_while_the_agent_speaks():
    cfg = EndpointerConfig()
    probs = [0.6] * 20  # speech-like, but below the barge-in threshold
    assert _feed(Endpointer(cfg, 16000, 512), probs)[0][0] == "speech_start"
    assert _feed(Endpointer(cfg, 16000, 512), probs, agent_speaking=True) == []
    assert _feed(Endpointer(cfg, 16000, 512), [0.95] * 6, agent_speaking=True)[0][0] == "speech_start"


def test_config_example_lists_every_setting_with_its_default():
    import dataclasses
    import tomllib
    from pathlib import Path

    from avatar.config import Config

    path = Path(__file__).resolve().parent.parent / "config.example.toml"
    assert load_config(path) == Config()
    listed = tomllib.loads(path.read_text())
    for section in dataclasses.fields(Config):
        names = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(listed.get(section.name, {})) == names, section.name


def test_read_wav_takes_pcm16_and_float32_at_any_rate(tmp_path):
    import struct

    from avatar.tools.client import read_wav, write_wav

    tone = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 200) * 0.5).astype(np.float32)
    write_wav(tmp_path / "pcm.wav", (tone * 32767).astype("<i2"), 8000)
    pcm = read_wav(tmp_path / "pcm.wav")
    assert len(pcm) == 16000 and abs(pcm.max() - 0.5) < 0.01
    data = np.stack([tone, tone], axis=1).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 2, 16000, 16000 * 8, 8, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "float.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    floats = read_wav(tmp_path / "float.wav")
    assert len(floats) == 8000 and np.allclose(floats, tone, atol=1e-6)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    with pytest.raises(ValueError, match="chunks"):
        read_wav(tmp_path / "bad.wav")


def test_llm_threads_yield_to_media_and_malloc_arenas_are_capped(monkeypatch):
    import os
    import sys
    import threading

    from avatar.runtime.replies import LLM_NICE
    from avatar.runtime.services import Services, cap_malloc_arenas

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities and glibc arenas are Linux features")
    runtime = Services(load_config(None), models=None, memory=None)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        nice = runtime.replies.pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
        render_nice = runtime.render_pool.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        for pool in (runtime.recognition.pool, runtime.replies.pool, runtime.speech.pool, runtime.render_pool):
            pool.shutdown()
    assert nice == min(19, base + LLM_NICE) and render_nice == base
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the rest of the process keeps its priority
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False  # the deployer's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert cap_malloc_arenas() is True
