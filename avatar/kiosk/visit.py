"""A kiosk visit: who is in front of the screen, greeting them, and forgetting them when they leave.

A kiosk page (web_client/kiosk.html) says ``"kiosk": true`` in its hello. Its session then gets a
``KioskVisit``, which

- watches the camera: the page sends a small JPEG about twice a second (``camera_frame``); the shared face
  detector (avatar/kiosk/presence.py) says whether a face is there. Frames are dropped after the check.
- starts a visit when a face appears (the agent says ``kiosk.greeting``, a fixed line: no LLM wait) or,
  for a kiosk without a camera, when someone speaks (that speech is the first question);
- ends the visit when there has been no face and no speech for ``kiosk.visit_timeout_s`` and the agent
  is not talking: ``Presence(False)`` and ``VisitEnded`` go out, the visit's turns are deleted unless
  ``kiosk.retention = "keep"``, and the connection is closed. The page then opens a fresh conversation
  (no session_id, no user_id), so nothing the visitor said reaches the next one;
- while nobody is there, says ``kiosk.attract_line`` every ``kiosk.attract_interval_s`` (if set), not
  stored in memory.

The page stops sending microphone audio while no visit is on (when it has a camera), so nothing is heard
from an empty room. Counters of visits (Prometheus, avatar/net/metrics.py) are all that a visit leaves behind
by default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from typing import Callable

from avatar.errors import AvatarError, ProtocolError
from avatar.events import ErrorRaised, Event, Presence, TurnEnded, TurnStarted, VisitEnded, VoiceActivity
from avatar.language import Language

log = logging.getLogger(__name__)

GREETING_CUE = "(A visitor walks up to the kiosk.)"  # the user's side of the greeting turn, in memory
ATTRACT_CUE = "(Nobody is at the kiosk.)"
# The default lines in the persona's language (by Language.parse(...).code: "zh-CN" finds "zh"), used while
# kiosk.greeting / kiosk.attract_line keep their (English) defaults; an operator's own line is said as written.
DEFAULT_LINES = {
    "zh": {"greeting": "您好，欢迎光临！请问有什么可以帮您？", "attract_line": "您好！有问题的话，请走近和我说话。"},
}
CAMERA_STALE_S = 5.0  # no frame for this long: the camera is gone; wake on speech instead
WATCH_INTERVAL_S = 0.25


def kiosk_line(config, name: str) -> str:
    """``kiosk.greeting`` or ``kiosk.attract_line``, in the persona's language when left at its default."""
    from avatar.config import KioskConfig

    value = getattr(config.kiosk, name).strip()
    if value == getattr(KioskConfig(), name):
        return DEFAULT_LINES.get(Language.parse(config.persona.language).code, {}).get(name, value)
    return value


