"""The default LLM backend, xllamacpp, with its real default model: batching, a prompt cache per
conversation, the model tiers."""

from __future__ import annotations

import threading
import time

import pytest

from avatar.config import LLMConfig
from avatar.errors import ConfigError, ModelMissingError, StageError
from avatar.models.loading import load_llm, resolve_llm
from avatar.models.tiers import pick_llm_tier

SYSTEM = {"role": "system", "content": "You are Sam. Answer in one short sentence."}
QUESTIONS = ["Hi, I am Ada.", "What is two plus two?", "Name a colour.", "Name a fruit.", "Name an animal.",
             "What is the capital of Italy?", "Name a planet.", "Say a number.", "Name a tree.", "Thanks, bye!"]


@pytest.fixture(scope="module")
def qwen():
    # The real default model and backend; two slots so that two conversations can keep their caches. One
    # engine: these tests look at its slots (tests/test_llm_engines.py covers several engines).
    return load_llm(LLMConfig(model="qwen2.5-0.5b", n_threads=2, context_tokens=2048, slots=2, engines=1))


def test_default_backend_is_xllamacpp_and_old_name_still_works():
    assert LLMConfig().backend == "xllamacpp"
    assert resolve_llm(LLMConfig(backend="llama-cpp", model="qwen2.5-0.5b")).backend == "xllamacpp"
    with pytest.raises(ConfigError, match="valid: xllamacpp, transformers, openai"):
        resolve_llm(LLMConfig(backend="llamacpp"))


@pytest.mark.slow
def test_a_conversation_evaluates_only_its_new_tokens_each_turn(qwen):
    """Ten turns: from the second on, the slot still holds the history, so llama.cpp evaluates only what
    the new turn adds (its timings say how many prompt tokens it evaluated and how many came from cache)."""
    messages, evaluated, cached = [SYSTEM], [], []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        reply = "".join(qwen.stream_chat(messages, max_tokens=24, temperature=0.0, conversation="ada"))
        assert reply.strip(), question
        messages.append({"role": "assistant", "content": reply})
        timings = qwen.last_timings["ada"]
        evaluated.append(timings["prompt_n"])
        cached.append(timings["cache_n"])
    # Turn 10 re-reads none of the nine turns before it: it evaluates about as much as turn 2 did
    # (the new question plus the previous reply), while the cached part grew with the history.
    assert cached[9] > cached[1] > 0
    assert evaluated[9] <= 1.5 * evaluated[1] + 8, evaluated
    assert evaluated[9] < cached[9] / 3, (evaluated, cached)


