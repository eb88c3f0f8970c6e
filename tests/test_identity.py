"""Issue 25, item 3: a persona that knows who it is. The identity rules in the system prompt, the scoring
of identity slips, and the identity set (tests/data/persona/identity.json) with a real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avatar.config import load_config
from avatar.conversation.prompt import build_prompt, with_identity
from avatar.tools.persona_evaluate import identity_faults

DATA = Path(__file__).resolve().parent / "data" / "persona"


def test_identity_rules_follow_the_persona_and_keep_the_prompt_cache():
    config = load_config(None)
    base = config.system_prompt
    ruled = with_identity(base)
    assert ruled.startswith("You are Sam, a friendly digital human who talks with people by voice. Sam is your own "
                            "name, not the user's") and ruled.endswith(base.split(". ", 1)[1])
    assert with_identity(ruled) == ruled  # applied once
    # The warm-up builds its prompt with the knowledge instruction already in; a turn adds it after
    # build_prompt. Both must give the same system prompt, or every first turn misses the LLM's cache.
    instruction = "\n\nBelow are facts from the documents of the business you work for."
    warm = build_prompt(base + instruction, [], "Hello!", count_tokens=len, budget_tokens=4000, max_turns=0)
    turn = build_prompt(base, [], "Hello!", count_tokens=len, budget_tokens=4000, max_turns=0)
    assert warm[0]["content"] == turn[0]["content"] + instruction
    # An operator's prompt of another shape is left as written.
    assert with_identity("Answer briefly. You are a kiosk.") == "Answer briefly. You are a kiosk."
    assert with_identity("You are Ada. Be kind.").startswith("You are Ada. Ada is your own name, not the user's")
    assert with_identity(load_config(None, {"persona": {"language": "zh"}}).system_prompt).endswith("请用简体中文回答。")


@pytest.mark.parametrize("reply, faults", [
    ("Hello Sam! I can help with basic tasks.", ["own_name_to_user"]),
    ("Thanks, Sam!", ["own_name_to_user"]),
    ("Sam tried to solve a problem, but it didn't work as expected.", ["third_person"]),
    ("What would you like to know about Sam?", ["third_person"]),
    ("I'm Sam, a helpful digital human.", []),
    ("My name is Sam. Sam here, happy to help!", []),
    ("Your name is Alex.", ["claims_user_name"]),
    ("Hello, John! Nice to meet you.", ["claims_user_name"]),
    ("Nice to meet you, Maria!", []),  # told
    ("Hi there! How can I help you today?", []),
    ("You told me you like cats.", ["claims_user_fact"]),
    ("I am Maria.", ["wrong_own_name"]),
    ("I'm glad you asked! I'm Sam.", []),
    ("I am a digital human named Sam.", []),
    ("I'm a digital human, Sam, a friendly one.", []),
])
def test_identity_slips_are_scored(reply, faults):
    assert [kind for kind, _ in identity_faults(reply, "Sam", told=["Maria"], asked="What is my name?")] == faults


def test_an_unknown_user_name_must_be_admitted():
    assert identity_faults("I am Sam.", "Sam", unknown=True)[0][0] == "name_not_admitted_unknown"
    asked = "Do you know my name?"
    assert identity_faults("I don't know your name yet. What is it?", "Sam", unknown=True, asked=asked) == []
    assert identity_faults("You haven't told me your name.", "Sam", unknown=True, asked=asked) == []
    # A rule a small model repeats to everything, and a "Who are you?" without the name, are faults too.
    assert identity_faults("I don't know your name yet.", "Sam", asked="Cool.")[0][0] == "unasked_name_talk"
    assert identity_faults("I am a digital human.", "Sam", own=True, asked="Who are you?")[0][0] == "own_name_missing"


def test_the_identity_set_is_as_the_issue_asks():
    prompts = json.loads((DATA / "identity.json").read_text(encoding="utf-8"))["prompts"]
    assert len(prompts) >= 30
    questions = [p["q"].lower() for p in prompts]
    assert any("my name" in q for q in questions) and any("thank" in q for q in questions)
    assert any(len(q.split()) == 1 for q in questions)  # one-word utterances
    assert any(p.get("history") for p in prompts)  # after a barge-in: an assistant reply cut short
    general = json.loads((DATA / "general.json").read_text(encoding="utf-8"))["questions"]
    assert len(general) >= 40


# -- a real model -------------------------------------------------------------------------------------------------
# The issue's three slips (the agent's own name given to the user, itself in the third person, a user's name
# or fact it was not told) must not occur; the stricter checks of the set (an unknown name admitted, its own
# name given when asked, the user's name taken for its own) are held to what the model measured (docs/trust-measurements.md): the 0.5B, the
# smallest model that has none of the three slips (SmolLM2-135M has them), answers "What is my name?" with
# "I am Sam." at temperature 0 whatever the prompt says.
ISSUE_SLIPS = {"own_name_to_user", "third_person", "claims_user_name", "claims_user_fact"}


@pytest.mark.slow
def test_the_default_small_model_knows_who_it_is():
    from avatar.models.loading import load_llm
    from avatar.tools.persona_evaluate import run_identity

    config = load_config(None, {"llm": {"model": "qwen2.5-0.5b", "slots": 1, "engines": 1}})
    llm = load_llm(config.llm)
    data = json.loads((DATA / "identity.json").read_text(encoding="utf-8"))
    try:
        result = run_identity(config, llm, data, temperature=0.0, max_tokens=config.llm.max_tokens,
                              progress=lambda line: None)
    finally:
        llm.close()
    slips = [(r["q"], r["reply"], r["faults"]) for r in result["records"]
             if any(kind in ISSUE_SLIPS for kind, _ in r["faults"])]
    assert slips == []
    assert result["summary"]["prompts_passed"] >= 30, result["summary"]
