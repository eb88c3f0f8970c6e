"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand: no dependency.

``ServerMetrics`` subscribes to every connection's event bus (``observe``: typed events from
avatar/events.py: turns ended with their latency, interruptions, errors), connections and refusals are
counted by the server, and the per-connection video counters are folded in when a connection closes. ``render()`` is the body of
``GET /metrics``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, Iterable

from avatar.events import LATENCY_STAGES, ErrorRaised, Event, Interrupted, Presence, TurnEnded, VisitEnded

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()):
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]

    def _key(self, labels: dict) -> tuple:
        return tuple(str(labels.get(n, "")) for n in self.labelnames)


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name, help_text, labelnames=(), fn: Callable[[], float | dict] | None = None):
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple, float] = {}
        self.fn = fn  # read at scrape time: a number, or {label tuple: number}

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def lines(self) -> list[str]:
        values = dict(self._values)
        if self.fn is not None:
            got = self.fn()
            values = got if isinstance(got, dict) else {(): got}
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(values.items())
                if v is not None]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, labelnames=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple, list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            data = self._data.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    data[i] += 1
            data[-2] += value
            data[-1] += 1

    def count(self, **labels) -> int:
        data = self._data.get(self._key(labels))
        return data[-1] if data else 0

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        for key, data in items:
            for bound, n in zip(self.buckets, data):
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {n}")
            le = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {data[-1]}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(data[-2])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {data[-1]}")
        return out


class Registry:
    def __init__(self):
        self.metrics: list[_Metric] = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.header()
            lines += metric.lines()
        return "\n".join(lines) + "\n"


def resident_memory_bytes(pid: int | str = "self") -> int | None:
    """VmRSS of a process from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ServerMetrics:
    def __init__(self, sessions: Callable[[], int] = lambda: 0, connections: Callable[[], int] = lambda: 0):
        self.started = time.time()
        r = self.registry = Registry()
        self.sessions = r.add(Gauge("avatar_sessions", "Conversations open now.", fn=sessions))
        self.connections = r.add(Gauge("avatar_connections", "WebSocket connections open now.", fn=connections))
        self.sessions_opened = r.add(Counter("avatar_sessions_opened_total", "Conversations started or resumed.",
                                             ["resumed"]))
        self.turns = r.add(Counter("avatar_turns_total", "Turns answered (ended).", ["source"]))
        self.interruptions = r.add(Counter("avatar_interruptions_total", "Replies stopped before their end.",
                                           ["reason"]))
        self.errors = r.add(Counter("avatar_errors_total", "Error events sent to clients.", ["code"]))
        self.latency = r.add(Histogram("avatar_stage_latency_seconds", "Time from the end of the user's speech "
                                       "(or a typed text's arrival) to each stage's first output.", ["stage"]))
        self.knowledge = r.add(Histogram("avatar_knowledge_seconds", "Time a turn spent in the knowledge base: "
                                         "retrieval before its prompt and the check of its reply clauses.", [],
                                         buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)))
        self.frames_sent = r.add(Counter("avatar_video_frames_sent_total", "Video frames sent."))
        self.frames_dropped = r.add(Counter("avatar_video_frames_dropped_total",
                                            "Video frames skipped (late, slow renderer or slow client)."))
        self.refused = r.add(Counter("avatar_connections_refused_total", "WebSocket handshakes refused.",
                                     ["reason"]))
        self.rate_limited = r.add(Counter("avatar_rate_limited_total", "Client messages dropped by a limit.",
                                          ["limit"]))
        self.closed = r.add(Counter("avatar_connections_closed_total", "Connections closed by the server.",
                                    ["reason"]))
        self.wrong_tokens = r.add(Counter("avatar_wrong_tokens_total", "Requests with a wrong access token "
                                          "(token guesses), by path.", ["path"]))
        self.http_refused = r.add(Counter("avatar_http_refused_total", "HTTP requests to /auth and /metrics "
                                          "refused (token, token_backoff, bad_request).", ["path", "reason"]))
        self.memory_queued = r.add(Gauge("avatar_memory_queued_writes", "Turns and users waiting to be written "
                                         "to the conversation database (more than a few: storage is failing)."))
        self.memory_ok = r.add(Gauge("avatar_memory_writable", "1 when the last write to the conversation "
                                     "database went through, 0 while writes fail (see /healthz storage)."))
        self.memory_failures = r.add(Counter("avatar_memory_write_failures_total", "Failed write attempts to "
                                             "the conversation database, by cause (full, locked, error); each "
                                             "is retried.", ["cause"]))
        self._store = None
        # Kiosk visits: with kiosk.retention = "none" these counters are all that remains of a visit.
        self.visits = r.add(Counter("avatar_kiosk_visits_total", "Kiosk visits that ended.", ["reason"]))
        self.visit_seconds = r.add(Histogram("avatar_kiosk_visit_seconds", "Length of kiosk visits.", [],
                                             buckets=(10, 30, 60, 120, 300, 600, 1800)))
        self.arrivals = r.add(Counter("avatar_kiosk_arrivals_total", "Kiosk visitors who arrived.", ["source"]))
        r.add(Gauge("avatar_uptime_seconds", "Seconds since the server started.",
                    fn=lambda: round(time.time() - self.started, 1)))
        r.add(Gauge("process_resident_memory_bytes", "Resident memory of the server process.",
                    fn=lambda: resident_memory_bytes()))
        r.add(Gauge("process_open_fds", "Open file descriptors of the server process.", fn=_open_fds))
        self._timelines: set = set()
        self._frames_folded = [0, 0]  # sent, dropped by connections already closed

    # -- feeds --------------------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        """Event bus subscriber (avatar/events.py)."""
        if isinstance(event, TurnEnded):
            self.turns.inc(source=event.source)
            for stage in LATENCY_STAGES:
                value = event.latency_ms.get(stage)
                if value is not None:
                    self.latency.observe(value / 1000.0, stage=stage)
            if event.knowledge_ms is not None:
                self.knowledge.observe(event.knowledge_ms / 1000.0)
        elif isinstance(event, Interrupted):
            self.interruptions.inc(reason=event.reason)
        elif isinstance(event, ErrorRaised):
            self.errors.inc(code=event.code)
        elif isinstance(event, Presence) and event.present:
            self.arrivals.inc(source=event.source)
        elif isinstance(event, VisitEnded):
            self.visits.inc(reason=event.reason)
            self.visit_seconds.observe(event.duration_s)

    def watch_memory(self, store) -> None:
        """Read the memory store's writer state (avatar/conversation/memory.py) at each scrape."""
        self._store = store
        self.memory_queued.fn = store.queued
        self.memory_ok.fn = lambda: float(store.state == "ok")

    def track(self, timeline) -> None:
        self._timelines.add(timeline)

    def untrack(self, timeline) -> None:
        if timeline in self._timelines:
            self._timelines.discard(timeline)
            self._frames_folded[0] += timeline.frames_sent
            self._frames_folded[1] += timeline.frames_dropped

    def render(self) -> str:
        live = list(self._timelines)
        sent = self._frames_folded[0] + sum(o.frames_sent for o in live)
        dropped = self._frames_folded[1] + sum(o.frames_dropped for o in live)
        self.frames_sent._values[()] = float(sent)
        self.frames_dropped._values[()] = float(dropped)
        if self._store is not None:
            for cause, count in list(self._store.failures.items()):
                self.memory_failures._values[(cause,)] = float(count)
        return self.registry.render()


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def parse_text_format(text: str) -> dict[str, float]:
    """'name{labels}' -> value, for tests and ``avatar soak`` (the subset this module writes)."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values
