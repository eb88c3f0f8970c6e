"""``avatar bench``: latency, concurrency and render speed, measured the way a user meets them.

Real WebSocket clients stream real speech paced in real time to a real server; voice-to-voice runs from the
real end of speech in the input to the first reply audio received. The same run measures a naive,
non-streaming pipeline built from the same models (the baseline) and each stage's isolated time to first
output, so the report can say how much streaming buys and how much the orchestration costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar.errors import AvatarError
from avatar.events import LATENCY_STAGES
from avatar.tools.bench_listening import make_readings, plain_word_errors, premature_turns, word_error_rate
from avatar.tools.bench_utterances import Utterance, make_utterances, schedule, share
from avatar.tools.client import read_wav, speech_end_seconds, talk

TARGET_MS = 1500.0


def add_bench_arguments(p) -> None:
    p.add_argument("--url", help="benchmark a running server instead of starting one")
    p.add_argument("--sessions", default="1,2,4", help="concurrency levels to sweep (default 1,2,4)")
    p.add_argument("--turns", type=int, default=3,
                   help="utterances per client at the busiest level (default 3). Every level speaks the same "
                   "recordings, shared among its clients, so levels differ only by the load")
    p.add_argument("--wav", action="append", default=[], metavar="FILE",
                   help="your own utterances (16-bit WAV); repeatable. Default: espeak-ng questions "
                   "and the English WAVs of pytest-audioeval")
    p.add_argument("--quick", action="store_true", help="one session, 3 utterances: about 2 minutes on 2 cores")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive pipeline and isolated stages")
    p.add_argument("--no-video", action="store_true", help="voice only")
    p.add_argument("--no-readings", action="store_true",
                   help="skip the premature-turn count on readings with pauses (about 2 minutes)")
    p.add_argument("--out", default="bench-out", help="folder for report.json and the plot (default bench-out)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


# -- the live part: clients against a server -----------------------------------------------------------------
@dataclass
class TurnRecord:
    utterance: str
    sessions: int
    voice_to_voice: float | None
    first_frame: float | None
    av_offset_ms: float | None  # first lip-synced frame's timeline position minus first audio's, in ms
    stages: dict = field(default_factory=dict)
    error: str | None = None
    transcript: str = ""
    word_error_rate: float | None = None  # against the utterance's known text
    knowledge_ms: float | None = None  # the turn's time in the knowledge base (None: no knowledge base)


def _record(utterance: Utterance, sessions: int, result) -> TurnRecord:
    summary = result.summary()
    first_audio = next((e for e in result.events if e["type"] == "audio"), None)
    first_frame = None
    if first_audio is not None:
        first_frame = next((e for e in result.events if e["type"] == "video_frame"
                            and e["turn_id"] == first_audio["turn_id"]), None)
    offset = None
    if first_audio and first_frame:
        offset = round((first_frame["position"] - first_audio["position"]) * 1000.0 / result.output_rate, 1)
    stages = {name: result.latency.get(f"{name}_ms") for name in LATENCY_STAGES}
    errors = [e["message"] for e in result.events if e["type"] == "error"]
    wer = word_error_rate(utterance.text, result.transcript) if utterance.text else None
    return TurnRecord(utterance.name, sessions, summary["latency_ms"]["voice_to_voice"],
                      summary["latency_ms"]["first_frame"], offset, stages, "; ".join(errors) or None,
                      result.transcript, wer, result.latency.get("knowledge_ms"))


async def _client(url: str, index: int, sessions: int, recordings: list[Utterance], video: bool,
                  records: list[TurnRecord], log) -> None:
    await asyncio.sleep(0.37 * index)  # stagger, so clients do not all end speaking at the same instant
    for utterance in recordings:
        try:
            result = await talk(url, wav=utterance.path, video=video, timeout=120)
            records.append(_record(utterance, sessions, result))
        except Exception as exc:  # noqa: BLE001 - a failed turn is a result, reported as such
            records.append(TurnRecord(utterance.name, sessions, None, None, None, {}, repr(exc)))
        last = records[-1]
        log(f"  [{sessions} sessions] client {index} {utterance.name}: voice-to-voice "
            f"{last.voice_to_voice} ms{' ERROR ' + last.error if last.error else ''}")


async def run_level(url: str, sessions: int, recordings: list[Utterance], video: bool, log):
    records: list[TurnRecord] = []
    await asyncio.gather(*(_client(url, i, sessions, mine, video, records, log)
                           for i, mine in enumerate(share(recordings, sessions))))
    return records


# -- the offline part: isolated stages and the naive pipeline --------------------------------------------------
def measure_offline(config, utterances: list[Utterance], log) -> dict:
    """Each stage alone (time to first output) and the naive pipeline (each stage waits for the whole
    output of the one before), on the same utterances with the same models, one at a time."""
    import threading

    from avatar.conversation.clauses import ClauseSplitter, speakable
    from avatar.conversation.prompt import build_prompt
    from avatar.models.loading import load_models

    models = load_models(config, progress=log)
    animator = _make_animator(config, models.tts.sample_rate) if config.video.enabled else None
    endpoint_ms = float(config.vad.end_silence_ms)
    isolated, naive = [], []
    for utterance in utterances:
        audio = read_wav(utterance.path)
        audio = audio[: int(speech_end_seconds(audio) * 16000) + 1600]
        t = time.perf_counter()
        text = models.asr.transcribe(audio, language=config.persona.language or None).text
        asr_ms = (time.perf_counter() - t) * 1000
        messages = build_prompt(config.system_prompt, [], text, count_tokens=models.llm.count_tokens,
                                budget_tokens=2048, max_turns=0)
        splitter = ClauseSplitter()
        t = time.perf_counter()
        first_clause_ms, first_clause, reply = None, None, ""
        for piece in models.llm.stream_chat(messages, max_tokens=config.llm.max_tokens,
                                            temperature=config.llm.temperature, cancel=threading.Event()):
            reply += piece
            clauses = splitter.push(piece)
            if clauses and first_clause is None:
                first_clause_ms, first_clause = (time.perf_counter() - t) * 1000, clauses[0]
        llm_total_ms = (time.perf_counter() - t) * 1000
        first_clause = first_clause or speakable(reply) or "Okay."
        first_clause_ms = first_clause_ms or llm_total_ms
        t = time.perf_counter()
        next(iter(models.tts.synthesize(first_clause)))
        tts_first_ms = (time.perf_counter() - t) * 1000
        isolated.append({"utterance": utterance.name, "endpoint": endpoint_ms, "asr": asr_ms,
                         "llm_first_clause": first_clause_ms, "tts_first_audio": tts_first_ms,
                         "sum": endpoint_ms + asr_ms + first_clause_ms + tts_first_ms})
        # Naive: the whole reply, then all its audio, then every video frame, before anything is sent.
        t = time.perf_counter()
        chunks = list(models.tts.synthesize(speakable(reply) or "Okay."))
        tts_all_ms = (time.perf_counter() - t) * 1000
        render_ms = 0.0
        if animator is not None:
            pcm = np.concatenate([c.audio for c in chunks])
            t = time.perf_counter()
            animator.add_speech(0, pcm, [])
            step = models.tts.sample_rate // config.video.fps
            for position in range(0, len(pcm), step):
                animator.jpeg_at(position)
            render_ms = (time.perf_counter() - t) * 1000
        naive.append({"utterance": utterance.name, "total": endpoint_ms + asr_ms + llm_total_ms + tts_all_ms + render_ms})
        log(f"  offline {utterance.name}: isolated sum {isolated[-1]['sum']:.0f} ms, naive {naive[-1]['total']:.0f} ms")
    return {"isolated": isolated, "naive": naive}


def _make_animator(config, sample_rate: int):
    from avatar.config import REPO_ROOT
    from avatar.face import FaceLibrary
    from avatar.face.animator import build_animator

    faces = FaceLibrary([REPO_ROOT / "faces"], size=config.video.size)
    face = faces.get(config.persona.face if config.persona.face in faces.names else faces.names[0])
    return build_animator(face, sample_rate=sample_rate, video=config.video)


def measure_render(config, seconds: float = 4.0) -> dict:
    """Frames per second of one session's renderer on one core, 512x512 with JPEG encoding."""
    import cv2

    cv2.setNumThreads(1)
    rate = 22050
    animator = _make_animator(config, rate)
    t = np.arange(int(seconds * rate)) / rate
    speech = (np.sin(2 * np.pi * 3 * t) ** 2 * np.sin(2 * np.pi * 200 * t) * 12000).astype(np.int16)
    animator.add_speech(0, speech, [])
    step = rate // config.video.fps
    positions = list(range(0, len(speech), step))
    start = time.perf_counter()
    sizes = [len(animator.jpeg_at(p)) for p in positions]
    elapsed = time.perf_counter() - start
    return {"fps": round(len(positions) / elapsed, 1), "frames": len(positions), "size": config.video.size,
            "mean_jpeg_bytes": int(np.mean(sizes))}


