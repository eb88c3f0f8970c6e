"""The passages of a folder of documents in SQLite FTS5, ranked by BM25: no server, one file.

``sync()`` brings the index up to date with the folder: files are compared by size and modification
time, so a restart or a poll re-reads only what changed. Reading (``search``) and writing (``sync``,
from the watcher thread) share one connection behind a lock; documents are parsed outside the lock, so
a search waits at most for one file's rows to be written, never for a PDF to be parsed.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from avatar.errors import ConfigError
from avatar.knowledge.loaders import LoadError, load_sections, passages, supported
from avatar.knowledge.terms import fts_query, index_form, query_terms

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,      -- relative to the folder, with / separators
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    passages INTEGER NOT NULL,
    error TEXT                  -- why the file gave no passages, or NULL
);
-- Porter stemming lets "opens" find "open"; Chinese arrives as bigrams (see terms.py). Only `terms`
-- is searched; the other columns are what a hit shows.
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    terms, source UNINDEXED, title UNINDEXED, text UNINDEXED,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
"""
# A phone number as written in documents: "555-0142", "+1 (555) 010-2030", "020 7946 0958".
# A number at the end of a sentence ("Call 555-0199.") is one too: a full stop may follow, a decimal may not.
PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ()./-]{5,}\d(?!\w|\.\d)")
_CONTACT_WORDS = '"phone" OR "call" OR "telephone" OR "tel" OR "电话"'


@dataclass(frozen=True)
class Passage:
    source: str  # file name relative to the folder
    title: str
    text: str
    score: float = 0.0  # BM25 (lower is better, as SQLite reports it)

    def render(self) -> str:
        body = f"{self.title}: {self.text}" if self.title and self.title not in self.text else self.text
        return f"[{self.source}] {body}"


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # path -> message

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.changed)} changed", f"{len(self.removed)} removed"]
        return ", ".join(parts) + (f", {len(self.errors)} unreadable" if self.errors else "")


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    passages: int
    error: str | None


class KnowledgeIndex:
    def __init__(self, root: str | Path, db_path: str | Path = ":memory:", *, chunk_chars: int = 500):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ConfigError(f"knowledge.path {root} is not a folder; create it and put the documents "
                              "(.md, .txt, .html, .csv, .pdf) in it, or set knowledge.path = \"\" to turn it off")
        self.chunk_chars = chunk_chars
        if str(db_path) != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:  # e.g. an SQLite built without FTS5
            raise ConfigError(f"cannot create the knowledge index {db_path}: {exc}") from None
        settings = f"{self.root}|{chunk_chars}"
        row = self._db.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        if row is None or row[0] != settings:  # another folder or another passage size: start afresh
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM passages")
                self._db.execute("DELETE FROM files")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (settings,))
                self._db.execute("COMMIT")
        self._contact: str | None = None
        self.version = 0  # counts the syncs that changed the index (cached views of it compare this)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ------------------------------------------------------------------------------------------
    def scan(self) -> dict[str, tuple[int, int]]:
        """Supported files under the folder (hidden folders skipped): relative path -> (mtime_ns, size)."""
        found: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not supported(path):
                    continue
                try:
                    st = path.stat()
                except OSError:  # removed between listing and stat
                    continue
                found[path.relative_to(self.root).as_posix()] = (st.st_mtime_ns, st.st_size)
        return found

    def sync(self) -> SyncReport:
        """Index new and changed files and forget deleted ones; unreadable files are reported, not fatal."""
        report = SyncReport()
        on_disk = self.scan()
        with self._lock:
            known = {p: (m, s) for p, m, s in self._db.execute("SELECT path, mtime_ns, size FROM files")}
        for rel in sorted(set(known) - set(on_disk)):
            self._write(rel, None, [], None)
            report.removed.append(rel)
        for rel, stamp in on_disk.items():
            if known.get(rel) == stamp:
                continue
            error = None
            try:
                rows = passages(load_sections(self.root / rel), self.chunk_chars)
            except LoadError as exc:
                rows, error = [], exc.message
            except OSError as exc:  # vanished or unreadable meanwhile: try again at the next poll
                log.info("knowledge: cannot read %s yet: %s", rel, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one odd document must not stop the others
                rows, error = [], f"{rel} could not be read ({exc!r}); check or re-export the file"
            if error:
                report.errors[rel] = error
                log.warning("knowledge: %s", error)
            self._write(rel, stamp, rows, error)
            (report.changed if rel in known else report.added).append(rel)
        if report.touched:
            self._contact = None
            self.version += 1
        return report

    def _write(self, rel: str, stamp: tuple[int, int] | None, rows: list[tuple[str, str]], error: str | None):
        words = re.sub(r"[-_.]+", " ", Path(rel).stem)  # "return-policy.pdf" also answers "return policy"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM passages WHERE source=?", (rel,))
                self._db.execute("DELETE FROM files WHERE path=?", (rel,))
                if stamp is not None:
                    self._db.executemany(
                        "INSERT INTO passages(terms, source, title, text) VALUES (?,?,?,?)",
                        [(index_form(f"{words} {title} {text}"), rel, title, text) for title, text in rows])
                    self._db.execute("INSERT INTO files VALUES (?,?,?,?,?)", (rel, *stamp, len(rows), error))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- reading ------------------------------------------------------------------------------------------
    def search(self, text: str, k: int = 3) -> list[Passage]:
        """The ``k`` passages that best match ``text`` (any of its content words), best first."""
        terms = query_terms(text)
        if not terms or k <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT source, title, text, bm25(passages, 1.0, 0.0, 0.0, 0.0) AS score FROM passages "
                "WHERE passages MATCH ? ORDER BY score LIMIT ?", (fts_query(terms), k)).fetchall()
        return [Passage(*row) for row in rows]

    def knows(self, word: str) -> bool:
        """Whether any passage contains ``word`` (stemmed like the index)."""
        terms = query_terms(word)
        if not terms:
            return True
        with self._lock:
            return self._db.execute("SELECT 1 FROM passages WHERE passages MATCH ? LIMIT 1",
                                    (fts_query(terms, "AND"),)).fetchone() is not None

    def contact_phone(self) -> str:
        """The first phone number in a passage that talks about phoning ("" when there is none)."""
        if self._contact is None:
            with self._lock:
                rows = self._db.execute("SELECT title, text FROM passages WHERE passages MATCH ? ORDER BY rank "
                                        "LIMIT 20", (_CONTACT_WORDS,)).fetchall()
            found = (m.group().strip() for title, text in rows for m in PHONE.finditer(f"{title} {text}"))
            self._contact = next((n for n in found if sum(c.isdigit() for c in n) >= 7), "")
        return self._contact

    def all_passages(self) -> list[Passage]:
        """Every passage, file by file in path order, each file's in document order."""
        with self._lock:
            rows = self._db.execute("SELECT source, title, text FROM passages ORDER BY source, rowid").fetchall()
        return [Passage(*row) for row in rows]

    def files(self) -> list[FileInfo]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, passages, error FROM files ORDER BY path").fetchall()
        return [FileInfo(*row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM passages").fetchone()[0]
