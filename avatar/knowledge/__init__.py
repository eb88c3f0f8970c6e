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
                 language: str = "en", persona_text: str = "", persona_name: str = ""):
        self.index = index
        self.cfg = cfg
        self.count_tokens = count_tokens
        self.language = language
        self.persona_text = persona_text
        self.persona_name = persona_name
        self.watcher: Watcher | None = None
        self._standing: tuple[int, tuple[str, int] | None] | None = None  # (index version, standing())

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
                        persona_text=f"{config.persona.name} {config.system_prompt}",
                        persona_name=config.persona.name)
        files = len(index.files())
        progress(f"knowledge: {index.root}: {files} files, {index.count()} passages ({report.describe()}) "
                 f"in {time.monotonic() - t0:.2f} s; phone offered: {knowledge.phone or '(none)'}")
        for path, error in report.errors.items():
            progress(f"knowledge: WARNING: {error}")
        if files == 0:
            progress(f"knowledge: WARNING: no .md, .txt, .html, .csv or .pdf file in {index.root} yet")
        if files:
            progress(f"knowledge: {knowledge.describe_mode()}")
        if watch:
            knowledge.watcher = Watcher(index, cfg.poll_s).start()
        return knowledge

    @property
    def phone(self) -> str:
        return self.cfg.phone or self.index.contact_phone()

    def standing(self) -> tuple[str, int] | None:
        """(every passage rendered, its tokens) when the folder fits ``standing_tokens``, else None.

        A small folder goes into the system prompt whole: the system prompt is the part of every prompt
        that each conversation's LLM slot keeps cached (and the warm-up puts into every slot), so a turn
        evaluates no passage tokens at all. Passages in each turn's message cost 60-300 prompt tokens a
        turn, 0.75-1.04 s of voice-to-voice p50 on 2 cores (BENCHMARKS.md). Recomputed when the folder
        changes; the server then primes the free LLM slots with it (``Replies.knowledge_changed``)."""
        version = self.index.version
        if self._standing is None or self._standing[0] != version:
            limit, result = self.cfg.standing_tokens, None
            if limit > 0:
                rendered = [p.render() for p in self.index.all_passages()]
                # The cheap estimate first: a large folder is never sent to the tokenizer whole.
                if rendered and sum(approx_tokens(r) for r in rendered) <= 2 * limit:
                    text = "\n".join(rendered)
                    tokens = self.count_tokens(text)
                    result = (text, tokens) if tokens <= limit else None
            self._standing = (version, result)
        return self._standing[1]

    def describe_mode(self) -> str:
        """For the operator (start-up log, ``avatar kb list``): where the passages go in the prompt."""
        standing, cfg = self.standing(), self.cfg
        if standing:
            return (f"the whole folder (~{standing[1]} tokens) goes into the system prompt, cached per "
                    "conversation; each turn still retrieves its sources")
        why = ("the folder is larger than" if cfg.standing_tokens > 0 else "a standing folder is off:")
        return (f"each turn's best {cfg.top_k} passages go into its prompt ({why} "
                f"knowledge.standing_tokens = {cfg.standing_tokens})")

    def system_prompt(self, base: str) -> str:
        """The persona's prompt with the standing instruction to answer from the documents (and, for a
        small folder, the documents themselves)."""
        standing = self.standing()
        return f"{base}\n\n{instruction(self.phone, standing[0] if standing else '')}"

    def ground(self, user_text: str, history=()) -> Grounding:
        """Retrieve and prepare one turn's grounding; synchronous, a few milliseconds (BENCHMARKS.md)."""
        cfg = self.cfg
        return make_grounding(self.index, user_text, history=history, top_k=cfg.top_k,
                              budget_tokens=cfg.budget_tokens, check=cfg.check, phone=self.phone,
                              language=self.language, count_tokens=self.count_tokens,
                              persona_text=self.persona_text, standing=self.standing(),
                              persona_name=self.persona_name, hold=cfg.whole_sentences)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.index.close()
