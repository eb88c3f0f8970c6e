"""The server: the web page over HTTP and the conversation WebSocket at /ws, on one port.

Models are loaded once (``Services``); each connection gets its own ``MediaTimeline`` and event bus, and at
its first message a ``Session`` from the session factory (avatar/conversation/factory.py).
A problem with one connection (bad message, failed stage) is reported to that client and never takes
the server or the other sessions down.

Hardening lives in its own modules and is called from here: who may connect and see which history
(avatar/net/access.py), per-connection limits (avatar/net/limits.py), Prometheus metrics at /metrics
(avatar/net/metrics.py) and test-only fault injection (avatar/faults.py). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import mimetypes
import signal
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from avatar.config import REPO_ROOT
from avatar.conversation.factory import SessionFactory
from avatar.conversation.session import Session
from avatar.errors import AvatarError, ProtocolError
from avatar.events import ErrorRaised, EventBus, Pong
from avatar.net.access import AccessPolicy, Refusal
from avatar.net.doors import Connection, FrontDoor
from avatar.net.limits import AddressBook, ConnectionGuard, LimitHit, StallWatch
from avatar.net.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from avatar.net.metrics import ServerMetrics
from avatar.net.protocol import parse_audio_message, parse_text_message
from avatar.net.timeline import MediaTimeline
from avatar.runtime.services import Services

log = logging.getLogger(__name__)


class AvatarServer:
    def __init__(self, services: Services, *, doors: Sequence[FrontDoor] = ()):
        self.services = services
        self.doors = list(doors)  # entry points beside the chat page (avatar.net.doors)
        cfg = services.config
        self.web_root = Path(cfg.server.web_root or REPO_ROOT / "web_client").resolve()
        self.sessions: set[Session] = set()
        self.started = time.time()
        self.turns_total = 0
        self.access = AccessPolicy(cfg.server, bind_host=cfg.server.host, data_dir=cfg.data_path)
        self.addresses = AddressBook()  # open connections per client address
        self.factory = SessionFactory(services)
        self.connections: dict[ServerConnection, tuple[MediaTimeline, EventBus]] = {}
        self.metrics = ServerMetrics(sessions=lambda: len(self.sessions), connections=self.addresses.total)
        self.metrics.watch_memory(services.memory)
        self.closing = False

    # -- HTTP ------------------------------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        refusal = None
        if path in ("/ws", "/auth", "/metrics"):  # duplicate headers, and token guesses (backoff per address)
            refusal = self.access.check_request(request.path, request.headers, connection.remote_address,
                                                ws=path != "/metrics", on_wrong=self.metrics.wrong_tokens.inc)
            if refusal is not None and path != "/ws":
                self.metrics.http_refused.inc(path=path, reason=refusal.reason)
        if path == "/ws":
            refusal = self._check_handshake(connection, request, refusal)
            if refusal is not None:
                self.metrics.refused.inc(reason=refusal.reason)
                log.info("refused a connection from %s: %s", connection.remote_address, refusal.reason)
                return self._refuse(refusal)
            return None  # go on with the WebSocket handshake
        if path == "/healthz":
            health = self._health()
            status = http.HTTPStatus.SERVICE_UNAVAILABLE if health["status"] == "unavailable" else http.HTTPStatus.OK
            return self._response(status, json.dumps(health).encode(), "application/json")
        if path == "/auth":  # what /ws would answer, readable by a page (browsers hide refused handshakes)
            if refusal is not None:
                return self._refuse(refusal)
            return self._response(http.HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/metrics":
            if refusal is not None:
                return self._refuse(refusal)
            return self._response(http.HTTPStatus.OK, self.metrics.render().encode(), METRICS_CONTENT_TYPE)
        pages = {page: file for door in self.doors for page, file in door.pages.items()}
        return self._static(pages.get(path, path))

    def _check_handshake(self, connection: ServerConnection, request: Request,
                         refusal: Refusal | None) -> Refusal | None:
        limits = self.services.config.limits
        if refusal is not None:
            return refusal
        if self.closing:
            return Refusal(503, "shutdown", "avatar: the server is shutting down; try again in a moment.\n")
        if max(len(self.sessions), self.addresses.total()) >= self.services.session_limit:
            return Refusal(503, "capacity", f"avatar: this server has its maximum of {self.services.session_limit} "
                           f"conversations ({self.services.capacity.describe()}); try again later.\n")
        address = self.access.client_address(connection.remote_address, request.headers)
        if self.addresses.count(address) >= limits.max_sessions_per_client:
            return Refusal(429, "per_client", f"avatar: {address} already has {limits.max_sessions_per_client} "
                           "conversations open (limits.max_sessions_per_client); close one first.\n")
        return None

    def _refuse(self, refusal: Refusal) -> Response:
        response = self._response(http.HTTPStatus(refusal.status), refusal.body.encode(), "text/plain; charset=utf-8")
        if refusal.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="avatar"'
        if refusal.retry_after:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response

    def _health(self) -> dict:
        services = self.services
        models = {name: getattr(services.models, name, None) is not None for name in ("vad", "asr", "llm", "tts")}
        memory_ok = services.memory.ping()
        storage = services.memory.condition()  # writes: "ok", or "full" / "locked" / "error" with turns queued
        status = "ok" if all(models.values()) and memory_ok and not self.closing else "unavailable"
        health = {
            # Degraded: conversations go on, but new turns are kept in memory until storage works again.
            "status": "degraded" if status == "ok" and storage["state"] != "ok" else status,
            "models": models, "memory": memory_ok, "storage": storage, "video": services.faces is not None,
            "faces": len(services.faces.names) if services.faces is not None else 0,
            "sessions": len(self.sessions), "connections": self.addresses.total(),
            "max_sessions": services.session_limit, "uptime_s": round(time.time() - self.started, 1),
            "token_required": self.access.required,
        }
        for door in self.doors:
            health.update(door.health())
        if self.closing:
            health["closing"] = True
        if services.faults:
            health["faults"] = [str(f) for f in services.faults]
        return health

    def _static(self, path: str) -> Response:
        relative = path.lstrip("/") or "index.html"
        try:  # a NUL byte (ValueError) or an over-long name (OSError) is just a file that is not there
            target = (self.web_root / relative).resolve()
            if not target.is_relative_to(self.web_root) or not target.is_file():
                raise FileNotFoundError(relative)
            body = target.read_bytes()
        except (OSError, ValueError):
            return self._response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            content_type = "text/javascript"  # module scripts and worklets need a JavaScript type
        return self._response(http.HTTPStatus.OK, body, content_type)

    @staticmethod
    def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                           ("Referrer-Policy", "no-referrer")])  # the page's URL may hold a token
        return Response(status.value, status.phrase, headers, body)

    # -- WebSocket ---------------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        services = self.services
        limits = services.config.limits
        guard = ConnectionGuard(limits)
        bus = EventBus()
        timeline = self._new_timeline(ws, bus)
        bus.subscribe(timeline.send_event)
        bus.subscribe(self.metrics.observe)
        bus.subscribe(guard.observe)
        sender = asyncio.create_task(timeline.run())
        session: Session | None = None
        peer = ws.remote_address[0] if ws.remote_address else "?"
        address = self.access.client_address(ws.remote_address, ws.request.headers if ws.request else None)
        self.addresses.add(address)
        self.connections[ws] = (timeline, bus)
        busy = lambda: session is not None and session.busy()  # noqa: E731
        watchdog = asyncio.create_task(self._watch_idle(ws, timeline, bus, guard, busy))
        # Bounded memory whatever the client sends: cut it when it stops reading (avatar/net/limits.py).
        stall = asyncio.create_task(StallWatch(lambda: ws.transport, limits.send_stall_s, limits.max_queued_bytes,
                                               lambda reason: self.metrics.closed.inc(reason="stalled")).run())
        try:
            if self.addresses.count(address) > limits.max_sessions_per_client:  # handshakes that raced
                await self._close(ws, timeline, bus, LimitHit("limits.max_sessions_per_client", f"{address} "
                                  f"already has {limits.max_sessions_per_client} conversations open").error(fatal=True),
                                  1008)
                return
            async for message in ws:
                hit = guard.on_message()
                if hit is not None:
                    self._limited(bus, guard, hit)
                    continue
                if self._too_large(message):
                    await self._close(ws, timeline, bus, LimitHit(
                        "limits.max_message_bytes", f"a message of {self._size(message)} bytes is over the limit "
                        f"of {limits.max_message_bytes} bytes (limits.max_message_bytes); the connection is "
                        "closed. Send audio in frames of 20-100 ms", code="too_large").error(fatal=True), 1009)
                    return
                try:
                    if isinstance(message, bytes):
                        samples = parse_audio_message(message)
                        hit = guard.on_audio(len(samples))
                        if hit is not None:
                            self._limited(bus, guard, hit)
                            continue
                        if session is None:
                            session = self._open_session(timeline, bus, {}, ws)
                        session.on_audio(samples)
                        continue
                    parsed = parse_text_message(message)
                    if session is None:
                        session = self._open_session(timeline, bus, parsed.fields if parsed.type == "hello" else {},
                                                     ws)
                        if parsed.type == "hello":
                            continue
                    if parsed.type == "text" and (hit := guard.on_text_turn()) is not None:
                        self._limited(bus, guard, hit)
                        continue
                    self._dispatch(session, bus, parsed)
                except AvatarError as exc:
                    bus.emit(ErrorRaised(exc.code, exc.message))
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug in one session must not take the server down
            log.exception("session from %s failed", peer)
            try:
                bus.emit(ErrorRaised("internal", "the server hit an internal error in this session; reconnect to "
                                     "continue", fatal=True))
                await timeline.drain(1.0)
            except Exception:  # noqa: BLE001
                pass
        finally:
            if session is not None:
                session.close()  # stores the heard part of a turn in progress
                services.memory.forget_session(session.session_id)  # a session without a turn leaves no row
                self.sessions.discard(session)
                log.info("session %s closed (%s)", session.session_id[:8], peer)
            timeline.close()
            sender.cancel()
            watchdog.cancel()
            stall.cancel()
            self.connections.pop(ws, None)
            self.addresses.remove(address)
            self.metrics.untrack(timeline)

    def _new_timeline(self, ws: ServerConnection, bus: EventBus) -> MediaTimeline:
        services = self.services
        limits = services.config.limits

        def buffered() -> int:
            transport = ws.transport
            return transport.get_write_buffer_size() if transport is not None else 0

        timeline = MediaTimeline(ws.send, sample_rate=services.output_rate, audio_lead_s=limits.audio_lead_s,
                                 emit=bus.emit, on_stall=lambda reason: self._abandon(ws, reason),
                                 send_stall_s=limits.send_stall_s or None, max_queued_bytes=limits.max_queued_bytes,
                                 buffered=buffered, video_buffer_bytes=limits.video_buffer_bytes,
                                 render_timeout_s=limits.render_timeout_s)
        self.metrics.track(timeline)
        return timeline

    # -- limits ------------------------------------------------------------------------------------------
    def _limited(self, bus: EventBus, guard: ConnectionGuard, hit: LimitHit) -> None:
        self.metrics.rate_limited.inc(limit=hit.limit)
        if guard.should_report(hit):
            bus.emit(hit.error())

    def _too_large(self, message: str | bytes) -> bool:
        limit = self.services.config.limits.max_message_bytes
        if isinstance(message, str) and len(message) * 4 <= limit:
            return False  # cannot be over the limit in UTF-8: skip the encoding
        return self._size(message) > limit

    @staticmethod
    def _size(message: str | bytes) -> int:
        return len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))

    async def _close(self, ws: ServerConnection, timeline: MediaTimeline, bus: EventBus, error: ErrorRaised | None,
                     code: int, reason: str | None = None) -> None:
        """Tell the client why (an error event), then close the connection with ``code``."""
        if error is not None:
            bus.emit(error)
            await timeline.drain(1.0)
            reason = reason or error.limit or error.code
        self.metrics.closed.inc(reason=str(reason or code))
        try:
            await asyncio.wait_for(ws.close(code, (reason or "")[:120]), 3.0)
        except (asyncio.TimeoutError, ConnectionClosed):
            if ws.transport is not None:
                ws.transport.abort()

    def _abandon(self, ws: ServerConnection, reason: str) -> None:
        """The client stopped reading (or sending failed): close it without waiting for it."""
        self.metrics.closed.inc(reason="stalled")

        async def close() -> None:
            try:
                await asyncio.wait_for(ws.close(4001, "client stalled: " + reason[:100]), 2.0)
            except Exception:  # noqa: BLE001 - it is not reading: cut the line
                if ws.transport is not None:
                    ws.transport.abort()

        asyncio.get_running_loop().create_task(close())

    async def _watch_idle(self, ws: ServerConnection, timeline: MediaTimeline, bus: EventBus, guard: ConnectionGuard,
                          busy) -> None:
        """Close a connection that sent nothing for ``limits.idle_timeout_s`` (a reply in progress counts
        as activity: a client may listen to a long answer without saying anything)."""
        timeout = self.services.config.limits.idle_timeout_s
        if timeout <= 0:
            return
        while True:
            await asyncio.sleep(max(0.05, min(timeout - guard.idle_for(), 5.0)))
            if guard.idle_for() >= timeout and busy():
                guard.touch()
            elif guard.idle_for() >= timeout:
                error = LimitHit("limits.idle_timeout_s", f"no message from the client for {timeout:g} s "
                                 "(limits.idle_timeout_s); the connection is closed. Reconnect with your "
                                 "session_id and resume_key to go on", code="idle_timeout").error(fatal=True)
                await self._close(ws, timeline, bus, error, 4000, "idle timeout (limits.idle_timeout_s)")
                return

    def _dispatch(self, session: Session, bus: EventBus, message) -> None:
        kind, fields = message.type, message.fields
        limits = self.services.config.limits
        if kind == "text":
            text = fields["text"].strip()
            if not text:
                raise ProtocolError("'text.text' is empty")
            if len(text) > limits.max_text_chars:
                raise ProtocolError(f"text is {len(text)} characters; the limit is {limits.max_text_chars}")
            session.on_text(text)
        elif kind == "interrupt":
            session.interrupt("client")
        elif kind == "playback":
            session.report_playback(fields["position"])
        elif kind == "face":
            self.factory.switch_face(session, fields["name"])
        elif kind == "ping":
            bus.emit(Pong())
        elif kind == "hello":
            raise ProtocolError("'hello' must be the first message of a connection")
        elif not any(door.on_message(session, kind, fields) for door in self.doors):
            raise ProtocolError(f"'{kind}' messages are not served by this server")

    def _open_session(self, timeline: MediaTimeline, bus: EventBus, hello: dict, ws: ServerConnection) -> Session:
        session = self.factory.open(timeline, hello, emit=bus.emit)

        async def close_after_queued(reason: str) -> None:
            await timeline.drain(1.0)  # the events the door queued before it go out first
            try:
                await asyncio.wait_for(ws.close(1000, reason[:120]), 3.0)
            except (asyncio.TimeoutError, ConnectionClosed):
                pass

        def end(reason: str) -> None:
            asyncio.ensure_future(close_after_queued(reason))

        for door in self.doors:
            door.session_opened(session, hello, Connection(bus, end))
        self.sessions.add(session)
        self.metrics.sessions_opened.inc(resumed=str(session.resumed).lower())
        return session

    # -- running ------------------------------------------------------------------------------------
    async def serve_forever(self, host: str, port: int, *, on_ready=None) -> None:
        limits = self.services.config.limits
        if host != self.access.bind_host:
            self.access = AccessPolicy(self.services.config.server, bind_host=host, data_dir=self.services.config.data_path)
        # Messages up to max_message_bytes are read; up to 4x that, they get a too_large error event
        # before the close; beyond, websockets closes the connection (1009) without reading them.
        hard_cap = max(4 * limits.max_message_bytes, limits.max_message_bytes + 65536)
        # No permessage-deflate: nearly every byte sent is JPEG or PCM, which deflate cannot shrink, and
        # compressing them cost a fifth of the event loop's CPU with four video sessions.
        async with serve(self.handle, host, port, process_request=self.process_request, compression=None,
                         max_size=hard_cap, ping_interval=20, ping_timeout=20) as server:
            if on_ready is not None:
                on_ready(server)
            stop = asyncio.get_running_loop().create_future()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
                except (NotImplementedError, RuntimeError):
                    pass
            await stop
            await self.shutdown()
            server.close()
            await server.wait_closed()

    async def shutdown(self) -> None:
        """SIGTERM: refuse new connections, end every turn in progress (what was heard is stored), tell
        every client why, then close the connections with 1001 and a reason."""
        self.closing = True
        log.info("shutting down: closing %d sessions", len(self.sessions))
        for session in list(self.sessions):
            try:
                session.interrupt("shutdown")
            except Exception:  # noqa: BLE001 - one session must not keep the others from closing cleanly
                log.exception("ending session %s", session.session_id[:8])
        grace = self.services.config.limits.shutdown_grace_s
        connections = list(self.connections.items())
        for _, (_, bus) in connections:
            bus.emit(ErrorRaised("shutdown", "the server is shutting down; reconnect in a moment and send your "
                                 "session_id and resume_key to go on", fatal=True))
        if connections:
            await asyncio.wait([asyncio.ensure_future(timeline.drain(grace)) for _, (timeline, _) in connections],
                               timeout=grace)

            async def close(ws: ServerConnection) -> None:
                try:
                    await asyncio.wait_for(ws.close(1001, "server shutting down; reconnect to resume"), 2.0)
                except Exception:  # noqa: BLE001
                    if ws.transport is not None:
                        ws.transport.abort()

            await asyncio.gather(*(close(ws) for ws, _ in connections))
            self.metrics.closed.inc(len(connections), reason="shutdown")
