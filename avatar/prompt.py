"""The chat messages a turn sends to the language model: persona, as much history as fits, the user's text."""

from __future__ import annotations

from typing import Callable

from avatar.memory import Turn


def build_prompt(
    system_prompt: str,
    history: list[Turn],
    user_text: str,
    *,
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    max_turns: int,
) -> list[dict]:
    """Chat messages for the model: the system prompt, as many recent turns as fit the token budget, and
    the new user text. Old turns are dropped from the prompt (they stay in the database)."""
    used = count_tokens(system_prompt) + count_tokens(user_text) + 16
    kept: list[dict] = []
    for turn in reversed(history[-max_turns:]):
        pair = [{"role": "user", "content": turn.user_text}]
        if turn.heard_text:
            pair.append({"role": "assistant", "content": turn.heard_text})
        cost = sum(count_tokens(m["content"]) + 8 for m in pair)
        if used + cost > budget_tokens:
            break
        used += cost
        kept[:0] = pair
    messages = [{"role": "system", "content": system_prompt}, *kept, {"role": "user", "content": user_text}]
    # A turn cut off before any reply leaves two user messages in a row; chat templates want them
    # alternating, so merge them.
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"] == "user":
            merged[-1] = {"role": "user", "content": merged[-1]["content"] + "\n" + message["content"]}
        else:
            merged.append(dict(message))
    return merged
