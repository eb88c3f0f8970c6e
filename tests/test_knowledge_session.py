"""Grounded turns through the real session path: the passages reach the LLM, each clause is checked
before speech synthesis, the chat and the memory get the checked text, and turn_end names the sources.

The first tests use the small stand-in models of tests/fakes.py to script what the "LLM" says; the last
ones run the real default model (Qwen2.5 0.5B) on the test shop's documents: the "don't know" path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from avatar.config import load_config
from avatar.knowledge import Knowledge
from avatar.knowledge.specifics import Support, specifics
from tests.fakes import WordLLM, fake_models
from tests.harness import open_harness, wait_for

SHOP = Path(__file__).resolve().parent / "data" / "kb" / "shop"
PHONE = "555-0142"
DONT_KNOW = re.compile(r"don't|do not|not sure|no information|sorry|unable|can't|cannot|抱歉|无法|不清楚|不知道", re.I)


class SpyTTS:
    """Records what it is asked to say (the clauses after the check)."""

    sample_rate = 22050

    def __init__(self):
        self.said: list[str] = []

    def synthesize(self, text, voice=None):
        import numpy as np

        from avatar.models.tts.base import SpeechChunk

        self.said.append(text)
        yield SpeechChunk(np.zeros(2205, np.int16), text, [])


@pytest.fixture
def grounded(tmp_path):
    made = []

    def make(llm, overrides: dict | None = None):
        folder = tmp_path / "shop"
        if not folder.exists():
            shutil.copytree(SHOP, folder)
        config = load_config(None, {"server": {"data_dir": str(tmp_path / "data")},
                                    "knowledge": {"path": str(folder), "poll_s": 0.0}, **(overrides or {})})
        tts = SpyTTS()
        knowledge = Knowledge.open(config, count_tokens=llm.count_tokens)
        harness = open_harness(tmp_path, models=fake_models(llm=llm, tts=tts), config=config, knowledge=knowledge,
                               name=f"m{len(made)}")
        made.append(harness)
        return harness.services, harness.session, harness.wire, tts

    yield make
    for harness in made:
        harness.close(shared_llm=True)  # the real model is a module fixture


def deltas(wire) -> str:
    return "".join(e["text"] for e in wire.of("reply_delta"))


async def ask(session, wire, text: str, turns: int = 1, timeout: float = 20.0) -> dict:
    session.on_text(text)
    await wait_for(lambda: len(wire.of("turn_end")) >= turns, timeout)
    return wire.of("turn_end")[-1]


async def test_invented_price_is_not_spoken_shown_or_remembered(grounded):
    llm = WordLLM("Good question. A bike helmet costs $35 at our shop. They come in red and blue.")
    rt, session, wire, tts = grounded(llm)
    end = await ask(session, wire, "How much is a bike helmet?")
    fallback = f"I'm sorry, I don't have that information. You can call us at {PHONE}."
    assert tts.said == ["Good question.", fallback]
    assert end["reply"] == f"Good question. {fallback}"
    assert deltas(wire).strip() == end["reply"]  # the chat never showed the invented price
    assert "35" not in end["heard"]
    assert rt.memory.history(session_id=session.session_id)[-1].heard_text == end["reply"]
    # The folder is small: it reached the model whole, in the system prompt (cached with it), with the
    # instruction; the user message is the question alone, so the turn evaluates no passage tokens.
    prompt = llm.prompts[-1]
    assert "Never guess" in prompt[0]["content"]
    assert "[services.csv] Service: Basic tune-up; Price: $45" in prompt[0]["content"]
    assert "[中文服务.md]" in prompt[0]["content"]
    assert prompt[-1]["content"] == "How much is a bike helmet?"
    assert session.conversation.history[-1].user_text == "How much is a bike helmet?"


async def test_a_folder_too_large_to_stand_gets_passages_in_each_turn(grounded, tmp_path):
    llm = WordLLM("A basic tune-up is $45.")
    knowledge = {"path": str(tmp_path / "shop"), "poll_s": 0.0, "standing_tokens": 100}
    rt, session, wire, tts = grounded(llm, {"knowledge": knowledge})
    assert rt.knowledge.standing() is None
    end = await ask(session, wire, "How much is a basic tune-up?")
    assert end["reply"] == "A basic tune-up is $45."
    prompt = llm.prompts[-1]
    assert "Never guess" in prompt[0]["content"] and "Price: $45" not in prompt[0]["content"]
    assert prompt[-1]["content"].startswith("Facts from the documents:")
    assert "[services.csv] Service: Basic tune-up; Price: $45" in prompt[-1]["content"]
    assert prompt[-1]["content"].endswith("Question: How much is a basic tune-up?")
    assert session.conversation.history[-1].user_text == "How much is a basic tune-up?"


async def test_supported_answer_passes_and_names_its_sources(grounded):
    llm = WordLLM("On Saturdays we are open from 10 am until 4 pm.")
    rt, session, wire, tts = grounded(llm)
    end = await ask(session, wire, "When do you close on Saturday?")
    assert end["reply"] == "On Saturdays we are open from 10 am until 4 pm."
    assert " ".join(tts.said) == end["reply"]  # the first phrase may go ahead (avatar/conversation/clauses.py)
    assert end["sources"][0] == "opening-hours.md"
    # The turn reports its time in the knowledge base (retrieval and the clauses' check): milliseconds.
    assert 0 < wire.of("latency")[-1]["knowledge_ms"] < 1000


async def test_small_talk_gets_no_facts_and_no_sources(grounded):
    llm = WordLLM("I'm doing well, thank you! How can I help you today?")
    rt, session, wire, tts = grounded(llm)
    end = await ask(session, wire, "Hello! How are you?")
    assert end["reply"] == "I'm doing well, thank you! How can I help you today?"
    assert end["sources"] == []
    assert llm.prompts[-1][-1]["content"] == "Hello! How are you?"


async def test_without_knowledge_turns_are_unchanged(tmp_path):
    llm = WordLLM("A helmet costs $35.")
    harness = open_harness(tmp_path, models=fake_models(llm=llm))
    wire = harness.wire
    try:
        end = await ask(harness.session, wire, "How much is a helmet?")
        assert end["reply"] == "A helmet costs $35." and end["sources"] == []
        assert len(wire.of("reply_delta")) == 4  # streamed word by word as before
        assert wire.of("latency")[-1]["knowledge_ms"] is None
    finally:
        harness.close()


# -- the real default model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_llm():
    from avatar.models.loading import load_llm

    config = load_config(None)
    return load_llm(config.llm)


def invented(reply: str, question: str) -> list[str]:
    allowed = Support(PHONE, names_from=f"{question} Sam Bluebell Bikes")
    return [s.text for s in specifics(reply) if not allowed.supports(s)]


@pytest.mark.slow
@pytest.mark.parametrize("question", ["How much is a bike helmet?", "What is the name of your head mechanic?",
                                      "头盔多少钱？"])
async def test_default_model_says_it_does_not_know(grounded, default_llm, question):
    rt, session, wire, tts = grounded(default_llm, {"llm": {"temperature": 0.0}})
    end = await ask(session, wire, question, timeout=120)
    reply = end["reply"]
    assert reply, "the model said nothing"
    assert invented(reply, question) == [], reply
    assert DONT_KNOW.search(reply) or PHONE in reply, reply
    assert " ".join(tts.said) == reply  # what was spoken is the checked reply


@pytest.mark.slow
async def test_default_model_answers_from_the_documents(grounded, default_llm):
    rt, session, wire, tts = grounded(default_llm, {"llm": {"temperature": 0.0}})
    end = await ask(session, wire, "What is your phone number?", timeout=120)
    assert re.search(r"555.?0142", end["reply"]), end["reply"]
    assert "contact.txt" in end["sources"]


class PrimingLLM(WordLLM):
    """Records the system prompts put into its slots."""

    def __init__(self):
        super().__init__()
        self.primed: list[str] = []

    def reprime_free_slots(self, messages):
        self.primed.append(messages[0]["content"])
        return 2


def test_an_edited_standing_folder_goes_into_the_llm_slots_once(tmp_path):
    from avatar.conversation.memory import MemoryStore
    from avatar.runtime.services import Services

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "hours.md").write_text("# Opening hours\n\nWe open at 9 am on weekdays.\n", encoding="utf-8")
    config = load_config(None, {"server": {"data_dir": str(tmp_path)}, "knowledge": {"path": str(folder)}})
    knowledge = Knowledge.open(config, watch=False)
    llm = PrimingLLM()
    runtime = Services(config, fake_models(llm=llm), MemoryStore(tmp_path / "m.sqlite3"), knowledge=knowledge)
    try:
        runtime.replies.knowledge_changed(None)  # no warm-up ran: the folder's prompt was never primed
        assert len(llm.primed) == 1 and "9 am" in llm.primed[0]
        runtime.replies.knowledge_changed(None)
        assert len(llm.primed) == 1  # the system prompt did not change: nothing to do
        (folder / "hours.md").write_text("# Opening hours\n\nWe open at 10 am on weekdays.\n", encoding="utf-8")
        runtime.replies.knowledge_changed(knowledge.index.sync())
        assert len(llm.primed) == 2 and "10 am" in llm.primed[1] and "9 am" not in llm.primed[1]
    finally:
        runtime.close()
        knowledge.close()
