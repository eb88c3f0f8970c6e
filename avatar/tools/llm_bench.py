"""Measure the language model alone: prompt cache over a long conversation, and concurrent streams.

``python -m avatar.tools.llm_bench [--set llm.model=qwen2.5-1.5b] [--turns 10] [--streams 1,4]`` prints one JSON
object. Figures come from llama.cpp's own timings (prompt tokens evaluated and from cache, prompt time)
and from the wall clock at the client (time to first token, tokens per second).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from avatar.config import load_config
from avatar.models.loading import load_llm

SYSTEM = {"role": "system", "content": "You are Sam, a friendly digital human. Answer in one to three short "
                                       "spoken sentences."}
QUESTIONS = ["Hi! I am Ada and I like hiking.", "What should I pack for a day in the hills?",
             "How much water is enough?", "What if it rains?", "Which snacks keep well?",
             "How do I avoid blisters?", "Is a map still useful with a phone?", "What about sunscreen?",
             "Should I tell someone where I go?", "Thanks! Anything else?"]
STORY = "Tell me a story about a lighthouse keeper and a storm."


def conversation(llm, turns: int, max_tokens: int) -> list[dict]:
    messages, rows = [SYSTEM], []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        reply = "".join(llm.stream_chat(messages, max_tokens=max_tokens, temperature=0.0, conversation="bench"))
        messages.append({"role": "assistant", "content": reply})
        t = llm.last_timings["bench"]
        rows.append({"turn": i + 1, "prompt_evaluated": t["prompt_n"], "prompt_cached": t["cache_n"],
                     "prompt_ms": round(t["prompt_ms"], 1), "generated": t["predicted_n"],
                     "gen_tok_s": round(t["predicted_per_second"], 1)})
    return rows


def streams(llm, n: int, max_tokens: int) -> dict:
    ttft: list[float] = []
    tokens = [0] * n
    start = time.perf_counter()
    lock = threading.Lock()

    def run(i: int) -> None:
        first = None
        for _ in llm.stream_chat([SYSTEM, {"role": "user", "content": f"{STORY} ({i})"}], max_tokens=max_tokens,
                                 temperature=0.7, conversation=f"stream{i}"):
            if first is None:
                first = time.perf_counter() - start
            tokens[i] += 1
        with lock:
            ttft.append(first or 0.0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"streams": n, "pieces": sum(tokens), "wall_s": round(wall, 2),
            "pieces_per_s_total": round(sum(tokens) / wall, 1), "ttft_s_max": round(max(ttft), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m avatar.tools.llm_bench", description=__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="llm.KEY=VALUE")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    overrides: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        overrides.setdefault(section, {})[name] = value
    cfg = load_config(None, overrides).llm
    started = time.perf_counter()
    llm = load_llm(cfg)
    report = {"llm": f"{cfg.backend} {cfg.model}", "draft": cfg.draft_model, "slots": cfg.slots,
              "load_s": round(time.perf_counter() - started, 1),
              "conversation": conversation(llm, args.turns, args.max_tokens),
              "concurrency": [streams(llm, int(n), args.max_tokens * 2) for n in args.streams.split(",")]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
