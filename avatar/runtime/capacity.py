"""How many conversations this machine holds, derived from what speech and the face cost here, measured at start.

A conversation is only as good as its slowest stage keeps up with real time. Speech synthesis and the face's
frames scale with the seconds the agent speaks; the recogniser and the LLM with the turns. The voice decides
it: Kokoro costs about 1 CPU-s per second of audio on this 2-core VM, Piper 0.05 (BENCHMARKS.md, "Kokoro").
So ``limits.max_sessions = 0`` (the default) measures both at warm-up and admits as many conversations as the
cores can voice in real time when each agent speaks half of the time, keeping a quarter of the cores for the
recogniser and the LLM. A number there is the operator's choice; one above the measured capacity is warned of.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

# A conversation's agent speaks about half of its time (a question, then an answer of about the same length or
# longer); BENCHMARKS.md, "Kokoro", checks the limit this gives against `avatar bench` at 1 and more sessions.
SPEAKING_SHARE = 0.5
SPEECH_BUDGET = 0.75  # of the cores, for synthesis and frames; the rest for the recogniser, the LLM and the loop
CEILING = 32  # with a cheap voice and no video, other limits (memory, the LLM's slots) come first
MEASURE_TEXT = "Of course, the museum opens at nine and it is free for children under twelve."


@dataclass
class Capacity:
    limit: int  # conversations admitted at once
    measured: bool  # False: limits.max_sessions was set, or nothing was measured (server.warm_up = false)
    speech_cost: float = 0.0  # CPU-s per second of synthesised audio
    face_cost: float = 0.0  # CPU-s per second of video while speaking (0 without video)
    cores: int = 1

    def describe(self) -> str:
        if not self.measured:
            return f"{self.limit} conversations at once (limits.max_sessions)"
        face = f", the face {self.face_cost:.2f} per second of video" if self.face_cost else ""
        return (f"{self.limit} conversations at once, measured: speech costs {self.speech_cost:.2f} CPU-s per second "
                f"of audio{face}, on {self.cores} cores (set limits.max_sessions to choose)")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_seconds(work) -> tuple[float, object]:
    """CPU time of the whole process (a model's own threads included) while ``work()`` runs, and its result."""
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def limit_for(speech_cost: float, face_cost: float, n_cores: int) -> int:
    per_session = SPEAKING_SHARE * (speech_cost + face_cost)
    if per_session <= 0:
        return CEILING
    return max(1, min(CEILING, math.floor(n_cores * SPEECH_BUDGET / per_session)))


def measure(tts, render_frame=None, fps: int = 25) -> tuple[float, float]:
    """(speech cost, face cost): one sentence synthesised, ten frames rendered, on an idle server."""
    used, chunks = cpu_seconds(lambda: list(tts.synthesize(MEASURE_TEXT)))
    audio_s = sum(len(c.audio) for c in chunks) / float(tts.sample_rate)
    speech_cost = used / audio_s if audio_s else 0.0
    face_cost = 0.0
    if render_frame is not None:
        used, _ = cpu_seconds(lambda: [render_frame(i) for i in range(10)])
        face_cost = used / 10 * fps
    return speech_cost, face_cost


def capacity(configured: int, speech_cost: float | None, face_cost: float = 0.0) -> Capacity:
    if configured > 0 or speech_cost is None:
        return Capacity(configured if configured > 0 else CEILING, False)
    n = cores()
    return Capacity(limit_for(speech_cost, face_cost, n), True, speech_cost, face_cost, n)
