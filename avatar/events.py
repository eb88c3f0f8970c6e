"""What happens in a conversation, as typed events, and the one place where they become wire JSON.

Sessions, the media timeline and the server emit these on a per-connection ``EventBus``. Subscribers
see the typed objects: the browser socket (``to_wire``), the metrics (avatar/net/metrics.py), the turn-rate
limit (avatar/net/limits.py), and any new output (an RTMP show, a kiosk log). Renaming a wire field changes
``to_wire`` only; no subscriber parses the JSON sent to the browser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Union

log = logging.getLogger(__name__)

# The stages of a reply, in pipeline order, each measured from the end of the user's speech (or a typed
# text's arrival) to the stage's first output. Wire fields are "<stage>_ms" on the latency event.
LATENCY_STAGES = ("endpoint", "asr_final", "llm_first_token", "first_clause", "tts_first_audio",
                  "audio_out", "first_frame")


@dataclass(frozen=True)
class Ready:
    """The connection's session is open: ids, keys, history and the media it will get."""

    session_id: str
    resume_key: str | None
    user_id: str | None
    user_key: str | None
    resumed: bool
    history: list[dict]  # [{"role": "user"|"assistant", "text": ...}]
    persona: dict
    audio: dict
    video: dict | None
    controls: dict | None
    face: str | None
    faces: list[str]
    voice: str = ""  # the voice the session speaks with (avatar.models.voices)


@dataclass(frozen=True)
class StateChanged:
    state: str  # "listening" | "thinking" | "speaking"


@dataclass(frozen=True)
class VoiceActivity:
    event: str  # "speech_start" | "speech_end"
    t_ms: float  # position in the session's microphone input


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool


@dataclass(frozen=True)
class TurnStarted:
    turn_id: int
    user_text: str
    source: str  # "voice" | "text" (later: "script", "comment", "presence")


@dataclass(frozen=True)
class ReplyDelta:
    turn_id: int
    text: str


@dataclass(frozen=True)
class Interrupted:
    turn_id: int
    position: int  # output timeline sample where the reply was cut
    reason: str  # "barge_in" | "text" | "client" | "shutdown"


@dataclass(frozen=True)
class TurnEnded:
    turn_id: int
    source: str
    reply: str  # everything generated
    heard: str  # what the listener heard (reply cut at the interruption)
    interrupted: bool
    audio_samples: int
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # stage (LATENCY_STAGES) -> ms
    sources: list[str] = field(default_factory=list)  # knowledge files the reply could draw on
    knowledge_ms: float | None = None  # time in the knowledge base (a duration, not a stage); None: none


@dataclass(frozen=True)
class FaceControls:
    position: int
    turn_id: int
    values: dict[str, float]


@dataclass(frozen=True)
class ErrorRaised:
    code: str
    message: str
    fatal: bool = False
    limit: str | None = None  # the setting that was hit, for limit errors


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Presence:
    """A kiosk's visitor arrived (``present``) or left (avatar/kiosk/visit.py)."""

    present: bool
    source: str  # "camera" (a face was seen) | "speech" (no camera: woken by speech) | "timeout"


@dataclass(frozen=True)
class VisitEnded:
    """A kiosk visit is over; the connection closes next and the page opens a fresh conversation."""

    reason: str  # "left" (no face, no speech for kiosk.visit_timeout_s) | "disconnected"
    duration_s: float
    turns: int  # turns answered during the visit


Event = Union[Ready, StateChanged, VoiceActivity, Transcript, TurnStarted, ReplyDelta, Interrupted, TurnEnded,
              FaceControls, ErrorRaised, Pong, Presence, VisitEnded]


def to_wire(event: Event) -> list[dict]:
    """The JSON messages the browser protocol (docs/protocol.md) sends for ``event``, in order."""
    if isinstance(event, TurnEnded):
        # Latency first: a client may hang up as soon as it sees turn_end.
        return [{"type": "latency", "turn_id": event.turn_id, "source": event.source,
                 **{f"{stage}_ms": event.latency_ms.get(stage) for stage in LATENCY_STAGES},
                 "knowledge_ms": event.knowledge_ms},
                {"type": "turn_end", "turn_id": event.turn_id, "reply": event.reply, "heard": event.heard,
                 "interrupted": event.interrupted, "audio_samples": event.audio_samples, "sources": event.sources}]
    if isinstance(event, ErrorRaised):
        wire = {"type": "error", "code": event.code, "message": event.message, "fatal": event.fatal}
        if event.limit is not None:
            wire["limit"] = event.limit
        return [wire]
    if isinstance(event, Ready):
        return [{"type": "ready", "session_id": event.session_id, "resume_key": event.resume_key,
                 "user_id": event.user_id, "user_key": event.user_key, "resumed": event.resumed,
                 "history": event.history, "persona": event.persona, "audio": event.audio, "video": event.video,
                 "controls": event.controls, "face": event.face, "faces": event.faces, "voice": event.voice}]
    if isinstance(event, StateChanged):
        return [{"type": "state", "state": event.state}]
    if isinstance(event, VoiceActivity):
        return [{"type": "vad", "event": event.event, "t_ms": event.t_ms}]
    if isinstance(event, Transcript):
        return [{"type": "transcript", "text": event.text, "final": event.final}]
    if isinstance(event, TurnStarted):
        return [{"type": "turn_start", "turn_id": event.turn_id, "user_text": event.user_text,
                 "source": event.source}]
    if isinstance(event, ReplyDelta):
        return [{"type": "reply_delta", "turn_id": event.turn_id, "text": event.text}]
    if isinstance(event, Interrupted):
        return [{"type": "interrupt", "turn_id": event.turn_id, "position": event.position, "reason": event.reason}]
    if isinstance(event, FaceControls):
        return [{"type": "controls", "position": event.position, "turn_id": event.turn_id,
                 "values": {name: round(v, 4) for name, v in event.values.items()}}]
    if isinstance(event, Pong):
        return [{"type": "pong"}]
    if isinstance(event, Presence):
        return [{"type": "presence", "present": event.present, "source": event.source}]
    if isinstance(event, VisitEnded):
        return [{"type": "visit_end", "reason": event.reason, "duration_s": round(event.duration_s, 1),
                 "turns": event.turns}]
    raise TypeError(f"no wire form for {type(event).__name__}")


class EventBus:
    """A connection's events, delivered in order to every subscriber. A subscriber that raises is logged
    and skipped: metrics must never break a conversation."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, subscriber: Callable[[Event], None]) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # noqa: BLE001
                log.exception("event subscriber %r failed on %s", subscriber, type(event).__name__)
