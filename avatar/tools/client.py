"""A Python client of the protocol: ``avatar talk``, the tests and ``avatar bench`` use it.

``talk()`` streams a WAV file paced in real time (then silence, as a microphone would) or sends a text,
collects the events of every turn the input makes (a recording may hold several utterances with pauses
between them), and summarises them, with voice-to-voice latency measured from the real end of speech in
the input to the first audio received of the last turn (the reply to it).
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from websockets.asyncio.client import connect

from avatar.events import LATENCY_STAGES
from avatar.media.audio import INPUT_SAMPLE_RATE, resample_linear
from avatar.net.protocol import KIND_AUDIO, KIND_VIDEO, parse_media_frame

FRAME_S = 0.02  # microphone frames of 20 ms, like a browser AudioWorklet sends
# After the input ends: speech in its last samples has reached the server's VAD and been reported
# (speech_start) within this time, even on a busy server; until then nothing says it was there.
INPUT_GRACE_S = 1.5
# An utterance that ended (speech_end) becomes a turn once it is transcribed; one whose transcript is empty
# (a cough, a click) never does and the server says nothing more, so it is waited for this long at most.
RECOGNITION_WAIT_S = 10.0


def _riff_chunks(data: bytes):
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    offset = 12
    while offset + 8 <= len(data):
        name, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        yield name, data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)


def read_wav(path: str | Path, rate: int = INPUT_SAMPLE_RATE) -> np.ndarray:
    """A WAV file (16-bit PCM or 32-bit float) as float32 mono at ``rate`` (linear resampling; fine
    for speech at 16 kHz)."""
    chunks = dict(_riff_chunks(Path(path).read_bytes()))
    if b"fmt " not in chunks or b"data" not in chunks:
        raise ValueError(f"{path}: a WAV file needs 'fmt ' and 'data' chunks")
    fmt = chunks[b"fmt "]
    tag, channels, src_rate = int.from_bytes(fmt[0:2], "little"), int.from_bytes(fmt[2:4], "little"), \
        int.from_bytes(fmt[4:8], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag starts the sub-format GUID
        tag = int.from_bytes(fmt[24:26], "little")
    if tag == 1 and bits == 16:
        audio = np.frombuffer(chunks[b"data"], dtype="<i2").astype(np.float32) / 32768.0
    elif tag == 3 and bits == 32:
        audio = np.frombuffer(chunks[b"data"], dtype="<f4").astype(np.float32)
    else:
        raise ValueError(f"{path}: only 16-bit PCM or 32-bit float WAV files are supported "
                         f"(this one has format {tag}, {bits}-bit samples)")
    if channels > 1:
        audio = audio[: len(audio) - len(audio) % channels].reshape(-1, channels).mean(axis=1)
    return resample_linear(audio, src_rate, rate)


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def speech_end_seconds(audio: np.ndarray, rate: int = INPUT_SAMPLE_RATE) -> float:
    """Where speech really ends in a recording: the end of the last 20 ms frame louder than -35 dB
    relative to the loudest frame. This is the reference for voice-to-voice latency."""
    hop = int(rate * 0.02)
    n = len(audio) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1)) + 1e-9
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -35)[0]
    return float((loud[-1] + 1) * hop / rate) if len(loud) else 0.0


@dataclass
class TalkResult:
    events: list[dict] = field(default_factory=list)
    transcript: str = ""
    reply: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    output_rate: int = 22050
    # The handle to resume this conversation: "SESSION_ID:RESUME_KEY" (pass it back as session_id).
    session_id: str | None = None
    server_session_id: str | None = None  # the bare id from `ready`
    resume_key: str | None = None
    user_id: str | None = None
    user_key: str | None = None  # give it back with user_id to get this user's history next time
    video_frames: int = 0
    last_turn_id: int | None = None
    first_audio_at: float | None = None  # of the last turn
    first_frame_at: float | None = None
    speech_end_at: float | None = None
    latency: dict = field(default_factory=dict)  # the server's marks for the last turn
    turns: int = 0  # turns that ended (transcript and reply join all of them)

    def summary(self) -> dict:
        v2v = None
        if self.first_audio_at is not None and self.speech_end_at is not None:
            v2v = round((self.first_audio_at - self.speech_end_at) * 1000.0, 1)
        first_frame = None
        if self.first_frame_at is not None and self.speech_end_at is not None:
            first_frame = round((self.first_frame_at - self.speech_end_at) * 1000.0, 1)
        samples = sum(len(a) for a in self.audio)
        return {
            "type": "summary",
            "session_id": self.session_id,
            "transcript": self.transcript,
            "reply": self.reply,
            "turns": self.turns,
            "audio_seconds": round(samples / self.output_rate, 3),
            "video_frames": self.video_frames,
            "latency_ms": {
                "voice_to_voice": v2v,
                "first_frame": first_frame,
                # the server's own marks, up to the first audio it sent (events.LATENCY_STAGES)
                **{stage: self.latency.get(f"{stage}_ms") for stage in LATENCY_STAGES[:5]},
            },
        }


class ProtocolClient:
    """One connection, from the client's side: sends ``hello``, parses every server message into an event
    dict (media frames become ``{"type": "audio"|"video_frame", "turn_id", "position", ...}`` with their
    payload), and keeps the bookkeeping every client needs: the ``ready`` message, the output rate, the
    turns still open and what the server is still hearing. ``avatar talk``, ``avatar soak``, ``avatar bench``
    and the tests all use it."""

    def __init__(self, ws, on_event: Callable[[dict, bytes | None, float], None] | None = None):
        self.ws = ws
        self.on_event = on_event or (lambda event, payload, at: None)
        self.ready: dict | None = None
        self.ready_at: float | None = None
        self.output_rate = 22050
        self.turns_open: set[int] = set()
        self.turn_ended = asyncio.Event()  # set when a turn ends and no other is open
        self.turn_started = asyncio.Event()
        self.turns_started = 0
        # What the server is still hearing: an utterance under way (vad speech_start .. speech_end), and
        # since when one that ended waits for its transcript and turn (speech_end .. turn_start; a failed or
        # empty transcription sends nothing that says so, hence a time rather than a flag).
        self.user_speaking = False
        self.recognising_since: float | None = None

    @staticmethod
    def hello(*, video: bool = True, session_id: str | None = None, resume_key: str | None = None,
              user_id: str | None = None, user_key: str | None = None, **fields) -> dict:
        """The first message. ``session_id`` may be "SESSION_ID:RESUME_KEY" (``TalkResult.session_id``)."""
        hello = {"type": "hello", "video": video, **fields}
        if session_id:
            if resume_key is None and ":" in session_id:
                session_id, _, resume_key = session_id.rpartition(":")
            hello["session_id"] = session_id
            if resume_key:
                hello["resume_key"] = resume_key
        if user_id:
            hello["user_id"] = user_id
            if user_key:
                hello["user_key"] = user_key
        return hello

    async def send_json(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    def parse(self, message: str | bytes) -> tuple[dict | None, bytes | None]:
        if isinstance(message, bytes):
            kind, turn_id, position, payload = parse_media_frame(message)
            if kind == KIND_AUDIO:
                return {"type": "audio", "turn_id": turn_id, "position": position, "samples": len(payload) // 2}, \
                    payload
            if kind == KIND_VIDEO:
                return {"type": "video_frame", "turn_id": turn_id, "position": position, "bytes": len(payload)}, \
                    payload
            return None, None
        return json.loads(message), None

    async def receive(self) -> None:
        """Read until the connection closes."""
        async for message in self.ws:
            now = time.monotonic()
            event, payload = self.parse(message)
            if event is None:
                continue
            kind = event.get("type")
            if kind == "ready":
                self.ready, self.ready_at = event, now
                self.output_rate = event.get("audio", {}).get("output_rate", self.output_rate)
            elif kind == "vad":
                self.user_speaking = event.get("event") == "speech_start"
                if event.get("event") == "speech_end":
                    self.recognising_since = now
            elif kind == "turn_start":
                self.turns_open.add(event["turn_id"])
                self.turns_started += 1
                self.recognising_since = None  # here, not at the final transcript that comes just before it
                self.turn_ended.clear()
                self.turn_started.set()
            elif kind == "turn_end":
                self.turns_open.discard(event["turn_id"])
            self.on_event(event, payload, now)
            if kind == "turn_end" and not self.turns_open:
                self.turn_ended.set()


async def talk(
    url: str,
    *,
    wav: str | Path | None = None,
    audio: np.ndarray | None = None,
    text: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    video: bool = True,
    resume_key: str | None = None,
    user_key: str | None = None,
    timeout: float = 90.0,
    on_event: Callable[[dict], None] | None = None,
) -> TalkResult:
    """One exchange: say ``wav``/``audio`` (or type ``text``), wait for the replies to finish.

    Audio is sent whole, in real time, then silence until every turn it made is over: each utterance in it
    (sentences with pauses between them may be several) gets its turn, and a reply still playing when the
    next one starts is cut short by it (a barge-in, ``turn_end.interrupted``), as with a live speaker.
    ``timeout``: seconds after the end of the input for the last reply to finish (``TimeoutError``).

    ``session_id`` resumes a conversation: give ``TalkResult.session_id`` of an earlier exchange (the form
    ``SESSION_ID:RESUME_KEY``), or the bare id with ``resume_key``. ``user_key`` goes with ``user_id`` once
    the server has given one (``TalkResult.user_key``). A token in ``url`` (``?token=...``) is sent as is.
    """
    if wav is not None:
        audio = read_wav(wav)
    result = TalkResult()
    emit = on_event or (lambda event: None)

    def record(event: dict, payload: bytes | None, now: float) -> None:
        kind = event["type"]
        # Latency is measured for the last turn, the reply to the input's last speech: in a recording of
        # several utterances, audio of an earlier turn may still arrive after that speech has ended.
        last_turn = event.get("turn_id") == result.last_turn_id
        if kind == "audio":
            result.audio.append(np.frombuffer(payload, dtype="<i2"))
            if result.first_audio_at is None and last_turn:
                result.first_audio_at = now
        elif kind == "video_frame":
            result.video_frames += 1
            if result.first_frame_at is None and last_turn:
                result.first_frame_at = now
        elif kind == "turn_start":
            result.last_turn_id, result.first_audio_at, result.first_frame_at = event["turn_id"], None, None
        elif kind == "ready":
            result.server_session_id = event["session_id"]
            result.resume_key = event.get("resume_key")
            result.session_id = (f"{event['session_id']}:{result.resume_key}" if result.resume_key
                                 else event["session_id"])
            result.user_id = event.get("user_id")
            result.user_key = event.get("user_key")
            result.output_rate = event["audio"]["output_rate"]
        elif kind == "transcript" and event.get("final"):
            result.transcript = (result.transcript + " " + event["text"]).strip()
        elif kind == "turn_end":
            result.reply = (result.reply + " " + event["reply"]).strip()
            result.turns += 1
        elif kind == "latency":
            result.latency = event  # the last turn's, like voice_to_voice
        result.events.append(event)
        emit(event)

    async with connect(url, max_size=None, open_timeout=30) as ws:
        client = ProtocolClient(ws, record)
        await client.send_json(client.hello(video=video, session_id=session_id, resume_key=resume_key,
                                            user_id=user_id, user_key=user_key))
        receiver = asyncio.create_task(client.receive())
        try:
            if text is not None:
                result.speech_end_at = time.monotonic()
                await client.send_json({"type": "text", "text": text})
                await asyncio.wait_for(client.turn_ended.wait(), timeout)
            else:
                await _stream_audio(ws, audio, result, client, timeout)
        finally:
            receiver.cancel()
    return result


async def _stream_audio(ws, audio, result: TalkResult, client: ProtocolClient, timeout: float) -> None:
    """Send all of ``audio`` paced in real time, then silence until the server has nothing left to answer
    (a live microphone)."""
    hop = int(INPUT_SAMPLE_RATE * FRAME_S)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    silence = np.zeros(hop, dtype="<i2").tobytes()
    start = time.monotonic()
    result.speech_end_at = start + speech_end_seconds(audio)
    input_end = start + len(audio) / INPUT_SAMPLE_RATE
    sent = 0
    deadline = input_end + timeout
    while time.monotonic() < deadline:
        if sent >= len(pcm) and _all_heard(client, time.monotonic(), input_end):
            return
        chunk = pcm[sent : sent + hop].tobytes() if sent < len(pcm) else silence
        await ws.send(chunk)
        sent += hop
        delay = start + sent / INPUT_SAMPLE_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    raise TimeoutError(f"no complete reply within {timeout:.0f} s after the input ended")


def _all_heard(client: ProtocolClient, now: float, input_end: float) -> bool:
    """Every utterance of the input has been answered: its last samples have had time to start one, none is
    under way or being transcribed, and no turn is open. Until a first turn has come the input is waited on
    as one utterance, up to the timeout (a busy server may take long to transcribe it)."""
    if now < input_end + INPUT_GRACE_S or client.user_speaking or client.turns_open or not client.turns_started:
        return False
    return client.recognising_since is None or now - client.recognising_since >= RECOGNITION_WAIT_S
