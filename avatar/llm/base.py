"""Chat LLM interface: stream the reply to a list of chat messages, token piece by token piece."""

from __future__ import annotations

import threading
from typing import Iterator, Protocol


class ChatLLM(Protocol):
    context_tokens: int  # prompt + reply must fit in this many tokens
    # Replies generated at once; sessions queue beyond that (optional attribute, default 1).
    max_concurrent: int

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self,
        messages: list[dict],  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated. Blocking; run it in a worker thread.

        Stops early (without raising) when ``cancel`` is set; implementations check it between tokens so
        that a barge-in frees the model within one token's time.
        """
