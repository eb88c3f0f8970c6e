"""Dialogue memory: every completed turn is written to SQLite (WAL) so that a returning user gets the
conversation back after a restart, and a crash mid-turn never corrupts what was already said.

A turn is written in one transaction (user text + what the user heard of the reply), so the database
only ever holds whole turns.

Sessions and users carry the SHA-256 of a secret (``resume_key`` / ``user_key``, see avatar/access.py):
history is only handed to a client that presents the secret, and the secrets themselves are never stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,     -- sha256 of the user's user_key
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    user_id TEXT,
    user_text TEXT NOT NULL,
    reply_text TEXT NOT NULL,   -- what the user heard (truncated on barge-in)
    full_reply TEXT NOT NULL,   -- what the model wrote
    interrupted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_session ON turns(session_id, id);
CREATE INDEX IF NOT EXISTS turns_user ON turns(user_id, id);
"""


@dataclass
class Turn:
    user_text: str
    reply_text: str
    interrupted: bool = False


class MemoryStore:
    """Thread-safe: one connection guarded by a lock (writes are tiny and rare)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a crash of this process (kill -9); only a power cut can lose the last turn.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "key_hash" not in columns:  # databases made before sessions had resume keys
            self._db.execute("ALTER TABLE sessions ADD COLUMN key_hash TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def session_exists(self, session_id: str) -> bool:
        return self._one("SELECT 1 FROM sessions WHERE id=?", (session_id,)) is not None

    def session_user(self, session_id: str) -> str | None:
        row = self._one("SELECT user_id FROM sessions WHERE id=?", (session_id,))
        return row[0] if row else None

    def create_session(self, user_id: str | None = None, session_id: str | None = None,
                       key_hash: str | None = None) -> str:
        session_id = session_id or uuid.uuid4().hex
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO sessions(id, user_id, created, updated, key_hash) VALUES (?,?,?,?,?)",
                (session_id, user_id, now, now, key_hash),
            )
        return session_id

    def session_key_hash(self, session_id: str) -> str | None:
        """The hash of the session's resume key; None for an unknown session (or one made without a key)."""
        row = self._one("SELECT key_hash FROM sessions WHERE id=?", (session_id,))
        return row[0] if row else None

    def user_key_hash(self, user_id: str) -> str | None:
        row = self._one("SELECT key_hash FROM users WHERE id=?", (user_id,))
        return row[0] if row else None

    def add_user(self, user_id: str, key_hash: str) -> bool:
        """Register a user id with the hash of its key; False if the id was taken meanwhile."""
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO users(id, key_hash, created) VALUES (?,?,?)",
                                      (user_id, key_hash, time.time()))
            return cursor.rowcount == 1

    def ping(self) -> bool:
        """A cheap check that the database answers (for /healthz)."""
        try:
            return self._one("SELECT count(*) FROM sessions", ()) is not None
        except sqlite3.Error:
            return False

    def add_turn(self, session_id: str, user_id: str | None, turn: Turn, full_reply: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO turns(session_id, user_id, user_text, reply_text, full_reply, interrupted,"
                    " created) VALUES (?,?,?,?,?,?,?)",
                    (session_id, user_id, turn.user_text, turn.reply_text, full_reply, int(turn.interrupted), now),
                )
                self._db.execute("UPDATE sessions SET updated=? WHERE id=?", (now, session_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def history(self, *, session_id: str, user_id: str | None = None, limit: int = 200) -> list[Turn]:
        """The newest ``limit`` turns, oldest first: the user's turns across sessions when a user id is
        known, else the session's."""
        if user_id:
            sql, key = "SELECT user_text, reply_text, interrupted FROM turns WHERE user_id=?", user_id
        else:
            sql, key = "SELECT user_text, reply_text, interrupted FROM turns WHERE session_id=?", session_id
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (key, limit)).fetchall()
        return [Turn(u, r, bool(i)) for u, r, i in reversed(rows)]

    def forget_session(self, session_id: str) -> int:
        """Delete a session and its turns (a kiosk visit that is not kept); returns the turns deleted."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute("DELETE FROM turns WHERE session_id=?", (session_id,)).rowcount
                self._db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deleted

    def integrity_ok(self) -> bool:
        return self._one("PRAGMA integrity_check", ())[0] == "ok"


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
        if turn.reply_text:
            pair.append({"role": "assistant", "content": turn.reply_text})
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
