"""Issue 25: the check beyond numbers (yes/no polarity, the persona's own name, a stopped reply repaired as a
whole) on two businesses the grounding was not written for (tests/data/kb/dental, tests/data/kb/inn), and
the evaluation's four numbers. The last tests ask the real default model."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from avatar.config import load_config
from avatar.knowledge import Knowledge, KnowledgeIndex
from avatar.knowledge.grounding import approx_tokens, make_grounding
from avatar.knowledge.polarity import contradiction, is_yes_no, reply_polarity, sentences
from avatar.knowledge.specifics import Support

KB = Path(__file__).resolve().parent / "data" / "kb"
DONT_KNOW = "I'm sorry, I don't have that information."


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    made = {}
    for name in ("shop", "dental", "inn"):
        made[name] = KnowledgeIndex(KB / name, tmp_path_factory.mktemp(name) / "index.sqlite3")
        made[name].sync()
    yield made
    for index in made.values():
        index.close()


def speak(index, question: str, clauses: list[str], *, hold: bool = True, phone: str = "555-0100") -> str:
    """The reply as the session would speak it, clause by clause, then the end of the reply. The folders
    are small: they stand in the system prompt, as Knowledge.ground would have them."""
    rendered = "\n".join(p.render() for p in index.all_passages())
    grounding = make_grounding(index, question, top_k=3, budget_tokens=360, check=True, phone=phone,
                               language="en", count_tokens=approx_tokens, hold=hold, persona_name="Sam",
                               standing=(rendered, approx_tokens(rendered)),
                               persona_text="Sam You are Sam, a friendly digital human who talks with people by voice.")
    out = [grounding.check(c) for c in clauses] + [grounding.finish()]
    return " ".join(o for o in out if o)


# -- polarity -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder, question, reply, corrected", [
    ("shop", "Are you open on Sundays?", ["Yes, we are open on Sundays."], "closed on Sundays"),  # "closed on"
    ("dental", "Are you open on Saturdays?", ["Yes."], "closed on Saturdays"),  # a bare "Yes."
    ("dental", "Do you accept cheques?", ["Yes, we accept cheques."], "We do not accept cheques."),  # "we do not"
    ("inn", "Is there a lift in the inn?", ["Yes, there is a lift."], "no lift"),  # "no X"
    ("inn", "Can I bring my cat?", ["Sure, cats are welcome."], "Cats and other pets are not allowed."),  # "not allowed"
    ("inn", "Can I bring my cat?", ["Yes, I can bring my cat."], "Cats and other pets are not allowed."),  # 0.5B's words
    ("inn", "Can I smoke on the balcony?", ["Yes, you can smoke on the balcony."], "Smoking is not allowed"),
    ("inn", "Do you have an airport shuttle?", ["Yes, we have an airport shuttle."], "We have no airport shuttle."),
    ("shop", "Can I return something I bought?", ["No, you cannot return it."], "can be returned within 30 days"),
])
def test_a_yes_or_no_against_the_documents_is_replaced_by_their_sentence(indexes, folder, question, reply, corrected):
    spoken = speak(indexes[folder], question, reply)
    assert corrected in spoken and spoken.endswith(".")
    assert not spoken.lower().startswith(("yes", "sure")) or "no" in corrected.lower()


@pytest.mark.parametrize("folder, question, reply", [
    ("dental", "Are you open on Saturdays?", "No, we are closed on Saturdays."),
    ("dental", "Do you accept credit cards?", "Yes, we accept debit cards, credit cards and cash."),
    ("dental", "Is the clinic accessible by wheelchair?", "Yes, it is on the ground floor with step-free access."),
    ("dental", "Do you sell gift vouchers?", "No, we do not sell gift vouchers."),
    ("inn", "Can I bring my dog?", "Yes, dogs are welcome in the ground-floor rooms for €15 a night."),
    ("inn", "Are parties allowed in the rooms?", "No, parties are not allowed in the rooms."),
    ("shop", "When are you open?", "We are open Monday to Friday from 9:00 to 18:00, and closed on Sundays."),
])
def test_a_right_yes_or_no_passes(indexes, folder, question, reply):
    from avatar.conversation.clauses import ClauseSplitter

    splitter = ClauseSplitter()  # cut as the session cuts a streamed reply
    clauses = [c for word in reply.split(" ") for c in splitter.push(word + " ")] + splitter.flush()
    assert speak(indexes[folder], question, clauses) == reply


@pytest.mark.parametrize("question, reply, spoken", [
    # A "yes" or "no" that says the opposite of the statement after it is dropped: the statement stays.
    ("Are parties allowed in the rooms?", "Yes, parties are not allowed in the rooms.",
     "Parties are not allowed in the rooms."),
    ("Is breakfast extra?", "No, breakfast is included in every room price.",
     "Breakfast is included in every room price."),
    ("Do you have free Wi-Fi?", "Yes, there is free Wi-Fi in every room.", "Yes, there is free Wi-Fi in every room."),
])
def test_a_yes_or_no_that_its_own_statement_denies_is_dropped(indexes, question, reply, spoken):
    assert speak(indexes["inn"], question, [reply]) == spoken


def test_the_polarity_check_is_for_yes_no_questions_only(indexes):
    # The passage sentence sharing most words ("Riders under 16 cannot hire an e-bike") is no answer to a
    # price; the price itself is checked as a number.
    spoken = speak(indexes["inn"], "How much does it cost to hire an e-bike for a day?",
                   ["It costs €55 to hire an e-bike for a day."])
    assert spoken == "It costs €55 to hire an e-bike for a day."


def test_the_users_own_age_and_words_outside_the_documents(indexes):
    # "12-year-old" is the user's; "founded" and "night" are not in the documents, but the question asks
    # for no amount, so the reply's numbers are still checked against the passages (issue 25's evasions).
    assert speak(indexes["dental"], "Can my 12-year-old son come to his appointment alone?",
                 ["No, your 12-year-old needs a parent or guardian with him."]).endswith("12-year-old needs a parent or guardian with him.")
    assert speak(indexes["dental"], "Who founded the clinic?", ["Dr. Priya Raman opened the clinic in 2009."]) == \
        "Dr. Priya Raman opened the clinic in 2009."
    assert "555-0199" in speak(indexes["dental"], "Which number do I call for a dental emergency at night?",
                               ["Call the emergency line at 555-0199."])
    assert speak(indexes["shop"], "How much is a bike helmet?", ["A helmet costs $25."]).startswith(DONT_KNOW)


def test_polarity_helpers():
    assert is_yes_no("Are you open on Sundays?") and is_yes_no("Can I bring my dog?")
    assert not is_yes_no("When are you open?") and not is_yes_no("Is it tea or coffee?")
    assert reply_polarity("Are you open on Sundays?", "No, we are closed on Sundays.") == "no"
    assert reply_polarity("Are you open on Sundays?", "We are closed on Sundays.") == "no"
    assert reply_polarity("Is breakfast extra?", "Breakfast is included.") == "yes"  # no negation: literal
    assert reply_polarity("Do you take cash?", "I'm sorry, I don't have that information.") is None
    assert reply_polarity("Is the restaurant closed on Mondays?", "It is closed on Mondays.") == "yes"
    assert sentences("HOUSE RULES Smoking is not allowed. Phone: 555-0163 Getting here: we have no shuttle.") == [
        "Smoking is not allowed.", "Phone: 555-0163", "We have no shuttle."]
    # Off the question's topic, or no passage on it: nothing to compare.
    assert contradiction("You can call us any time.", "Are you open on Sundays?", ["We are closed on Sundays."]) is None
    assert contradiction("Yes.", "Are you open on Sundays?", ["Parking is behind the shop."]) is None


# -- the persona's own name ---------------------------------------------------------------------------------------
def test_the_persona_name_is_no_evidence_for_someone_else(indexes):
    spoken = speak(indexes["dental"], "What is the name of your receptionist?", ["Our receptionist is Sam."])
    assert spoken.startswith(DONT_KNOW) and "Sam" not in spoken
    assert speak(indexes["dental"], "Hello!", ["Hello Sam!", "How can I help?"]).startswith(DONT_KNOW)
    # Of itself it may say it, and a document's own Sam stays a fact.
    assert speak(indexes["dental"], "What is your name?", ["I'm Sam,", "the clinic's digital assistant."]) == \
        "I'm Sam, the clinic's digital assistant."
    assert speak(indexes["dental"], "Who is your hygienist?", ["Our hygienist is Grace Mwangi."]) == \
        "Our hygienist is Grace Mwangi."


# -- a stopped reply reads whole ----------------------------------------------------------------------------------
def test_no_half_sentence_before_the_dont_know_line(indexes):
    spoken = speak(indexes["inn"], "When does the restaurant serve dinner?",
                   ["The restaurant serves dinner", "from 6 pm to 11 pm.", "Book a table early!"], phone="555-0163")
    assert spoken == f"{DONT_KNOW} You can call us at 555-0163."


def test_a_right_answer_is_not_followed_by_i_dont_know(indexes):
    spoken = speak(indexes["inn"], "Is breakfast included?", ["Yes.", "Breakfast costs €12 extra."], phone="555-0163")
    assert spoken == "Yes. For more details, you can call us at 555-0163."
    # Small talk before the unknown figure is no answer: the don't-know line is right there.
    spoken = speak(indexes["shop"], "How much is a bike helmet?", ["Good question!", "A helmet costs $35."])
    assert spoken == f"Good question! {DONT_KNOW} You can call us at 555-0100."


def test_clauses_wait_for_their_sentence_unless_whole_sentences_is_off(indexes):
    index = indexes["dental"]
    grounding = make_grounding(index, "Where is the clinic?", top_k=3, budget_tokens=360, check=True, phone="",
                               language="en", count_tokens=approx_tokens)
    assert grounding.check("The clinic is at 47 Maple Street,") == ""  # held
    assert grounding.check("next to the pharmacy.") == "The clinic is at 47 Maple Street, next to the pharmacy."
    assert grounding.check("Parking is behind the building") == "" and grounding.finish() == \
        "Parking is behind the building"
    assert speak(index, "Where is the clinic?", ["It is at 47 Maple Street,"], hold=False) == "It is at 47 Maple Street,"


def test_config_whole_sentences_reaches_the_grounding(tmp_path):
    config = load_config(None, {"server": {"data_dir": str(tmp_path)},
                                "knowledge": {"path": str(KB / "dental"), "whole_sentences": False}})
    knowledge = Knowledge.open(config, watch=False)
    try:
        grounding = knowledge.ground("Where is the clinic?")
        assert grounding.hold is False and grounding.persona_name == "Sam"
    finally:
        knowledge.close()


# -- the evaluation's verdicts ------------------------------------------------------------------------------------
def test_eval_verdicts():
    from avatar.tools.kb_evaluate import score, verdicts

    allowed = Support("We are closed on Saturdays. A filling costs $150.\nPhone: 555-0187")
    sunday = {"q": "Are you open on Saturdays?", "polarity": "no", "expect": "closed|\\bno\\b"}
    filling = {"q": "How much is a filling?", "expect": "150"}
    assert score(sunday, "No, we are closed on Saturdays.", allowed)["verdict"] == "right"
    assert score(sunday, "Yes, we are open on Saturdays.", allowed)["verdict"] == "wrong_polarity"
    assert score(sunday, "I'm sorry, I don't have that information.", allowed)["verdict"] == "evasion"
    assert score(filling, "A filling costs $95.", allowed)["verdict"] == "invented"
    assert score(filling, "Please call us at 555-0187.", allowed)["verdict"] == "evasion"
    known = [dict(score(filling, "It costs $150.", allowed), raw_verdict="right"),
             dict(score(sunday, "Yes.", allowed), raw_verdict="right")]
    numbers = verdicts(known, [{"invented": ["35"]}], "")
    assert numbers == {"right_facts": 0.5, "wrong_polarity": 1, "invented_specifics": 1, "evasions": 0,
                       "evasion_share": 0.0, "wrong_facts": 0}


def test_question_sets_are_as_the_issue_asks():
    import json

    for name in ("dental-questions.json", "inn-questions.json"):
        data = json.loads((KB / name).read_text(encoding="utf-8"))
        known = data["known"]
        assert len(known) + len(data["unknown"]) >= 40 and len(data["unknown"]) >= 10
        assert sum(k.get("polarity") == "no" for k in known) >= 10
        for item in known:
            re.compile(item["expect"])
            assert (KB / data["folder"] / item["source"]).exists(), item
        for start in ("where", "when", "how much", "can i"):
            assert any(k["q"].lower().startswith(start) for k in known), start


# -- the real default model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_llm():
    from avatar.models.loading import load_llm

    return load_llm(load_config(None, {"llm": {"temperature": 0.0}}).llm)


@pytest.fixture(scope="module")
def ask_default(default_llm, tmp_path_factory):
    """Ask the default model a question about a folder, as a turn does: grounding, prompt, checked reply."""
    from avatar.conversation.prompt import build_prompt
    from avatar.tools.kb_evaluate import checked_reply

    opened: dict[str, Knowledge] = {}

    def ask(folder: str, question: str) -> tuple[str, str]:
        if folder not in opened:
            config = load_config(None, {"server": {"data_dir": str(tmp_path_factory.mktemp(folder))},
                                        "knowledge": {"path": str(KB / folder)}})
            opened[folder] = (Knowledge.open(config, count_tokens=default_llm.count_tokens, watch=False), config)
        knowledge, config = opened[folder]
        grounding = knowledge.ground(question)
        messages = grounding.apply(build_prompt(config.system_prompt, [], question,
                                                count_tokens=default_llm.count_tokens, budget_tokens=2000,
                                                max_turns=0))
        pieces = default_llm.stream_chat(messages, max_tokens=120, temperature=0.0, cancel=threading.Event(),
                                         conversation=f"trust-{folder}")
        return checked_reply(pieces, grounding)

    yield ask
    for knowledge, _ in opened.values():
        knowledge.close()


def whole(spoken: str) -> bool:
    """Never a half sentence or a right answer before the don't-know line: that line only opens a reply."""
    return "don't have that information" not in spoken or spoken.startswith(("I'm sorry", "Sorry"))


