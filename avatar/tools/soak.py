"""``avatar soak``: many clients talking to one server for minutes, then a stability report.

Each client keeps ONE connection for the whole run, like a kiosk: it streams microphone audio in real time
all along (silence between turns), alternates spoken turns (espeak-ng sentences made at start) with typed
ones, reports its playback clock every 300 ms like the web client, and waits for each reply to end before
the next turn. At the end it reports turns completed, errors by code, the server's resident memory at the
start and the end (``process_resident_memory_bytes`` from /metrics), reply latency, and per session the
audio/video offset defined in docs/protocol.md ("Measuring A/V sync").

Everything is bounded: the run stops at its deadline, each turn waits at most ``TURN_TIMEOUT_S``, and the
whole command gives up ``HARD_MARGIN_S`` after the deadline. Clients connect to loopback addresses only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np

from avatar.media.audio import INPUT_SAMPLE_RATE
from avatar.net.access import is_loopback_host
from avatar.net.metrics import parse_text_format
from avatar.tools.client import ProtocolClient

FRAME_S = 0.02
PLAYBACK_EVERY_S = 0.3
TURN_TIMEOUT_S = 90.0
HARD_MARGIN_S = 180.0
SENTENCES = [
    "What is the capital of France?",
    "Tell me something nice about the sea.",
    "How many legs does a spider have?",
    "What should I cook for dinner tonight?",
]
TEXTS = [
    "Hello! How are you today?",
    "Name a color of the rainbow.",
    "What is two plus three?",
    "Say something cheerful in one sentence.",
]


# -- speech ------------------------------------------------------------------------------------------------
def make_speech(folder: Path) -> list[np.ndarray]:
    """The sentences spoken by espeak-ng as float32 mono at 16 kHz; [] when espeak-ng is missing."""
    from avatar.tools.client import read_wav

    if shutil.which("espeak-ng") is None:
        return []
    out = []
    for i, sentence in enumerate(SENTENCES):
        path = folder / f"speech{i}.wav"
        try:
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), sentence], check=True,
                           capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        out.append(read_wav(path))
    return out


# -- one client --------------------------------------------------------------------------------------------
@dataclass
class ClientReport:
    client: int
    session_id: str | None = None
    turns: int = 0
    turns_started: int = 0
    no_reply: int = 0
    errors: dict = field(default_factory=dict)
    latencies_ms: list = field(default_factory=list)  # input end -> first reply audio received
    audio_chunks: int = 0
    audio_reorders: int = 0  # an audio chunk placed before the previous one of the same turn (never expected)
    video_frames: int = 0
    av_offsets_ms: list = field(default_factory=list)  # per video frame: audio clock at arrival - frame position
    audio_margin_ms: float | None = None  # last audio chunk: its position - audio clock at arrival
    closed: str | None = None  # why the connection ended early, if it did

    def summary(self) -> dict:
        # A frame that arrives early waits for its audio and is shown in sync (offset 0); one that arrives
        # after its audio played can only be shown late by that much.
        offsets = [max(0.0, o) for o in self.av_offsets_ms]
        head = offsets[:25]
        tail = offsets[-25:]
        raw_tail = self.av_offsets_ms[-25:]
        return {
            "client": self.client, "session_id": self.session_id, "turns": self.turns,
            "turns_started": self.turns_started, "no_reply": self.no_reply, "errors": self.errors,
            "audio_chunks": self.audio_chunks, "audio_reorders": self.audio_reorders,
            "video_frames": self.video_frames,
            "av_offset_ms": round(statistics.median(tail), 1) if tail else None,
            "video_lead_ms": round(-statistics.median(raw_tail), 1) if raw_tail else None,
            "av_offset_start_ms": round(statistics.median(head), 1) if head else None,
            "av_offset_end_ms": round(statistics.median(tail), 1) if tail else None,
            "av_offset_max_ms": round(max(offsets), 1) if offsets else None,
            "av_offset_p95_ms": round(float(np.percentile(offsets, 95)), 1) if offsets else None,
            "frames_late_over_40ms": sum(o > 40.0 for o in offsets),
            "audio_margin_ms": None if self.audio_margin_ms is None else round(self.audio_margin_ms, 1),
            "closed": self.closed,
        }


class SoakClient:
    def __init__(self, index: int, url: str, deadline: float, speech: list[np.ndarray]):
        self.index = index
        self.url = url
        self.deadline = deadline
        self.speech = speech
        self.report = ClientReport(index)
        self.client: ProtocolClient | None = None
        self.input_end: float | None = None
        self.first_audio_pending = False
        self.last_audio: dict[int, int] = {}
        self.ws = None
        self.mic: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def clock(self, at: float | None = None) -> int:
        """The simulated audio output clock: a sound card that started when `ready` arrived."""
        if self.client is None or self.client.ready_at is None:
            return 0
        return int(((at or time.monotonic()) - self.client.ready_at) * self.client.output_rate)

    async def run(self) -> ClientReport:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        try:
            async with connect(self.url, max_size=None, open_timeout=60) as ws:
                self.ws = ws
                self.client = ProtocolClient(ws, self._on_event)
                await self.client.send_json(self.client.hello(video=True))
                receiver = asyncio.create_task(self.client.receive())
                streamer = asyncio.create_task(self._stream_mic())
                reporter = asyncio.create_task(self._report_playback())
                try:
                    await self._converse()
                finally:
                    for task in (streamer, reporter):
                        task.cancel()
                    await asyncio.sleep(0.3)
                    receiver.cancel()
        except ConnectionClosed as exc:
            self.report.closed = f"connection closed: {exc}"
        except (OSError, asyncio.TimeoutError) as exc:
            self.report.closed = f"cannot connect: {exc!r}"
        return self.report

    async def _converse(self) -> None:
        turn = 0
        await asyncio.sleep(0.2 * self.index)  # clients do not start in lockstep
        while time.monotonic() < self.deadline:
            spoken = self.speech and (turn + self.index) % 2 == 0
            self.client.turn_ended.clear()
            self.client.turn_started.clear()
            if spoken:
                audio = self.speech[(turn // 2 + self.index) % len(self.speech)]
                await self.mic.put(audio)
                await asyncio.sleep(len(audio) / INPUT_SAMPLE_RATE)
                self.input_end = time.monotonic()
            else:
                self.input_end = time.monotonic()
                await self.ws.send(json.dumps({"type": "text", "text": TEXTS[(turn + self.index) % len(TEXTS)]}))
            self.first_audio_pending = True
            try:
                await asyncio.wait_for(self.client.turn_ended.wait(), TURN_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.report.no_reply += 1
            turn += 1
            await asyncio.sleep(0.5 + 0.25 * (self.index % 3))

    async def _stream_mic(self) -> None:
        """A live microphone: 20 ms frames in real time, speech when there is some, else silence."""
        hop = int(INPUT_SAMPLE_RATE * FRAME_S)
        silence = np.zeros(hop, dtype="<i2").tobytes()
        pending = b""
        start = time.monotonic()
        sent = 0
        while True:
            if not pending and not self.mic.empty():
                audio = self.mic.get_nowait()
                pending = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
            if pending:
                chunk, pending = pending[: 2 * hop], pending[2 * hop:]
                chunk = chunk.ljust(2 * hop, b"\0")
            else:
                chunk = silence
            await self.ws.send(chunk)
            sent += hop
            delay = start + sent / INPUT_SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # the machine stalled: do not catch up faster than real time
                start, sent = time.monotonic(), 0

    async def _report_playback(self) -> None:
        while True:
            await asyncio.sleep(PLAYBACK_EVERY_S)
            if self.client.ready_at is not None:
                await self.ws.send(json.dumps({"type": "playback", "position": self.clock()}))

    def _on_event(self, event: dict, payload: bytes | None, now: float) -> None:
        kind = event["type"]
        report = self.report
        if kind == "audio":
            turn_id, position = event["turn_id"], event["position"]
            report.audio_chunks += 1
            if position < self.last_audio.get(turn_id, -1):
                report.audio_reorders += 1
            self.last_audio[turn_id] = position
            report.audio_margin_ms = (position - self.clock(now)) * 1000.0 / self.client.output_rate
            if self.first_audio_pending and self.input_end is not None:
                self.first_audio_pending = False
                report.latencies_ms.append((now - self.input_end) * 1000.0)
        elif kind == "video_frame":
            report.video_frames += 1
            report.av_offsets_ms.append((self.clock(now) - event["position"]) * 1000.0 / self.client.output_rate)
        elif kind == "ready":
            report.session_id = event.get("session_id")
        elif kind == "turn_start":
            report.turns_started += 1
        elif kind == "turn_end":
            report.turns += 1
        elif kind == "error":
            code = event.get("code", "?")
            report.errors[code] = report.errors.get(code, 0) + 1


# -- the server ------------------------------------------------------------------------------------------
def http_url(ws_url: str, path: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    token = parse_qs(parts.query).get("token")
    query = urlencode({"token": token[0]}) if token else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def fetch(url: str, timeout: float = 10.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")
    except OSError:
        return None


def server_rss(ws_url: str) -> int | None:
    text = fetch(http_url(ws_url, "/metrics"))
    if text is None:
        return None
    value = parse_text_format(text).get("process_resident_memory_bytes")
    return int(value) if value is not None else None


def start_server(args, data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "avatar", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
    if getattr(args, "config", None):
        cmd += ["--config", args.config]
    for item in getattr(args, "set", None) or []:
        cmd += ["--set", item]
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                log.close()
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"avatar serve exited with {proc.returncode}:\n{tail}")
            continue
        if "is ready" in line and "ws://" in line:
            url = line.split("WebSocket: ", 1)[1].rstrip(")\n ")
            url = url.replace("ws://localhost:", "ws://127.0.0.1:")
            # Keep reading the server's stdout so that it never blocks on a full pipe.
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, url
    proc.kill()
    raise RuntimeError("avatar serve did not become ready in 600 s:\n"
                       + log_path.read_text(encoding="utf-8", errors="replace")[-3000:])


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- the run ---------------------------------------------------------------------------------------------
async def run_soak(url: str, clients: int, minutes: float, speech: list[np.ndarray]) -> dict:
    loop = asyncio.get_running_loop()
    rss_start = server_rss(url)
    started = time.monotonic()
    deadline = started + minutes * 60.0
    soakers = [SoakClient(i, url, deadline, speech) for i in range(clients)]
    tasks = [asyncio.create_task(c.run()) for c in soakers]
    samples: list[tuple[float, int | None]] = []

    async def sample_rss() -> None:  # memory over time: warm-up first, then it should stay flat
        every = max(10.0, minutes * 60.0 / 30)
        while True:
            await asyncio.sleep(every)
            samples.append((round(time.monotonic() - started), await loop.run_in_executor(None, server_rss, url)))
            rss = samples[-1][1]
            print(f"avatar soak: {samples[-1][0] / 60:.1f}/{minutes:g} min, "
                  f"{sum(c.report.turns for c in soakers)} turns, "
                  f"{sum(sum(c.report.errors.values()) for c in soakers)} errors, server RSS "
                  f"{'?' if rss is None else f'{rss / 2**20:.0f} MB'}", file=sys.stderr, flush=True)

    sampler = asyncio.create_task(sample_rss())
    done, pending = await asyncio.wait(tasks, timeout=minutes * 60.0 + HARD_MARGIN_S)
    sampler.cancel()
    for task in pending:
        task.cancel()
    reports = [c.report for c in soakers]
    await asyncio.sleep(1.0)  # let the server close the sessions before measuring
    rss_end = server_rss(url)
    health_text = fetch(http_url(url, "/healthz"))
    health = json.loads(health_text) if health_text else None
    errors: dict[str, int] = {}
    for r in reports:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    latencies = sorted(x for r in reports for x in r.latencies_ms)

    def pct(q: float):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    mb = lambda b: None if b is None else round(b / 2**20, 1)  # noqa: E731
    return {
        "type": "soak", "url": url.split("?")[0], "clients": clients, "minutes": minutes,
        "seconds": round(time.monotonic() - started, 1), "speech": bool(speech),
        "turns_completed": sum(r.turns for r in reports),
        "turns_without_reply": sum(r.no_reply for r in reports),
        "errors": errors, "error_total": sum(errors.values()),
        "clients_closed_early": sum(1 for r in reports if r.closed),
        "audio_reorders": sum(r.audio_reorders for r in reports),
        "server_rss_mb": {"start": mb(rss_start), "end": mb(rss_end),
                          "growth": mb(rss_end - rss_start) if rss_start and rss_end else None,
                          "samples": [[t, mb(v)] for t, v in samples]},
        "reply_latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0)},
        "server_healthy": bool(health and health.get("status") == "ok"),
        "sessions": [r.summary() for r in reports],
        "stuck_clients": len(pending),
    }


def format_report(report: dict) -> str:
    lines = [
        f"soak: {report['clients']} clients for {report['minutes']:g} min ({report['seconds']} s) against "
        f"{report['url']}{'' if report['speech'] else ' (text turns only: espeak-ng not found)'}",
        f"turns completed: {report['turns_completed']}   without reply: {report['turns_without_reply']}   "
        f"errors: {report['error_total']} {report['errors'] or ''}",
        f"server RSS: {report['server_rss_mb']['start']} MB at start, {report['server_rss_mb']['end']} MB at end "
        f"(growth {report['server_rss_mb']['growth']} MB)   healthy at end: {report['server_healthy']}",
        "server RSS over time (s, MB): " + " ".join(f"{t}:{v}" for t, v in report["server_rss_mb"]["samples"]),
        f"reply latency (input end -> first audio): p50 {report['reply_latency_ms']['p50']} ms, "
        f"p95 {report['reply_latency_ms']['p95']} ms",
    ]
    for s in report["sessions"]:
        lines.append(f"  client {s['client']}: {s['turns']} turns, errors {s['errors'] or 0}, "
                     f"A/V offset at end {s['av_offset_ms']} ms (start {s['av_offset_start_ms']}, "
                     f"end {s['av_offset_end_ms']}, p95 {s['av_offset_p95_ms']}, max {s['av_offset_max_ms']}), "
                     f"{s['video_frames']} frames ({s['frames_late_over_40ms']} over 40 ms late), "
                     f"audio margin at end {s['audio_margin_ms']} ms"
                     + (f", closed early: {s['closed']}" if s["closed"] else ""))
    return "\n".join(lines)


def soak_ok(report: dict) -> bool:
    return (report["turns_completed"] > 0 and report["error_total"] == 0 and report["server_healthy"]
            and not report["stuck_clients"] and not report["audio_reorders"] and not report["clients_closed_early"])


def soak_main(args) -> int:
    if args.clients < 1 or args.minutes <= 0:
        raise SystemExit("avatar soak: --clients must be >= 1 and --minutes > 0")
    work = Path(tempfile.mkdtemp(prefix="avatar-soak-"))
    proc = None
    try:
        if args.url:
            host = urlsplit(args.url).hostname
            if not is_loopback_host(host):
                raise SystemExit(f"avatar soak: drives servers on this machine only (loopback), not {host!r}")
            url = args.url
        else:
            data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else work / "data"
            print("avatar soak: starting a server...", file=sys.stderr, flush=True)
            try:
                proc, url = start_server(args, data_dir, work / "server.log")
            except RuntimeError as exc:
                from avatar.errors import AvatarError

                raise AvatarError(f"soak: {exc}") from None
        speech = make_speech(work)
        print(f"avatar soak: {args.clients} clients for {args.minutes:g} min against {url.split('?')[0]}",
              file=sys.stderr, flush=True)
        report = asyncio.run(run_soak(url, args.clients, args.minutes, speech))
        if proc is not None:
            report["server_exit_code"] = stop_server(proc)
            proc = None
        print(json.dumps(report) if args.json else format_report(report), flush=True)
        return 0 if soak_ok(report) else 1
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
