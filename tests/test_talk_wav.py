"""`avatar talk --wav` hears the whole recording: every sentence of it, and every turn's reply."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np

from avatar.tools.client import INPUT_GRACE_S, RECOGNITION_WAIT_S, ProtocolClient, _all_heard, write_wav
from tests.conftest import FAST
from tests.speech import espeak_wav

# Three short sentences and a word of each that tiny.en hears reliably in espeak-ng's voice.
SENTENCES = [("What is the capital of Italy?", "italy"),
             ("I like green apples very much.", "apples"),
             ("What colour is the sky?", "sky")]
PAUSE_S = 0.7

SERVER = {
    **FAST,
    "video.enabled": False,
    # The end-of-turn model joins sentences 0.7 s apart into one utterance once the speaker has gone on
    # after a pause (their rhythm: only a pause longer than 0.7 s x 1.25 + 0.25 s ends a turn), so the
    # second and third sentences made one turn. The silence rule (vad.end_silence_ms, 480 ms) makes each
    # sentence its own turn, so the test sees three turns after the first.
    "turn.detector": "silence",
    "llm.max_tokens": 40,  # the last reply is played out in real time: keep it short
}


def _trimmed(audio: np.ndarray) -> np.ndarray:
    """Without espeak-ng's leading and trailing silence, so the pauses are the ones the test makes."""
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[loud[0]: loud[-1] + 1]


def test_talk_wav_hears_every_sentence_of_a_recording_and_prints_every_turn(server_factory, tmp_path):
    pause = np.zeros(int(PAUSE_S * 16000), np.float32)
    clips = [_trimmed(espeak_wav(text, tmp_path / f"sentence{i}.wav")) for i, (text, _) in enumerate(SENTENCES)]
    recording = np.concatenate([clips[0], pause, clips[1], pause, clips[2]])
    wav = tmp_path / "three_sentences.wav"
    write_wav(wav, (recording * 32767).astype("<i2"), 16000)

    server = server_factory(SERVER)
    run = subprocess.run([sys.executable, "-m", "avatar", "talk", "--url", server.ws_url, "--wav", str(wav),
                          "--no-video"], capture_output=True, text=True, timeout=240)
    print(run.stdout)
    assert run.returncode == 0, run.stderr

    lines = run.stdout.splitlines()
    heard = [line.removeprefix("you:").strip().lower() for line in lines if line.startswith("you:")]
    replies = [line.removeprefix("agent:").strip() for line in lines if line.startswith("agent:")]
    # The whole file was heard: one transcript per sentence, each with its sentence's word, in order.
    assert len(heard) == len(SENTENCES), run.stdout
    for transcript, (_, word) in zip(heard, SENTENCES):
        assert word in transcript, run.stdout
    # Every turn's reply was printed. The first two may have been cut short by the next sentence (a
    # barge-in, printed "[interrupted ...]"); the last one was heard to its end.
    assert len(replies) == len(SENTENCES) and all(replies), run.stdout
    assert "[interrupted" not in replies[-1], run.stdout
    assert " 3 turns, " in run.stdout, run.stdout


class _Messages:
    """Server messages for ProtocolClient.receive, as a WebSocket would yield them."""

    def __init__(self, *events: dict):
        self.events = events

    async def __aiter__(self):
        for event in self.events:
            yield json.dumps(event)


def test_the_client_waits_while_the_server_is_still_hearing_or_answering():
    """When talk() stops sending: not while an utterance is under way, being transcribed or answered."""
    client = ProtocolClient(None)

    def hear(*events: dict) -> None:
        client.ws = _Messages(*events)
        asyncio.run(client.receive())

    input_end = time.monotonic()
    after = input_end + INPUT_GRACE_S + 0.1
    assert not _all_heard(client, after, input_end)  # no turn yet: wait for one (or the timeout)
    hear({"type": "vad", "event": "speech_start", "t_ms": 0.0},
         {"type": "transcript", "text": "What is", "final": False},
         {"type": "vad", "event": "speech_end", "t_ms": 1500.0},
         {"type": "transcript", "text": "What is the capital of Italy?", "final": True},
         {"type": "turn_start", "turn_id": 1, "user_text": "What is the capital of Italy?", "source": "voice"},
         {"type": "vad", "event": "speech_start", "t_ms": 2200.0})  # the next sentence: a barge-in
    assert not _all_heard(client, after, input_end)  # still speaking, and turn 1 is open
    hear({"type": "turn_end", "turn_id": 1, "reply": "Rome", "heard": "", "interrupted": True,
          "audio_samples": 0, "sources": []},
         {"type": "vad", "event": "speech_end", "t_ms": 3800.0})
    now = time.monotonic()
    assert not _all_heard(client, max(now, after), input_end)  # its transcript and turn are still to come
    assert _all_heard(client, now + RECOGNITION_WAIT_S, input_end)  # an empty transcript: no turn will come
    hear({"type": "turn_start", "turn_id": 2, "user_text": "I like apples.", "source": "voice"})
    assert not _all_heard(client, after, input_end)  # turn 2 is being answered
    hear({"type": "turn_end", "turn_id": 2, "reply": "Me too.", "heard": "Me too.", "interrupted": False,
          "audio_samples": 22050, "sources": []})
    assert _all_heard(client, after, input_end)
    assert not _all_heard(client, input_end + INPUT_GRACE_S / 2, input_end)  # the input's end may hold speech
