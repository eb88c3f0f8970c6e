"""Chat LLM on the CPU with llama-cpp-python, from a GGUF file (chat template read from the GGUF)."""

from __future__ import annotations

import threading
from typing import Iterator

from avatar.config import LLMConfig
from avatar.errors import ModelMissingError, StageError
from avatar.weights import llm_gguf


def plain_messages(messages: list[dict]) -> list[dict]:
    """Messages whose text cannot forge chat-template markers such as ``<|im_start|>system``.

    Chat prompts are tokenised with special tokens enabled, so a user who types a marker could open a
    new system turn; breaking the ``<|`` opener keeps the text readable but inert.
    """
    return [{**m, "content": str(m.get("content", "")).replace("<|", "< |")} for m in messages]


def acquire_unless_cancelled(lock: threading.Lock, cancel: threading.Event | None) -> bool:
    """Wait for ``lock``, giving up as soon as ``cancel`` is set (a barge-in while another session talks)."""
    while not lock.acquire(timeout=0.02):
        if cancel is not None and cancel.is_set():
            return False
    if cancel is not None and cancel.is_set():
        lock.release()
        return False
    return True


class LlamaCppLLM:
    """One llama.cpp context shared by every session.

    A context holds one KV cache and is not thread-safe, so generations take turns behind a lock. The
    cache keeps the longest common prompt prefix between calls, so a session's next turn re-evaluates
    only its new messages when no other session spoke in between.
    """

    def __init__(self, cfg: LLMConfig):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelMissingError(
                "the llama-cpp backend needs llama-cpp-python. Fix: pip install llama-cpp-python==0.3.36"
            ) from None
        self.path = llm_gguf(cfg.model)
        self.context_tokens = cfg.context_tokens
        try:
            self.llm = Llama(
                model_path=str(self.path), n_ctx=cfg.context_tokens, n_threads=cfg.n_threads,
                n_threads_batch=max(cfg.n_threads, cfg.n_threads_batch), verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise ModelMissingError(f"cannot load GGUF model {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        # Tokenising only reads the vocabulary, so it needs no lock and never waits for a generation.
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        if not acquire_unless_cancelled(self._lock, cancel):
            return
        stream = None
        try:
            stream = self.llm.create_chat_completion(
                messages=plain_messages(messages), max_tokens=max_tokens, temperature=temperature, stream=True,
            )
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
        except ValueError as exc:  # e.g. the prompt is longer than the context window
            raise StageError(f"the LLM could not answer: {exc}") from None
        finally:
            if stream is not None:
                stream.close()  # stops llama.cpp evaluating further tokens
            self._lock.release()
