"""One turn's grounding: the passages that go into the prompt, the sources shown to the user, and the
check that every reply clause passes before it is spoken.

Prompting alone does not stop a small model from inventing: with a shop's documents in the prompt,
Qwen 0.5B and 1.5B still answered unknown prices and names with made-up ones every time (issue 13). So
the model is told to answer from the passages, and ``check`` then replaces a clause whose numbers or
names the passages do not contain with a sentence that says so and offers the phone number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from avatar.knowledge.answers import missing_fact
from avatar.knowledge.index import Passage
from avatar.knowledge.polarity import (Contradiction, answer_disagrees, answer_word, contradiction, is_yes_no,
                                       topic)
from avatar.knowledge.specifics import Specific, Support, names, specifics
from avatar.knowledge.terms import ANSWER_WORDS, query_terms
from avatar.language import Language, count_cjk, has_cjk, join_clauses

# Constant, so that it stays in the LLM's prompt cache with the persona's prompt; the passages of a turn
# go into that turn's user message instead (see Grounding.apply).
INSTRUCTION = (
    "Some messages begin with facts from the documents of the business you work for. Answer questions "
    "about the business only from those facts, and repeat their numbers, prices, times and names exactly. "
    "If the facts do not answer the question, say that you do not know{offer}. Never guess a price, a "
    "time, a name or a policy."
)
# The same rules when the whole folder is in the system prompt (Knowledge.standing): small folders.
STANDING = (
    "Below are facts from the documents of the business you work for. Answer questions about the "
    "business only from those facts, and repeat their numbers, prices, times and names exactly. If the "
    "facts do not answer the question, say that you do not know{offer}. Never guess a price, a time, a "
    "name or a policy.\n\nFacts from the documents:\n{facts}"
)
FALLBACK = {
    "en": ("I'm sorry, I don't have that information. You can call us at {phone}.",
           "I'm sorry, I don't have that information; please ask a member of staff."),
    "zh": ("抱歉，这个我不清楚。您可以拨打 {phone} 咨询。", "抱歉，这个我不清楚，请咨询店内工作人员。"),
}
# After a sentence that passed: the rest is not known, but what was said stands.
MORE = {
    "en": ("For more details, you can call us at {phone}.", "For more details, please ask a member of staff."),
    "zh": ("更多详情请拨打 {phone}。", "更多详情请咨询店内工作人员。"),
}
# A stop that ends a title, not a sentence: "Dr." + "Priya Raman opened the clinic" is one sentence.
_ABBREVIATION = re.compile(r"(?:^|\s)(?:Dr|Mr|Mrs|Ms|Prof|St|Mt|Ave|Rd|approx|e\.g|i\.e|etc)\.\s*$")
# A question for an amount: a word of it that no document holds means no document holds the amount ("How
# much is a bike helmet?"). Other questions may use words the documents do not ("Who *founded* the clinic?"
# of a clinic that "opened in 2009"; a dental emergency "at *night*"), and their numbers are still facts.
_AMOUNT = re.compile(r"\b(?:how (?:much|many|long|old)|price|prices|cost|costs|fee|fees|charge|charges|rate|"
                     r"deposit)\b|多少|几|价格|费用", re.IGNORECASE)
# Where a sentence's parts are cut for the polarity check.
_PARTS = re.compile(r"[,;:]\s+|\s+(?:but|although|though|however|whereas)\s+")
# A clause that ends its sentence: the held clauses of the sentence may be spoken.
_SENTENCE_DONE = re.compile(r"[.!?…。！？][\"')\]”’」』）]*\s*$")
# The persona speaking of itself: its name is support only here ("Hello Sam!" names the user wrongly).
_SELF = r"\b(?:I am|I'm|my name is|my name's|call me|this is|it's|me,)\s+(?:\w+\s+)?{name}\b|\b{name},? here\b"


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (for the CLI): ~4 characters per token, one per Chinese character."""
    cjk = count_cjk(text)
    return cjk + (len(text) - cjk + 3) // 4


