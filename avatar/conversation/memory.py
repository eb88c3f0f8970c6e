"""Dialogue memory: every completed turn is written to SQLite (WAL) so that a returning user gets the
conversation back after a restart, and a crash mid-turn never corrupts what was already said.

A turn is written in one transaction (user text + what the user heard of the reply), so the database
only ever holds whole turns.

Storage never runs on the event loop's critical path: ``add_turn`` and user registration only queue the
write, and one writer thread does them in order. A write that fails (another program holds the database
lock, the disk is full) stays at the head of the queue and is retried until it succeeds, so a turn is
delayed, never lost while the server runs; meanwhile ``history`` answers from the queue too, so the
conversation goes on in memory. ``condition()`` says what is wrong, for ``/healthz``, metrics and
clients (``storage_full``). Reads use their own connection (WAL readers do not wait for writers).

A session row is written with its first turn: a connection that says nothing leaves nothing behind.
The data directory is made 0700 and the database files 0600: they hold every conversation.

Sessions and users carry the SHA-256 of a secret (``resume_key`` / ``user_key``, see avatar/net/access.py):
history is only handed to a client that presents the secret, and the secrets themselves are never stored.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from avatar.errors import AvatarError, ConfigError

log = logging.getLogger(__name__)

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
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
RETRY_S = 1.0  # between attempts at a write that failed
WRITE_BUSY_MS = 2000  # the writer thread waits this long for another program's lock, then retries
READ_BUSY_MS = 200  # reads run on the event loop: never wait long (WAL readers rarely wait at all)
MAX_QUEUED = 50_000  # writes kept while storage fails (about 2 KB each); beyond, the oldest are dropped
MAX_PENDING_SESSIONS = 4096  # sessions without a turn yet; forget_session normally removes them
FULL_MESSAGE = ("the server's disk is full: conversations go on, but new turns are kept in memory only "
                "until the operator frees space (they are written then, or lost if the server stops first)")


@dataclass
class Turn:
    user_text: str
    heard_text: str  # the part of the reply the user heard (all of it unless interrupted); column reply_text
    interrupted: bool = False


@dataclass
class _Write:
    kind: str  # "turn" | "user" | "delete"
    args: tuple
    session_row: tuple | None = None  # (id, user_id, created, key_hash): the session's first turn writes it


def prepare_data_dir(directory: Path) -> None:
    """Create the data directory (0700: it holds every conversation) and check that it is writable.
    Raises ``ConfigError`` that says which directory, why and what to do, instead of a traceback."""
    directory = Path(directory)
    what = ("Choose another with --data-dir (or AVATAR_DATA_DIR), or make this one writable by the user "
            "that runs the server")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(directory.stat().st_mode) & 0o077:
            os.chmod(directory, 0o700)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EROFS:
            why += " (the file system is mounted read-only)"
        raise ConfigError(f"the data directory {directory} cannot be used: {why}. {what}.") from None


def _secure(path: Path) -> None:
    """Database files 0600: created so (SQLite gives the WAL and shm files the database's mode) and
    tightened when an older version left them readable by others."""
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in DB_SUFFIXES:
        name = Path(str(path) + suffix)
        try:
            if stat.S_IMODE(name.stat().st_mode) & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={busy_ms}")
    return db


def classify(exc: BaseException) -> str:
    """'full' | 'locked' | 'error': what a failed write means for the operator."""
    code, text = getattr(exc, "sqlite_errorcode", None), str(exc).lower()
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return "full"
    return "locked" if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text else "error"


class MemoryStore:
    """Reads on the caller's thread (one read connection, guarded by a lock); writes queued for one writer
    thread. Every method is safe to call from the event loop: none waits for a write."""

    def __init__(self, path: Path, *, retry_s: float = RETRY_S):
        path = Path(path)
        prepare_data_dir(path.parent)
        self.path = path
        self.retry_s = retry_s
        try:
            _secure(path)
            setup = _connect(path, 5000)
            setup.execute("PRAGMA journal_mode=WAL")
            setup.executescript(SCHEMA)
            columns = {row[1] for row in setup.execute("PRAGMA table_info(sessions)")}
            if "key_hash" not in columns:  # databases made before sessions had resume keys
                setup.execute("ALTER TABLE sessions ADD COLUMN key_hash TEXT")
            if "name" not in {row[1] for row in setup.execute("PRAGMA table_info(users)")}:
                setup.execute("ALTER TABLE users ADD COLUMN name TEXT")  # the id a client gave (see access.py)
            setup.close()
            _secure(path)
        except sqlite3.Error as exc:
            raise ConfigError(f"the memory database {path} cannot be opened: {exc}. Free disk space, fix its "
                              "permissions, or choose another data directory with --data-dir") from None
        self._lock = threading.Lock()  # the read connection
        self._db = _connect(path, READ_BUSY_MS)
        self._writer_db = _connect(path, WRITE_BUSY_MS)
        # NORMAL is durable against a crash of this process (kill -9); only a power cut can lose the last turn.
        self._writer_db.execute("PRAGMA synchronous=NORMAL")
        self._cond = threading.Condition()
        self._queue: collections.deque[_Write] = collections.deque()
        self._pending_sessions: dict[str, tuple] = {}  # id -> session row, until its first turn
        self._pending_users: dict[str, str] = {}  # id -> key hash, until written
        self.state = "ok"  # "ok" | "full" | "locked" | "error": the last write attempt
        self.last_error = ""
        self.written = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="memory-writer", daemon=True)
        self._writer.start()

    # -- the writer thread ---------------------------------------------------------------------------------
    def _enqueue(self, write: _Write) -> None:
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self.dropped += 1
                log.error("memory: %d writes waiting; the oldest was dropped (%s)", MAX_QUEUED, self.last_error)
            self._queue.append(write)
            self._cond.notify()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                write = self._queue[0]
            try:
                self._write(write)
            except sqlite3.Error as exc:
                kind = classify(exc)
                self.failures[kind] += 1
                if kind != self.state or str(exc) != self.last_error:
                    log.error("memory: a write failed (%s: %s); %d waiting, retrying every %g s", kind, exc,
                              len(self._queue), self.retry_s)
                self.state, self.last_error = kind, str(exc)
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(self.retry_s)
                continue

    def _write(self, write: _Write) -> None:
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        try:
            if write.kind == "delete":
                db.execute("DELETE FROM turns WHERE session_id=?", write.args)
                db.execute("DELETE FROM sessions WHERE id=?", write.args)
            elif write.kind == "user":
                user_id, key_hash, name, created = write.args
                db.execute("INSERT OR IGNORE INTO users(id, key_hash, created, name) VALUES (?,?,?,?)",
                           (user_id, key_hash, created, name))
            else:
                session_id, user_id, turn, full_reply, created = write.args
                if write.session_row is not None:
                    db.execute("INSERT OR IGNORE INTO sessions(id, user_id, created, updated, key_hash)"
                               " VALUES (?,?,?,?,?)", (*write.session_row[:3], created, write.session_row[3]))
                db.execute(
                    "INSERT INTO turns(session_id, user_id, user_text, reply_text, full_reply, interrupted,"
                    " created) VALUES (?,?,?,?,?,?,?)",
                    (session_id, user_id, turn.user_text, turn.heard_text, full_reply, int(turn.interrupted),
                     created),
                )
                db.execute("UPDATE sessions SET updated=? WHERE id=?", (created, session_id))
            # Commit and leave the queue in one step under the read lock: a reader sees the turn in the
            # database or in the queue, never in both or neither.
            with self._lock:
                db.execute("COMMIT")
                self._done(write)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _done(self, write: _Write) -> None:
        with self._cond:
            if self._queue and self._queue[0] is write:
                self._queue.popleft()
            self.written += 1
            if write.kind == "user":
                self._pending_users.pop(write.args[0], None)
            if self.state != "ok":
                log.info("memory: writing again (%d waiting)", len(self._queue))
            self.state, self.last_error = "ok", ""
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued write is done; False if some are still waiting after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        if not self.flush(timeout):
            log.error("memory: %d turns could not be written before the server stopped (%s)",
                      len(self._queue), self.last_error)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(timeout=max(1.0, self.retry_s + 1.0))
        with self._lock:
            self._db.close()
        if not self._writer.is_alive():
            self._writer_db.close()

    # -- state, for /healthz, metrics and clients ----------------------------------------------------------
    def queued(self) -> int:
        return len(self._queue)

    def condition(self) -> dict:
        """{"state", "queued", "error"}: "ok" when the last write went through."""
        return {"state": self.state, "queued": len(self._queue), "error": self.last_error}

    def problem(self) -> AvatarError | None:
        """What to tell a client while turns cannot be saved (None when storage works)."""
        if self.state == "full":
            return AvatarError(FULL_MESSAGE, code="storage_full")
        if self.state != "ok" and self._queue:
            return AvatarError("the conversation database is not writable right now (" + self.state + "): "
                               "turns are kept in memory and saved when it is", code="storage_unavailable")
        return None

    # -- reads -------------------------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _queued(self, kind: str) -> list[_Write]:
        with self._cond:
            return [w for w in self._queue if w.kind == kind]

    def _deleting(self, session_id: str) -> bool:
        """A delete of ``session_id`` waits for the writer: the session (a kiosk visit) is gone already for
        every reader. Call holding ``_cond``."""
        return any(w.kind == "delete" and w.args[0] == session_id for w in self._queue)

    def session_exists(self, session_id: str) -> bool:
        return self.session_row(session_id) is not None

    def session_row(self, session_id: str) -> tuple | None:
        """(user_id, key_hash) of a stored, queued or pending session; None for an unknown one."""
        with self._cond:
            if self._deleting(session_id):  # its delete may wait behind the write that created it
                return None
            pending = self._pending_sessions.get(session_id)
            if pending is None:
                pending = next((w.session_row for w in self._queue if w.session_row
                                and w.session_row[0] == session_id), None)
        if pending is not None:
            return pending[1], pending[3]
        try:
            row = self._one("SELECT user_id, key_hash FROM sessions WHERE id=?", (session_id,))
        except sqlite3.Error as exc:
            log.warning("memory: could not read session %s (%s)", session_id[:8], exc)
            return None
        return (row[0], row[1]) if row else None

    def session_user(self, session_id: str) -> str | None:
        row = self.session_row(session_id)
        return row[0] if row else None

    def session_key_hash(self, session_id: str) -> str | None:
        """The hash of the session's resume key; None for an unknown session (or one made without a key)."""
        row = self.session_row(session_id)
        return row[1] if row else None

    def create_session(self, user_id: str | None = None, session_id: str | None = None,
                       key_hash: str | None = None) -> str:
        """A new session id; its row is written with its first turn (``forget_session`` drops it)."""
        session_id = session_id or uuid.uuid4().hex
        with self._cond:
            if len(self._pending_sessions) >= MAX_PENDING_SESSIONS:
                self._pending_sessions.pop(next(iter(self._pending_sessions)))
            self._pending_sessions[session_id] = (session_id, user_id, time.time(), key_hash)
        return session_id

    def forget_session(self, session_id: str) -> None:
        """The connection ended: a session without a turn is not kept."""
        with self._cond:
            self._pending_sessions.pop(session_id, None)

    def user_key_hash(self, user_id: str) -> str | None:
        with self._cond:
            if user_id in self._pending_users:
                return self._pending_users[user_id]
        try:
            row = self._one("SELECT key_hash FROM users WHERE id=?", (user_id,))
        except sqlite3.Error as exc:
            log.warning("memory: could not read a user (%s)", exc)
            return None
        return row[0] if row else None

    def add_user(self, user_id: str, key_hash: str, name: str | None = None) -> bool:
        """Register a user id with the hash of its key (queued); False if the id is taken."""
        if self.user_key_hash(user_id) is not None:
            return False
        with self._cond:
            if user_id in self._pending_users:
                return False
            self._pending_users[user_id] = key_hash
        self._enqueue(_Write("user", (user_id, key_hash, name, time.time())))
        return True

    def user_name(self, user_id: str) -> str | None:
        """The user id a client gave, for a stored identity (avatar.net.access.user_identity)."""
        if not user_id.startswith("u:"):
            return user_id  # registered before identities: the name itself
        queued = [w.args[2] for w in self._queued("user") if w.args[0] == user_id]
        try:
            row = None if queued else self._one("SELECT name FROM users WHERE id=?", (user_id,))
        except sqlite3.Error:
            row = None
        return queued[0] if queued else (row[0] if row else None)

    def ping(self) -> bool:
        """A cheap check that the database answers reads (for /healthz; ``condition`` tells about writes)."""
        try:
            return self._one("SELECT count(*) FROM sessions", ()) is not None
        except sqlite3.Error:
            return False

    def add_turn(self, session_id: str, user_id: str | None, turn: Turn, full_reply: str) -> None:
        """Queue the turn for the writer thread and return at once. Raises ``AvatarError`` (after queuing)
        while storage is known to fail, so that the client can be told; the turn is still kept."""
        with self._cond:
            row = self._pending_sessions.pop(session_id, None)
        self._enqueue(_Write("turn", (session_id, user_id, turn, full_reply, time.time()), row))
        problem = self.problem()
        if problem is not None:
            raise problem

    def history(self, *, session_id: str, user_id: str | None = None, limit: int = 200) -> list[Turn]:
        """The newest ``limit`` turns, oldest first: the user's turns across sessions when a user id is
        known, else the session's; turns still waiting to be written are included."""
        with self._cond:  # a deleted session (a kiosk visit) is gone at once, before the writer gets to it
            if not user_id and self._deleting(session_id):
                return []
        if user_id:
            sql, key, index = "SELECT user_text, reply_text, interrupted FROM turns WHERE user_id=?", user_id, 1
        else:
            sql, key, index = "SELECT user_text, reply_text, interrupted FROM turns WHERE session_id=?", session_id, 0
        with self._lock:  # the writer commits under this lock too: the two reads agree
            queued = [w.args[2] for w in self._queued("turn") if w.args[index] == key]
            try:
                rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (key, limit)).fetchall()
            except sqlite3.Error as exc:
                log.warning("memory: could not read history (%s); answering from memory", exc)
                rows = []
        return ([Turn(u, r, bool(i)) for u, r, i in reversed(rows)] + queued)[-limit:]

    def delete_session(self, session_id: str) -> None:
        """Delete a session and its turns (a kiosk visit); queued behind its turns, so none lands after it."""
        with self._cond:
            self._pending_sessions.pop(session_id, None)
        self._enqueue(_Write("delete", (session_id,)))

    def integrity_ok(self) -> bool:
        return self._one("PRAGMA integrity_check", ())[0] == "ok"
