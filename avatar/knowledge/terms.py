"""Search terms for English and Chinese text, the same for documents and questions.

SQLite's unicode61 tokenizer cuts text at spaces and punctuation, which Chinese does not use: a whole
Chinese sentence would be one token and match nothing. Chinese runs are therefore rewritten as
overlapping character bigrams ("营业时间" -> "营业 业时 时间") before indexing and before searching,
which needs no word list and matches two-character words, the commonest kind. The trigram tokenizer
was the alternative, but it cannot match a query shorter than three characters (most Chinese words are
two) and it disables the Porter stemmer that lets "opens" find "open".
"""

from __future__ import annotations

import re

from avatar.language import CJK_RANGES

# Han characters are paired into bigrams; kana and hangul are left to unicode61.
_TOKEN = re.compile(rf"[{CJK_RANGES}]+|[^\W_{CJK_RANGES}]+")
_CJK_RUN = re.compile(rf"[{CJK_RANGES}]+")
# Particles and pronouns that every Chinese question has; a run is cut at them before pairing, so that
# "你们几点开门" searches for 几点 点开 开门 and not for 你们 们几.
_ZH_STOP = set("的了吗呢吧啊呀么我你您他她它们请是")

# Words that say nothing about which document answers: question words, pronouns, auxiliaries. Content
# words ("open", "price", "return") are kept.
EN_STOP = frozenset("""
a an the and or but if of to in on at by for from with about as into than then so is are was were be been
being am do does did doing have has had having can could will would shall should may might must i me my
mine we us our ours you your yours he him his she her it its they them their this that these those what
which who whom whose when where why how there here please tell know want like just also any some much many
more most very really get got let hi hello hey thanks thank yes no not ok okay
""".split())


# Words that say what kind of answer a question wants, not what it is about ("the *price* of a helmet",
# "do I need to *bring*"): a question about something the documents never mention is recognised by its
# other words (see grounding.topic_gaps).
ANSWER_WORDS = frozenset("""
number numbers name names price prices cost costs charge charges fee fees pay paid much many time times date
dates day days long often big old new need needs bring get buy bought purchase something anything thing things
kind type way right now today currently exactly usually still ever else other another someone somebody anyone
person people place go come find give take make use used available possible allowed able good best usual ask
question tell say call help fast quick quickly soon late early far goes going went gets getting takes taking
run runs leave leaves
""".split())


def bigrams(run: str) -> list[str]:
    """Overlapping character pairs of a Chinese run; a single character stays as it is."""
    return [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]


def index_form(text: str) -> str:
    """The text as the index stores it: Chinese runs as bigrams, everything else as written (the
    tokenizer lowercases and stems)."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(bigrams(m.group())) + " ", text)


def query_terms(text: str) -> list[str]:
    """The distinct search terms of a question: content words, numbers and Chinese bigrams."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if _CJK_RUN.fullmatch(token):
            for part in re.split("[" + "".join(_ZH_STOP) + "]+", token):
                if part:
                    terms.extend(bigrams(part))
        else:
            word = token.lower()
            if word not in EN_STOP and (len(word) > 1 or word.isdigit()):
                terms.append(word)
    return list(dict.fromkeys(terms))


def fts_term(term: str) -> str:
    """One term as FTS5 query syntax: quoted, so that words such as NEAR or OR in a question are not
    operators (terms hold only letters and digits, never a quote). A word of four letters or more is also
    a prefix: Porter stems "rent", "rental" and "renters" apart, and "rent"* finds all three."""
    return f'"{term}"*' if len(term) >= 4 and not _CJK_RUN.match(term) and not term.isdigit() else f'"{term}"'


def fts_query(terms: list[str], op: str = "OR") -> str:
    """An FTS5 MATCH expression for passages with any (OR) or all (AND) of ``terms``."""
    return f" {op} ".join(fts_term(t) for t in terms)
