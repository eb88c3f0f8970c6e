"""Measure the persona (issue 25, item 3): whether the agent knows who it is, and whether it states common
facts right (``avatar kb persona``).

Identity: with the default model the agent greeted a user who gave no name with its own ("Hello Sam!"),
spoke of itself in the third person ("Sam tried to solve a problem") and answered "Do you know my name?"
with its own. Each reply of tests/data/persona/identity.json is scored for those three faults; the scoring
is literal, so a failure names the words that caused it. General knowledge: tests/data/persona/general.json,
one regular expression per question.
"""

from __future__ import annotations

import re
import threading

from avatar.conversation.memory import Turn
from avatar.conversation.prompt import build_prompt

# Capitalised words after a greeting that are not anyone's name ("Hello there", "Hi again").
_NOT_A_NAME = frozenset("""there again everyone everybody all friend friends sir madam i it what how thank thanks
welcome to and yes no good nice back you human dear folks guys buddy here glad happy sorry sure afraid just
always currently""".split())
_GREETING = re.compile(r"\b(?:hi|hello|hey|dear|welcome|thanks|thank you|good (?:morning|afternoon|evening)|"
                       r"nice to meet you|bye|goodbye),?\s+([A-Z][a-z]+)\b", re.IGNORECASE)
_YOUR_NAME = re.compile(r"\byour name(?: is|'s)\s+([A-Z][a-z]+)", re.IGNORECASE)
_YOU_ARE = re.compile(r"\byou(?:'re| are)\s+([A-Z][a-z]+)\b")
_NOT_KNOWN = re.compile(r"\b(?:don't|do not|didn't|did not|haven't|have not|can't|cannot|not)\b.{0,30}\b(?:know|"
                        r"told|tell|said|say|shared|mentioned|given|gave|sure|remember)|\bno idea\b|\bnot yet\b|^\s*no\b",
                        re.IGNORECASE)
_I_AM = re.compile(r"\b(?:I am|I'm|my name is|my name's)\s+([A-Z][a-z]+)\b")
_YOUR_NAME_TALK = re.compile(r"\byour name\b", re.IGNORECASE)
_TOLD_ME = re.compile(r"\byou (?:told me|said|mentioned)\b", re.IGNORECASE)
# The persona naming itself: "I'm Sam", "a digital human named Sam", "I'm a digital human, Sam, ...".
_SELF_BEFORE = re.compile(r"(?:\bI am|\bI'm|\bmy name is|\bmy name's|\bcall me|\bthis is|\bit's|\bme,|\bnamed|"
                          r"\bcalled)\s+(?:\w+\s+)?$|\bI(?:'m| am)\b[^.!?]{0,40},\s*$", re.IGNORECASE)


def identity_faults(reply: str, name: str, told: list[str] = (), history: bool = False,
                    unknown: bool = False, own: bool = False, asked: str = "") -> list[tuple[str, str]]:
    """(fault, words) for each identity slip in ``reply``: "own_name_to_user" ("Hello Sam!" from Sam),
    "third_person" ("Sam tried ..."), "claims_user_name" ("your name is Alex" when not told), "wrong_own_name"
    ("I am Maria." to "My name is Maria. What's yours?"),
    "claims_user_fact" ("you told me" in a first conversation), or, when the user asked for a name they
    never gave (``unknown``), "name_not_admitted_unknown": a reply that does not say it does not know
    ("I am Sam." to "What is my name?"); "own_name_missing" when asked who it is (``own``) and its name is
    not in the reply; "unasked_name_talk" when the reply talks of the user's name and ``asked`` (the
    prompt) did not (a rule quoted in the prompt that a small model repeats to everything)."""
    text = reply.replace("’", "'")
    faults: list[tuple[str, str]] = []
    told_lower = {t.lower() for t in told}
    for match in re.finditer(rf"\b{re.escape(name)}\b", text):
        before, after = text[: match.start()], text[match.end():]
        if _SELF_BEFORE.search(before) or re.match(r",?\s+here\b", after):
            continue  # "I'm Sam", "Sam here": the persona saying its own name
        vocative = re.search(r"(?:^|[,!.?]\s*|\b(?:hi|hello|hey|dear|thanks|thank you|bye|goodbye|welcome)\s*,?\s*)$",
                             before, re.IGNORECASE) and re.match(r"\s*(?:[,!.?]|$)", after)
        words = text[max(0, match.start() - 20): match.end() + 20].strip()
        faults.append(("own_name_to_user" if vocative else "third_person", words))
    for pattern in (_GREETING, _YOUR_NAME, _YOU_ARE):
        for match in pattern.finditer(text):
            word = match.group(1)
            if word.lower() in _NOT_A_NAME or word.lower() in told_lower or word == name:
                continue
            faults.append(("claims_user_name", match.group()))
    for match in _I_AM.finditer(text):
        if match.group(1) != name and match.group(1).lower() not in _NOT_A_NAME:
            faults.append(("wrong_own_name", match.group()))  # "I am Maria." after "My name is Maria."
    if not history and (match := _TOLD_ME.search(text)):
        faults.append(("claims_user_fact", match.group()))
    if own and not re.search(rf"\b{re.escape(name)}\b", text):
        faults.append(("own_name_missing", text[:40]))  # "Who are you?" answered without it
    if _YOUR_NAME_TALK.search(text) and not re.search(r"\bname|who I am\b", asked, re.IGNORECASE):
        faults.append(("unasked_name_talk", text[:40]))  # "I don't know your name yet." to "Cool."
    if unknown and not _NOT_KNOWN.search(text):
        faults.append(("name_not_admitted_unknown", text[:40]))
    return faults


