"""Issue 5, hardening: access (tokens, origins, per-session keys), limits, injected faults in a real server,
metrics and health. Small in-process tests first (fake models, fake clock), then a few against a real
``avatar serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from avatar.config import load_config
from avatar.conversation.admission import admit, secret_hash
from avatar.conversation.memory import MemoryStore, Turn
from avatar.errors import ConfigError
from avatar.events import ErrorRaised, Interrupted, TurnEnded, TurnStarted, to_wire
from avatar.net.access import AccessPolicy, is_loopback_host
from avatar.net.limits import ConnectionGuard, SlidingWindow, TokenBucket
from avatar.net.metrics import ServerMetrics, parse_text_format
from avatar.tools.client import talk
from tests.conftest import FAST

NO_VIDEO = {"video.enabled": False}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def server_cfg(**kw):
    return load_config(None, {"server": kw}).server


def headers(**kw) -> Headers:
    return Headers([(k.replace("_", "-"), v) for k, v in kw.items()])


# -- access: tokens, origins, hosts ------------------------------------------------------------------------
def test_token_is_required_only_beyond_localhost_and_the_generated_one_is_kept(tmp_path):
    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost") and is_loopback_host("::1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("") and not is_loopback_host("10.0.0.2")
    assert not AccessPolicy(server_cfg(), bind_host="127.0.0.1", data_dir=tmp_path).required
    policy = AccessPolicy(server_cfg(), bind_host="0.0.0.0", data_dir=tmp_path)
    assert policy.required and policy.generated and len(policy.generated) >= 24
    assert policy.page_url("h", 1) == f"http://h:1/?token={policy.generated}"
    token_file = tmp_path / "server_token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert AccessPolicy(server_cfg(), bind_host="0.0.0.0", data_dir=tmp_path).generated == policy.generated
    assert AccessPolicy(server_cfg(require_token="always"), bind_host="127.0.0.1", data_dir=tmp_path).required
    assert not AccessPolicy(server_cfg(require_token="never"), bind_host="0.0.0.0", data_dir=tmp_path).required
    configured = AccessPolicy(server_cfg(tokens=["kiosk-token-123456"]), bind_host="0.0.0.0", data_dir=tmp_path)
    assert configured.generated is None
    with pytest.raises(ConfigError, match="require_token"):
        AccessPolicy(server_cfg(require_token="sometimes"), bind_host="127.0.0.1")
    with pytest.raises(ConfigError, match="at least"):
        AccessPolicy(server_cfg(tokens=["short"]), bind_host="0.0.0.0")
    env = AccessPolicy(server_cfg(), bind_host="0.0.0.0", environ={"AVATAR_TOKENS": "from-the-env-0001"})
    assert env.generated is None and env.token_ok("/ws?token=from-the-env-0001", headers())


def test_handshake_checks_token_origin_and_host(tmp_path):
    policy = AccessPolicy(server_cfg(tokens=["kiosk-token-123456", "phone-token-654321"],
                                     allowed_origins=["https://kiosk.example.org"]), bind_host="0.0.0.0")
    h = headers(Host="avatar.lan:8765")
    assert policy.check_ws("/ws", h).status == 401
    assert "?token=" in policy.check_ws("/ws", h).body
    wrong = policy.check_ws("/ws?token=nope-nope-nope", h)
    assert wrong.status == 401 and "not valid" in wrong.body
    assert policy.check_ws("/ws?token=phone-token-654321", h) is None
    assert policy.check_ws("/ws", headers(Host="x", Authorization="Bearer kiosk-token-123456")) is None
    ok = "/ws?token=kiosk-token-123456"
    assert policy.check_ws(ok, headers(Host="avatar.lan:8765", Origin="http://avatar.lan:8765")) is None
    assert policy.check_ws(ok, headers(Host="avatar.lan", Origin="https://avatar.lan:443")) is None
    assert policy.check_ws(ok, headers(Host="avatar.lan:8765", Origin="http://localhost:3000")) is None
    assert policy.check_ws(ok, headers(Host="avatar.lan:8765", Origin="https://kiosk.example.org")) is None
    evil = policy.check_ws(ok, headers(Host="avatar.lan:8765", Origin="https://evil.example"))
    assert evil.status == 403 and "server.allowed_origins" in evil.body
    assert policy.check_ws(ok, headers(Host="avatar.lan:8765", Origin="null")).status == 403
    # A localhost server without a token answers to localhost names only (DNS rebinding).
    local = AccessPolicy(server_cfg(), bind_host="127.0.0.1")
    assert local.check_ws("/ws", headers(Host="localhost:8765")) is None
    assert local.check_ws("/ws", headers(Host="127.0.0.1:8765", Origin="http://127.0.0.1:8765")) is None
    rebound = local.check_ws("/ws", headers(Host="evil.example:8765", Origin="http://evil.example:8765"))
    assert rebound.status == 403 and rebound.reason == "host"
    proxied = AccessPolicy(server_cfg(trust_forwarded_for=True), bind_host="127.0.0.1")
    assert proxied.client_address(("127.0.0.1", 5), headers(X_Forwarded_For="1.2.3.4, 10.0.0.9")) == "10.0.0.9"
    assert local.client_address(("127.0.0.1", 5), headers(X_Forwarded_For="1.2.3.4")) == "127.0.0.1"


def test_sessions_and_users_need_their_keys(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite3")
    first = admit(store, {"user_id": "alice"})
    assert not first.resumed and first.resume_key and first.user_key and not first.errors
    assert first.name == "alice" and first.user_id != "alice"  # stored under an identity made with the key
    store.add_turn(first.session_id, first.user_id, Turn("my PIN is 1234", "noted"), "noted")
    # Nobody else gets alice's history by naming her, nor her session by its id. Naming her without her
    # key starts a separate memory, answered exactly like a name nobody used (issue 11: no oracle).
    thief = admit(store, {"user_id": "alice"})
    assert not thief.errors and thief.user_key != first.user_key and thief.user_id != first.user_id
    assert store.history(session_id=thief.session_id, user_id=thief.user_id) == []
    assert [c for c, _ in admit(store, {"user_id": "alice", "user_key": "guess"}).errors] == ["bad_user_key"]
    assert [c for c, _ in admit(store, {"user_id": "nobody", "user_key": "guess"}).errors] == ["bad_user_key"]
    thief2 = admit(store, {"session_id": first.session_id, "resume_key": "guess"})
    assert [c for c, _ in thief2.errors] == ["unknown_session"] and thief2.session_id != first.session_id
    assert admit(store, {"session_id": "no-such", "resume_key": "x"}).errors[0][0] == "unknown_session"
    # With the keys: the session resumes, the user's history follows her into a new session.
    back = admit(store, {"session_id": first.session_id, "resume_key": first.resume_key})
    assert back.resumed and back.user_id == first.user_id and back.name == "alice"
    assert back.resume_key == first.resume_key
    again = admit(store, {"user_id": "alice", "user_key": first.user_key})
    assert not again.errors and again.user_key == first.user_key
    assert store.history(session_id=again.session_id, user_id=again.user_id)[0].user_text == "my PIN is 1234"
    # Only hashes are stored.
    assert store.flush()
    rows = store._db.execute("SELECT key_hash FROM sessions UNION ALL SELECT key_hash FROM users").fetchall()
    stored = {r[0] for r in rows}
    assert secret_hash(first.resume_key) in stored and secret_hash(first.user_key) in stored
    assert first.resume_key not in stored and first.user_key not in stored
    store.close()


def test_old_databases_get_the_key_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT, created REAL NOT NULL, "
                     "updated REAL NOT NULL); INSERT INTO sessions VALUES ('old', NULL, 1, 1);")
    db.close()
    store = MemoryStore(path)
    assert store.session_exists("old") and store.session_key_hash("old") is None
    assert admit(store, {"session_id": "old"}).errors[0][0] == "unknown_session"  # no key: no resume
    assert store.integrity_ok()
    store.close()


# -- limits ------------------------------------------------------------------------------------------------
def test_token_bucket_and_window():
    clock = FakeClock()
    bucket = TokenBucket(100, 50, clock)
    assert bucket.take(50) and not bucket.take(1)
    clock.now += 0.1
    assert bucket.take(10) and not bucket.take(1)
    window = SlidingWindow(2, 60, clock)
    window.add(), window.add()
    assert window.full()
    clock.now += 61
    assert not window.full()


def test_guard_allows_real_time_audio_and_refuses_floods():
    clock = FakeClock()
    limits = load_config(None, {"limits": {"turns_per_minute": 2}}).limits
    guard = ConnectionGuard(limits, clock)
    for _ in range(500):  # 10 s of 20 ms frames, in real time
        clock.now += 0.02
        assert guard.on_audio(320) is None and guard.on_message() is None
    hit = None
    for _ in range(200):  # 4 s of audio at once (2 s of burst allowed)
        hit = hit or guard.on_audio(320)
    assert hit is not None and hit.limit == "limits.audio_rate_slack" and "real time" in hit.message
    event = to_wire(hit.error())[0]
    assert event["code"] == "rate_limited" and event["limit"] == "limits.audio_rate_slack"
    assert guard.should_report(hit) and not guard.should_report(hit)
    clock.now += 3
    assert guard.should_report(hit)
    guard.observe(TurnStarted(1, "hi", "text"))
    assert guard.on_text_turn() is None
    guard.observe(TurnStarted(2, "hi", "voice"))
    assert guard.on_text_turn().limit == "limits.turns_per_minute"
    assert guard.on_audio(320).limit == "limits.turns_per_minute"  # no spoken turns either
    clock.now += 61
    assert guard.on_text_turn() is None
    flood = [guard.on_message() for _ in range(500)]
    assert flood[0] is None and flood[-1].limit == "limits.messages_per_second"


# -- metrics -----------------------------------------------------------------------------------------------
def test_metrics_text_format():
    metrics = ServerMetrics(sessions=lambda: 3)
    metrics.observe(TurnEnded(1, "voice", "hi", "hi", False, 100, {
        "endpoint": 250.0, "asr_final": 40.0, "llm_first_token": 400.0, "tts_first_audio": 600.0, "audio_out": 700.0,
        "first_frame": None}))
    metrics.observe(TurnEnded(2, "text", "ok", "ok", False, 100, {}, ["faq.csv"], knowledge_ms=3.5))
    metrics.observe(Interrupted(1, 0, "barge_in"))
    metrics.observe(ErrorRaised("bad_message", "no"))
    metrics.errors.inc(code='we"ird\\')
    text = metrics.render()
    values = parse_text_format(text)
    assert values["avatar_sessions"] == 3
    assert values['avatar_turns_total{source="voice"}'] == 1
    # Only the turn with a knowledge base counts in its histogram: 3.5 ms, between the 2 and 5 ms buckets.
    assert values["avatar_knowledge_seconds_count"] == 1
    assert values['avatar_knowledge_seconds_bucket{le="0.002"}'] == 0
    assert values['avatar_knowledge_seconds_bucket{le="0.005"}'] == 1
    assert values['avatar_interruptions_total{reason="barge_in"}'] == 1
    assert values['avatar_errors_total{code="bad_message"}'] == 1
    assert values['avatar_stage_latency_seconds_bucket{stage="llm_first_token",le="0.5"}'] == 1
    assert values['avatar_stage_latency_seconds_bucket{stage="llm_first_token",le="0.3"}'] == 0
    assert values['avatar_stage_latency_seconds_count{stage="endpoint"}'] == 1
    assert 'stage="first_frame"' not in text
    assert values["process_resident_memory_bytes"] > 10e6
    assert 'code="we\\"ird\\\\"' in text
    assert "# TYPE avatar_stage_latency_seconds histogram" in text and text.endswith("\n")


# -- against a real server ---------------------------------------------------------------------------------
def _status(exc_info) -> tuple[int, str]:
    response = exc_info.value.response
    return response.status_code, response.body.decode()


def test_tokens_origins_metrics_over_http(server_factory):
    server = server_factory({**FAST, **NO_VIDEO, "server.require_token": "always"})
    line = next(l for l in server.log().splitlines() if "is ready" in l)
    token = line.split("?token=")[1].split()[0]
    assert (server.data_dir / "server_token").read_text().strip() == token

    async def scenario():
        results = {}
        with pytest.raises(InvalidStatus) as missing:
            async with connect(server.ws_url):
                pass
        results["missing"] = _status(missing)
        with pytest.raises(InvalidStatus) as wrong:
            async with connect(server.ws_url + "?token=not-the-token"):
                pass
        results["wrong"] = _status(wrong)
        with pytest.raises(InvalidStatus) as origin:
            async with connect(f"{server.ws_url}?token={token}", origin="https://evil.example"):
                pass
        results["origin"] = _status(origin)
        async with connect(f"{server.ws_url}?token={token}", origin=f"http://127.0.0.1:{server.port}") as ws:
            await ws.send(json.dumps({"type": "ping"}))
            results["ready"] = json.loads(await ws.recv())
        results["talk"] = await talk(f"{server.ws_url}?token={token}", text="Say hi.", video=False)
        return results

    results = asyncio.run(scenario())
    assert results["missing"][0] == 401 and "?token=" in results["missing"][1]
    assert results["wrong"][0] == 401 and "not valid" in results["wrong"][1]
    assert results["origin"][0] == 403 and "allowed_origins" in results["origin"][1]
    assert results["ready"]["type"] == "ready" and results["talk"].reply
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.http_url + "/metrics")
    assert err.value.code == 401
    err.value.close()
    with urllib.request.urlopen(f"{server.http_url}/metrics?token={token}") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        values = parse_text_format(response.read().decode())
    assert values['avatar_connections_refused_total{reason="token"}'] == 2
    assert values['avatar_connections_refused_total{reason="origin"}'] == 1
    assert values['avatar_turns_total{source="text"}'] == 1
    assert values['avatar_stage_latency_seconds_count{stage="llm_first_token"}'] == 1
    with pytest.raises(urllib.error.HTTPError) as err:  # a page can read why /ws would refuse it
        urllib.request.urlopen(server.http_url + "/auth?token=wrong-wrong-wrong")
    assert err.value.code == 401 and b"not valid" in err.value.read()
    err.value.close()
    with urllib.request.urlopen(f"{server.http_url}/auth?token={token}") as response:
        assert response.status == 200 and response.headers["Referrer-Policy"] == "no-referrer"
    with urllib.request.urlopen(server.http_url + "/healthz") as response:  # open, for load balancers
        health = json.loads(response.read())
    assert health["status"] == "ok" and all(health["models"].values()) and health["token_required"]


def test_limits_over_a_real_socket(server_factory):
    server = server_factory({**FAST, **NO_VIDEO, "limits.turns_per_minute": 2, "limits.idle_timeout_s": 2.0,
                             "limits.max_sessions_per_client": 3, "limits.max_sessions": 8,
                             "limits.messages_per_second": 50.0,
                             "limits.message_burst": 60, "limits.max_message_bytes": 65536})

    async def events_until(ws, predicate, timeout):
        seen = []
        try:
            async with asyncio.timeout(timeout):
                async for message in ws:
                    if isinstance(message, str):
                        seen.append(json.loads(message))
                        if predicate(seen[-1]):
                            break
        except TimeoutError:
            pass
        return seen

    def limited(limit):
        return lambda e: e["type"] == "error" and e.get("limit") == limit

    async def scenario():
        out = {}
        async with connect(server.ws_url) as a, connect(server.ws_url) as b, connect(server.ws_url) as c:
            with pytest.raises(InvalidStatus) as fourth:  # per client address
                async with connect(server.ws_url):
                    pass
            out["fourth"] = _status(fourth)
            for _ in range(3):  # 4.5 s of audio in one go: over the 2 s burst
                await a.send(b"\x00\x00" * 24000)
            out["audio"] = await events_until(a, limited("limits.audio_rate_slack"), 10)
            for _ in range(150):
                await b.send(json.dumps({"type": "ping"}))
            out["flood"] = await events_until(b, limited("limits.messages_per_second"), 10)
            await asyncio.sleep(1.0)
            await b.send(json.dumps({"type": "ping"}))  # b is still served after its flood
            out["pong"] = await events_until(b, lambda e: e["type"] == "pong", 10)
            for text in ("One.", "Two.", "Three."):
                await c.send(json.dumps({"type": "text", "text": text}))
            out["turns"] = await events_until(c, limited("limits.turns_per_minute"), 30)
        async with connect(server.ws_url) as idle:
            out["idle"] = await events_until(idle, lambda e: e.get("code") == "idle_timeout", 10)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(idle.recv(), 5)
            out["idle_close"] = closed.value.rcvd.code
        async with connect(server.ws_url, max_size=None) as big:
            await big.send(b"\x00" * 70000)
            out["big"] = await events_until(big, lambda e: e.get("code") == "too_large", 10)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(big.recv(), 5)
            out["big_close"] = closed.value.rcvd.code
        out["after"] = await talk(server.ws_url, text="Say hello.", video=False)
        return out

    out = asyncio.run(scenario())
    assert out["fourth"][0] == 429 and "max_sessions_per_client" in out["fourth"][1]
    assert "real time" in out["audio"][-1]["message"]
    assert out["flood"][-1]["code"] == "rate_limited" and any(e["type"] == "pong" for e in out["flood"])
    assert "limits.turns_per_minute" in out["turns"][-1]["message"]
    assert sum(e["type"] == "turn_start" for e in out["turns"]) == 2
    assert out["pong"][-1] == {"type": "pong"}
    idle = out["idle"][-1]
    assert idle["fatal"] and idle["limit"] == "limits.idle_timeout_s" and out["idle_close"] == 4000
    big = out["big"][-1]
    assert big["fatal"] and big["limit"] == "limits.max_message_bytes" and out["big_close"] == 1009
    assert out["after"].reply and server.proc.poll() is None


def test_injected_faults_in_a_real_server_end_one_turn_and_others_go_on(server_factory, monkeypatch):
    monkeypatch.setenv("AVATAR_FAULTS", "llm:hang_mid:60@HANGME,llm:raise@BOOM")
    server = server_factory({**FAST, **NO_VIDEO, "limits.stage_timeout_s": 30.0, "limits.item_timeout_s": 6.0})
    assert "fault injection is ON" in server.log()

    async def broken():
        events = []
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "video": False}))
            for text in ("HANGME: tell me a long story about ships.", "Say BOOM.", "Say hello."):
                await ws.send(json.dumps({"type": "text", "text": text}))
                async with asyncio.timeout(90):
                    async for message in ws:
                        if isinstance(message, str):
                            events.append(json.loads(message))
                            if events[-1]["type"] == "turn_end":
                                break
        return events

    async def good():
        replies = []
        for text in ("What is the capital of Italy?", "Name a fruit."):
            replies.append((await talk(server.ws_url, text=text, video=False, timeout=120)).reply)
        return replies

    async def both():
        return await asyncio.gather(broken(), good())

    events, replies = asyncio.run(both())
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["stage_failed", "stage_failed"], [e["message"] for e in errors]
    assert "stalled" in errors[0]["message"] and "injected fault" in errors[1]["message"]
    ends = [e for e in events if e["type"] == "turn_end"]
    assert len(ends) == 3 and ends[2]["reply"] and not ends[2]["interrupted"]
    assert all(replies)
    with urllib.request.urlopen(server.http_url + "/healthz") as response:
        assert json.loads(response.read())["faults"] == ["llm:hang_mid:60@HANGME", "llm:raise@BOOM"]
    with urllib.request.urlopen(server.http_url + "/metrics") as response:
        values = parse_text_format(response.read().decode())
    assert values['avatar_errors_total{code="stage_failed"}'] == 2


def test_faults_are_off_without_the_switch(monkeypatch):
    monkeypatch.delenv("AVATAR_FAULTS", raising=False)
    from avatar.faults import faults_from_env

    assert faults_from_env({}) == [] and faults_from_env({"AVATAR_FAULTS": " "}) == []
