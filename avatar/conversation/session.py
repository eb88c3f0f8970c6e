"""One conversation: routes what arrives to the listener or the turn runner, and interrupts and closes.

    mic audio -> Listener (avatar/conversation/listener.py): VAD, partials, speculation, end of turn
              -> utterances -> TurnRunner (avatar/conversation/turns.py): LLM -> clauses -> TTS -> media timeline + face
    typed text, a script line, a viewer comment -> TurnRunner directly (``say``, ``say_line``), which
             return a SpeechHandle (avatar/conversation/speech.py) to await or interrupt
    speech while the agent talks (barge-in) -> interrupt: cancel LLM/TTS, flush queued audio, tell the
             client, remember only what the user heard.

Per-session state only; the models are shared (avatar/runtime/services.py). Sessions are built by
avatar/conversation/factory.py; everything they report goes out as typed events (avatar/events.py) on the connection's
event bus.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from avatar.conversation.listener import Listener
from avatar.conversation.speech import SpeechHandle
from avatar.conversation.turns import Conversation, TurnRunner, TurnState, report_error
from avatar.events import Event, Transcript
from avatar.media.contract import Timeline


class Session:
    def __init__(self, services, timeline: Timeline, *, emit: Callable[[Event], None], conversation: Conversation,
                 face=None, resumed: bool = False, denoiser=None):
        self.services = services
        self.timeline = timeline  # this connection's output (avatar.media.contract.Timeline)
        self.emit = emit
        self.conversation = conversation
        self.face = face  # avatar.media.face_video.FaceVideo, or None without video
        self.resumed = resumed
        self.closed = False
        self.denoiser = denoiser  # avatar.media.denoise.Denoiser when audio.denoise is on
        self._close_callbacks: list[Callable[[], None]] = []
        self.turns = TurnRunner(services, conversation, emit=emit, timeline=timeline, face=face)
        self.listener = Listener(services.recognition, services.models.vad, services.config, self,
                                 session_id=conversation.session_id)
        services.open_sessions.add(conversation.session_id)
        timeline.add_listener(self.turns)

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    @property
    def user_id(self) -> str | None:
        return self.conversation.user_id

    @property
    def turn(self) -> TurnState | None:
        return self.turns.turn

    def busy(self) -> bool:
        """A reply is being made or played (a client listening to a long answer is not idle)."""
        return self.turns.turn is not None or self.timeline.is_playing()

    # -- inputs -------------------------------------------------------------------------------------------
    def on_audio(self, samples: np.ndarray) -> None:
        if self.denoiser is not None:  # noise suppression before VAD and ASR (audio.denoise)
            samples = self.denoiser.process(samples)
        self.listener.on_audio(samples)

    def on_text(self, text: str) -> None:
        """A typed message: the user's turn, at once."""
        if self.turns.turn is not None:
            self.turns.interrupt("text")
        self.emit(Transcript(text, final=True))
        self.say(text, "text")

    def say(self, text: str, source: str, *, about: str | None = None) -> SpeechHandle:
        """Answer ``text`` now, whatever its source ("text", "segment", "comment", ...); ``about``: what the
        knowledge base looks up when that is not ``text`` (a viewer's comment inside the host's prompt).
        Await the handle to know when the answer has been heard; ``handle.interrupt`` cuts it."""
        return self.turns.start(text, source, t_ref=time.monotonic(), about=about).handle

    def say_line(self, line: str, source: str, *, cue: str, remember: bool = True) -> SpeechHandle:
        """Say a fixed ``line`` (a kiosk's greeting, a show's script) without the LLM, as a turn like any
        other (events, latency marks, state, memory); ``cue`` stands for the user's side of the turn in
        memory (e.g. "(a visitor walks up)"), so later replies know what was said; ``remember=False``:
        not stored at all."""
        return self.turns.start(cue, source, t_ref=time.monotonic(), line=line, remember=remember).handle

    def interrupt(self, reason: str) -> None:
        self.turns.interrupt(reason)

    def report_playback(self, position: float) -> None:
        self.timeline.report_playback(position)

    def set_face(self, animator) -> None:
        self.face.set_animator(animator)

    # -- what the listener tells us (avatar.conversation.listener.ListenerEvents) ----------------------------------------
    def agent_speaking(self) -> bool:
        return self.turns.speaking()

    def emit_error(self, exc: BaseException, *, where: str) -> None:
        report_error(self.emit, exc, where=where, session_id=self.session_id)

    def user_started(self) -> None:
        if self.turns.turn is not None:
            self.turns.interrupt("barge_in")

    def heard_so_far(self, text: str) -> None:
        self.turns.prefill(text)

    def speculate(self, text: str, t_pause: float) -> None:
        turn = self.turns.start(text, "voice", t_ref=t_pause, released=False)
        turn.mark("asr_final")

    def drop_speculation(self) -> None:
        turn = self.turns.turn
        if turn is not None and not turn.released:
            self.turns.drop(turn)

    def utterance(self, text: str, t_end: float, t_decision: float) -> None:
        turn = self.turns.turn
        if turn is not None and not turn.released and turn.user_text == text:
            self.turns.release(turn)
        else:
            turn = self.turns.start(text, "voice", t_ref=t_end)
            turn.mark("asr_final")
        # Latency counts from the real end of speech, also for work that started before it was known.
        turn.t_ref = t_end
        turn.mark("endpoint", t_decision)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the session closes, after the turn in progress was stored (a kiosk visit
        forgets its turns there)."""
        self._close_callbacks.append(callback)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.turns.close()
        for callback in self._close_callbacks:
            callback()
        self.services.forget_session(self.session_id)  # its queued transcriptions, syntheses and replies