def _reply(llm, messages: list[dict], *, temperature: float, max_tokens: int) -> str:
    return "".join(llm.stream_chat(messages, max_tokens=max_tokens, temperature=temperature,
                                   cancel=threading.Event(), conversation="persona-eval")).strip()


def _messages(config, llm, item: dict) -> list[dict]:
    history = [Turn(user, said) for user, said in item.get("history", [])]
    return build_prompt(config.system_prompt, history, item["q"], count_tokens=llm.count_tokens,
                        budget_tokens=llm.context_tokens // 2, max_turns=24)


def run_identity(config, llm, data: dict, *, temperature: float, max_tokens: int, repeats: int = 1,
                 progress=print) -> dict:
    """Ask every prompt ``repeats`` times; a prompt passes when none of its replies has a fault."""
    name = config.persona.name
    records = []
    for number, item in enumerate(data["prompts"]):
        for attempt in range(repeats):
            reply = _reply(llm, _messages(config, llm, item), temperature=temperature, max_tokens=max_tokens)
            faults = identity_faults(reply, name, item.get("told", []), history=bool(item.get("history")),
                                     unknown=bool(item.get("unknown")), own=bool(item.get("self")),
                                     asked=item["q"])
            records.append({"prompt": number, "q": item["q"], "attempt": attempt, "reply": reply, "faults": faults})
            progress(f"{'BAD' if faults else 'ok '} {item['q']!r}\n      {reply!r}" + (f"\n      {faults}" if faults else ""))
    failed = {r["prompt"] for r in records if r["faults"]}
    kinds: dict[str, int] = {}
    for record in records:
        for kind, _ in record["faults"]:
            kinds[kind] = kinds.get(kind, 0) + 1
    summary = {"prompts": len(data["prompts"]), "prompts_passed": len(data["prompts"]) - len(failed),
               "replies": len(records),
               "replies_without_fault": round(sum(not r["faults"] for r in records) / max(1, len(records)), 3),
               "faults": kinds}
    return {"summary": summary, "records": records}


def run_general(config, llm, data: dict, *, temperature: float, max_tokens: int, progress=print) -> dict:
    records = []
    for item in data["questions"]:
        reply = _reply(llm, _messages(config, llm, item), temperature=temperature, max_tokens=max_tokens)
        right = bool(re.search(item["expect"], reply, re.IGNORECASE)) and not (
            item.get("reject") and re.search(item["reject"], reply, re.IGNORECASE))
        records.append({"q": item["q"], "reply": reply, "right": right})
        progress(f"{'ok ' if right else 'BAD'} {item['q']!r}\n      {reply!r}")
    summary = {"questions": len(records), "right": sum(r["right"] for r in records),
               "right_share": round(sum(r["right"] for r in records) / max(1, len(records)), 3)}
    return {"summary": summary, "records": records}