def language_of(text: str, default: str = "en") -> str:
    """The FALLBACK language for a question: Chinese if it is written in Chinese, else the persona's
    language (normalised: "zh-CN" is zh), else English."""
    code = Language.of(text, default).code
    return code if code in FALLBACK else "en"


def instruction(phone: str, standing: str = "") -> str:
    """The system prompt's knowledge instruction; with ``standing`` (every passage, rendered), the whole
    folder follows it and turns carry no facts of their own."""
    offer = f" and that they can call {phone}" if phone else ""
    return STANDING.format(offer=offer, facts=standing) if standing else INSTRUCTION.format(offer=offer)


@dataclass
class Grounding:
    user_text: str
    passages: list[Passage]
    fallback: str  # what replaces a clause with unsupported specifics
    support: Support | None = None  # None: the check is off
    # Words of the question that no document contains: the question is about something the documents do
    # not cover, so any number in the reply (a price for a product they never name) is not from them.
    topic_gaps: list[str] = field(default_factory=list)
    tokens: int = 0  # prompt tokens the passages take
    flagged: list[Specific] = field(default_factory=list)  # what the check found unsupported
    replaced: bool = False
    instruction: str = ""  # added to the system prompt (constant for a knowledge base)
    standing: bool = False  # every passage is in the instruction: the user message gets no facts
    phone: str = ""
    persona_name: str = ""  # supports a name only where the persona speaks of itself
    # Clauses are spoken a whole sentence at a time, so that a failed clause can replace its sentence.
    hold: bool = True
    pending: list[str] = field(default_factory=list)  # clauses of the unfinished sentence, checked
    said: list[str] = field(default_factory=list)  # sentences released
    contradicted: list[Contradiction] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # passage texts a yes or no is compared with
    answered: bool = False  # a sentence on the question's topic was released (answers.missing_fact judged it)
    completed: list[tuple[str, str]] = field(default_factory=list)  # (sentence, the passage's) replaced

    @property
    def sources(self) -> list[str]:
        """The files the reply could use, best first, each once."""
        return list(dict.fromkeys(p.source for p in self.passages))

    def facts_block(self) -> str:
        if not self.passages:
            return "Facts from the documents: none match this question."
        return "Facts from the documents:\n" + "\n".join(p.render() for p in self.passages)

    def apply(self, messages: list[dict]) -> list[dict]:
        """``messages`` with the instruction at the end of the system prompt (the same every turn, so the
        LLM's prompt cache of it and of the history holds) and this turn's facts in front of the last
        user message. A message without content words ("Hello!") gets no facts: small talk stays small."""
        out = [dict(m) for m in messages]
        if out and out[0]["role"] == "system" and self.instruction and self.instruction not in out[0]["content"]:
            out[0]["content"] = f"{out[0]['content']}\n\n{self.instruction}"
        if self.standing or (not self.passages and not self.topic_gaps and not query_terms(self.user_text)):
            return out
        for message in reversed(out):
            if message["role"] == "user":
                message["content"] = f"{self.facts_block()}\n\nQuestion: {message['content']}"
                break
        return out

    def check(self, clause: str) -> str:
        """What of the reply may be spoken now, given its next ``clause``: "" while the clause's sentence is
        not finished (``hold``) or after a replacement, the finished sentence once it passed the check, or a
        repair when it failed (``repair``). A half sentence is never released, so a failed clause never
        leaves one spoken before the don't-know line."""
        if self.support is None:
            return clause
        if self.replaced:
            return ""
        bad = self.unsupported(clause)
        if bad:
            return self._fail(bad)
        self.pending.append(clause)
        if self.hold and (not _SENTENCE_DONE.search(clause) or _ABBREVIATION.search(clause)):
            return ""
        return self._release()

    def finish(self) -> str:
        """The end of the reply: the last sentence if it had no final stop (and passes the check)."""
        return self._release() if self.support is not None and not self.replaced else ""

    def _fail(self, problem) -> str:
        self.replaced = True
        self.pending.clear()
        return self.repair(problem)

    def _release(self) -> str:
        text = join_clauses(self.pending)
        if text and not self.said and (statement := answer_disagrees(self.user_text, text)) is not None:
            text = statement  # "Yes, parties are not allowed." says "Parties are not allowed."
        if text and (found := self.contradicts(text)) is not None:
            return self._fail(found)
        if text and not self.answered and not has_cjk(text):
            fact = missing_fact(self.user_text, text, self.evidence)
            if fact is not None:  # "Located at Maple Street" to "Where is the clinic?": the passage's address
                self.completed.append((text, fact))
                text = fact
            self.answered = fact is not None or bool(topic(text) & topic(self.user_text))
        self.pending.clear()
        if text:
            self.said.append(text)
        return text

    def unsupported(self, clause: str) -> list[Specific]:
        """The clause's numbers and names that the passages do not hold (the persona's own name given to
        someone else among them)."""
        bad = [s for s in self.support.unsupported(clause)
               if not (s.kind == "name" and self._self_reference(clause, s))]
        if self.topic_gaps:  # a question about something the documents never mention
            bad += [s for s in specifics(clause) if s.kind == "number" and s not in bad]
        self.flagged.extend(bad)
        return bad

    def contradicts(self, text: str) -> Contradiction | None:
        """The passage sentence that a part of ``text`` (a sentence, or a clause when sentences are not
        held) contradicts. Each part is judged alone, cut at commas and semicolons: one sentence may say
        two things ("open on weekdays, and closed on Sundays"), and the session's first clause may end
        mid-phrase ("No, we are closed" + "on Saturdays."), so its own cuts are no guide."""
        # Yes/no questions only: to "How much is an e-bike for a day?" the passage sentence with most words
        # in common ("Riders under 16 cannot hire an e-bike") says nothing about the price.
        if has_cjk(text) or not is_yes_no(self.user_text):
            return None
        evidence, asked = self.evidence, topic(self.user_text)
        parts = [p for p in _PARTS.split(text) if p.strip()]
        if any(topic(p) & asked for p in parts):
            # "No, breakfast is included" to "Is breakfast extra?": the statement says what the "No" means.
            parts = [p for p in parts if topic(p)]
        for part in parts:
            if (found := contradiction(part, self.user_text, evidence)) is not None:
                self.contradicted.append(found)
                return found
        return None

    def _self_reference(self, clause: str, spec: Specific) -> bool:
        """The persona's name said of itself ("I'm Sam"): supported by the persona only there."""
        own = {w.lower() for w in self.persona_name.split()}
        if not own or not set(spec.values) <= own | self.support.words:
            return False
        pattern = _SELF.format(name=re.escape(self.persona_name))
        return bool(re.search(pattern, clause.replace("’", "'"), re.IGNORECASE))

    def repair(self, problem) -> str:
        """What replaces the failed clause and the rest of the reply, so that the reply still reads whole.

        A contradicted clause is replaced by the passage sentence it contradicts: the documents' own words
        are the right answer. Unsupported specifics get the don't-know sentence when nothing was said yet;
        after a finished sentence they get only the offer to call (a right "Yes." followed by "I don't
        have that information" told the listener two things)."""
        if isinstance(problem, Contradiction):
            return problem.evidence.rstrip(".") + "."
        asked, yes_no = topic(self.user_text), is_yes_no(self.user_text)
        if any(topic(sentence) & asked or (yes_no and answer_word(sentence)) for sentence in self.said):
            # a part of the answer was given ("Yes."): it stands, the rest is for the phone
            return self.more
        return self.fallback  # nothing yet, or only "Good question!"

    @property
    def more(self) -> str:
        lang = language_of(self.user_text, "en")
        with_phone, without = MORE[lang]
        return with_phone.format(phone=self.phone) if self.phone else without


