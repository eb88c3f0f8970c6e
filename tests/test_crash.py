"""Crash safety (issue 5): ``kill -9`` in the middle of a turn loses nothing that was said before, the
database stays sound and the client resumes; SIGTERM ends the turn in progress cleanly, stores what was
heard and tells the client why the connection closes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from avatar.net.protocol import KIND_AUDIO
from avatar.tools.client import talk
from tests.conftest import FAST

NO_VIDEO = {"video.enabled": False}
LONG = {**FAST, **NO_VIDEO, "llm.max_tokens": 200}


def stored_turns(data_dir, session_id: str) -> tuple[str, list[tuple]]:
    """(integrity_check, turns of the session), read with a fresh connection as another program would."""
    db = sqlite3.connect(data_dir / "memory.sqlite3")
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = db.execute("SELECT user_text, reply_text, interrupted FROM turns WHERE session_id=? ORDER BY id",
                          (session_id,)).fetchall()
    finally:
        db.close()
    return integrity, rows


async def start_long_reply(url: str, handle: str):
    """Resume the session and ask for a long answer; return (ws, events so far) once audio flows."""
    ws = await connect(url, max_size=None)
    session_id, _, key = handle.partition(":")
    await ws.send(json.dumps({"type": "hello", "session_id": session_id, "resume_key": key, "video": False}))
    await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about a lighthouse keeper."}))
    events = []
    async with asyncio.timeout(120):
        async for message in ws:
            if isinstance(message, bytes):
                if message[2] == KIND_AUDIO:
                    break
                continue
            events.append(json.loads(message))
    return ws, events


def test_kill_9_mid_turn_keeps_completed_turns_and_the_session_resumes(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(LONG, data_dir=data)
    first = asyncio.run(talk(server.ws_url, text="My name is Ines.", video=False))
    second = asyncio.run(talk(server.ws_url, text="I live in Lisbon.", session_id=first.session_id, video=False))
    assert second.server_session_id == first.server_session_id

    async def crash():
        ws, events = await start_long_reply(server.ws_url, first.session_id)
        assert any(e["type"] == "turn_start" for e in events)
        server.kill()  # SIGKILL in the middle of the reply
        try:
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass

    asyncio.run(crash())
    assert server.proc.returncode == -signal.SIGKILL
    integrity, rows = stored_turns(data, first.server_session_id)
    assert integrity == "ok"
    assert [r[0] for r in rows[:2]] == ["My name is Ines.", "I live in Lisbon."]
    assert all(r[1] for r in rows[:2])  # whole turns: each with its reply

    server = server_factory(LONG, data_dir=data)
    third = asyncio.run(talk(server.ws_url, text="Where do I live?", session_id=first.session_id, video=False))
    ready = next(e for e in third.events if e["type"] == "ready")
    assert ready["resumed"] and ready["session_id"] == first.server_session_id
    texts = [m["text"] for m in ready["history"] if m["role"] == "user"]
    assert texts[:2] == ["My name is Ines.", "I live in Lisbon."]
    assert third.reply
    assert stored_turns(data, first.server_session_id)[0] == "ok"


def test_sigterm_ends_the_turn_stores_it_and_closes_with_a_reason(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(LONG, data_dir=data)
    first = asyncio.run(talk(server.ws_url, text="Hello there.", video=False))

    async def shutdown():
        ws, events = await start_long_reply(server.ws_url, first.session_id)
        server.proc.send_signal(signal.SIGTERM)
        code = reason = None
        try:
            async with asyncio.timeout(20):
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))
        except ConnectionClosed:
            pass
        if ws.close_code is not None:
            code, reason = ws.close_code, ws.close_reason
        return events, code, reason

    events, code, reason = asyncio.run(shutdown())
    assert server.proc.wait(30) == 0
    kinds = [e["type"] for e in events]
    interrupt = next(e for e in events if e["type"] == "interrupt")
    assert interrupt["reason"] == "shutdown"
    end = next(e for e in events if e["type"] == "turn_end")
    assert end["interrupted"]
    last = events[-1]
    assert last["type"] == "error" and last["code"] == "shutdown" and last["fatal"]
    assert kinds.index("interrupt") < kinds.index("turn_end") < len(kinds) - 1
    assert code == 1001 and "shutting down" in reason
    integrity, rows = stored_turns(data, first.server_session_id)
    assert integrity == "ok" and len(rows) == 2
    assert rows[1][0].startswith("Tell me a long story") and rows[1][2] == 1 and rows[1][1] == end["heard"]
