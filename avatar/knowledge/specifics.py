"""The specifics of a sentence (numbers, prices, times, phone numbers, names) and whether a text
supports them.

Small models invent exactly these: asked for a price or a name the documents do not give, Qwen 0.5B
and 1.5B answered "costs 1200 dollars" or "our head mechanic is John Doe" every time (issue 13). The
check is deliberately literal, so it is fast (~0.1 ms a clause on the loaded 2-core VM) and predictable:

- a number is supported when the same value appears in the support text, whatever the writing:
  "$1,890.00" = "1890", "nine" = "9", "six pm" = "18:00", "九点" = "9"; a phone number or other long
  digit string must appear digit for digit;
- a name (a capitalised word that does not start a sentence, or a run of two or more capitalised
  words anywhere) is supported when each of its words appears in the support text.

Chinese names are not detected: Chinese has no capital letters, and no word list ships with the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from avatar.knowledge.terms import EN_STOP

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORD = "|".join(sorted([*_SMALL, *_TENS, *_SCALES], key=len, reverse=True))
# A run of number words: "twenty-five", "one hundred and twenty", "nine".
_WORDS_RUN = re.compile(rf"\b(?:{_NUMBER_WORD})(?:(?:[\s-]+|\s+and\s+)(?:{_NUMBER_WORD}))*\b", re.IGNORECASE)
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2, "〇": 0}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
# Chinese numerals are only read as numbers before a unit, so that 一起 ("together") is not "1".
_ZH_RUN = re.compile(r"[零〇一二两三四五六七八九十百千万]+(?=[元块角点号月日天周个位岁年次分%％小])")
_DIGITS = re.compile(r"\d+(?:[.,:]\d+)*")
_PM = re.compile(r"^\s*(?:p\.?\s?m\b|in the (?:afternoon|evening)|下午|晚上)", re.IGNORECASE)
_ONE_UNITS = re.compile(r"^[\s-]*(?:dollars?|euros?|pounds?|yuan|percent|o'clock|[ap]\.?m\b|hours?|days?|"
                        r"weeks?|months?|years?|minutes?)", re.IGNORECASE)
# Capitalised words that are not names.
_NOT_NAMES = frozenset("""i i'm i'll i've i'd ok okay am pm a.m. p.m. mr mrs ms dr sir madam hi hello
dear yes no sorry thanks thank please sure""".split())
# Two times or two years joined by a dash are a range, not a code: "9.00-18.00", "2011-2020".
_RANGE = re.compile(r"\d{1,2}[.:]\d{2}\s*-\s*\d{1,2}[.:]\d{2}|(?:19|20)\d\d\s*-\s*(?:19|20)\d\d")
_WORD = re.compile(r"[^\W\d_][\w'’.-]*[^\W_]|[^\W\d_]")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"“(]|\n)\s*$")


@dataclass(frozen=True)
class Specific:
    kind: str  # "number" | "name"
    text: str  # as written in the sentence
    values: tuple[str, ...]  # normalised forms; any one found in the support text supports it


def _words_value(words: str) -> int | None:
    total, current = 0, 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word == "and":
            continue
        if word in _SMALL:
            current += _SMALL[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current


def _zh_value(run: str) -> int:
    """十二 -> 12, 二十 -> 20, 一百二十 -> 120, 两 -> 2, 二零二四 -> 2024, 三万 -> 30000."""
    total = section = digit = 0
    after_digit = False
    for char in run:
        if char in _ZH_DIGITS:
            digit = digit * 10 + _ZH_DIGITS[char] if after_digit else _ZH_DIGITS[char]
            after_digit = True
            continue
        if char == "万":
            total += (section + digit) * 10000
            section = 0
        else:
            section += (digit or 1) * _ZH_UNITS[char]
        digit, after_digit = 0, False
    return total + section + digit


def _number_forms(raw: str, after: str) -> tuple[str, ...]:
    """Normalised values of a number written with digits: '1,890.00' -> ('1890',); '18:00' -> ('18', '6');
    '6' before 'pm' -> ('6', '18')."""
    text = raw
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):  # thousands separators
        text = text.replace(",", "")
    if re.fullmatch(r"\d{1,2}:\d{2}", text):  # a time of day: the hour is the value, minutes when not :00
        hour, minute = (int(x) for x in text.split(":"))
        forms = [f"{hour}:{minute:02d}"] if minute else [str(hour)]
        if minute == 0 and hour > 12:
            forms.append(str(hour - 12))
        elif minute and hour > 12:
            forms.append(f"{hour - 12}:{minute:02d}")
        if _PM.match(after) and hour < 12:
            forms.append(str(hour + 12) if not minute else f"{hour + 12}:{minute:02d}")
        return tuple(forms)
    try:
        value = float(text.replace(",", "."))
    except ValueError:  # "1.2.3": a version or a code, compared as written
        return (text,)
    forms = [_fmt(value)]
    if value.is_integer() and 0 < value < 12 and _PM.match(after):
        forms.append(str(int(value) + 12))
    if value.is_integer() and 12 < value < 24:
        forms.append(str(int(value) - 12))  # "18" hours also reads "6" (pm)
    return tuple(forms)


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def numbers(text: str) -> list[Specific]:
    """Every number in ``text``, with digits, in words or in Chinese numerals."""
    found: list[Specific] = []
    spans: list[tuple[int, int]] = []
    for match in re.finditer(r"\+?\(?\d[\d ()./-]{5,}\d", text):  # phone numbers and other long codes
        digits = re.sub(r"\D", "", match.group())
        if len(digits) >= 7 and not _RANGE.fullmatch(match.group().strip()):
            found.append(Specific("number", match.group().strip(), (digits,)))
            spans.append(match.span())
    for match in _DIGITS.finditer(text):
        if any(s <= match.start() < e for s, e in spans):
            continue
        found.append(Specific("number", match.group(), _number_forms(match.group(), text[match.end():])))
    for match in _WORDS_RUN.finditer(text):
        words = match.group()
        if words.lower() == "one" and not _ONE_UNITS.match(text[match.end():]):
            continue  # "one of our mechanics", "that one": not a quantity anyone could invent
        value = _words_value(words)
        forms = [str(value)]
        if 0 < value < 12 and _PM.match(text[match.end():]):
            forms.append(str(value + 12))
        found.append(Specific("number", words, tuple(forms)))
    for match in _ZH_RUN.finditer(text):
        value = _zh_value(match.group())
        forms = [str(value)] + ([str(value + 12)] if 0 < value < 12 and _PM.match(text[match.end():]) else [])
        found.append(Specific("number", match.group(), tuple(forms)))
    return found


def names(text: str) -> list[Specific]:
    """Capitalised words that are not at the start of a sentence, and runs of capitalised words."""
    found: list[Specific] = []
    run: list[re.Match] = []

    def close() -> None:
        if not run:
            return
        first_starts = bool(_SENTENCE_START.search(text[: run[0].start()]))
        if first_starts and len(run) > 1 and run[0].group().lower() in EN_STOP:
            run.pop(0)  # "On Saturdays": a capitalised "On" starts the sentence, "Saturdays" is the name
            first_starts = False
        words = [m.group() for m in run if m.group().lower().replace("’", "'") not in _NOT_NAMES]
        if len(words) >= 2 or (words and not first_starts):
            found.append(Specific("name", " ".join(words), tuple(w.lower() for w in words)))
        run.clear()

    last_end = 0
    for match in _WORD.finditer(text):
        gap = text[last_end : match.start()]
        if run and gap.strip():  # punctuation between two words ends a run
            close()
        if match.group()[0].isupper():
            run.append(match)
        else:
            close()
        last_end = match.end()
    close()
    return found


def specifics(text: str) -> list[Specific]:
    return numbers(text) + names(text)


class Support:
    """What a reply may state: the numbers and words of the retrieved passages and of the conversation."""

    def __init__(self, facts: str, names_from: str = ""):
        """``facts`` supports numbers and names; ``names_from`` (the user's words, the persona) only names:
        repeating a number the user said would confirm it, and the user may be wrong."""
        self.values = {v for spec in numbers(facts) for v in spec.values}
        self.digit_runs = re.sub(r"\D+", " ", facts).split()
        self.words = {w.lower() for w in _WORD.findall(f"{facts} {names_from}")}
        self.words |= {w.rstrip(".") for w in self.words}

    def supports(self, spec: Specific) -> bool:
        if spec.kind == "number":
            if any(v in self.values for v in spec.values):
                return True
            digits = spec.values[0]  # a long code may be written in groups: "555 0142" vs "5550142"
            return len(digits) >= 7 and digits.isdigit() and digits in "".join(self.digit_runs)
        return all(self._has_word(v) for v in spec.values)

    def _has_word(self, word: str) -> bool:
        plain = word.rstrip(".").replace("’", "'")
        if plain in self.words or plain.split("'")[0] in self.words:
            return True
        return len(plain) > 3 and plain.rstrip("s") in self.words  # "Saturdays" / "Saturday"

    def unsupported(self, text: str) -> list[Specific]:
        return [spec for spec in specifics(text) if not self.supports(spec)]
