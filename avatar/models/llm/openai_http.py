"""Chat LLM served over HTTP by anything OpenAI-compatible (vLLM, llama-server, Ollama, ...).

Uses ``POST {url}/chat/completions`` with ``stream: true`` and reads the server-sent events with the
standard library, so this backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import urllib.error
import urllib.request
from typing import Iterator

from avatar.config import LLMConfig
from avatar.errors import ConfigError, StageError


class OpenAIHTTPLLM:
    # A remote server (vLLM, llama-server, Ollama) batches or queues requests itself.
    max_concurrent = 16

    def __init__(self, cfg: LLMConfig, *, timeout_s: float = 60.0):
        if not cfg.url:
            raise ConfigError("llm.backend 'openai' needs llm.url, e.g. http://127.0.0.1:8000/v1")
        if not cfg.url.startswith(("http://", "https://")):
            raise ConfigError(f"llm.url must start with http:// or https://, got '{cfg.url}'")
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self.model = cfg.model
        self.api_key = cfg.api_key
        self.context_tokens = cfg.context_tokens
        self.timeout_s = timeout_s

    def count_tokens(self, text: str) -> int:
        # The server's tokenizer is out of reach; three UTF-8 bytes per token over-counts English
        # (about four) and roughly matches Chinese, so prompt budgets stay on the safe side.
        return math.ceil(len(text.encode("utf-8")) / 3)

    def _open(self, body: dict):
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            raise StageError(f"LLM server {self.endpoint} answered {exc.code} {exc.reason}: {detail}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            hint = " Is the server running?" if isinstance(reason, ConnectionRefusedError) else ""
            raise StageError(f"cannot reach LLM server {self.endpoint}: {reason}.{hint}") from None
        except (socket.timeout, TimeoutError):
            raise StageError(f"LLM server {self.endpoint} did not answer within {self.timeout_s:.0f} s") from None

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
        conversation: str | None = None,  # the remote server keeps (or not) its own prompt cache: unused
    ) -> Iterator[str]:
        if cancel is not None and cancel.is_set():
            return
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, "stream": True}
        response = self._open(body)
        try:
            for raw in response:
                if cancel is not None and cancel.is_set():
                    break
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments and event names
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise StageError(f"LLM server {self.endpoint} sent a malformed event: {data[:200]}") from None
                if "error" in event:
                    raise StageError(f"LLM server {self.endpoint} failed: {event['error']}")
                choices = event.get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece
        except (socket.timeout, TimeoutError, http.client.HTTPException, ConnectionError) as exc:
            raise StageError(f"LLM server {self.endpoint} stream broke off: {exc!r}") from None
        finally:
            response.close()  # closing the connection tells the server to stop generating
