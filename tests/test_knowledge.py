"""The knowledge base without a model: each document format, the index following the folder (added,
changed, deleted files, also through the watcher thread), English and Chinese retrieval, the
specifics check, the prompt it builds, the sources on the wire and the ``avatar kb`` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avatar.config import load_config
from avatar.conversation.memory import Turn
from avatar.errors import ConfigError
from avatar.knowledge import Knowledge, KnowledgeIndex
from avatar.knowledge.grounding import approx_tokens, make_grounding
from avatar.knowledge.loaders import LoadError, load_sections
from avatar.knowledge.specifics import Support, specifics
from avatar.knowledge.terms import query_terms
from tests.pdf_writer import write_pdf

REPO = Path(__file__).resolve().parent.parent
SHOP = REPO / "tests" / "data" / "kb" / "shop"
PHONE = "555-0142"


@pytest.fixture
def shop(tmp_path) -> Path:
    folder = tmp_path / "shop"
    shutil.copytree(SHOP, folder)
    return folder


@pytest.fixture
def index(shop):
    idx = KnowledgeIndex(shop, shop.parent / "index.sqlite3")
    idx.sync()
    yield idx
    idx.close()


def ground(index, text, history=()):
    return make_grounding(index, text, history=history, top_k=3, budget_tokens=360, check=True, phone=PHONE,
                          language="en", count_tokens=approx_tokens, persona_text="Sam")


def text_of(path: Path) -> str:
    return " ".join(f"{s.title} {s.text}" for s in load_sections(path))


# -- formats ------------------------------------------------------------------------------------------------------
def test_markdown_sections_keep_their_headings():
    sections = load_sections(SHOP / "opening-hours.md")
    titles = [s.title for s in sections]
    assert titles == ["Opening hours", "Opening hours > Repair drop-off"]
    assert "**" not in sections[0].text and "Saturday from 10:00 to 16:00" in sections[0].text


def test_plain_text():
    assert "555-0142" in text_of(SHOP / "contact.txt")


def test_html_visible_text_only():
    sections = load_sections(SHOP / "about.html")
    assert [s.title for s in sections] == ["About us", "Our workshop"]
    text = text_of(SHOP / "about.html")
    assert "Maria Okafor" in text and "three mechanics" in text
    assert "document.title" not in text and "font-family" not in text and "$1" not in text


def test_csv_question_answer_rows_and_tables():
    faq = load_sections(SHOP / "faq.csv")
    assert faq[0].title == "Do you sell electric bikes?" and "$1,890" in faq[0].text
    table = load_sections(SHOP / "services.csv")
    assert table[0].text == "Service: Basic tune-up; Price: $45; Time needed: 1 hour."
    assert len(table) == 5


def test_pdf_pages(tmp_path):
    text = text_of(SHOP / "policies.pdf")
    assert "deposit of $50" in text and "guaranteed for 90 days" in text
    # a line that wraps in the PDF is one sentence again
    assert "rental bike, and renters must show a photo ID" in text


def test_unreadable_files_say_what_to_do(tmp_path):
    bad_pdf = tmp_path / "broken.pdf"
    bad_pdf.write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(LoadError, match="not a readable PDF"):
        load_sections(bad_pdf)
    latin1 = tmp_path / "old.txt"
    latin1.write_bytes("Caf\xe9 prices".encode("latin-1"))
    with pytest.raises(LoadError, match="save it as UTF-8"):
        load_sections(latin1)


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        KnowledgeIndex(tmp_path / "nope")


# -- the index follows the folder ---------------------------------------------------------------------------------
def test_every_format_is_indexed(index):
    files = {f.path: f for f in index.files()}
    assert set(files) == {"about.html", "contact.txt", "faq.csv", "opening-hours.md", "policies.pdf",
                          "services.csv", "中文服务.md"}
    assert all(f.passages > 0 and f.error is None for f in files.values())
    assert index.contact_phone() == PHONE


def test_add_change_delete(shop, index):
    assert index.search("loyalty stamps") == []
    (shop / "loyalty.md").write_text("# Loyalty card\n\nEvery tenth repair is free with our stamp card.\n")
    report = index.sync()
    assert report.added == ["loyalty.md"]
    assert index.search("loyalty stamps")[0].source == "loyalty.md"

    path = shop / "services.csv"
    path.write_text(path.read_text().replace("$45", "$49"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a different mtime even on coarse clocks
    assert index.sync().changed == ["services.csv"]
    assert "$49" in index.search("basic tune-up price")[0].text

    (shop / "policies.pdf").unlink()
    assert index.sync().removed == ["policies.pdf"]
    assert all(p.source != "policies.pdf" for p in index.search("deposit rental bike guarantee", 10))
    assert index.sync().touched is False  # nothing changed since


def test_reopening_reads_only_what_changed(shop, index):
    index.close()
    again = KnowledgeIndex(shop, shop.parent / "index.sqlite3")
    try:
        assert not again.sync().touched
        assert again.count() > 10
    finally:
        again.close()


def test_bad_file_is_reported_and_the_rest_indexed(shop, index):
    (shop / "scan.pdf").write_bytes(b"not a pdf")
    report = index.sync()
    assert "scan.pdf" in report.errors and "not a readable PDF" in report.errors["scan.pdf"]
    assert {f.path: f.error for f in index.files()}["scan.pdf"]
    assert index.search("opening hours")  # the others still answer


def test_the_running_server_picks_up_changes(shop, tmp_path):
    """The watcher thread re-indexes without being asked (poll_s=0.2)."""
    config = load_config(None, {"server": {"data_dir": str(tmp_path / "data")},
                                "knowledge": {"path": str(shop), "poll_s": 0.2}})
    knowledge = Knowledge.open(config)
    try:
        assert knowledge.ground("winter storage").passages == []
        write_pdf(shop / "winter.pdf", [["Winter storage: we keep your bike from November to March for $60."]])

        def sources():
            return knowledge.ground("winter storage for my bike").sources

        deadline = time.monotonic() + 10
        while "winter.pdf" not in sources() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sources()[0] == "winter.pdf"
        (shop / "winter.pdf").unlink()
        deadline = time.monotonic() + 10
        while "winter.pdf" in sources() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "winter.pdf" not in sources()
    finally:
        knowledge.close()


def test_a_small_folder_stands_in_the_system_prompt_and_follows_changes(shop, tmp_path):
    config = load_config(None, {"server": {"data_dir": str(tmp_path / "data")},
                                "knowledge": {"path": str(shop), "poll_s": 0.0}})
    knowledge = Knowledge.open(config)
    try:
        system = knowledge.system_prompt("You are Sam.")
        assert system.startswith("You are Sam.\n\n") and "Never guess" in system
        for fact in ("Maria Okafor", "Price: $45", "555-0142", "90 days", "押金50美元"):  # every file, every format
            assert fact in system
        grounding = knowledge.ground("How much is a basic tune-up?")
        assert grounding.standing and grounding.sources[0] == "services.csv"
        assert grounding.instruction in system and grounding.tokens == knowledge.standing()[1]
        messages = grounding.apply([{"role": "system", "content": "You are Sam."},
                                    {"role": "user", "content": "How much is a basic tune-up?"}])
        assert messages[0]["content"] == system and messages[1]["content"] == "How much is a basic tune-up?"
        # The check still holds the reply to the passages this question retrieved.
        assert grounding.check("A basic tune-up is $45.") == "A basic tune-up is $45."
        assert grounding.check("A basic tune-up is $39.") != "A basic tune-up is $39."
        # A changed folder changes the standing facts at the next sync.
        (shop / "contact.txt").write_text((shop / "contact.txt").read_text().replace("555-0142", "555-0199"))
        knowledge.index.sync()
        assert "555-0199" in knowledge.system_prompt("You are Sam.")
        # A folder over the limit goes back to passages in each turn.
        knowledge.cfg.standing_tokens = 50
        (shop / "extra.txt").write_text("Winter storage costs $60 a season.")
        knowledge.index.sync()
        assert knowledge.standing() is None and not knowledge.ground("winter storage").standing
        assert "Price: $45" not in knowledge.system_prompt("You are Sam.")
    finally:
        knowledge.close()


# -- retrieval ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("question, source", [
    ("When do you close on Saturday?", "opening-hours.md"),
    ("What is your phone number?", "contact.txt"),
    ("How much is a brake adjustment?", "services.csv"),
    ("Do students get a discount?", "faq.csv"),
    ("Who founded the shop?", "about.html"),
    ("What do I need to bring to rent a bike?", "policies.pdf"),
])
def test_english_questions_find_their_document(index, question, source):
    assert source in [p.source for p in index.search(question, 3)]


@pytest.mark.parametrize("question", ["免费的自行车维修课程是什么时候？", "租车押金多少？", "你们的电话是多少"])
def test_chinese_questions_find_the_chinese_document(index, question):
    assert index.search(question, 1)[0].source == "中文服务.md"


def test_chinese_text_is_searched_as_bigrams():
    assert query_terms("你们几点开门？") == ["几点", "点开", "开门"]
    assert query_terms("What is the price?") == ["price"]


def test_small_talk_retrieves_nothing(index):
    grounding = ground(index, "Hello! How are you?")
    assert grounding.passages == [] and grounding.sources == []


def test_passages_stay_within_the_budget(index):
    grounding = make_grounding(index, "bike rental deposit price repair hours", top_k=10, budget_tokens=80,
                               check=True, phone=PHONE, language="en", count_tokens=approx_tokens)
    assert grounding.passages and grounding.tokens <= 80
    assert sum(approx_tokens(p.render()) + 2 for p in grounding.passages) == grounding.tokens


def test_a_short_follow_up_searches_with_the_previous_question(index):
    history = [Turn("How much is a basic tune-up?", "A basic tune-up is $45.")]
    assert "services.csv" in ground(index, "And a full service?", history).sources
    assert ground(index, "Thanks!", history).sources == []  # small talk after a question finds nothing


# -- the prompt ---------------------------------------------------------------------------------------------------
def test_facts_go_into_the_last_user_message_and_the_instruction_into_the_system_prompt(index):
    grounding = ground(index, "When do you close on Saturday?")
    messages = [{"role": "system", "content": "You are Sam."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "When do you close on Saturday?"}]
    out = grounding.apply(messages)
    assert out[0]["content"].startswith("You are Sam.") and "Never guess" in out[0]["content"]
    assert PHONE in out[0]["content"]
    assert out[1:3] == messages[1:3]  # history untouched: the model's cache of it holds
    assert out[3]["content"].startswith("Facts from the documents:\n[opening-hours.md]")
    assert out[3]["content"].endswith("Question: When do you close on Saturday?")
    assert messages[3]["content"] == "When do you close on Saturday?"  # the caller's list is not changed
    assert grounding.apply(out)[0]["content"].count("Never guess") == 1


def test_a_question_nothing_matches_says_so_in_the_prompt(index):
    grounding = ground(index, "Any skateboards?")
    out = grounding.apply([{"role": "user", "content": "Any skateboards?"}])
    assert grounding.sources == []
    assert out[0]["content"] == "Facts from the documents: none match this question.\n\nQuestion: Any skateboards?"


# -- the specifics check ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sentence, found", [
    ("It costs $1,200.", ["1,200"]),
    ("Call 555-0142 or 555 0142.", ["555-0142", "555 0142"]),
    ("Our head mechanic is John Doe.", ["John Doe"]),
    ("We open at nine am on Saturdays.", ["nine", "Saturdays"]),
    ("On Sundays we are closed.", ["Sundays"]),
    ("我们早上九点开门，租车每天三十元。", ["九", "三十"]),
    ("Hi, I'm Sam! One of our mechanics can help.", ["Sam"]),
])
def test_specifics_in_a_sentence(sentence, found):
    assert [s.text for s in specifics(sentence)] == found


@pytest.mark.parametrize("reply, ok", [
    ("We close at 4 pm on Saturdays.", True),  # 16:00 in the document
    ("We close at four in the afternoon on Saturday.", True),
    ("We close at 5 pm on Saturdays.", False),
    ("A full service is $120.", False),  # true, but not in this turn's passages
    ("You can call us on 555 0142.", True),
    ("Our manager, Tom Baker, can help.", False),
    ("Sure, I can help with that!", True),
])
def test_support_of_a_reply(index, reply, ok):
    grounding = ground(index, "When do you close on Saturday?")
    assert (grounding.check(reply) == reply) is ok


def test_an_unsupported_clause_is_replaced_once_and_the_rest_dropped(index):
    grounding = ground(index, "How much is a bike helmet?")
    assert grounding.check("Good question!") == "Good question!"
    replaced = grounding.check("A helmet costs $35.")
    assert replaced == f"I'm sorry, I don't have that information. You can call us at {PHONE}."
    assert grounding.check("It comes in three colours.") == ""
    assert [s.text for s in grounding.flagged] == ["35"]


def test_a_product_the_documents_never_name_gets_no_numbers(index):
    """The passages about other bikes hold prices; a price for the unknown 'Thunder X' is still refused."""
    grounding = ground(index, "How much does the Thunder X mountain bike cost?")
    assert grounding.topic_gaps == ["thunder", "mountain"]
    assert grounding.check("The Thunder X costs $1,890.") != "The Thunder X costs $1,890."


def test_chinese_reply_gets_the_chinese_fallback(index):
    grounding = ground(index, "头盔多少钱？")
    assert grounding.check("头盔每个二十五元。").startswith("抱歉")
    assert grounding.check("x") == ""


def test_the_user_own_numbers_do_not_support_a_reply(index):
    grounding = ground(index, "Do you open at 8 on Saturdays?")
    assert grounding.check("Yes, we open at 8 on Saturdays.") != "Yes, we open at 8 on Saturdays."
    assert grounding.check("x") == ""


def test_check_off_lets_everything_through(index):
    grounding = make_grounding(index, "helmet price", top_k=3, budget_tokens=360, check=False, phone=PHONE,
                               language="en", count_tokens=approx_tokens)
    assert grounding.check("A helmet costs $35.") == "A helmet costs $35."


def test_support_matches_numbers_however_written():
    support = Support("Open 9:00-18:00. The Volt 500 costs $1,890.00. Call 555-0142.")
    for sentence in ("We open at nine.", "We close at 6 pm.", "We close at 18:00.", "It is 1890 dollars.",
                     "The number is 5550142."):
        assert support.unsupported(sentence) == [], sentence
    assert [s.text for s in support.unsupported("It is 1980 dollars, or 555-0143.")] == ["555-0143", "1980"]


# -- configuration and commands ---------------------------------------------------------------------------------
def test_config_section_and_set_override(shop):
    from avatar.config import parse_overrides

    config = load_config(None, parse_overrides([f"knowledge.path={shop}", "knowledge.top_k=5"]))
    assert config.knowledge.path == str(shop) and config.knowledge.top_k == 5
    assert load_config(None).knowledge.path == ""  # off by default
    with pytest.raises(ConfigError, match="knowledge.topk"):
        load_config(None, {"knowledge": {"topk": 3}})
    assert Knowledge.open(load_config(None)) is None


def test_config_example_documents_every_knowledge_key():
    import tomllib

    from avatar.config import KnowledgeConfig

    example = tomllib.loads((REPO / "config.example.toml").read_text())["knowledge"]
    assert example == KnowledgeConfig().__dict__


def run_cli(*args, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatar", "kb", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_kb_commands(shop, tmp_path):
    data = tmp_path / "data"
    done = run_cli("index", "--folder", str(shop), data_dir=data)
    assert done.returncode == 0, done.stderr
    assert "7 added" in done.stdout and (data / "knowledge.sqlite3").exists()
    done = run_cli("list", "--folder", str(shop), data_dir=data)
    assert "policies.pdf" in done.stdout and "phone offered when an answer is unknown: 555-0142" in done.stdout
    assert "the whole folder (~" in done.stdout and "goes into the system prompt" in done.stdout
    done = run_cli("search", "how much is the rental deposit", "--json", "--folder", str(shop), data_dir=data)
    result = json.loads(done.stdout)
    assert "policies.pdf" in result["prompt_sources"]
    done = subprocess.run([sys.executable, "-m", "avatar", "kb", "search", "hours", "--set",
                           f"knowledge.path={shop}", "--data-dir", str(data)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert "opening-hours.md" in done.stdout
    done = run_cli("search", "hours", data_dir=data)
    assert done.returncode == 1 and "give --folder DIR" in done.stderr


class ScriptedLLM:
    """Answers each question with a scripted reply, as a stream of words."""

    context_tokens = 4096

    def __init__(self, replies: dict[str, str]):
        self.replies = replies

    def count_tokens(self, text):
        return len(text.split())

    def stream_chat(self, messages, *, max_tokens=256, temperature=0.7, cancel=None, conversation=None):
        question = messages[-1]["content"].split("Question: ")[-1]
        for word in self.replies[question].split(" "):
            yield word + " "


def test_eval_scores_answers_inventions_and_the_check(tmp_path):
    from avatar.tools.kb_evaluate import run_eval

    questions = {"business": "Bluebell Bikes",
                 "known": [{"q": "How much is a basic tune-up?", "expect": "(?<!\\d)45(?!\\d)", "source": "services.csv"},
                           {"q": "When do you close on Saturday?", "expect": "(?<!\\d)4(?!\\d)|16",
                            "source": "opening-hours.md"}],
                 "unknown": [{"q": "How much is a bike helmet?"}],
                 "smalltalk": [{"q": "Hello!"}]}
    llm = ScriptedLLM({"How much is a basic tune-up?": "A basic tune-up costs $45.",
                       "When do you close on Saturday?": "We close at 5 pm on Saturdays.",  # wrong and unsupported
                       "How much is a bike helmet?": "A helmet costs $35.",
                       "Hello!": "Hi there! How can I help?"})
    config = load_config(None, {"server": {"data_dir": str(tmp_path)}})
    result = run_eval(config, llm, SHOP, questions, temperature=0.0, max_tokens=60, progress=lambda line: None)
    s = result["summary"]
    assert (s["accuracy_known"], s["accuracy_known_raw"], s["retrieval_hit"]) == (0.5, 0.5, 1.0)
    assert (s["no_invented_unknown"], s["no_invented_unknown_raw"]) == (1.0, 0.0)
    assert s["smalltalk_ok"] == 1.0 and s["check_removed_right_answers"] == 0
    helmet = next(r for r in result["records"] if r["kind"] == "unknown")
    assert helmet["raw_invented"] == ["35"] and helmet["spoken"].startswith("I'm sorry")


def test_kb_bench_runs_on_a_small_folder(tmp_path):
    done = run_cli("bench", "--docs", "30", "--queries", "10", data_dir=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["documents"] == 30 and result["queries"] == 10
    assert result["search_ms_p95"] >= result["search_ms_p50"] > 0
