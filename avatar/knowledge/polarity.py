"""Whether a reply clause says the opposite of the documents: "Yes, we are open on Sundays" against a
passage that says "We are closed on Sundays" (issue 25).

The number-and-name check (specifics.py) let these through: the clause has no number and no name, and
Qwen 0.5B answered such questions with the wrong "yes" or "no" (a shop closed on Sundays said it was open;
returns that are allowed for a fee were refused). The check here is literal too, so that it is fast and
predictable:

- a sentence is negative when it has a negation cue ("not", "n't", "no X", "never", "cannot", "closed",
  "unable"); otherwise positive;
- a clause's claim is its own polarity when it has content words ("we are open on Sundays"); a bare
  "Yes." or "No." to a yes/no question claims the question's statement, or its negation;
- the evidence is the passage sentence (or sentences) sharing the most content words with the claim and
  at least one with the question; when they all have one polarity and the claim has the other, the clause
  contradicts the documents.

It cannot see antonyms that carry no negation ("Is breakfast extra?" - "Yes, it is extra" against
"included"), a condition ("open on Friday afternoons" against "Friday: 8:00 to 14:00"), or a topic the
passages phrase with other words ("a pet" against "dogs"). docs/knowledge.md lists what it catches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from avatar.knowledge.terms import ANSWER_WORDS, EN_STOP

# "without" and "except" are left out: "walk in without an appointment", "paid without interest" and
# "except for emergencies" qualify, they do not deny.
_NEG_WORD = re.compile(r"\b(?:not|never|cannot|can't|nor|none|nothing|nobody|closed|unable|unavailable|"
                       r"prohibited|forbidden|neither)\b|n't\b|n’t\b", re.IGNORECASE)
# "no" negates when it qualifies something ("no swimming pool", "no later than"); a leading "No," is an answer.
_NO_DET = re.compile(r"(?<![^\W\d_])no\s+(?!,)(?=[^\W\d_])", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?P<word>yes|yeah|yep|sure|of course|absolutely|certainly|definitely|"
                     r"no|nope|sorry,?\s+no|unfortunately,?\s+(?:no|not))\b[\s,.!:;-]*", re.IGNORECASE)
_NEG_ANSWERS = ("no", "nope", "sorry", "unfortunately")
_YES_NO_QUESTION = re.compile(r"^\s*(?:and\s+|so\s+|but\s+)?(?:are|is|am|do|does|did|can|could|may|might|will|"
                              r"would|shall|should|have|has|had|was|were|must)\b", re.IGNORECASE)
_CLOSED = re.compile(r"\b(?:closed|shut)\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_LABEL_START = re.compile(r"\s+(?=[A-Z][\w' -]{0,30}:\s)")
_LABEL = re.compile(r"^[A-Z][\w' -]{0,30}:\s+")
_FIELD = re.compile(r"^[^:.]{1,30}:\s*[^\s][^.;]{0,40}\.?$")
_CAPS_HEADING = re.compile(r"^(?:[A-Z]{2,}\s+)+(?=[A-Z][a-z])")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s*;\s+|\n+")
# Words that carry the negation or the answer, not the topic: also the words that say what kind of answer a
# question wants ("bring", "take", "get"), so that "Can I bring my cat?" is about the cat.
_NOT_TOPIC = frozenset("""not never cannot can't nor none nothing nobody closed unable unavailable except without
prohibited forbidden neither no yes yeah yep sure course absolutely certainly definitely unfortunately sorry
don't doesn't isn't aren't won't wasn't weren't didn't haven't hasn't shouldn't couldn't wouldn't mustn't
we'd we're we'll we've you'd you're you'll you've it's that's there's they're i'm i'll i've i'd
allowed welcome possible available offer offers accept accepts shut""".split()) | EN_STOP | ANSWER_WORDS


def stem(word: str) -> str:
    """A crude stem, enough to match "Sundays" with "Sunday" and "dogs" with "dog"."""
    word = word.lower().replace("’", "'").split("'")[0]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith(("ed", "ing")):  # "returned", "opening"
        word = word[: -2 if word.endswith("ed") else -3]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:-1] if len(word) > 4 and word.endswith("e") else word  # "smoke" = "smoking" = "smok"


def topic(text: str) -> set[str]:
    """The content words of ``text``, stemmed (hyphenated words also give their parts: "e-bike"). "Closed"
    is about opening: "closed on Sundays" answers "open on Sundays?" (the negation is seen apart)."""
    words: set[str] = {"open"} if _CLOSED.search(text) else set()
    for match in _WORD.finditer(text):
        for part in [match.group(), *match.group().split("-")]:
            if part.lower() not in _NOT_TOPIC and len(part) > 1:
                words.add(stem(part))
    return words


def negative(text: str) -> bool:
    body = _ANSWER.sub("", text, count=1)
    return bool(_NEG_WORD.search(body) or _NO_DET.search(body))


def is_yes_no(question: str) -> bool:
    return bool(_YES_NO_QUESTION.match(question)) and " or " not in question.lower()


def answer_word(clause: str) -> str | None:
    """'yes' or 'no' when the clause starts with one ("Yes,", "Sorry, no", "Of course"), else None."""
    match = _ANSWER.match(clause)
    if not match:
        return None
    return "no" if match.group("word").lower().startswith(_NEG_ANSWERS) else "yes"


def reply_polarity(question: str, reply: str) -> str | None:
    """The answer a reply gives to a yes/no question: 'yes', 'no', or None (no answer: "I don't know").
    Used to score the evaluation; the check itself works clause by clause (``contradiction``)."""
    first = _SENTENCE.split(reply.strip(), maxsplit=1)[0]
    word = answer_word(first)
    if word is not None:
        return word
    if re.search(r"don't (?:have|know)|do not (?:have|know)|not sure|no information", first, re.IGNORECASE):
        return None
    asked_negative = negative(question)
    return "no" if negative(first) != asked_negative else "yes"


def answer_disagrees(question: str, sentence: str) -> str | None:
    """``sentence`` without its leading "Yes"/"No" when that word says the opposite of the statement after
    it ("Yes, parties are not allowed" to "Are parties allowed?"): the statement is what can be checked
    against the documents, and the word only confuses. None when they agree or there is no such word."""
    word, match = answer_word(sentence), _ANSWER.match(sentence)
    rest = sentence[match.end():] if match else ""
    if word is None or not is_yes_no(question) or not topic(rest) & topic(question):
        return None
    claims_negative = negative(question) != (word == "no")
    if claims_negative == negative(rest):
        return None
    return rest[:1].upper() + rest[1:]


@dataclass(frozen=True)
class Contradiction:
    claim: str  # the clause
    evidence: str  # the passage sentence it contradicts, as the documents say it


def sentences(text: str) -> list[str]:
    """The statements of a passage: its sentences, also cut where a "Label:" starts (a text file's lines
    "Phone: 555-0163 Email: ..." are joined into one paragraph), each as it can be spoken: without an
    all-capitals heading in front ("HOUSE RULES Smoking is not allowed") or a label before a lower-case
    clause ("Getting here: we have no airport shuttle")."""
    out = []
    for sentence in _SENTENCE.split(text):
        for part in _LABEL_START.split(sentence):
            part = _CAPS_HEADING.sub("", part.strip())
            if (label := _LABEL.match(part)) and part[label.end():][:1].islower():
                part = part[label.end():]
                part = part[:1].upper() + part[1:]
            if part:
                out.append(part)
    return out


def contradiction(clause: str, question: str, evidence_texts: list[str]) -> Contradiction | None:
    """The passage sentence that ``clause`` contradicts, answering ``question``, or None."""
    asked = topic(question)
    if not asked:
        return None
    claim_words = topic(clause)
    word = answer_word(clause)
    # A sentence that shares one word ("appointment") with a claim of several is about something else.
    least = min(2, len(claim_words & asked))
    if claim_words & asked:
        claim_negative = negative(clause)
    elif word is not None and not claim_words and is_yes_no(question):
        claim_words = asked  # a bare "Yes." claims the question's statement, "No." its negation
        claim_negative = negative(question) != (word == "no")
        # ... and needs a sentence on the question, not one that shares a word ("appointment") with it.
        least = min(2, len(asked))
    else:
        return None  # off the question's topic ("You can call us"): nothing to compare
    best, found = 0, []
    for text in evidence_texts:
        for sentence in sentences(text):
            if _FIELD.match(sentence):
                continue  # a table's "Treatment: Crown": a value, not a statement that could say yes or no
            words = topic(sentence)
            shared = len(words & claim_words)
            if not words & asked or shared == 0:
                continue
            if shared > best:
                best, found = shared, [sentence]
            elif shared == best:
                found.append(sentence)
    if not found or best < least:
        return None
    polarities = {negative(s) for s in found}
    if len(polarities) != 1 or polarities.pop() == claim_negative:
        return None
    return Contradiction(clause, found[0])
