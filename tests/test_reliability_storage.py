"""Issue 11, reliability round 2, continued (see test_reliability.py): a read-only data directory, a full
disk, the memory store's writer queue and the stall watch."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.test_reliability import (  # noqa: F401 (llm_url: a fixture)
    db_rows,
    health,
    llm_url,
    metrics,
    open_session,
    say,
    settings,
    start_command,
    wait_until,
)


# -- 10: a read-only data directory -------------------------------------------------------------------------------
def _in_namespace(script: str, *args: str) -> list[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private file system")
    return ["unshare", "-m", "--", "sh", "-c", script, "sh", *args]


def test_a_read_only_data_dir_says_which_why_and_what_to_do(llm_url, tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    if os.geteuid() != 0:
        data.chmod(0o500)
        cmd = [sys.executable, "-m", "avatar", "serve", "--port", str(free_port()), "--data-dir", str(data)]
    else:  # root writes through permissions: mount the directory read-only instead
        cmd = _in_namespace('mount -t tmpfs -o ro,size=64k tmpfs "$1" && shift && exec "$@"', str(data),
                            sys.executable, "-m", "avatar", "serve", "--port", str(free_port()), "--data-dir",
                            str(data))
    for key, value in settings(llm_url).items():
        cmd += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert str(data) in out and ("read-only" in out or "Permission denied" in out) and "--data-dir" in out


# -- 4: a full disk -----------------------------------------------------------------------------------------------
def test_a_full_disk_keeps_conversations_in_memory_reports_it_and_writes_later(llm_url, tmp_path):
    data = tmp_path / "small"
    data.mkdir()
    port = free_port()
    cmd = _in_namespace('mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"', str(data),
                        sys.executable, "-m", "avatar", "serve", "--port", str(port), "--data-dir", str(data))
    for key, value in settings(llm_url).items():
        cmd += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    proc = start_command(cmd, port, data)
    try:
        inside = Path(f"/proc/{proc.proc.pid}/root") / str(data).lstrip("/")  # the server's private mount
        filler = inside / "filler"
        with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to fail on
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass

        async def scenario():
            first, ready, _ = await open_session(proc.ws_url)
            async with first:
                turn = await say(first, "Hello on a full disk.")
            full = wait_until(lambda: health(proc)["storage"]["state"] == "full", 10)
            second, ready2, errors = await open_session(proc.ws_url)  # a new visitor
            async with second:
                turn2 = await say(second, "Another hello.")
            after = [e for e in turn2 if e["type"] == "error"]  # sent with the turn that was not written
            back, again, _ = await open_session(proc.ws_url, session_id=ready["session_id"],
                                                resume_key=ready["resume_key"])
            await back.close()
            return ready, turn, full, errors, turn2, after, again

        ready, turn, full, errors, turn2, after, again = asyncio.run(scenario())
        assert turn[-1]["reply"] and full
        assert [e["code"] for e in errors] == ["storage_full"] and not errors[0]["fatal"]
        assert "disk is full" in errors[0]["message"]
        assert turn2[-1]["reply"] and after[-1]["code"] == "storage_full" and not after[-1]["fatal"]
        assert again["resumed"] and again["history"][0]["text"] == "Hello on a full disk."  # from memory
        state = health(proc)
        assert state["status"] == "degraded" and state["storage"]["queued"] >= 2
        values = metrics(proc)
        assert values["avatar_memory_writable"] == 0 and values["avatar_memory_queued_writes"] >= 2
        assert values['avatar_memory_write_failures_total{cause="full"}'] >= 1
        filler.unlink()  # the operator frees space: the kept turns are written
        assert wait_until(lambda: health(proc)["status"] == "ok", 10)
        copy = tmp_path / "copy"  # SQLite resolves the /proc/PID/root link: read a copy instead
        copy.mkdir()
        for suffix in ("", "-wal"):
            shutil.copy(inside / f"memory.sqlite3{suffix}", copy / f"memory.sqlite3{suffix}")
        rows = db_rows(copy, "SELECT user_text FROM turns ORDER BY id")
        assert [r[0] for r in rows] == ["Hello on a full disk.", "Another hello."]
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()


# -- the memory store on its own (no server) ----------------------------------------------------------------------
def test_the_store_queues_writes_retries_them_and_answers_from_the_queue(tmp_path):
    from avatar.conversation.admission import admit, secret_hash
    from avatar.conversation.memory import MemoryStore, Turn

    path = tmp_path / "data" / "memory.sqlite3"
    path.parent.mkdir(mode=0o755)
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)  # as an older version left them
    store = MemoryStore(path, retry_s=0.1)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        sid = store.create_session(None, None, secret_hash("k" * 32))
        assert store.session_key_hash(sid) == secret_hash("k" * 32)  # known before its first turn...
        assert db_rows(path.parent, "SELECT count(*) FROM sessions") == [(0,)]  # ...but not stored
        holder.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        store.add_turn(sid, None, Turn("one", "heard one"), "heard one")
        assert time.monotonic() - t0 < 0.05  # queued, not written
        assert [t.user_text for t in store.history(session_id=sid)] == ["one"]  # answered from the queue
        assert wait_until(lambda: store.state == "locked", 5) and store.queued() == 1
        holder.execute("ROLLBACK")
        assert store.flush(10) and store.state == "ok"
        assert db_rows(path.parent, "SELECT user_text FROM turns") == [("one",)]
        assert [t.user_text for t in store.history(session_id=sid)] == ["one"]  # once, not twice
        quiet = store.create_session(None)
        store.forget_session(quiet)
        assert store.session_key_hash(quiet) is None
        # A user registered before identities (users.id is the name) keeps working with its key.
        holder.execute("INSERT INTO users(id, key_hash, created) VALUES ('old', ?, 0)", (secret_hash("o" * 32),))
        old = admit(store, {"user_id": "old", "user_key": "o" * 32})
        assert not old.errors and old.user_id == "old" and old.name == "old"
    finally:
        holder.close()
        store.close()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_stall_watch_spares_a_slow_reader_and_cuts_a_silent_one():
    from avatar.net.limits import StallWatch

    class Transport:
        size = 0

        def is_closing(self):
            return False

        def get_write_buffer_size(self):
            return self.size

        def get_write_buffer_limits(self):
            return (8192, 32768)

    now = [0.0]
    transport = Transport()
    watch = StallWatch(lambda: transport, stall_s=2.0, max_bytes=1 << 20, on_stall=print, clock=lambda: now[0])
    for step in range(100):  # 10 s above the high-water mark, read now and then: never cut
        now[0] = step * 0.1
        transport.size = 200_000 + (step % 7) * 10_000
        assert watch.check() is None
    for step in range(19):  # then nothing read for 1.9 s: not yet
        now[0] += 0.1
        transport.size += 1000
        assert watch.check() is None
    now[0] += 0.2
    assert "limits.send_stall_s" in watch.check()
    transport.size = 2 << 20
    assert "limits.max_queued_bytes" in StallWatch(lambda: transport, 2.0, 1 << 20, print).check()
