"""Fault injection for tests: make a stage raise, hang or crawl, to check that the server survives it.

OFF unless the environment variable ``AVATAR_FAULTS`` is set when the server starts (no config key can
turn it on, so a config file cannot enable it by accident); the server then logs a warning and reports
the faults in ``/healthz``. The value is a comma-separated list of ``STAGE:MODE[:SECONDS][@WORD]``:

* STAGE: ``asr``, ``llm``, ``tts`` or ``render`` (the face renderer's ``jpeg_at``)
* MODE:
    - ``raise``: raise at once;
    - ``hang``: block before the first output, until the stage is cancelled or SECONDS pass (default 120);
    - ``slow``: wait SECONDS (default 1) before every output;
    - ``hang_mid`` / ``raise_mid``: give the first output, then hang / raise (a stream that dies half-way).
* ``@WORD``: only when the stage's input contains WORD (llm: the last line of the last user message;
  tts: the text to speak). Lets a test break one session while the others go on. Not available for asr and render.

Example: ``AVATAR_FAULTS="llm:hang_mid:20@HANGME,tts:raise@BOOM"``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from avatar.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "AVATAR_FAULTS"
STAGES = ("asr", "llm", "tts", "render")
MODES = {"raise": None, "hang": 120.0, "slow": 1.0, "hang_mid": 120.0, "raise_mid": None}
_released = threading.Event()  # set at shutdown so injected hangs end and worker threads exit


class InjectedFault(RuntimeError):
    pass


@dataclass
class Fault:
    stage: str
    mode: str
    seconds: float | None = None
    word: str | None = None

    def applies(self, text: str | None) -> bool:
        return self.word is None or (text is not None and self.word in text)

    def __str__(self) -> str:
        out = f"{self.stage}:{self.mode}"
        if self.seconds is not None:
            out += f":{self.seconds:g}"
        return out + (f"@{self.word}" if self.word else "")


def parse_faults(spec: str) -> list[Fault]:
    faults = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        body, _, word = item.partition("@")
        parts = body.split(":")
        if len(parts) not in (2, 3) or parts[0] not in STAGES or parts[1] not in MODES:
            raise ConfigError(f"{ENV}: cannot read {item!r}; write STAGE:MODE[:SECONDS][@WORD] with STAGE one of "
                              f"{', '.join(STAGES)} and MODE one of {', '.join(MODES)}")
        seconds = MODES[parts[1]]
        if len(parts) == 3:
            try:
                seconds = float(parts[2])
            except ValueError:
                raise ConfigError(f"{ENV}: {parts[2]!r} in {item!r} is not a number of seconds") from None
        if word and parts[0] in ("asr", "render"):
            raise ConfigError(f"{ENV}: @WORD does not apply to the {parts[0]} stage ({item!r})")
        faults.append(Fault(parts[0], parts[1], seconds, word or None))
    return faults


def faults_from_env(environ: dict | None = None) -> list[Fault]:
    spec = (os.environ if environ is None else environ).get(ENV, "")
    return parse_faults(spec) if spec.strip() else []


def release_hangs() -> None:
    _released.set()


def _hang(seconds: float | None, cancel: threading.Event | None = None) -> None:
    deadline = time.monotonic() + (seconds if seconds is not None else 120.0)
    while time.monotonic() < deadline and not _released.is_set():
        if cancel is not None and cancel.is_set():
            return
        time.sleep(0.05)


def _before_first(fault: Fault, cancel: threading.Event | None = None) -> None:
    if fault.mode == "raise":
        raise InjectedFault(f"injected fault: {fault}")
    if fault.mode == "hang":
        _hang(fault.seconds, cancel)


def _stream(fault: Fault | None, items: Iterator, cancel: threading.Event | None = None) -> Iterator:
    if fault is None:
        yield from items
        return
    try:
        _before_first(fault, cancel)
        if fault.mode == "hang" and cancel is not None and cancel.is_set():
            return
        for index, item in enumerate(items):
            if index == 1 and fault.mode == "raise_mid":
                raise InjectedFault(f"injected fault: {fault}")
            if index == 1 and fault.mode == "hang_mid":
                _hang(fault.seconds, cancel)  # the model's generator stays open meanwhile (holds its lock)
                return
            if fault.mode == "slow":
                time.sleep(fault.seconds or 0.0)
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _one_call(fault: Fault | None) -> None:
    """A stage with one output per call (ASR, one video frame): '_mid' modes act like the plain ones."""
    if fault is None:
        return
    if fault.mode in ("raise", "raise_mid"):
        raise InjectedFault(f"injected fault: {fault}")
    if fault.mode in ("hang", "hang_mid"):
        _hang(fault.seconds)
    elif fault.mode == "slow":
        time.sleep(fault.seconds or 0.0)


class _Proxy:
    def __init__(self, inner, faults: list[Fault]):
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _fault(self, text: str | None) -> Fault | None:
        return next((f for f in self._faults if f.applies(text)), None)


class FaultyASR(_Proxy):
    def transcribe(self, audio, **kwargs):
        _one_call(self._fault(None))
        return self._inner.transcribe(audio, **kwargs)


class FaultyLLM(_Proxy):
    def stream_chat(self, messages, **kwargs):
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        last_user = last_user.rsplit("\n", 1)[-1]  # a turn with no reply is merged into the next one
        return _stream(self._fault(last_user), self._inner.stream_chat(messages, **kwargs), kwargs.get("cancel"))


class FaultyTTS(_Proxy):
    def synthesize(self, text, *args, **kwargs):
        return _stream(self._fault(text), self._inner.synthesize(text, *args, **kwargs))


class FaultyAnimator(_Proxy):
    def jpeg_at(self, position, *args, **kwargs):
        _one_call(self._fault(None))
        return self._inner.jpeg_at(position, *args, **kwargs)


def install(models, faults: list[Fault]):
    """Wrap the model objects in place (``models.asr`` etc.) for the faults that name them."""
    _released.clear()
    wrappers = {"asr": FaultyASR, "llm": FaultyLLM, "tts": FaultyTTS}
    for stage, wrapper in wrappers.items():
        chosen = [f for f in faults if f.stage == stage]
        if chosen:
            setattr(models, stage, wrapper(getattr(models, stage), chosen))
    return models


def wrap_animator(animator, faults: list[Fault]):
    chosen = [f for f in faults if f.stage == "render"]
    return FaultyAnimator(animator, chosen) if chosen and animator is not None else animator