class KioskVisit:
    def __init__(self, services, session, *, emit: Callable[[Event], None], end_connection: Callable[[], None],
                 detector=None, clock: Callable[[], float] = time.monotonic):
        self.config = services.config.kiosk
        self.greeting = kiosk_line(services.config, "greeting")
        self.attract_line = kiosk_line(services.config, "attract_line")
        self.memory = services.memory
        self.session = session  # avatar.conversation.session.Session
        self.emit = emit
        self.end_connection = end_connection  # closes the connection after a visit ended
        self._detector = detector  # avatar.kiosk.presence.FaceDetector; the shared one when None
        self.clock = clock
        self.state = "idle"  # "idle" | "visit" | "ended"
        self.started = 0.0
        self.last_face = self.last_speech = self.last_frame = -1e9
        self.last_attract = clock()
        self.turns = 0
        self.detecting = False
        self._detection: asyncio.Task | None = None
        self.broken = False  # the detector failed (not a bad frame): presence falls back to speech
        self.speaking = False  # the visitor is talking now (between the VAD's speech_start and speech_end)
        self.frames = self.frames_skipped = 0
        loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watch_loop())
        if detector is None:  # load the shared detector now, not when the first visitor is already there
            loop.run_in_executor(None, lambda: self.detector)

    @property
    def detector(self):
        if self._detector is None:
            from avatar.kiosk.presence import FaceDetector

            self._detector = FaceDetector.shared()
        return self._detector

    @property
    def camera(self) -> bool:
        return not self.broken and self.clock() - self.last_frame < CAMERA_STALE_S

    # -- inputs -------------------------------------------------------------------------------------------
    def camera_frame(self, fields: dict) -> None:
        """A ``camera_frame`` message: check it for a face, off the event loop (at most one at a time: a
        frame that comes while the previous one is being looked at is skipped)."""
        if self.state == "ended" or self.broken:
            return
        try:
            jpeg = base64.b64decode(fields["jpeg"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'camera_frame.jpeg' must be base64 (a JPEG of the camera, without the "
                                "'data:image/jpeg;base64,' prefix)") from None
        self.last_frame = self.clock()
        self.frames += 1
        if self.detecting:
            self.frames_skipped += 1
            return
        self.detecting = True
        self._detection = asyncio.get_running_loop().create_task(self._detect(jpeg))  # kept: not collected

    async def _detect(self, jpeg: bytes) -> None:
        try:
            detector = self._detector
            if detector is None:  # still loading (the first frames): wait off the event loop
                detector = await asyncio.get_running_loop().run_in_executor(None, lambda: self.detector)
            sighting = await detector.detect_async(jpeg)
        except AvatarError as exc:  # a bad frame: the client hears why
            self.session.emit_error(exc, where="presence")
            return
        except Exception as exc:  # noqa: BLE001 - a broken detector must not end the kiosk
            self.broken = True  # said once; from now on the kiosk wakes on speech, as without a camera
            log.exception("kiosk %s: presence detection failed", self.session.session_id[:8])
            self.emit(ErrorRaised("presence_unavailable", f"presence detection failed ({exc!r}); stop sending "
                                  "camera frames: the kiosk now wakes on speech, as without a camera"))
            return
        finally:
            self.detecting = False
        if sighting.faces and self.state != "ended":
            self.last_face = self.clock()
            if self.state == "idle":
                self._arrive("camera")

    def observe(self, event: Event) -> None:
        """Event-bus subscriber: speech keeps a visit going (and starts one when there is no camera)."""
        if isinstance(event, VoiceActivity):
            self.last_speech = self.clock()
            self.speaking = event.event == "speech_start"
            if self.speaking and self.state == "idle" and not self.camera:
                self._arrive("speech")
        elif isinstance(event, TurnStarted) and event.source == "voice":
            self.last_speech = self.clock()
        elif isinstance(event, TurnEnded) and self.state == "visit" and event.source in ("voice", "text"):
            self.turns += 1

    # -- the visit ----------------------------------------------------------------------------------------
    def _arrive(self, source: str) -> None:
        self.state = "visit"
        self.started = self.clock()
        self.turns = 0
        log.info("kiosk %s: a visitor arrived (%s)", self.session.session_id[:8], source)
        self.emit(Presence(True, source))
        greeting = self.greeting
        if source == "camera" and greeting:
            if self.session.turn is not None:  # an attract line still playing
                self.session.interrupt("presence")
            self.session.say_line(greeting, "presence", cue=GREETING_CUE)

    def _quiet_for(self) -> float:
        return self.clock() - max(self.last_face, self.last_speech, self.started)

    def _end(self, reason: str) -> None:
        duration = self.clock() - self.started
        self.state = "ended"
        log.info("kiosk %s: visit ended (%s) after %.0f s, %d turns", self.session.session_id[:8], reason,
                 duration, self.turns)
        self.emit(Presence(False, "timeout" if reason == "left" else reason))
        self.emit(VisitEnded(reason, duration, self.turns))
        self._forget()

    def _forget(self) -> None:
        if self.config.retention == "keep":
            return
        self.session.conversation.history.clear()
        try:
            self.memory.delete_session(self.session.session_id)
            log.info("kiosk %s: the visit's turns are deleted (kiosk.retention = \"none\")", self.session.session_id[:8])
        except Exception:  # noqa: BLE001 - logged; the next visit starts a new session anyway
            log.exception("kiosk %s: the visit's turns could not be deleted", self.session.session_id[:8])

    async def _watch_loop(self) -> None:
        cfg = self.config
        while self.state != "ended":
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = self.clock()
            if self.session.busy() or self.speaking:  # someone is talking: not a silence, whoever is there
                if self.state == "visit":
                    self.last_speech = max(self.last_speech, now)
                continue
            if self.state == "visit" and self._quiet_for() >= cfg.visit_timeout_s:
                self._end("left")
                self.end_connection()
                return
            if (self.state == "idle" and cfg.attract_interval_s > 0 and self.attract_line
                    and now - self.last_attract >= cfg.attract_interval_s):
                self.last_attract = now
                self.session.say_line(self.attract_line, "attract", cue=ATTRACT_CUE, remember=False)

    def close(self) -> None:
        """The connection is gone (the session closes): a visit in progress ends here."""
        self._watch.cancel()
        if self.state == "visit":
            self._end("disconnected")
        elif self.state == "idle":
            self.state = "ended"
            self._forget()  # an attract-only session: nothing to keep either
