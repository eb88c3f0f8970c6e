"""The kiosk's door into the server: a hello with ``"kiosk": true`` gets a ``KioskVisit``, camera frames go
to it, and ``/healthz`` counts kiosks and visitors. Registered by ``avatar serve`` (avatar/cli.py)."""

from __future__ import annotations

from avatar.conversation.session import Session
from avatar.errors import ProtocolError
from avatar.kiosk.visit import KioskVisit
from avatar.net.doors import Connection


class KioskDoor:
    pages = {"/kiosk": "/kiosk.html"}  # the kiosk page (docs/kiosk.md)

    def __init__(self, services):
        self.services = services
        self.visits: dict[Session, KioskVisit] = {}  # kiosk sessions open now

    def session_opened(self, session: Session, hello: dict, connection: Connection) -> None:
        if not hello.get("kiosk"):
            return
        # presence, greeting, one conversation per visit
        visit = KioskVisit(self.services, session, emit=connection.bus.emit,
                           end_connection=lambda: connection.end("visit ended"))
        connection.bus.subscribe(visit.observe)
        self.visits[session] = visit
        session.on_close(lambda: self._closed(session))

    def _closed(self, session: Session) -> None:
        # After the turn in progress was stored: a kiosk may forget the whole visit.
        self.visits.pop(session).close()

    def on_message(self, session: Session, kind: str, fields: dict) -> bool:
        if kind != "camera_frame":
            return False
        visit = self.visits.get(session)
        if visit is None:
            raise ProtocolError("'camera_frame' is for kiosk pages: send {\"type\": \"hello\", \"kiosk\": true} "
                                "as the connection's first message")
        visit.camera_frame(fields)
        return True

    def health(self) -> dict:
        # kiosk monitoring: kiosk pages connected now, and how many have a visitor in front of them
        return {"kiosks": len(self.visits), "visitors": sum(1 for v in self.visits.values() if v.state == "visit")}
