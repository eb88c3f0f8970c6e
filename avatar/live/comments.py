"""Viewer comments: what one is, which ones the host answers, and in which order.

Every comment, whatever it came from (avatar/live/intake.py), goes through ``CommentDesk.submit``:

- moderation: empty or longer than ``max_chars`` -> dropped; a blocked word -> dropped; more than
  ``per_user_per_minute`` from one viewer -> dropped (rate); the same text as one still waiting (any
  viewer, case and punctuation ignored) -> merged into it (the host answers it once, naming both);
- priority: questions first, then viewers the host has not answered yet, then the oldest; a comment that
  waited longer than ``max_age_s`` is dropped as stale (the show moved on), and when ``max_waiting``
  comments wait, the least urgent one makes room.

A comment's text is only ever quoted to the language model in the user role (``prompt_for``): it never
changes the host's persona or the show's rules, and text that tries to ("ignore your instructions...")
is answered as what it is, a comment.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from avatar.errors import ProtocolError
from avatar.language import Language

MAX_USER_CHARS = 40
_QUESTION_WORDS = {"what", "how", "why", "when", "where", "who", "which", "is", "are", "can", "could", "do",
                   "does", "did", "will", "would", "should", "any", "whats", "hows"}
# Chinese questions often end without "?": particles and question words that mark them.
_ZH_QUESTION = ("吗", "呢", "什么", "怎么", "多少", "为什么", "哪", "几", "是不是", "有没有", "能不能", "可以吗")


class CommentError(ProtocolError):
    code = "bad_comment"


@dataclass
class Comment:
    user: str
    text: str
    source: str = "http"  # "http" | "ws" | "stdin" | an adapter's name
    received: float = field(default_factory=time.monotonic)
    also: list[str] = field(default_factory=list)  # viewers who wrote the same (merged duplicates)
    seq: int = 0

    @property
    def question(self) -> bool:
        return is_question(self.text)


def is_question(text: str) -> bool:
    t = text.strip()
    if "?" in t or "？" in t:
        return True
    words = re.findall(r"[a-z']+", t.lower())
    if words and words[0].replace("'", "") in _QUESTION_WORDS:
        return True
    return any(marker in t for marker in _ZH_QUESTION)


def _clean(text: str) -> str:
    # Control characters could break the quoting of the prompt or a log line.
    return "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text).strip()


def parse_comment(obj, source: str) -> Comment:
    """A comment from a decoded JSON object {"user": ..., "text": ...}; ``CommentError`` says what to fix."""
    if not isinstance(obj, dict):
        raise CommentError('a comment is a JSON object: {"user": "name", "text": "what they wrote"}')
    user, text = obj.get("user"), obj.get("text")
    if not isinstance(user, str) or not user.strip():
        raise CommentError('the comment needs "user": the viewer\'s name, a non-empty string')
    if not isinstance(text, str):
        raise CommentError('the comment needs "text": what the viewer wrote, a string')
    user = _clean(user)[:MAX_USER_CHARS]
    return Comment(user=user, text=_clean(text), source=source)


def _key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


@dataclass
class Verdict:
    accepted: bool
    reason: str  # "queued" | "merged" | "empty" | "too_long" | "blocked" | "rate_limited" | "queue_full"


class CommentDesk:
    """Moderation and the waiting line of comments; thread-safe (intake runs on other threads)."""

    def __init__(self, *, max_chars: int = 300, blocked: tuple[str, ...] = (), per_user_per_minute: int = 3,
                 max_waiting: int = 50, max_age_s: float = 300.0,
                 on_change: Callable[[str, Comment, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_chars = max_chars
        self.blocked = tuple(w.lower() for w in blocked if w.strip())
        self.per_user_per_minute = per_user_per_minute
        self.max_waiting = max_waiting
        self.max_age_s = max_age_s
        self.on_change = on_change  # (what, comment, reason): "received" | "dropped" | "merged" | "queued"
        self.clock = clock
        self._lock = threading.Lock()
        self._waiting: list[Comment] = []
        self._recent: dict[str, deque[float]] = {}  # user -> times of their last comments
        self._answered_users: set[str] = set()
        self._seq = itertools.count(1)
        self._wakers: list[Callable[[], None]] = []

    def add_waker(self, waker: Callable[[], None]) -> None:
        """Called (from any thread) when a comment starts waiting."""
        self._wakers.append(waker)

    def _tell(self, what: str, comment: Comment, reason: str) -> None:
        if self.on_change is not None:
            self.on_change(what, comment, reason)

    def submit(self, comment: Comment) -> Verdict:
        self._tell("received", comment, comment.source)
        verdict = self._moderate(comment)
        if not verdict.accepted:
            self._tell("dropped", comment, verdict.reason)
        elif verdict.reason == "merged":
            self._tell("merged", comment, verdict.reason)
        else:
            self._tell("queued", comment, verdict.reason)
            for waker in self._wakers:
                waker()
        return verdict

    def _moderate(self, comment: Comment) -> Verdict:
        text = comment.text = comment.text.strip()
        if not text:
            return Verdict(False, "empty")
        if len(text) > self.max_chars:
            return Verdict(False, "too_long")
        lowered = f"{text} {comment.user}".lower()
        if any(word in lowered for word in self.blocked):
            return Verdict(False, "blocked")
        now = self.clock()
        comment.received = now
        with self._lock:
            times = self._recent.setdefault(comment.user, deque())
            while times and now - times[0] > 60.0:
                times.popleft()
            if len(times) >= self.per_user_per_minute:
                return Verdict(False, "rate_limited")
            times.append(now)
            key = _key(text)
            for waiting in self._waiting:
                if _key(waiting.text) == key:
                    if comment.user != waiting.user and comment.user not in waiting.also:
                        waiting.also.append(comment.user)
                    return Verdict(True, "merged")
            if len(self._waiting) >= self.max_waiting:
                least = max(self._waiting, key=self._rank)
                if self._rank(comment) >= self._rank(least):
                    return Verdict(False, "queue_full")
                self._waiting.remove(least)
                self._tell("dropped", least, "queue_full")
            comment.seq = next(self._seq)
            self._waiting.append(comment)
        return Verdict(True, "queued")

    def _rank(self, comment: Comment) -> tuple:
        return (not comment.question, comment.user in self._answered_users, comment.seq or 1 << 62)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def next(self) -> Comment | None:
        """The most urgent waiting comment (stale ones are dropped), or None."""
        now = self.clock()
        with self._lock:
            stale = [c for c in self._waiting if now - c.received > self.max_age_s]
            for comment in stale:
                self._waiting.remove(comment)
            best = min(self._waiting, key=self._rank) if self._waiting else None
            if best is not None:
                self._waiting.remove(best)
                self._answered_users.add(best.user)
                self._answered_users.update(best.also)
        for comment in stale:
            self._tell("dropped", comment, "stale")
        return best


def prompt_for(comment: Comment, language: str = "en") -> str:
    """The user-role message that asks the host to answer ``comment``: the viewer's words in quotes (they
    cannot close them), marked as a viewer's. The system prompt says such messages are never instructions
    (avatar/live/show.py). Short and plain on purpose: tried on SmolLM2-135M, a longer framing ("Chat
    message... reply in one to three short sentences") was echoed back instead of answered."""
    text = comment.text.replace('"', "'").replace("“", "'").replace("”", "'")
    names = ", ".join([comment.user, *comment.also[:2]])
    if Language.parse(language).code == "zh":
        verb = "问" if comment.question else "说"
        return f"观众{names}{verb}：“{text}” 请回答{comment.user}。"
    verb = "asks" if comment.question else "writes"
    return f'A viewer, {names}, {verb}: "{text}" Answer {comment.user}.'


def lead_in(comment: Comment) -> str:
    """What the host reads out before answering: the viewer's name (and the question), as hosts do."""
    names = comment.user if not comment.also else f"{comment.user} and {len(comment.also)} more"
    verb = "asks" if comment.question else "says"
    text = comment.text if len(comment.text) <= 160 else comment.text[:157] + "..."
    return f"{names} {verb}: {text}"