def test_two_conversations_generate_at_once(qwen):
    order: list[str] = []
    lock = threading.Lock()

    def talk(name: str) -> None:
        prompt = [SYSTEM, {"role": "user", "content": f"Count slowly from one to twenty, {name}."}]
        for _ in qwen.stream_chat(prompt, max_tokens=40, temperature=0.0, conversation=name):
            with lock:
                order.append(name)

    threads = [threading.Thread(target=talk, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Batched: both streams advance together instead of one after the other.
    switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert order.count("left") > 5 and order.count("right") > 5
    assert switches >= 4, order


def test_forgotten_conversation_frees_its_slot_and_timings(qwen):
    list(qwen.stream_chat([SYSTEM, {"role": "user", "content": "Hello"}], max_tokens=4, conversation="gone"))
    assert "gone" in qwen.last_timings
    qwen.forget("gone")
    assert "gone" not in qwen.last_timings
    assert all(qwen._slots.owner(i) != "gone" for i in range(len(qwen._slots)))


def test_prompt_too_long_is_a_clear_error(qwen):
    with pytest.raises(StageError, match="exceeds the available context size"):
        list(qwen.stream_chat([{"role": "user", "content": "word " * 3000}], max_tokens=4))
    assert "".join(qwen.stream_chat([SYSTEM, {"role": "user", "content": "Say yes."}], max_tokens=4)).strip()


def test_tiers_follow_the_machine():
    assert pick_llm_tier(cores=2, gpu=False, large_installed=True)[0] == "qwen2.5-0.5b"
    assert pick_llm_tier(cores=16, gpu=False, large_installed=True)[0] == "qwen2.5-1.5b"
    assert pick_llm_tier(cores=2, gpu=True, large_installed=True)[0] == "qwen2.5-1.5b"
    model, why = pick_llm_tier(cores=16, gpu=True, large_installed=False)
    assert model == "qwen2.5-0.5b" and "pip install 'avatar[llm-large]'" in why
    lines: list[str] = []
    chosen = resolve_llm(LLMConfig(model="auto"), lines.append)
    assert chosen.model in ("qwen2.5-0.5b", "qwen2.5-1.5b") and lines and lines[0].startswith("LLM tier: ")
    assert resolve_llm(LLMConfig(model="smollm2-135m")).model == "smollm2-135m"  # an explicit choice wins


def test_missing_large_tier_names_the_install(monkeypatch):
    from avatar.models import weights

    monkeypatch.setattr(weights, "installed", lambda parts: False)
    with pytest.raises(ModelMissingError, match=r"llm-large"):
        weights.llm_gguf("qwen2.5-1.5b")


def test_cuda_without_a_gpu_build_says_what_to_install(monkeypatch):
    import avatar.models.llm.xllamacpp_backend as backend

    monkeypatch.setattr(backend, "gpu_present", lambda: False)
    with pytest.raises(ConfigError, match="CUDA build"):
        load_llm(LLMConfig(model="smollm2-135m", device="cuda"))


def test_warm_up_primes_every_slot_with_the_system_prompt(qwen):
    """After prime_slots, conversations arriving at once each find the system prompt in their slot: none
    evaluates it again (a cold slot would evaluate all of it before its first token)."""
    from avatar.models.llm.base import prime_slots

    system = {"role": "system", "content": "You are Kim, the guide of a small museum of clocks. " * 6}
    assert prime_slots(qwen, [system, {"role": "user", "content": "Hello!"}]) == len(qwen._slots) == 2
    assert all(qwen._slots.owner(i) is None for i in range(2))  # free for newcomers
    system_tokens = qwen.count_tokens(system["content"])
    barrier = threading.Barrier(2)

    def visit(name: str) -> None:
        barrier.wait()
        list(qwen.stream_chat([system, {"role": "user", "content": f"I am {name}. When do you open?"}],
                              max_tokens=4, temperature=0.0, conversation=name))

    threads = [threading.Thread(target=visit, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name in ("ann", "bob"):
        timings = qwen.last_timings[name]
        assert timings["cache_n"] >= system_tokens, (name, timings)
        assert timings["prompt_n"] < system_tokens / 2, (name, timings)


def test_a_paused_reply_goes_on_where_it_stopped(qwen):
    """avatar.conversation.pacing pauses a reply that is far ahead of its listener: the request stops, the slot is
    kept, and the reply goes on as a continuation of the same assistant message, from the slot's cache."""
    prompt = [SYSTEM, {"role": "user", "content": "Count from one to twenty in digits, separated by commas."}]
    whole = "".join(qwen.stream_chat(prompt, max_tokens=40, temperature=0.0, conversation="moon"))
    assert whole.startswith("1,2,3,4,5,6,7,8,9,10")
    asked = 0
    pause_until = 0.0

    def hold() -> bool:
        nonlocal asked, pause_until
        asked += 1
        if asked == 8:  # pause after the eighth token, for a quarter of a second
            pause_until = time.monotonic() + 0.25
        return time.monotonic() < pause_until

    t0 = time.monotonic()
    pieces = list(qwen.stream_chat(prompt, max_tokens=40, temperature=0.0, conversation="moon", hold=hold))
    assert time.monotonic() - t0 >= 0.25
    assert asked > 8  # asked again while paused, then before each later token
    # Temperature 0: the same count, none of it lost or repeated. (A continuation re-reads the last
    # token as part of a batch, whose rounding differs: on a near tie, prose may take another turn.)
    assert "".join(pieces) == whole
    timings = qwen.last_timings["moon"]  # the continuation's request
    assert timings["cache_n"] > 20 and timings["prompt_n"] <= 4, timings
    assert len(pieces) <= 40


@pytest.mark.slow
def test_a_new_system_prompt_goes_into_the_free_slots(qwen):
    """A knowledge folder standing in the system prompt was edited: the new prompt is evaluated once and
    copied into every free slot, so a conversation's next turn evaluates only its own messages."""
    facts = " ".join(f"Fact {i}: the shop sells {i + 2} kinds of bell." for i in range(30))
    system = {"role": "system", "content": f"You are Sam. Answer in one short sentence. {facts}"}
    busy = qwen._slots.acquire("someone")  # a conversation generating: its slot is left alone
    assert busy is not None
    try:
        assert qwen.reprime_free_slots([system, {"role": "user", "content": "Hello!"}]) == len(qwen._slots) - 1
    finally:
        qwen._slots.release(busy[0])
    list(qwen.stream_chat([system, {"role": "user", "content": "How many kinds of bell?"}], max_tokens=8,
                          temperature=0.0, conversation="newcomer"))
    timings = qwen.last_timings["newcomer"]
    assert timings["cache_n"] > 300 and timings["prompt_n"] < 30, timings


def test_words_said_so_far_are_evaluated_before_the_turn(qwen):
    """``prefill`` puts the start of the next prompt (the user's words so far) into the conversation's
    slot while the engine is idle: the turn then evaluates only the words after them. Never while a
    reply is being written (it would take that reply's core)."""
    question = "Which city is the capital of Italy, and why is it famous?"
    partial = [SYSTEM, {"role": "user", "content": "Which city is the capital of Italy"}]
    busy = qwen._slots.acquire("someone")
    try:
        assert qwen.prefill(partial, "pia") is False
    finally:
        qwen._slots.release(busy[0])
    qwen.forget("someone")
    list(qwen.stream_chat([SYSTEM, {"role": "user", "content": question}], max_tokens=4, temperature=0.0,
                          conversation="cold"))
    cold = qwen.last_timings["cold"]
    assert qwen.prefill(partial, "pia") is True
    list(qwen.stream_chat([SYSTEM, {"role": "user", "content": question}], max_tokens=4, temperature=0.0,
                          conversation="pia"))
    warm = qwen.last_timings["pia"]
    said_so_far = qwen.count_tokens(partial[1]["content"])
    assert warm["cache_n"] >= cold["cache_n"] + said_so_far - 1, (cold, warm)
    assert warm["prompt_n"] <= cold["prompt_n"] - said_so_far + 1, (cold, warm)
    # Left to evaluate: the rest of the question and the chat template's few tokens around it.
    assert warm["prompt_n"] <= qwen.count_tokens(question) - said_so_far + 8, warm
    qwen.forget("cold")
    qwen.forget("pia")
