"""Answers grounded in the operator's documents (issue 13).

``Knowledge`` is what the runtime holds (loaded once, shared by all sessions): the index of the folder,
the thread that keeps it current, and ``ground(user_text, history)``, which a turn calls once before it
builds its prompt. The returned ``Grounding`` is per turn: ``apply(messages)`` adds the passages to the
prompt, ``check(clause)`` vets each reply clause before speech synthesis, ``sources`` names the files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from avatar.knowledge.grounding import Grounding, approx_tokens, instruction, make_grounding
from avatar.knowledge.index import KnowledgeIndex, Passage, SyncReport
from avatar.knowledge.watch import Watcher

__all__ = ["Grounding", "Knowledge", "KnowledgeIndex", "Passage", "SyncReport", "index_path"]


def index_path(data_path: Path) -> Path:
    return Path(data_path) / "knowledge.sqlite3"


class Knowledge:
    def __init__(self, index: KnowledgeIndex, cfg, *, count_tokens: Callable[[str], int] = approx_tokens,
                 language: str = "en", persona_text: str = ""):
        self.index = index
        self.cfg = cfg
        self.count_tokens = count_tokens
        self.language = language
        self.persona_text = persona_text
        self.watcher: Watcher | None = None

    @classmethod
    def open(cls, config, *, count_tokens: Callable[[str], int] = approx_tokens,
             progress: Callable[[str], None] = lambda line: None, watch: bool = True) -> "Knowledge | None":
        """The knowledge base of ``config.knowledge`` (None when its path is ""), indexed and watched."""
        cfg = config.knowledge
        if not cfg.path:
            return None
        t0 = time.monotonic()
        index = KnowledgeIndex(cfg.path, index_path(config.data_path), chunk_chars=cfg.chunk_chars)
        report = index.sync()
        knowledge = cls(index, cfg, count_tokens=count_tokens, language=config.persona.language,
                        persona_text=f"{config.persona.name} {config.system_prompt}")
        files = len(index.files())
        progress(f"knowledge: {index.root}: {files} files, {index.count()} passages ({report.describe()}) "
                 f"in {time.monotonic() - t0:.2f} s; phone offered: {knowledge.phone or '(none)'}")
        for path, error in report.errors.items():
            progress(f"knowledge: WARNING: {error}")
        if files == 0:
            progress(f"knowledge: WARNING: no .md, .txt, .html, .csv or .pdf file in {index.root} yet")
        if watch:
            knowledge.watcher = Watcher(index, cfg.poll_s).start()
        return knowledge

    @property
    def phone(self) -> str:
        return self.cfg.phone or self.index.contact_phone()

    def system_prompt(self, base: str) -> str:
        """The persona's prompt with the standing instruction to answer from the documents."""
        return f"{base}\n\n{instruction(self.phone)}"

    def ground(self, user_text: str, history=()) -> Grounding:
        """Retrieve and prepare one turn's grounding; synchronous, a few milliseconds (BENCHMARKS.md)."""
        cfg = self.cfg
        return make_grounding(self.index, user_text, history=history, top_k=cfg.top_k,
                              budget_tokens=cfg.budget_tokens, check=cfg.check, phone=self.phone,
                              language=self.language, count_tokens=self.count_tokens,
                              persona_text=self.persona_text)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.index.close()
