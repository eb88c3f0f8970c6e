"""Small stand-ins for the models, for fast unit tests of the orchestration. Every stage also has a
test with its real model (tests/test_stages.py, tests/test_loop.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from avatar.models.asr.base import Transcript
from avatar.models.tts.base import SpeechChunk


class EnergyVAD:
    sample_rate = 16000
    frame_samples = 512

    class Stream:
        def probability(self, frame):
            return 1.0 if float(np.sqrt(np.mean(frame**2))) > 0.02 else 0.0

        def reset(self):
            pass

    def new_stream(self):
        return self.Stream()


class FixedASR:
    sample_rate = 16000

    def __init__(self, text="hello there", delay=0.05):
        self.text, self.delay, self.calls = text, delay, 0

    def transcribe(self, audio, *, language=None):
        self.calls += 1
        time.sleep(self.delay)
        return Transcript(self.text if len(audio) > 1600 else "")


class WordLLM:
    """Streams a fixed reply a word at a time, checking the cancel event like a real backend."""

    context_tokens = 2048
    max_concurrent = 1

    def __init__(self, reply="Sure, I can help with that. Here is a longer second sentence for you.", delay=0.02):
        self.reply, self.delay = reply, delay
        self.prompts: list[list[dict]] = []
        self.conversations: list[str | None] = []
        self.cancelled = threading.Event()

    def count_tokens(self, text):
        return len(text.split())

    def stream_chat(self, messages, *, max_tokens=256, temperature=0.7, cancel=None, conversation=None):
        self.prompts.append(messages)
        self.conversations.append(conversation)
        for word in self.reply.split(" "):
            if cancel is not None and cancel.is_set():
                self.cancelled.set()
                return
            time.sleep(self.delay)
            yield word + " "


class ToneTTS:
    """0.06 s of tone per word, one chunk per call."""

    sample_rate = 22050

    def synthesize(self, text, voice=None):
        n = int(0.06 * self.sample_rate * max(1, len(text.split())))
        t = np.arange(n) / self.sample_rate
        yield SpeechChunk((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), text, [])


@dataclass
class FakeModels:
    vad: object
    asr: object
    llm: object
    tts: object


def fake_models(**kw) -> FakeModels:
    return FakeModels(kw.get("vad", EnergyVAD()), kw.get("asr", FixedASR()), kw.get("llm", WordLLM()),
                      kw.get("tts", ToneTTS()))


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