# -- reporting ----------------------------------------------------------------------------------------
def _stats(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1), "max": round(float(max(values)), 1)}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 3) if values else None


def summarise(levels: dict[int, list[TurnRecord]], offline: dict | None, render: dict | None) -> dict:
    report: dict = {"levels": {}, "render": render}
    crossing = None
    for sessions, records in sorted(levels.items()):
        level = {
            "turns": len(records),
            "errors": sum(1 for r in records if r.error),
            "voice_to_voice": _stats(r.voice_to_voice for r in records),
            "first_frame": _stats(r.first_frame for r in records),
            "av_offset_ms": _stats(r.av_offset_ms for r in records),
            "stages": {name: _stats(r.stages.get(name) for r in records) for name in LATENCY_STAGES},
            "word_error_rate": _mean(r.word_error_rate for r in records),
            "knowledge_ms": _stats(r.knowledge_ms for r in records),
        }
        p95 = level["voice_to_voice"]["p95"]
        fewest = next(iter(report["levels"].values()), level)["voice_to_voice"]["p95"]
        # The acceptance figure of concurrency: this level's p95 over the quietest level's, same recordings.
        level["p95_vs_fewest_sessions"] = round(p95 / fewest, 2) if p95 and fewest else None
        report["levels"][str(sessions)] = level
        if crossing is None and p95 is not None and p95 > TARGET_MS:
            crossing = sessions
    report["p95_crosses_1500ms_at_sessions"] = crossing
    if offline:
        first = report["levels"][min(report["levels"], key=int)]["voice_to_voice"]["p50"]
        naive = _stats(n["total"] for n in offline["naive"])
        isolated = _stats(i["sum"] for i in offline["isolated"])
        report["baseline"] = {
            "naive_pipeline": naive,
            "isolated_stage_sum": isolated,
            "isolated_stages_p50": {k: _stats(i[k] for i in offline["isolated"])["p50"]
                                    for k in ("endpoint", "asr", "llm_first_clause", "tts_first_audio")},
            "speedup_vs_naive": round(naive["p50"] / first, 2) if first and naive["p50"] else None,
            "orchestration_overhead": round(first / isolated["p50"], 2) if first and isolated["p50"] else None,
        }
    return report


