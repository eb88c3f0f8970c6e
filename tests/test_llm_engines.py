"""Several llama.cpp engines of one model (avatar.models.llm.engines), with the real default model."""

from __future__ import annotations

import threading

import pytest

from avatar.config import LLMConfig
from avatar.errors import ConfigError
from avatar.models.llm.base import prime_slots
from avatar.models.llm.engines import EnginePool, engine_count, slot_shares
from avatar.models.loading import load_llm

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}


def test_engines_follow_the_machine_and_share_the_slots():
    auto = LLMConfig()
    assert engine_count(auto, gpu=False, cores=2) == 2
    assert engine_count(auto, gpu=False, cores=1) == 1
    assert engine_count(auto, gpu=True, cores=16) == 1  # one engine uses a GPU whole
    assert engine_count(LLMConfig(slots=1), gpu=False, cores=8) == 1
    assert engine_count(LLMConfig(engines=3, slots=2), gpu=False, cores=8) == 2  # never more than slots
    with pytest.raises(ConfigError, match="llm.engines"):
        engine_count(LLMConfig(engines=-1), gpu=False)
    assert slot_shares(4, 2) == [2, 2] and slot_shares(5, 2) == [3, 2] and slot_shares(3, 3) == [1, 1, 1]


@pytest.fixture(scope="module")
def pool():
    llm = load_llm(LLMConfig(model="qwen2.5-0.5b", context_tokens=2048, slots=4, engines=2))
    yield llm
    llm.close()


@pytest.mark.slow
def test_conversations_spread_over_the_engines_and_keep_their_cache(pool):
    assert isinstance(pool, EnginePool) and len(pool.engines) == 2 and pool.max_concurrent == 4
    assert prime_slots(pool, [SYSTEM]) == 4  # every slot of both engines
    replies: dict[str, list[str]] = {}

    def talk(name: str, question: str) -> None:
        messages = [SYSTEM, {"role": "user", "content": question}]
        replies[name] = ["".join(pool.stream_chat(messages, max_tokens=16, temperature=0.0, conversation=name))]
        messages += [{"role": "assistant", "content": replies[name][0]},
                     {"role": "user", "content": "And why is that?"}]
        replies[name].append("".join(pool.stream_chat(messages, max_tokens=16, temperature=0.0, conversation=name)))

    threads = [threading.Thread(target=talk, args=(name, question)) for name, question in
               [("ada", "What colour is the sky?"), ("bo", "How many legs does a spider have?")]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r.strip() for pair in replies.values() for r in pair), replies
    # One on each engine, and each second turn found its history in its own engine's cache.
    homes = {name: next(i for i, e in enumerate(pool.engines) if name in e.last_timings) for name in replies}
    assert sorted(homes.values()) == [0, 1], homes
    for name in replies:
        timings = pool.last_timings[name]
        assert timings["cache_n"] > timings["prompt_n"], (name, timings)
    pool.forget("ada")
    assert "ada" not in pool.last_timings
    # The next newcomer goes to the engine with fewer conversations: the one "ada" left.
    list(pool.stream_chat([SYSTEM, {"role": "user", "content": "Hi"}], max_tokens=2, conversation="cy"))
    assert "cy" in pool.engines[homes["ada"]].last_timings
    assert pool.reprime_free_slots([SYSTEM]) == 4  # nobody generating: every slot of both engines
