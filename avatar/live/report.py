"""What the show reports: log lines (and JSON lines with ``--json``) and Prometheus metrics at /metrics.

Metrics (text exposition format, avatar/net/metrics.py):
    avatar_live_segments_done_total                  segments presented to the end
    avatar_live_comments_received_total{source}      every comment that arrived (http, ws, stdin, adapters)
    avatar_live_comments_answered_total
    avatar_live_comments_dropped_total{reason}       empty, too_long, blocked, rate_limited, queue_full, stale,
                                                     answer_failed
    avatar_live_comments_merged_total                duplicates folded into a waiting comment
    avatar_live_comments_waiting
    avatar_live_turns_total{source}                  spoken turns: script (and the back line), lead_in,
                                                     segment, comment
    avatar_live_stream_frames_total                  frames the show's clock produced (fps x seconds)
    avatar_live_stream_frames_repeated_total         frames that repeated the picture (CPU behind real time)
    avatar_live_output_fps{output}                   frames written per second, last 5 s
    avatar_live_output_bitrate_bps{output}           bits written per second, last 5 s
    avatar_live_output_reconnects_total{output}
    avatar_live_output_frames_dropped_total{output}  frames an output could not take (stalled, reconnecting)
    avatar_live_output_connected{output}             1 while the output is open
    avatar_live_resident_memory_bytes
"""

from __future__ import annotations

import json
import logging
import sys
import time

from avatar.events import Event, TurnEnded
from avatar.net.metrics import Counter, Gauge, Registry, resident_memory_bytes

log = logging.getLogger("avatar.live")


class LiveReport:
    def __init__(self, *, json_lines: bool = False):
        self.json_lines = json_lines
        self.started = time.monotonic()
        # What the gauges and /healthz read, given by attach(): the desk reports into this report, so it is
        # made after it.
        self.timeline = None  # avatar.live.sink.LiveTimeline
        self.streamer = None  # avatar.live.stream.Streamer
        self.desk = None  # avatar.live.comments.CommentDesk
        r = self.registry = Registry()
        self.segments_done = r.add(Counter("avatar_live_segments_done_total", "Segments presented to the end"))
        self.received = r.add(Counter("avatar_live_comments_received_total", "Viewer comments received",
                                      ("source",)))
        self.answered = r.add(Counter("avatar_live_comments_answered_total", "Viewer comments answered"))
        self.dropped = r.add(Counter("avatar_live_comments_dropped_total", "Viewer comments dropped", ("reason",)))
        self.merged = r.add(Counter("avatar_live_comments_merged_total",
                                    "Duplicate comments merged into one that was waiting"))
        self.turns = r.add(Counter("avatar_live_turns_total", "Spoken turns of the host", ("source",)))
        r.add(Gauge("avatar_live_resident_memory_bytes", "Resident memory of the live process",
                    fn=resident_memory_bytes))
        r.add(Gauge("avatar_live_comments_waiting", "Comments waiting to be answered",
                    fn=lambda: self.desk.waiting() if self.desk else 0))
        r.add(Gauge("avatar_live_stream_frames_total", "Frames produced by the show's clock",
                    fn=lambda: self.timeline.frames if self.timeline else 0))
        r.add(Gauge("avatar_live_stream_frames_repeated_total", "Frames that repeated the last picture because "
                    "the machine was behind real time",
                    fn=lambda: self.timeline.frames_repeated if self.timeline else 0))
        r.add(Gauge("avatar_live_output_fps", "Frames written per second over the last 5 s", ("output",),
                    fn=lambda: self._per_output(lambda o: o.rates()[0])))
        r.add(Gauge("avatar_live_output_bitrate_bps", "Bits written per second over the last 5 s", ("output",),
                    fn=lambda: self._per_output(lambda o: round(o.rates()[1]))))
        r.add(Gauge("avatar_live_output_reconnects_total", "Reconnections of the output", ("output",),
                    fn=lambda: self._per_output(lambda o: o.reconnects)))
        r.add(Gauge("avatar_live_output_frames_dropped_total", "Frames the output could not take", ("output",),
                    fn=lambda: self._per_output(lambda o: o.frames_dropped)))
        r.add(Gauge("avatar_live_output_connected", "1 while the output is open", ("output",),
                    fn=lambda: self._per_output(lambda o: int(o.connected))))


    def attach(self, *, timeline=None, desk=None, streamer=None) -> None:
        """The show's timeline, comment desk and streamer, for the gauges and ``/healthz``."""
        self.timeline, self.desk, self.streamer = timeline, desk, streamer
    def _per_output(self, value) -> dict:
        outputs = self.streamer.outputs if self.streamer else []
        return {(o.kind,): value(o) for o in outputs}

    def render(self) -> str:
        return self.registry.render()

    # -- log lines --------------------------------------------------------------------------------------
    def note(self, what: str, message: str, **fields) -> None:
        log.info("%s", message)
        if self.json_lines:
            record = {"event": what, "t": round(time.monotonic() - self.started, 3), **fields}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def comment(self, what: str, comment, reason: str) -> None:
        """CommentDesk.on_change: received, queued, merged or dropped."""
        if what == "received":
            self.received.inc(source=reason)
            return
        if what == "dropped":
            self.dropped.inc(reason=reason)
        elif what == "merged":
            self.merged.inc()
        self.note(f"comment_{what}", f"comment from {comment.user} {what}"
                  + (f" ({reason})" if what == "dropped" else "") + f": {comment.text[:80]!r}",
                  user=comment.user, text=comment.text, reason=reason)

    def observe(self, event: Event) -> None:
        """An event bus subscriber: every spoken turn, by source."""
        if isinstance(event, TurnEnded):
            self.turns.inc(source=event.source)
            marks = {k: v for k, v in event.latency_ms.items() if v is not None}
            log.debug("turn %d (%s) ended%s: %d samples of speech, latency %s", event.turn_id, event.source,
                      " (cut)" if event.interrupted else "", event.audio_samples, marks)

    def health(self) -> dict:
        outputs = self.streamer.outputs if self.streamer else []
        return {"status": "ok" if all(o.failed is None for o in outputs) else "degraded",
                "uptime_s": round(time.monotonic() - self.started, 1),
                "frames": self.timeline.frames if self.timeline else 0,
                "outputs": {o.kind: {"connected": o.connected, "failed": o.failed, "reconnects": o.reconnects}
                            for o in outputs}}