def print_table(report: dict) -> None:
    print("\nvoice-to-voice and first frame (ms, from the real end of speech), per concurrency level")
    print(f"{'sessions':>8} {'turns':>5} {'err':>3} | {'v2v p50':>8} {'p95':>7} {'max':>7} {'p95 x':>6} | "
          f"{'frame p50':>9} {'p95':>7} | {'A/V off':>7}")
    for sessions, level in report["levels"].items():
        v, f, o = level["voice_to_voice"], level["first_frame"], level["av_offset_ms"]
        ratio = level.get("p95_vs_fewest_sessions")
        print(f"{sessions:>8} {level['turns']:>5} {level['errors']:>3} | {v['p50']!s:>8} {v['p95']!s:>7} "
              f"{v['max']!s:>7} {ratio!s:>6} | {f['p50']!s:>9} {f['p95']!s:>7} | {o['p50']!s:>7}")
    for sessions, level in report["levels"].items():
        k = level.get("knowledge_ms") or {}
        if k.get("n"):
            print(f"knowledge base at {sessions} session(s): retrieval and check {k['p50']} ms p50, {k['p95']} ms p95 "
                  "a turn")
    first = next(iter(report["levels"].values()))
    print("\nstage time to first output at the lowest level (ms from end of speech): "
          + ", ".join(f"{k} {v['p50']}" for k, v in first["stages"].items()))
    listening = report.get("listening") or {}
    if listening:
        eot = listening["end_of_turn_ms"]
        print(f"listening: end-of-turn decision p50 {eot['p50']} ms after the end of speech; word error rate "
              f"{listening['word_error_rate']} (plain transcription of the same audio: "
              f"{listening['plain_word_error_rate']})")
        for r in listening["readings"]:
            print(f"  {r['reading']}: {r['premature_turns']} premature turns in {r['seconds']} s "
                  f"({r['premature_per_minute']} per minute, {r['pauses']} pauses)")
    crossing = report["p95_crosses_1500ms_at_sessions"]
    print(f"p95 voice-to-voice crosses 1.5 s at: {crossing if crossing else 'not within the levels run'} sessions")
    if report.get("baseline"):
        b = report["baseline"]
        print(f"naive pipeline p50 {b['naive_pipeline']['p50']} ms -> streaming is {b['speedup_vs_naive']}x faster; "
              f"isolated stage sum p50 {b['isolated_stage_sum']['p50']} ms ({b['isolated_stages_p50']}) -> "
              f"orchestration overhead {b['orchestration_overhead']}")
    if report.get("render"):
        r = report["render"]
        print(f"render: {r['fps']} fps at {r['size']}x{r['size']} on one core, JPEG included")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(k) for k in report["levels"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("p50", "o-"), ("p95", "s--")):
        ax.plot(levels, [report["levels"][str(s)]["voice_to_voice"][key] for s in levels], style,
                label=f"voice-to-voice {key}")
    ax.axhline(TARGET_MS, color="grey", linestyle=":", label="1.5 s")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("ms from end of speech")
    ax.set_xticks(levels)
    ax.legend()
    ax.set_title(f"avatar bench ({platform.node() or 'this machine'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench_main(args) -> int:
    from avatar.config import config_from_args

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    config = config_from_args(args)
    if args.no_video:
        config.video.enabled = False
    sessions = [1] if args.quick else [int(s) for s in args.sessions.split(",") if s.strip()]
    turns = 1 if args.quick else args.turns
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    utterances = make_utterances(args.wav, args.quick, Path(tempfile.gettempdir()) / "avatar-bench", log)
    if args.quick:
        utterances = utterances[:3]
        turns = len(utterances)
    recordings = schedule(utterances, turns, max(sessions))
    log(f"{len(utterances)} utterances, sessions {sessions}: every level speaks the same {len(recordings)} "
        f"recordings ({turns} per client at {max(sessions)} sessions)")

    proc = None
    url = args.url
    if url is None:
        from avatar.tools.soak import start_server

        # The same server start-up as `avatar soak`: its output goes to a log file, so it never blocks.
        sets = [*(args.set or []), *(["video.enabled=false"] if args.no_video else [])]
        work = Path(tempfile.mkdtemp(prefix="avatar-bench-"))
        log(f"starting a server (log: {work / 'server.log'})")
        proc, url = start_server(argparse.Namespace(config=args.config, set=sets), work / "data",
                                 work / "server.log")
    readings = []
    try:
        levels = {}
        for level in sessions:
            log(f"running {level} concurrent session(s)...")
            levels[level] = asyncio.run(run_level(url, level, recordings, config.video.enabled, log))
        if not (args.quick or args.no_readings or args.wav):
            log("premature turns on readings with pauses between sentences...")
            for reading in make_readings(Path(tempfile.gettempdir()) / "avatar-bench", log):
                readings.append(asyncio.run(premature_turns(url, reading, log)))
    finally:
        if proc is not None:
            from avatar.tools.soak import stop_server

            stop_server(proc)
    offline = None if args.no_baseline else measure_offline(config, utterances, log)
    render = measure_render(config) if config.video.enabled else None
    report = summarise(levels, offline, render)
    spoken = {r.utterance for rs in levels.values() for r in rs}  # compare on the same recordings
    plain = plain_word_errors(config, [u for u in utterances if u.name in spoken], log)
    report["listening"] = {
        "end_of_turn_ms": report["levels"][str(min(levels))]["stages"]["endpoint"],
        "word_error_rate": report["levels"][str(min(levels))]["word_error_rate"],
        "plain_word_error_rate": round(float(np.mean(list(plain.values()))), 3) if plain else None,
        "readings": readings,
    }
    argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    from avatar.models.loading import resolve_asr

    try:
        asr_model = resolve_asr(config.asr, config.persona.language).model  # "auto" as the server resolved it
    except AvatarError:  # a remote server (--url) may have what this machine lacks
        asr_model = config.asr.model
    report["run"] = {"command": " ".join(["avatar bench", *argv]),
                     "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                     "date": time.strftime("%Y-%m-%d"), "seconds": round(time.monotonic() - started, 1),
                     "llm": f"{config.llm.backend} {config.llm.model}",
                     "asr": asr_model}
    report["turns"] = [r.__dict__ for rs in levels.values() for r in rs]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if len(levels) > 1 or not args.quick:
        plot(report, out / "latency_vs_sessions.png")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"\nreport: {out / 'report.json'} ({report['run']['seconds']} s)")
    return 0