def make_grounding(index, user_text: str, *, history=(), top_k: int, budget_tokens: int, check: bool,
                   phone: str, language: str, count_tokens: Callable[[str], int], persona_text: str = "",
                   standing: tuple[str, int] | None = None, persona_name: str = "",
                   hold: bool = True) -> Grounding:
    """Retrieve the passages for ``user_text`` (a short follow-up also searches with the previous
    question: "and on Saturdays?") and build the turn's grounding within ``budget_tokens``. With
    ``standing`` (the whole folder rendered, and its tokens) the folder is in the system prompt instead;
    the retrieved passages then name the sources and bound what the check accepts."""
    last = history[-1] if history else None
    query = user_text
    # One or two content words ("and on Saturdays?") continue the last question; none ("Thanks!") is small
    # talk and retrieves nothing.
    if last is not None and 0 < len(query_terms(user_text)) <= 2:
        query = f"{last.user_text} {user_text}"
    chosen: list[Passage] = []
    used = 0
    for passage in index.search(query, top_k):
        cost = count_tokens(passage.render()) + 2
        if used + cost > budget_tokens:
            continue  # a long passage is skipped, a shorter one further down may still fit
        chosen.append(passage)
        used += cost
    lang = language_of(user_text, language)
    with_phone, without = FALLBACK[lang]
    fallback = with_phone.format(phone=phone) if phone else without
    if standing:
        grounding = Grounding(user_text, chosen, fallback, tokens=standing[1],
                              instruction=instruction(phone, standing[0]), standing=True)
    else:
        grounding = Grounding(user_text, chosen, fallback, tokens=used, instruction=instruction(phone))
    grounding.phone, grounding.persona_name, grounding.hold = phone, persona_name, hold
    if check:
        earlier = f"{last.heard_text}" if last is not None else ""  # already checked when it was spoken
        # The persona's prompt is the operator's own text too (a show file's catalogue and prices), but
        # its name is no evidence for anyone else's: asked for a staff member's name the documents do not
        # give, the 0.5B answered with the persona's own (issue 25). Grounding.check allows it of itself.
        if persona_name:
            own = re.compile(rf"\b{re.escape(persona_name)}\b")
            persona_text, earlier = own.sub(" ", persona_text), own.sub(" ", earlier)
        # The user's own age ("my 12-year-old") is theirs to state: repeating it invents nothing.
        ages = " ".join(re.findall(r"\b\d{1,3}(?=[- ]years?[- ]old)", user_text))
        # A yes or no is compared with every passage of a standing folder (the model was given them all).
        grounding.evidence = [p.text for p in (index.all_passages() if standing else chosen)]
        # A standing folder is all in the model's prompt: its numbers and names are checked against twice
        # top_k passages of the question. The top_k alone stopped right answers that BM25 ranked lower ("€55
        # a day" for an e-bike: the CSV row came fifth, below the house rules); the whole folder would let
        # "dinner until 11 pm" pass on a check-out at 11:00.
        supporting = index.search(query, 2 * top_k) if standing else chosen
        facts = "\n".join([*(p.render() for p in [*chosen, *supporting]), earlier, phone, persona_text, ages])
        said = f"{user_text} {last.user_text if last is not None else ''} {persona_text}"
        grounding.support = Support(facts, names_from=said)
        if _AMOUNT.search(user_text):
            grounding.topic_gaps = topic_gaps(index, user_text, known=persona_text)
    return grounding


def topic_gaps(index, user_text: str, known: str = "") -> list[str]:
    """The question's topic words that no document (nor ``known``, the operator's prompt) contains: names
    ("the Thunder X") and other words
    ("a bike chain") except those that only say what kind of answer is wanted (ANSWER_WORDS). Chinese is
    left out: its bigrams include pairs that span two words ("车一" in 租一辆自行车一天) and are in no
    document, whatever the question."""
    words = [t for t in query_terms(user_text) if not has_cjk(t) and not t.isdigit()]
    words += [w.lower() for spec in names(user_text) for w in spec.text.split()]
    operator = set(query_terms(known)) if known else set()
    return [w for w in dict.fromkeys(words)
            if w not in ANSWER_WORDS and len(w) > 1 and w not in operator and not index.knows(w)]
