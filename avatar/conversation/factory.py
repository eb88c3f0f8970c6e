"""Opening a session: admission (whose history), the face and its video, the ``ready`` message.

The server only speaks HTTP and WebSocket; it hands a new connection's first message (``hello``) here and
gets a ``Session`` back. Other front doors (a livestream show, a kiosk) open sessions the same way.
"""

from __future__ import annotations

import logging
from typing import Callable

from avatar.conversation.admission import admit
from avatar.conversation.session import Session
from avatar.conversation.turns import Conversation
from avatar.errors import FaceError
from avatar.events import ErrorRaised, Event, Ready
from avatar.face.animator import build_animator
from avatar.media.audio import INPUT_SAMPLE_RATE
from avatar.media.face_video import FaceVideo

log = logging.getLogger(__name__)


class SessionFactory:
    def __init__(self, services):
        self.services = services

    def animator(self, face_name: str):
        """A fresh animator of a known face (``FaceError`` for an unknown one)."""
        faces = self.services.faces
        if faces is None:
            raise FaceError("video is off on this server, so there is no face to switch")
        if face_name not in faces.names:
            raise FaceError(f"unknown face {face_name!r}; known faces: {', '.join(faces.names)}")
        return build_animator(faces.get(face_name), sample_rate=self.services.output_rate,
                              video=self.services.config.video, faults=self.services.faults)

    def _face(self, hello: dict, emit: Callable[[Event], None]) -> FaceVideo | None:
        services = self.services
        video_wanted = hello.get("video", True)
        controls_wanted = hello.get("controls", False)
        faces = services.faces
        if faces is None or not (video_wanted or controls_wanted) or not faces.names:
            return None
        face_name = hello.get("face") or services.config.persona.face
        if face_name not in faces.names:
            if hello.get("face"):
                emit(ErrorRaised("bad_face", f"unknown face {face_name!r}; known faces: {', '.join(faces.names)}"))
            face_name = faces.names[0]
        face = FaceVideo(self.animator(face_name), fps=services.config.video.fps, render_pool=services.render_pool,
                         frames=bool(video_wanted), controls=bool(controls_wanted), emit=emit, name=face_name)
        return face

    def open(self, timeline, hello: dict, *, emit: Callable[[Event], None]) -> Session:
        """A session for a connection whose media go to ``timeline``; ``ready`` is sent first."""
        services = self.services
        store = services.memory
        admission = admit(store, hello)  # resume only with the session's resume_key (avatar/net/access.py)
        for code, message in admission.errors:
            emit(ErrorRaised(code, message))
        history = store.history(session_id=admission.session_id, user_id=admission.user_id)
        face = self._face(hello, emit)
        cfg = services.config.video
        video = controls = None
        if face is not None and face.frames:
            video = {"fps": cfg.fps, "width": cfg.size, "height": cfg.size, "format": cfg.format}
        if face is not None and face.controls:
            from avatar.face.controls import CONTROLS

            controls = {"fps": cfg.fps, "ranges": {name: list(r) for name, r in CONTROLS.items()}}
        emit(Ready(
            # The id the client gave; admission.user_id is the storage identity (avatar/net/access.py).
            session_id=admission.session_id, resume_key=admission.resume_key, user_id=admission.name,
            user_key=admission.user_key, resumed=admission.resumed,
            history=[m for t in history for m in ({"role": "user", "text": t.user_text},
                                                  {"role": "assistant", "text": t.heard_text})],
            persona={"name": services.config.persona.name, "language": services.config.persona.language},
            audio={"input_rate": INPUT_SAMPLE_RATE, "output_rate": services.output_rate},
            video=video, controls=controls, face=face.name if face is not None else None,
            faces=list(services.faces.names) if services.faces is not None else [],
            voice=services.speech.voice_for(face.name if face is not None else services.config.persona.face),
        ))
        conversation = Conversation(admission.session_id, admission.user_id, history)
        denoiser = None
        if services.config.audio.denoise != "off":  # per session: the model keeps state across frames
            from avatar.media.denoise import make_denoiser

            denoiser = make_denoiser(services.config.audio)
        session = Session(services, timeline, emit=emit, conversation=conversation, face=face,
                          resumed=admission.resumed, denoiser=denoiser)
        timeline.attach_video(face)
        log.info("session %s opened (user=%s, resumed=%s, %d turns of history)", admission.session_id[:8],
                 admission.user_id, admission.resumed, len(history))
        return session

    def switch_face(self, session: Session, name: str) -> None:
        if session.face is None:
            raise FaceError("video is off on this server, so there is no face to switch")
        session.set_face(self.animator(name))
        session.face.name = name
