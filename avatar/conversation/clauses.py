"""Split a streaming LLM reply into clauses for speech synthesis.

The first phrase is cut as early as it is safe, so that speech starts while the model is still writing:
at the first sentence end ("Hello!"), at a comma after three words or more, or after four words where a new
phrase begins ("and", "because", "which"). Shorter first phrases would end before the model has written the
next one, a gap in the voice. ``avatar bench`` measured the first clause 0.9 s after the first token when
it needed a sentence of 12 characters or more. Later clauses prefer sentence ends, so the voice keeps a
natural prosody.
"""

from __future__ import annotations

import re

# Lengths are in Latin-letter units, a Chinese character counting as a syllable (avatar/language.py), so that
# the minimum clause lengths mean about the same speech time in both languages.
from avatar.language import index_at_width, join_clauses, spoken_prefix, spoken_units, spoken_width

# Western punctuation ends a clause only before a space ("3.5", "e.g." stay whole); Chinese punctuation
# ends one where it stands, since Chinese puts no space after it.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s|$)|[。！？]+[”’」』）)]*|\n+")
_CLAUSE_END = re.compile(r"[,;:—]+(?=\s|$)|[，；：、]+")
# "!" and "?" end a sentence even before the next token arrives ("." may be a decimal point or "Mr.").
_EXCLAIM_END = re.compile(r"[!?！？]+[\"')\]”’」』）]*$")
# Words that start a new phrase: the first phrase may end just before one of them.
_PHRASE_START = re.compile(r"\s(?=(?:and|but|so|because|which|that|when|while|if|or|then|to|with|for|"
                           r"in|on|at|from|about|as|since|until|unless|although|though)\b)", re.I)
# Markdown and emoji mean nothing spoken; strip them before synthesis.
_UNSPEAKABLE = re.compile(r"[*_#`~|<>\[\]{}]|[\U0001F000-\U0001FAFF\u2600-\u27BF]")


def speakable(text: str) -> str:
    return re.sub(r"\s+", " ", _UNSPEAKABLE.sub("", text)).strip()


class ClauseSplitter:
    def __init__(self, first_min_chars: int = 2, min_chars: int = 40, max_chars: int = 220,
                 first_phrase_words: int = 4):
        self.first_min_chars = first_min_chars
        self.first_phrase_words = first_phrase_words
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, piece: str) -> list[str]:
        self._buffer += piece
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            clause, self._buffer = self._buffer[:cut], self._buffer[cut:]
            clause = speakable(clause)
            if clause:
                out.append(clause)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        clause, self._buffer = speakable(self._buffer), ""
        return [clause] if clause else []

    def _find_cut(self) -> int | None:
        text = self._buffer
        minimum = self.first_min_chars if self._emitted == 0 else self.min_chars
        for match in _SENTENCE_END.finditer(text):
            if spoken_width(text[:match.end()]) >= min(minimum, self.first_min_chars) and len(text) > match.end():
                return match.end()
        if self._emitted == 0:
            # A comma after a word or two ("Well,") would leave a gap before the next phrase is written.
            for match in _CLAUSE_END.finditer(text):
                if spoken_units(text[: match.end()]) >= self.first_phrase_words - 1 and len(text) > match.end():
                    return match.end()
            if (match := _EXCLAIM_END.search(text)) and spoken_width(text[: match.end()]) >= minimum:
                return match.end()
            for match in _PHRASE_START.finditer(text):
                if spoken_units(text[: match.start()]) >= self.first_phrase_words:
                    return match.start()
        if spoken_width(text) > self.max_chars:  # a run-on sentence: cut at the last space (Chinese: the limit)
            limit = index_at_width(text, self.max_chars)
            space = text.rfind(" ", 0, limit)
            return space if space > 0 else limit
        return None


def heard_text(spans: list[tuple[int, int, str]], position: int) -> str:
    """The part of a reply the listener heard, given (start, end, text) spans of audio on the output
    timeline and the playback position when it stopped. Within a partly played span the text is cut in
    proportion to the time played, at a word boundary; Chinese, which has no spaces, by characters."""
    heard: list[str] = []
    for start, end, text in spans:
        if position >= end:
            heard.append(text)
        elif position > start:
            heard.append(spoken_prefix(text, (position - start) / max(1, end - start)))
            break
        else:
            break
    return join_clauses(heard).strip()  # no space between Chinese clauses, one between others
