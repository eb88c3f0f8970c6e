"""``avatar kb index|search|list|eval|bench``: build, try and inspect the knowledge index, and measure it.

The index lives beside the memory database (``DATA_DIR/knowledge.sqlite3``), so ``avatar kb index`` with
the server's config prepares exactly what ``avatar serve`` will use (the server also updates it itself).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from avatar.errors import ConfigError


def register(sub, config_options) -> None:
    """Add the ``kb`` command and its actions to the ``avatar`` parser."""
    p = sub.add_parser("kb", help="the knowledge base: documents that replies are grounded in",
                       description="Index the folder set by knowledge.path (or --folder), search it as a turn "
                       "would, list its files, or measure answers and retrieval speed.")
    actions = p.add_subparsers(dest="kb_command", metavar="ACTION")

    def common(a) -> None:
        a.add_argument("--folder", metavar="DIR", help="the documents folder (default: knowledge.path)")
        config_options(a)

    a = actions.add_parser("index", help="index new and changed files, forget deleted ones")
    common(a)
    a.set_defaults(func=cmd_index)
    a = actions.add_parser("search", help="show the passages (and sources) a question retrieves")
    a.add_argument("query", help='e.g. "when do you open on Saturdays?"')
    a.add_argument("-k", type=int, default=None, help="passages to show (default knowledge.top_k)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    common(a)
    a.set_defaults(func=cmd_search)
    a = actions.add_parser("list", help="list the indexed files, their passages and any read errors")
    common(a)
    a.set_defaults(func=cmd_list)
    a = actions.add_parser("eval", help="ask question lists with the configured LLM and score the answers")
    a.add_argument("questions", nargs="+", help="JSON question lists (see tests/data/kb/questions.json); each "
                   "names its folder ('folder', relative to the file) unless --folder is given")
    a.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: repeatable)")
    a.add_argument("--out", metavar="FILE", help="write every question's reply and score here (JSON)")
    common(a)
    a.set_defaults(func=cmd_eval)
    a = actions.add_parser("persona", help="score identity slips and general-knowledge answers with the configured LLM")
    a.add_argument("sets", nargs="+", help="tests/data/persona/identity.json and/or general.json")
    a.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: repeatable)")
    a.add_argument("--repeats", type=int, default=1, help="replies per identity prompt (default 1)")
    a.add_argument("--out", metavar="FILE", help="write every reply and its score here (JSON)")
    config_options(a)
    a.set_defaults(func=cmd_persona)
    a = actions.add_parser("bench", help="time indexing and retrieval on a generated folder")
    a.add_argument("--docs", type=int, default=1000, help="documents to generate (default 1000)")
    a.add_argument("--queries", type=int, default=300, help="searches to time (default 300)")
    config_options(a)
    a.set_defaults(func=cmd_bench)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _config(args):
    from avatar.config import config_from_args

    config = config_from_args(args)
    if getattr(args, "folder", None):
        config.knowledge.path = str(args.folder)
    return config


def _open(args, *, sync: bool = True):
    from avatar.knowledge import KnowledgeIndex, index_path

    config = _config(args)
    if not config.knowledge.path:
        raise ConfigError("no knowledge folder: give --folder DIR, or set knowledge.path in the config "
                          "(or --set knowledge.path=DIR)")
    index = KnowledgeIndex(config.knowledge.path, index_path(config.data_path),
                           chunk_chars=config.knowledge.chunk_chars)
    report = index.sync() if sync else None
    return config, index, report


def cmd_index(args) -> int:
    config, index, report = _open(args)
    try:
        print(f"{index.root}: {report.describe()}; {len(index.files())} files, {index.count()} passages "
              f"in {index_path_of(config)}")
        for path, error in report.errors.items():
            print(f"  unreadable: {error}", file=sys.stderr)
        return 1 if report.errors else 0
    finally:
        index.close()


def index_path_of(config) -> Path:
    from avatar.knowledge import index_path

    return index_path(config.data_path)


def cmd_search(args) -> int:
    from avatar.knowledge import Knowledge

    config, index, _ = _open(args)
    knowledge = Knowledge(index, config.knowledge, language=config.persona.language)
    try:
        k = args.k if args.k is not None else config.knowledge.top_k
        hits = index.search(args.query, k)
        grounding = knowledge.ground(args.query)
        if args.json:
            print(json.dumps({"passages": [h.__dict__ for h in hits], "prompt_sources": grounding.sources,
                              "prompt_tokens": grounding.tokens, "phone": knowledge.phone}, ensure_ascii=False))
            return 0
        if not hits:
            print("no passage matches; a reply would say it does not know"
                  + (f" and offer {knowledge.phone}" if knowledge.phone else ""))
        for i, hit in enumerate(hits, 1):
            used = "in prompt" if any(p == hit for p in grounding.passages) else "over budget"
            print(f"{i}. [{hit.source}] bm25 {hit.score:.2f} ({used})\n   {hit.render()}")
        return 0
    finally:
        index.close()


def cmd_list(args) -> int:
    config, index, report = _open(args)
    try:
        files = index.files()
        for info in files:
            state = f"ERROR: {info.error}" if info.error else f"{info.passages} passages"
            print(f"{info.path}\t{info.size} bytes\t{state}")
        print(f"{len(files)} files, {index.count()} passages; phone offered when an answer is unknown: "
              f"{config.knowledge.phone or index.contact_phone() or '(none found)'}")
        from avatar.knowledge import Knowledge

        print(Knowledge(index, config.knowledge).describe_mode())
        return 0
    finally:
        index.close()


def cmd_eval(args) -> int:
    from avatar.models.loading import load_llm
    from avatar.tools.kb_evaluate import load_questions, run_eval

    config = _config(args)
    sets = []
    for name in args.questions:
        questions = load_questions(Path(name))
        folder = config.knowledge.path if args.folder or not questions.get("folder") else \
            str(Path(name).parent / questions["folder"])
        if not folder:
            raise ConfigError(f"{name} names no folder: give --folder DIR (e.g. tests/data/kb/shop)")
        sets.append((name, folder, questions))
    if args.folder and len(sets) > 1:
        raise ConfigError("--folder goes with one questions file; several files each name their own folder")
    llm = load_llm(config.llm)
    results = []
    for name, folder, questions in sets:
        result = run_eval(config, llm, Path(folder), questions, temperature=args.temperature,
                          max_tokens=config.llm.max_tokens, progress=lambda line: print(line, flush=True))
        result["summary"].update(model=config.llm.model, backend=config.llm.backend,
                                 temperature=args.temperature, folder=folder, questions_file=name)
        results.append(result)
        print(json.dumps(result["summary"], ensure_ascii=False), flush=True)
    if args.out:
        out = results[0] if len(results) == 1 else {"runs": results}
        Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
    print("folder\tmodel\tright facts\twrong polarity\tinvented specifics\tevasions")
    for result in results:
        s = result["summary"]
        print(f"{Path(s['folder']).name}\t{s['model']}\t{s['right_facts']:.0%} of {s['known']}\t"
              f"{s['wrong_polarity']}\t{s['invented_specifics']}\t{s['evasions']} ({s['evasion_share']:.0%})")
    return 0


def cmd_persona(args) -> int:
    from avatar.models.loading import load_llm
    from avatar.tools.kb_evaluate import load_questions
    from avatar.tools.persona_evaluate import run_general, run_identity

    config = _config(args)
    sets = [(name, load_questions(Path(name))) for name in args.sets]
    llm = load_llm(config.llm)
    results, progress = {}, (lambda line: print(line, flush=True))
    for name, data in sets:
        if "prompts" in data:
            result = run_identity(config, llm, data, temperature=args.temperature, max_tokens=config.llm.max_tokens,
                                  repeats=args.repeats, progress=progress)
        else:
            result = run_general(config, llm, data, temperature=args.temperature, max_tokens=config.llm.max_tokens,
                                 progress=progress)
        result["summary"].update(model=config.llm.model, temperature=args.temperature, set=name)
        results[name] = result
        print(json.dumps(result["summary"], ensure_ascii=False), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def cmd_bench(args) -> int:
    from avatar.tools.kb_evaluate import run_bench

    config = _config(args)
    result = run_bench(args.docs, args.queries, config.knowledge.top_k, config.knowledge.budget_tokens)
    print(json.dumps(result))
    return 0
