"""Whether a reply sentence gives the kind of fact its question asks for: a place to "Where is the
clinic?", a time to "What time do you close on Fridays?", an amount to "How much is a filling?" (issue 25).

Qwen 0.5B answered "Where is the clinic?" with "The clinic is located at Maple Street, Riverton." (the
documents give "47 Maple Street") and "What time do you close on Fridays?" with "The clinic is closed on
Fridays." (the documents: "Friday: 8:00 to 14:00"). Nothing in those sentences is unsupported, so the
specifics check let them through. Here a sentence on the question's topic that lacks the asked kind of
fact is replaced by the passage sentence that has it: the documents' own words, as a table's row is
given directly.

Only the first sentence on the topic is judged, and only when a passage sentence on the same words holds
that kind of fact: "Where can I park?" - "Behind the building." needs no street number, since no
passage about parking has one.
"""

from __future__ import annotations

import re

from avatar.knowledge.polarity import sentences, topic
from avatar.knowledge.specifics import numbers

_WHERE = re.compile(r"^\s*(?:and\s+)?where\s+(?:is|are)\b", re.IGNORECASE)
_WHEN = re.compile(r"^\s*(?:and\s+)?(?:when|what time|at what time|by what time|until what time|how early|how late)\b",
                   re.IGNORECASE)
_COUNT = re.compile(r"^\s*(?:and\s+)?how many\b", re.IGNORECASE)
_MONEY = re.compile(r"[$€£¥]\s?\d|\d\s?(?:dollars?|euros?|pounds?|yuan|元|块)", re.IGNORECASE)
_AMOUNT = re.compile(r"^\s*(?:and\s+)?(?:how much|what (?:is|does|do)\b.{0,30}\b(?:cost|price|fee|charge|"
                     r"deposit)s?\b)", re.IGNORECASE)
_ADDRESS = re.compile(r"\b\d+[a-z]?\s+(?:[A-Z][\w'-]*\s+){1,3}(?:Street|St|Road|Rd|Lane|Avenue|Ave|Square|Way|"
                      r"Boulevard|Drive|Place|Quay|Row|Court|Close|Hill)\b")


def asked_kind(question: str) -> str | None:
    """'place', 'time', 'amount' (money) or 'count' for a where/when/how-much/how-many question, else None."""
    if _WHERE.match(question):
        return "place"
    if _WHEN.match(question):
        return "time"
    if _COUNT.match(question):
        return "count"
    if _AMOUNT.match(question):
        return "amount"
    return None


def has_kind(sentence: str, kind: str) -> bool:
    if kind == "place":
        return bool(_ADDRESS.search(sentence))
    if kind == "amount":  # a price, not any number ("a filling lasts 10 to 15 years" is no price)
        return bool(_MONEY.search(sentence))
    return bool(numbers(sentence))


def missing_fact(question: str, sentence: str, evidence_texts: list[str]) -> str | None:
    """The passage sentence to say instead of ``sentence`` when ``sentence`` is on the question's topic but
    lacks the place, time or amount it asks for and a passage sentence on the same words has one; else None."""
    kind = asked_kind(question)
    asked = topic(question)
    if kind is None or not asked or not topic(sentence) & asked or has_kind(sentence, kind):
        return None
    best, found = 0, None
    for text in evidence_texts:
        # A table's row is one fact: "Treatment: Filling; Price: $150; Duration: 40 minutes".
        for candidate in [*sentences(text), *([text.strip()] if ";" in text and "." not in text[:-1] else [])]:
            shared = len(topic(candidate) & asked)
            if shared > best and has_kind(candidate, kind):
                best, found = shared, candidate
    return found.rstrip(".") + "." if found else None
