"""The ``avatar`` command: serve, talk, face, render, live, bench, soak, kb."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from avatar import __version__
from avatar.config import REPO_ROOT
from avatar.errors import AvatarError


def _load_config(args):
    from avatar.config import config_from_args

    return config_from_args(args)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_serve(args) -> int:
    from avatar.kiosk.door import KioskDoor
    from avatar.net.server import AvatarServer
    from avatar.runtime.services import Services, cap_malloc_arenas

    cap_malloc_arenas()
    config = _load_config(args)
    from avatar.conversation.memory import prepare_data_dir

    prepare_data_dir(config.data_path)  # a read-only or unusable data directory fails now, not after loading
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    runtime = Services.load(config, progress=_progress)
    server = AvatarServer(runtime, doors=[KioskDoor(runtime)])

    def ready(ws_server) -> None:
        bound = ws_server.sockets[0].getsockname()[1] if ws_server.sockets else port
        shown = "localhost" if host in ("127.0.0.1", "localhost", "0.0.0.0", "::") else host
        token = f"?token={server.access.generated}" if server.access.generated else ""
        print(f"avatar {__version__} is ready: open http://{shown}:{bound}/{token} in a browser "
              f"(WebSocket: ws://{shown}:{bound}/ws{token})", flush=True)
        if host in ("0.0.0.0", "::", ""):
            import socket

            print(f"  from other machines: http://{socket.gethostname()}:{bound}/{token}", flush=True)
        _progress(f"access: {server.access.describe()}")

    try:
        asyncio.run(server.serve_forever(host, port, on_ready=ready))
    except OSError as exc:
        raise AvatarError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. "
                          "Is another server running there? Pick another --port.") from None
    finally:
        runtime.close()
    return 0


def _said(turn_end: dict) -> str:
    """What the user heard of a reply. A reply cut short (in a recording, by the next utterance: a barge-in)
    says so, with what had been written of it, so that every turn shows what the agent answered."""
    heard, reply = turn_end["heard"], turn_end["reply"]
    if not turn_end.get("interrupted"):
        return heard
    cut = f"[interrupted; its reply so far: {reply}]" if reply and reply != heard else "[interrupted]"
    return f"{heard} {cut}" if heard else cut


def cmd_talk(args) -> int:
    from avatar.tools.client import talk, write_wav

    if (args.wav is None) == (args.text is None):
        raise SystemExit("avatar talk: give exactly one of --wav FILE or --text TEXT")
    if args.wav is not None and not Path(args.wav).is_file():
        raise SystemExit(f"avatar talk: no such file: {args.wav}")

    def show(event: dict) -> None:
        if args.json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        elif event["type"] == "transcript" and event.get("final"):
            print(f"you:   {event['text']}", flush=True)
        elif event["type"] == "turn_end":
            print(f"agent: {_said(event)}", flush=True)
        elif event["type"] == "error":
            print(f"error: {event['message']}", file=sys.stderr, flush=True)

    try:
        result = asyncio.run(talk(args.url, wav=args.wav, text=args.text, session_id=args.session,
                                  user_id=args.user, user_key=args.user_key, video=not args.no_video,
                                  timeout=args.timeout, on_event=show))
    except TimeoutError as exc:
        raise SystemExit(f"avatar talk: {exc} (--timeout)") from None
    summary = result.summary()
    if args.out:
        import numpy as np

        audio = np.concatenate(result.audio) if result.audio else np.zeros(0, dtype="<i2")
        write_wav(args.out, audio, result.output_rate)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False), flush=True)
    else:
        lat, turns = summary["latency_ms"], summary["turns"]
        print(f"session {summary['session_id']}: {turns} turn{'' if turns == 1 else 's'}, "
              f"{summary['audio_seconds']} s of reply audio; voice-to-voice {lat['voice_to_voice']} ms")
        print(f"(go on later with: --session {summary['session_id']}"
              + (f" --user {result.user_id} --user-key {result.user_key}" if result.user_key else "") + ")")
    return 0


def cmd_face_add(args) -> int:
    from avatar.face.offline import face_add_main

    config = _load_config(args)
    return face_add_main(args.photo, args.name, faces_dir=config.data_path / "faces", size=config.video.size,
                         voices=args.voice or ())


def cmd_render(args) -> int:
    from avatar.face.offline import render_main

    config = _load_config(args)
    if (args.audio is None) == (args.text is None):
        raise SystemExit("avatar render: give exactly one of --text TEXT or --audio WAV")
    tts = None
    if args.text is not None:
        from avatar.models.loading import load_tts

        tts = load_tts(config.tts, config.persona)
    return render_main(args.face or config.persona.face, text=args.text, audio_path=args.audio, out=args.output,
                       tts=tts, fps=config.video.fps, size=config.video.size,
                       faces_dirs=[REPO_ROOT / "faces", config.data_path / "faces"])


def cmd_soak(args) -> int:
    from avatar.tools.soak import soak_main

    return soak_main(args)


def cmd_bench(args) -> int:
    from avatar.tools.bench import bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description="A real-time conversational digital human: "
                                     "speak to a face in the browser; it listens, thinks and answers aloud.")
    parser.add_argument("--version", action="version", version=f"avatar {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_options(p) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config file (see config.example.toml)")
        p.add_argument("--data-dir", metavar="DIR", help="where memory and added faces live "
                       "(default $AVATAR_DATA_DIR or ~/.local/share/avatar)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set llm.model=smollm2-135m (repeatable)")

    p = sub.add_parser("serve", help="serve the web page and the conversation WebSocket",
                       description="Load the models once and serve the web client at / and the WebSocket at "
                       "/ws on one port. Prints the URL to open when ready.")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765; 0 picks a free one)")
    config_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("talk", help="talk to a running server from the command line",
                       description="Send a WAV (all of it, paced in real time, then silence, like a "
                       "microphone) or a text, and print every turn: what the server heard ('you:') and what "
                       "the agent said ('agent:', with '[interrupted; its reply so far: ...]' when the next "
                       "utterance cut it short). A recording of sentences with pauses between them may make "
                       "several turns. It ends when the input has been sent and the last reply has finished "
                       "(and a moment after the input, so that its last words are heard), or at --timeout. "
                       "With --json: one JSON object per event, then a summary with latencies (voice_to_voice "
                       "runs from the real end of the last speech in the input to the first audio received "
                       "of its reply).")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="server WebSocket URL")
    p.add_argument("--wav", help="speech to send, all of it (16-bit PCM or 32-bit float WAV, any rate)")
    p.add_argument("--text", help="text to send instead of speech")
    p.add_argument("--session", metavar="ID:KEY", help="session to resume: the 'session' that an earlier "
                   "talk printed (session_id:resume_key from the server's ready message)")
    p.add_argument("--user", help="user id (history follows the user across sessions)")
    p.add_argument("--user-key", help="the user_key the server gave when --user was first used")
    p.add_argument("--out", metavar="WAV", help="write the reply audio here")
    p.add_argument("--no-video", action="store_true", help="ask the server not to stream video")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait after the input has been "
                   "sent for the last reply to finish (default 90)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("face", help="manage portraits")
    face_sub = p.add_subparsers(dest="face_command", metavar="ACTION")
    fa = face_sub.add_parser("add", help="prepare a portrait photo as a face",
                             description="Detect the face and its landmarks, crop, align and cache what the "
                             "renderer needs. Errors name the problem (no face, several faces, too small).")
    fa.add_argument("photo", help="a front-facing portrait (PNG or JPEG)")
    fa.add_argument("--name", help="face name (default: the file name)")
    fa.add_argument("--voice", action="append", metavar="VOICE",
                    help="the voice this face speaks with, once per language: a Kokoro voice in voices/kokoro "
                         "(af_heart, am_michael, zf_xiaoxiao, ...), a Piper voice or espeak:NAME. Without it the "
                         "face gets the default (female) voice of persona.language")
    config_options(fa)
    fa.set_defaults(func=cmd_face_add)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    p = sub.add_parser("render", help="render a talking-head MP4 offline",
                       description="Write an MP4 (H.264 video + AAC audio) of a face speaking a text or a WAV.")
    p.add_argument("--face", help="face name or portrait path (default: the persona's face)")
    p.add_argument("--text", help="text to speak (with the configured voice)")
    p.add_argument("--audio", metavar="WAV", help="speech audio to lip-sync instead of --text")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mp4")
    config_options(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("soak", help="drive many clients for minutes and report stability",
                       description="Start a server (or use --url), drive N clients that speak and type turns "
                       "for M minutes, then report turns, errors, server memory at start and end, and each "
                       "session's audio/video offset (see docs/security.md).")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    p.add_argument("--url", help="WebSocket URL of a running server (loopback only); default: start one")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    config_options(p)
    p.set_defaults(func=cmd_soak)

    from avatar.live.cli import register as register_live

    register_live(sub, config_options)

    p = sub.add_parser("bench", help="measure latency, concurrency and render speed")
    config_options(p)
    p.set_defaults(func=cmd_bench, _bench_parser=p)
    try:
        from avatar.tools.bench import add_bench_arguments

        add_bench_arguments(p)
    except ImportError:
        pass

    from avatar.tools.kb_cli import register as register_kb

    register_kb(sub, config_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except AvatarError as exc:
        print(f"avatar: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
