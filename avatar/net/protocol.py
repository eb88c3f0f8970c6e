"""Wire format of the WebSocket protocol (see docs/protocol.md): parsing what clients send, framing
what the server sends. Pure functions, no I/O, so they are easy to test and to fuzz."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from avatar.errors import ProtocolError

MAGIC = b"AV"
KIND_AUDIO = 1
KIND_VIDEO = 2
HEADER = struct.Struct("<2sBBIQ")  # magic, kind, flags, turn_id, position
assert HEADER.size == 16

# type -> {field: (accepted python types, required)}
CLIENT_MESSAGES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {
        "session_id": ((str,), False),
        "resume_key": ((str,), False),  # the secret that `ready` gave with session_id (docs/protocol.md)
        "user_id": ((str,), False),
        "user_key": ((str,), False),  # the secret that `ready` gave with user_id
        "face": ((str,), False),
        "video": ((bool,), False),
        "controls": ((bool,), False),
        "protocol": ((int,), False),
        "kiosk": ((bool,), False),  # a kiosk page: presence, greetings, a new conversation per visit
    },
    "text": {"text": ((str,), True)},
    "interrupt": {},
    "playback": {"position": ((int, float), True)},
    "face": {"name": ((str,), True)},
    "ping": {},
    # kiosk sessions only: a small base64 JPEG of the camera for presence detection, never stored
    "camera_frame": {"jpeg": ((str,), True)},
}
MAX_ID_CHARS = 128


@dataclass
class ClientMessage:
    type: str
    fields: dict


def parse_text_message(raw: str) -> ClientMessage:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("text messages must be JSON objects, e.g. {\"type\": \"text\", \"text\": \"hi\"}")
    except ValueError:  # an integer of more than 4300 digits: Python refuses to convert it
        raise ProtocolError("a number in this message is too long (more than 4300 digits); numbers in this "
                            "protocol fit in 64 bits") from None
    if not isinstance(data, dict):
        raise ProtocolError("a text message must be a JSON object with a \"type\" field")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGES:
        known = ", ".join(sorted(CLIENT_MESSAGES))
        raise ProtocolError(f"unknown message type {kind!r}; known types: {known}")
    spec = CLIENT_MESSAGES[kind]
    fields = {}
    for name, (types, required) in spec.items():
        if name not in data or data[name] is None:
            if required:
                raise ProtocolError(f"'{kind}' message needs a '{name}' field")
            continue
        value = data[name]
        # bool is an int in Python; a bool where a number is expected is a client bug.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ProtocolError(f"'{kind}.{name}' must be {expected}, got {type(value).__name__}")
        if isinstance(value, str) and not _encodable(value):
            raise ProtocolError(f"'{kind}.{name}' is not valid Unicode (lone surrogate characters)")
        if isinstance(value, str) and name in ("session_id", "resume_key", "user_id", "user_key", "face", "name"):
            if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
                raise ProtocolError(f"'{kind}.{name}' must be 1-{MAX_ID_CHARS} printable characters")
        if isinstance(value, float) and not np.isfinite(value):
            raise ProtocolError(f"'{kind}.{name}' must be a finite number")
        fields[name] = value
    return ClientMessage(kind, fields)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_audio_message(data: bytes) -> np.ndarray:
    """Microphone audio: PCM16LE mono at 16 kHz -> float32 in [-1, 1]."""
    if len(data) % 2:
        raise ProtocolError(
            f"audio frames must be PCM16 (an even number of bytes), got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def media_frame(kind: int, turn_id: int, position: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, kind, 0, turn_id & 0xFFFFFFFF, max(0, int(position))) + payload


def parse_media_frame(data: bytes) -> tuple[int, int, int, bytes]:
    """(kind, turn_id, position, payload) of a server binary frame; for clients and tests."""
    if len(data) < HEADER.size:
        raise ProtocolError(f"media frame shorter than its {HEADER.size}-byte header")
    magic, kind, _flags, turn_id, position = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("media frame does not start with b'AV'")
    return kind, turn_id, position, data[HEADER.size :]


def error_event(code: str, message: str, *, fatal: bool = False) -> dict:
    return {"type": "error", "code": code, "message": message, "fatal": fatal}