@pytest.mark.slow
@pytest.mark.parametrize("folder, question", [
    ("shop", "Are you open on Sundays?"),
    ("dental", "Are you open on Saturdays?"),
    ("dental", "Do you accept cheques?"),
    ("inn", "Is there a lift in the inn?"),
    ("inn", "Can I smoke on the balcony?"),
])
def test_default_model_never_says_yes_where_the_documents_say_no(ask_default, folder, question):
    raw, spoken = ask_default(folder, question)
    assert spoken, raw
    assert reply_polarity(question, spoken) != "yes", (raw, spoken)
    assert whole(spoken), spoken


@pytest.mark.slow
@pytest.mark.parametrize("question", ["What is the name of your receptionist?", "Who is the practice manager?"])
def test_default_model_never_gives_the_persona_name_to_someone_else(ask_default, question):
    raw, spoken = ask_default("dental", question)
    assert spoken and "Sam" not in spoken, (raw, spoken)
    assert whole(spoken), spoken


@pytest.mark.slow
@pytest.mark.parametrize("folder, question, expect", [
    ("dental", "Where is the clinic?", r"47 Maple"),
    ("dental", "What time do you close on Fridays?", r"(?<!\d)14(?!\d)|(?<!\d)2(?!\d)|two"),
    ("dental", "How much does a filling cost?", r"(?<!\d)150(?!\d)"),
    ("inn", "How much is a double room?", r"(?<!\d)129(?!\d)"),
])
def test_default_model_answers_where_when_and_how_much_with_the_fact(ask_default, folder, question, expect):
    raw, spoken = ask_default(folder, question)
    assert re.search(expect, spoken, re.IGNORECASE), (raw, spoken)
    assert whole(spoken), spoken


