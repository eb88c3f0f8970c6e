"""avatar live with a knowledge base: a comment's answer is grounded in the operator's documents and the show
file (fake models; the real show runs in tests/test_live.py)."""

from __future__ import annotations

import asyncio

import pytest

from avatar.config import load_config
from avatar.conversation.memory import MemoryStore
from avatar.events import TurnEnded
from avatar.live.comments import Comment
from avatar.live.show import parse_show
from avatar.runtime.services import Services
from tests.fakes import WordLLM, fake_models
from tests.harness import open_show_host
from tests.test_live import show_data


class CatalogueLLM(WordLLM):
    """Answers shipping with the folder's fact and the show's price; the tent with a price nobody gave."""

    def stream_chat(self, messages, **kw):
        asked = messages[-1]["content"]
        self.reply = ("Tents are four hundred and fifty dollars, $450." if "tent" in asked else
                      "We ship within 3 days, and the rain jacket is $120.")
        yield from super().stream_chat(messages, **kw)


@pytest.mark.slow
def test_the_host_answers_from_the_knowledge_base_and_the_show_file(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "shipping.md").write_text("# Shipping\n\nWe ship every order within 3 days. "
                                        "Questions? Call 555-0199.\n", encoding="utf-8")
    show = parse_show(show_data())
    config = load_config(None, {"server": {"data_dir": str(tmp_path)}, "video": {"enabled": False},
                                "knowledge": {"path": str(folder), "poll_s": 0.0}})
    config.persona.system_prompt = show.system_prompt(config.persona.system_prompt)  # as avatar live does
    llm = CatalogueLLM(delay=0.005)
    from avatar.knowledge import Knowledge

    services = Services(config, fake_models(llm=llm), MemoryStore(tmp_path / "m.sqlite3"),
                        knowledge=Knowledge.open(config, count_tokens=llm.count_tokens, watch=False))

    async def main():
        host, desk, timeline, report = open_show_host(services, show)
        ended: list[TurnEnded] = []
        host.bus.subscribe(lambda e: ended.append(e) if isinstance(e, TurnEnded) and e.source == "comment" else None)
        desk.submit(Comment("ana", "How fast do you ship?"))
        desk.submit(Comment("bo", "How much is the tent?"))
        host.open()
        timeline.start()
        await asyncio.wait_for(host.run(), 60)
        timeline.close()
        timeline.join()
        return ended

    try:
        ended = asyncio.run(main())
    finally:
        services.close()
    answers = {e.reply.strip(): e.sources for e in ended}
    assert len(answers) == 2, answers
    shipping = next(a for a in answers if "ship" in a.lower())
    # The folder's fact and the show file's price both stand: the check knows the show's catalogue.
    assert "3 days" in shipping and "$120" in shipping and answers[shipping] == ["shipping.md"]
    prompts = [m["content"] for prompt in llm.prompts for m in prompt]
    assert any("within 3 days" in text for text in prompts)  # the passage reached the model
    # A price in neither the folder nor the show is never spoken; the host offers the phone number instead.
    tent = next(a for a in answers if a is not shipping)
    assert "450" not in tent and "555-0199" in tent, tent
