"""The server: the web page over HTTP and the conversation WebSocket at /ws, on one port.

Models are loaded once (``Runtime``); each connection gets its own ``Session`` and ``Outbound``.
A problem with one connection (bad message, failed stage) is reported to that client and never takes
the server or the other sessions down.
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
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from avatar.errors import AvatarError, FaceError, ProtocolError
from avatar.memory import Turn
from avatar.outbound import Outbound
from avatar.protocol import error_event, parse_audio_message, parse_text_message
from avatar.runtime import REPO_ROOT, Runtime
from avatar.session import Session

log = logging.getLogger(__name__)


class AvatarServer:
    def __init__(self, runtime: Runtime):
        self.rt = runtime
        cfg = runtime.config
        self.web_root = Path(cfg.server.web_root or REPO_ROOT / "web_client").resolve()
        self.sessions: set[Session] = set()
        self.started = time.time()
        self.turns_total = 0

    # -- HTTP ------------------------------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            if len(self.sessions) >= self.rt.config.limits.max_sessions:
                return self._response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      b"too many sessions on this server; try again later\n", "text/plain")
            return None  # go on with the WebSocket handshake
        if path == "/healthz":
            body = json.dumps({"status": "ok", "sessions": len(self.sessions),
                               "uptime_s": round(time.time() - self.started, 1)}).encode()
            return self._response(http.HTTPStatus.OK, body, "application/json")
        return self._static(path)

    def _static(self, path: str) -> Response:
        relative = path.lstrip("/") or "index.html"
        target = (self.web_root / relative).resolve()
        if not target.is_relative_to(self.web_root) or not target.is_file():
            return self._response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            content_type = "text/javascript"  # module scripts and worklets need a JavaScript type
        return self._response(http.HTTPStatus.OK, target.read_bytes(), content_type)

    @staticmethod
    def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
        return Response(status.value, status.phrase, headers, body)

    # -- WebSocket ---------------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        rt = self.rt
        outbound = Outbound(ws.send, sample_rate=rt.output_rate, audio_lead_s=rt.config.limits.audio_lead_s)
        sender = asyncio.create_task(outbound.run())
        session: Session | None = None
        peer = ws.remote_address[0] if ws.remote_address else "?"
        try:
            async for message in ws:
                try:
                    if isinstance(message, bytes):
                        samples = parse_audio_message(message)
                        if session is None:
                            session = self._open_session(outbound, {})
                        session.on_audio(samples)
                        continue
                    parsed = parse_text_message(message)
                    if session is None:
                        session = self._open_session(outbound, parsed.fields if parsed.type == "hello" else {})
                        if parsed.type == "hello":
                            continue
                    self._dispatch(session, parsed)
                except AvatarError as exc:
                    outbound.send_json(error_event(exc.code, exc.message))
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug in one session must not take the server down
            log.exception("session from %s failed", peer)
            try:
                outbound.send_json(error_event("internal", "the server hit an internal error in this "
                                               "session; reconnect to continue", fatal=True))
                await asyncio.wait_for(outbound._send_due(), 1.0)
            except Exception:  # noqa: BLE001
                pass
        finally:
            if session is not None:
                session.close()
                self.sessions.discard(session)
                log.info("session %s closed (%s)", session.session_id[:8], peer)
            outbound.closed = True
            sender.cancel()

    def _dispatch(self, session: Session, message) -> None:
        kind, fields = message.type, message.fields
        limits = self.rt.config.limits
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
            session.out.report_playback(fields["position"])
        elif kind == "face":
            self._set_face(session, fields["name"])
        elif kind == "ping":
            session.out.send_json({"type": "pong"})
        elif kind == "hello":
            raise ProtocolError("'hello' must be the first message of a connection")

    def _open_session(self, outbound: Outbound, hello: dict) -> Session:
        rt = self.rt
        store = rt.memory
        user_id = hello.get("user_id")
        session_id = hello.get("session_id")
        resumed = False
        if session_id is not None:
            if store.session_exists(session_id):
                resumed = True
                user_id = user_id or store.session_user(session_id)
            else:
                outbound.send_json(error_event(
                    "unknown_session", f"session {session_id!r} is unknown to this server (its history may "
                    "have been deleted); a new conversation was started"))
                session_id = None
        session_id = store.create_session(user_id, session_id)
        history: list[Turn] = store.history(session_id=session_id, user_id=user_id)
        face_name = None
        animator = None
        video_wanted = hello.get("video", True)
        if rt.faces is not None and video_wanted:
            face_name = hello.get("face") or rt.config.persona.face
            if face_name not in rt.faces.names:
                if hello.get("face"):
                    outbound.send_json(error_event("bad_face", f"unknown face {face_name!r}; known faces: "
                                                   f"{', '.join(rt.faces.names)}"))
                face_name = rt.faces.names[0] if rt.faces.names else None
            if face_name is not None:
                animator = self._new_animator(face_name)
        video = None
        if animator is not None:
            cfg = rt.config.video
            video = {"fps": cfg.fps, "width": cfg.size, "height": cfg.size, "format": cfg.format}
        outbound.send_json({
            "type": "ready", "session_id": session_id, "user_id": user_id, "resumed": resumed,
            "history": [m for t in history for m in ({"role": "user", "text": t.user_text},
                                                     {"role": "assistant", "text": t.reply_text})],
            "persona": {"name": rt.config.persona.name},
            "audio": {"input_rate": 16000, "output_rate": rt.output_rate},
            "video": video, "face": face_name,
            "faces": list(rt.faces.names) if rt.faces is not None else [],
        })
        session = Session(rt, outbound, session_id=session_id, user_id=user_id, history=history,
                          animator=animator)
        if animator is not None:
            self._attach_video(session)
        self.sessions.add(session)
        log.info("session %s opened (user=%s, resumed=%s, %d turns of history)", session_id[:8], user_id,
                 resumed, len(history))
        return session

    def _new_animator(self, face_name: str):
        from avatar.face import FaceAnimator

        cfg = self.rt.config.video
        return FaceAnimator(self.rt.faces.get(face_name), fps=cfg.fps, sample_rate=self.rt.output_rate)

    def _attach_video(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        out = session.out

        async def render(position: int) -> tuple[int, bytes]:
            animator = session.animator
            jpeg = await loop.run_in_executor(self.rt.render_pool, animator.jpeg_at, position)
            turn = session.turn
            speaking = turn is not None and animator.is_speaking(position)
            return (turn.turn_id if speaking else 0), jpeg

        out.fps = self.rt.config.video.fps
        out.render_frame = render

    def _set_face(self, session: Session, name: str) -> None:
        if self.rt.faces is None or session.animator is None:
            raise FaceError("video is off on this server, so there is no face to switch")
        if name not in self.rt.faces.names:
            raise FaceError(f"unknown face {name!r}; known faces: {', '.join(self.rt.faces.names)}")
        session.animator = self._new_animator(name)

    # -- running ------------------------------------------------------------------------------------
    async def serve_forever(self, host: str, port: int, *, on_ready=None) -> None:
        limits = self.rt.config.limits
        async with serve(self.handle, host, port, process_request=self.process_request,
                         max_size=limits.max_message_bytes, ping_interval=20, ping_timeout=20) as server:
            if on_ready is not None:
                on_ready(server)
            stop = asyncio.get_running_loop().create_future()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
                except (NotImplementedError, RuntimeError):
                    pass
            await stop
            log.info("shutting down: closing %d sessions", len(self.sessions))
            for session in list(self.sessions):
                session.interrupt("shutdown")
            server.close()
            await server.wait_closed()