# -- where, when, how much: the asked kind of fact ----------------------------------------------------------------
@pytest.mark.parametrize("folder, question, reply, spoken", [
    # The 0.5B's own words on these folders, and what the passages say instead.
    ("dental", "Where is the clinic?", "The clinic is located at Maple Street, Riverton.",
     "Maple Street Dental is a family dental clinic at 47 Maple Street, Riverton."),
    ("dental", "What time do you close on Fridays?", "The clinic is closed on Fridays.", "Friday: 8:00 to 14:00."),
    ("inn", "When do I have to check out?", "You can check out any time before noon.", "Check-out is by 11:00."),
    # A table's row is given whole, and a price must be a price ("lasts 10 to 15 years" is not one).
    ("dental", "How much does a filling cost?", "A filling is affordable.",
     "Treatment: Filling; Price: $150; Duration: 40 minutes."),
    # Already with the fact, or no passage on the topic has a street number: unchanged.
    ("shop", "How much is a basic tune-up?", "A basic tune-up is $45.", "A basic tune-up is $45."),
    ("dental", "Where can I park my car?", "You can park behind the building.", "You can park behind the building."),
])
def test_a_where_when_or_how_much_answer_without_the_fact_gets_the_passage(indexes, folder, question, reply, spoken):
    assert speak(indexes[folder], question, [reply]) == spoken
