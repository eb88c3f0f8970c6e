"""Several llama.cpp engines of one model, each with one generation thread and its share of the slots.

Why: on a small CPU the language model is the bottleneck when several people speak at once, and one
engine cannot use a second core well. Its threads meet at a barrier after every operation, and the face,
TTS and ASR take one of them away at random (two threads made the 4-session p95 worse, BENCHMARKS.md).
Batching four streams on one thread gains little: 17.6 tok/s together against 12.8 for one. Two engines
of one thread each never wait for each other. Four streams of eight tokens, the 0.5B on an idle 2-core
AMD EPYC (2026-12-02, four alternated runs): the eighth token came after 622-734 ms with two engines,
against 1105-1149 ms with one engine of four slots.

The weights are memory-mapped, so both engines share them; the KV cache is split between them as the
slots are. A conversation stays on its engine (its prompt cache is there); new ones go to the engine
with the fewest conversations.
"""

from __future__ import annotations

import threading
from collections import ChainMap
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from avatar.models.tiers import cpu_cores


def engine_count(cfg, *, gpu: bool, cores: int | None = None) -> int:
    """``llm.engines``, with 0 (auto) resolved: two on a CPU with two cores or more, one on a GPU."""
    if cfg.engines < 0:
        from avatar.errors import ConfigError

        raise ConfigError(f"llm.engines must be 0 (auto) or more, got {cfg.engines}")
    if cfg.engines:
        return min(cfg.engines, cfg.slots)
    cores = cpu_cores() if cores is None else cores
    return 1 if gpu or cores < 2 or cfg.slots < 2 else 2


def slot_shares(slots: int, engines: int) -> list[int]:
    """``slots`` split between ``engines`` as evenly as they go (4 between 2: [2, 2])."""
    return [slots // engines + (1 if i < slots % engines else 0) for i in range(engines)]


class EnginePool:
    """The ChatLLM contract over several engines (``XLlamaCppLLM``); a conversation stays on one."""

    can_pause = True

    def __init__(self, engines: list):
        self.engines = engines
        first = engines[0]
        self.path, self.device, self.context_tokens = first.path, first.device, first.context_tokens
        self.max_concurrent = sum(engine.max_concurrent for engine in engines)
        self._home: dict[str, int] = {}  # conversation -> its engine
        self._lock = threading.Lock()

    @property
    def last_timings(self) -> ChainMap:
        """llama.cpp's timings of each conversation's last reply, whichever engine wrote it."""
        return ChainMap(*(engine.last_timings for engine in self.engines))

    def _engine(self, conversation: str | None):
        with self._lock:
            index = self._home.get(conversation) if conversation is not None else None
            if index is None:
                homed = [0] * len(self.engines)
                for i in self._home.values():
                    homed[i] += 1
                index = homed.index(min(homed))
                if conversation is not None:
                    self._home[conversation] = index
            return self.engines[index]

    def stream_chat(self, messages: list[dict], *, conversation: str | None = None, **options) -> Iterator[str]:
        return self._engine(conversation).stream_chat(messages, conversation=conversation, **options)

    def prefill(self, messages: list[dict], conversation: str) -> bool:
        return self._engine(conversation).prefill(messages, conversation)

    def forget(self, conversation: str) -> None:
        with self._lock:
            index = self._home.pop(conversation, None)
        if index is not None:
            self.engines[index].forget(conversation)

    def tokenize(self, text: str) -> list[int]:
        return self.engines[0].tokenize(text)

    def count_tokens(self, text: str) -> int:
        return self.engines[0].count_tokens(text)

    def _each(self, call: Callable) -> list:
        """``call(engine)`` for every engine at once: each evaluates on its own thread."""
        with ThreadPoolExecutor(len(self.engines), thread_name_prefix="llm-engine") as pool:
            return list(pool.map(call, self.engines))

    def prime_slots(self, messages: list[dict]) -> int:
        return sum(self._each(lambda engine: engine.prime_slots(messages)))

    def reprime_free_slots(self, messages: list[dict]) -> int:
        return sum(self._each(lambda engine: engine.reprime_free_slots(messages)))

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
