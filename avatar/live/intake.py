"""Where viewers' comments come from. Each source parses a JSON object {"user": ..., "text": ...} and
hands it to the comment desk (avatar/live/comments.py), which moderates and queues it.

- HTTP: ``POST /comments`` with ``Authorization: Bearer TOKEN`` (or ``?token=TOKEN``); answers 202 with
  {"accepted": true|false, "reason": ...}. The same HTTP port serves ``GET /metrics`` (Prometheus) and
  ``GET /healthz``.
- WebSocket: ``ws://HOST:WS_PORT/comments?token=TOKEN``: one JSON comment per text message; each gets a
  JSON answer like the HTTP one.
- stdin: one JSON comment per line (``--stdin``).
- A platform chat feed: a ``CommentAdapter`` (its ``run`` calls ``submit`` for each message); pass it
  to ``LiveIntake.add_adapter``. No platform adapter ships: their APIs need accounts and keys.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Awaitable, Callable, Protocol
from urllib.parse import parse_qs, urlsplit

from avatar.live.comments import CommentDesk, CommentError, parse_comment
from avatar.net.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024


class CommentAdapter(Protocol):
    """A platform's chat feed. ``name`` labels its comments in logs and metrics."""

    name: str

    async def run(self, submit: Callable[[dict], None]) -> None:
        """Read the feed until cancelled; ``submit({"user": ..., "text": ...})`` for each chat message."""


def _presented_token(path: str, headers) -> str | None:
    auth = headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


class LiveIntake:
    def __init__(self, desk: CommentDesk, *, token: str, metrics: Callable[[], str],
                 health: Callable[[], dict]):
        self.desk = desk
        self.token = token
        self.metrics = metrics
        self.health = health
        self.http: ThreadingHTTPServer | None = None
        self.ws_server = None
        self._tasks: list[asyncio.Task] = []

    def authorised(self, path: str, headers) -> bool:
        presented = _presented_token(path, headers)
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def take(self, obj, source: str) -> dict:
        """Parse and hand one comment to the desk; the answer a source sends back."""
        try:
            comment = parse_comment(obj, source)
        except CommentError as exc:
            return {"accepted": False, "reason": "bad_comment", "message": exc.message}
        verdict = self.desk.submit(comment)
        return {"accepted": verdict.accepted, "reason": verdict.reason}

    def take_line(self, line: str, source: str) -> dict:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"accepted": False, "reason": "bad_comment",
                    "message": f'not JSON ({exc.msg}): send {{"user": "name", "text": "comment"}}'}
        return self.take(obj, source)

    # -- HTTP ------------------------------------------------------------------------------------------
    def start_http(self, host: str, port: int) -> int:
        intake = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "avatar-live"

            def log_message(self, fmt, *args) -> None:  # requests are logged by what they do, not here
                log.debug("http: " + fmt, *args)

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict) -> None:
                self._answer(status, (json.dumps(obj, ensure_ascii=False) + "\n").encode())

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = urlsplit(self.path).path
                if path == "/metrics":
                    self._answer(200, intake.metrics().encode(), METRICS_CONTENT_TYPE)
                elif path == "/healthz":
                    self._json(200, intake.health())
                else:
                    self._json(404, {"error": "not_found", "message": "GET /metrics, GET /healthz or "
                                     "POST /comments (JSON {\"user\", \"text\"}, Authorization: Bearer TOKEN)"})

            def do_POST(self) -> None:  # noqa: N802
                if urlsplit(self.path).path != "/comments":
                    self._json(404, {"error": "not_found", "message": "comments go to POST /comments"})
                    return
                if not intake.authorised(self.path, self.headers):
                    self._json(401, {"error": "token", "message": "send the comment token that `avatar live` "
                                     "printed: 'Authorization: Bearer TOKEN' or ?token=TOKEN"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 < length <= MAX_BODY_BYTES:
                    self._json(400 if length <= 0 else 413, {"error": "bad_comment", "message":
                               f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes with a Content-Length"})
                    return
                body = self.rfile.read(length).decode("utf-8", "replace")
                answer = intake.take_line(body, "http")
                self._json(202 if answer.get("reason") != "bad_comment" else 400, answer)

        self.http = ThreadingHTTPServer((host, port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="live-http", daemon=True).start()
        return self.http.server_address[1]

    # -- WebSocket -------------------------------------------------------------------------------------
    async def start_ws(self, host: str, port: int) -> int:
        from websockets.asyncio.server import serve
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        def check(connection, request):
            if urlsplit(request.path).path != "/comments":
                return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]),
                                b"the comment feed is at /comments\n")
            if not self.authorised(request.path, request.headers):
                return Response(401, "Unauthorized", Headers([("Content-Type", "text/plain")]),
                                b"send the comment token: ?token=TOKEN or Authorization: Bearer TOKEN\n")
            return None

        async def feed(ws) -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    answer = {"accepted": False, "reason": "bad_comment", "message": "send text messages (JSON)"}
                else:
                    answer = self.take_line(message, "ws")
                await ws.send(json.dumps(answer, ensure_ascii=False))

        self.ws_server = await serve(feed, host, port, process_request=check, max_size=MAX_BODY_BYTES)
        return self.ws_server.sockets[0].getsockname()[1]

    # -- stdin and adapters ----------------------------------------------------------------------------
    def start_stdin(self, loop: asyncio.AbstractEventLoop, stream=None) -> None:
        def take(line: str) -> None:
            if line.strip():
                answer = self.take_line(line, "stdin")
                if not answer["accepted"] and answer["reason"] == "bad_comment":
                    log.warning("stdin: %s", answer.get("message"))

        def read() -> None:
            if stream is not None:
                for line in stream:
                    take(line)
                return
            # Raw reads of fd 0, not sys.stdin: a daemon thread blocked inside the buffered reader makes
            # the interpreter abort at exit ("could not acquire lock for <stdin>").
            pending = b""
            while chunk := os.read(0, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    take(line.decode("utf-8", "replace"))
            take(pending.decode("utf-8", "replace"))

        threading.Thread(target=read, name="live-stdin", daemon=True).start()

    def add_adapter(self, adapter: CommentAdapter) -> Awaitable:
        async def run() -> None:
            try:
                await adapter.run(lambda obj: self.take(obj, adapter.name))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken feed must not end the show
                log.exception("comment adapter %s failed; the show goes on without it", adapter.name)

        task = asyncio.ensure_future(run())
        self._tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws_server is not None:
            self.ws_server.close()
        if self.http is not None:
            threading.Thread(target=self.http.shutdown, daemon=True).start()
