"""Front doors that ride on the server's WebSocket beside the browser chat (the kiosk, docs/kiosk.md).

The server knows nothing about any of them: it calls each registered door when a session opens, for every
message type it does not handle itself, and for its ``/healthz`` report. A door keeps its own per-session
state and registers a close callback on the session (``Session.on_close``) to clean it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from avatar.conversation.session import Session
from avatar.events import EventBus


@dataclass(frozen=True)
class Connection:
    """What a door may do with the connection its session runs on."""

    bus: EventBus  # the connection's events: emit to the client, subscribe to what happens
    end: Callable[[str], None]  # send what is queued, then close the connection normally with this reason


class FrontDoor(Protocol):
    pages: dict[str, str]  # extra page paths -> files under web_client/ ("/kiosk" -> "/kiosk.html")

    def session_opened(self, session: Session, hello: dict, connection: Connection) -> None:
        """A session opened with ``hello`` (empty for a client that sent audio first); take it or leave it."""

    def on_message(self, session: Session, kind: str, fields: dict) -> bool:
        """A message the server does not handle: True when this door did; ``ProtocolError`` says why not."""

    def health(self) -> dict:
        """Fields for ``/healthz``."""
