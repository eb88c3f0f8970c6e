"""The chat messages a turn sends to the language model: persona, as much history as fits, the user's text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from avatar.conversation.memory import Turn

# Small models confuse the persona's name with the user's: Qwen 0.5B greeted a user who gave no name with
# "Hello Sam!" (its own), answered "Do you know my name?" with its own, and said "Sam tried to solve a
# problem" of itself (issue 25). Saying whose name it is, and that the user's is unknown, took the 0.5B from
# 24 to 30 of the 35 prompts of tests/data/persona/identity.json, with no slip of the three kinds
# left (docs/trust-measurements.md). Not in it: "if asked, say you do not know it" (the 0.5B then answered
# "What is your phone number?" with "I do not know it." on a knowledge base), a quoted example answer
# (parroted to every prompt), "'my' means the user" (worse). Added where the persona's prompt opens with "You are NAME"; an operator's prompt
# of another shape is left as written.
IDENTITY = ("{name} is your own name, not the user's. Speak of yourself as \"I\", never as {name}. You do not "
            "know the user's name or anything about them until they tell you, so never call them by a name.")
_PERSONA = re.compile(r"^\s*You are ([A-Z][\w'-]*(?: [A-Z][\w'-]*)?)(?:[.!]|,[^.!?]*[.!?])")


def with_identity(system_prompt: str) -> str:
    """``system_prompt`` with the IDENTITY rules after its first sentence ("You are Sam, ..."): the same
    text whether or not a knowledge instruction follows (the warm-up's prompt and a turn's agree, so the
    LLM slot's prompt cache holds), and before anything the prompt ends with (the reply language)."""
    match = _PERSONA.match(system_prompt)
    if match is None or "your own name, not the user's" in system_prompt:
        return system_prompt
    rule = IDENTITY.format(name=match.group(1))
    return f"{system_prompt[:match.end()]} {rule}{system_prompt[match.end():]}"


@dataclass
class PromptWindow:
    """Where one conversation's history in the prompt starts, kept from turn to turn.

    While the same turns open the prompt, the LLM's prompt cache (a slot per conversation) still holds
    them, and a turn evaluates only its new messages. Dropping the oldest turn whenever the history
    outgrew the budget changed the prompt's start on every turn, so every turn re-evaluated the whole
    history: up to ~2,400 tokens, over 30 s on 2 cores with four conversations, and every reply of the
    30-minute soak failed from minute 4. Instead, when the window no longer fits, it restarts with the
    recent turns that fill half the budget (and at most half of max_turns): one full evaluation, then
    cached turns again for a while."""

    first: Turn | None = None  # the oldest turn in the prompt last time; None: choose again


def build_prompt(
    system_prompt: str,
    history: list[Turn],
    user_text: str,
    *,
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    max_turns: int,
    window: PromptWindow | None = None,
) -> list[dict]:
    """Chat messages for the model: the system prompt, as many recent turns as fit the token budget, and
    the new user text. Old turns are dropped from the prompt (they stay in the database). With a
    ``window`` (one per conversation), the prompt keeps starting at the same turn while it fits."""
    system_prompt = with_identity(system_prompt)
    used = count_tokens(system_prompt) + count_tokens(user_text) + 16
    recent = history[-max_turns:] if max_turns > 0 else []
    pairs = []
    for turn in recent:
        pair = [{"role": "user", "content": turn.user_text}]
        if turn.heard_text:
            pair.append({"role": "assistant", "content": turn.heard_text})
        pairs.append(pair)
    costs = [sum(count_tokens(m["content"]) + 8 for m in pair) for pair in pairs]
    start = None
    if window is not None and window.first is not None:
        at = next((i for i, turn in enumerate(recent) if turn is window.first), None)
        if at is not None and used + sum(costs[at:]) <= budget_tokens:
            start = at
    if start is None:
        limit, most = budget_tokens, len(recent)
        if window is not None:  # a fresh window: room to grow for several turns
            limit, most = used + max(0, budget_tokens - used) // 2, max(1, max_turns // 2)
        start, total = len(recent), used
        for i in range(len(recent) - 1, -1, -1):
            if total + costs[i] > limit or len(recent) - i > most:
                break
            total += costs[i]
            start = i
    if window is not None:
        window.first = recent[start] if start < len(recent) else None
    kept = [message for pair in pairs[start:] for message in pair]
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
