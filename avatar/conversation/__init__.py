"""One conversation: the session that routes inputs, the listener (VAD, partials, end of turn), the turn runner
(LLM -> clauses -> TTS -> timeline), admission and memory. Knows nothing of the network or the entry points."""
