"""``avatar live --show SHOW.toml [--rtmp URL] [--hls DIR] [--record FILE.mp4]``: the headless host."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time

from avatar.errors import AvatarError, ConfigError

log = logging.getLogger(__name__)

TOKEN_ENV = "AVATAR_LIVE_TOKEN"


def register(sub, config_options) -> None:
    """Add the ``live`` subcommand to the ``avatar`` parser (avatar/cli.py)."""
    p = sub.add_parser(
        "live", help="run a livestream virtual host (RTMP, HLS, MP4) that answers viewers' comments",
        description="Present a show's segments and answer viewers' comments, with no browser: one continuous "
        "H.264 + AAC stream at the configured frame rate (video.fps, 25) to an RTMP server, HLS segments "
        "and/or an MP4 file. Comments: POST /comments on --port (JSON {\"user\", \"text\"}, "
        "'Authorization: Bearer TOKEN'), a WebSocket at ws://HOST:WS_PORT/comments?token=TOKEN, or JSON "
        "lines on stdin (--stdin). Prometheus metrics at http://HOST:PORT/metrics. See docs/live.md.")
    p.add_argument("--show", required=True, metavar="SHOW.toml", help="the show file (segments, order, rules)")
    p.add_argument("--rtmp", metavar="URL", help="stream here, e.g. rtmp://live.example.com/app/STREAM_KEY")
    p.add_argument("--hls", metavar="DIR", help="write HLS segments and DIR/live.m3u8 here")
    p.add_argument("--record", metavar="FILE.mp4", help="record the stream to this MP4 file")
    p.add_argument("--minutes", type=float, default=None, help="end the show after this long: the segment "
                   "in progress is cut and the comments still waiting are answered (at most 2 more minutes); "
                   "default: run until stopped, or until a show without loop has presented every segment")
    p.add_argument("--host", default="127.0.0.1", help="address of the comment and metrics endpoints "
                   "(default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8766, help="HTTP port: POST /comments, /metrics, /healthz "
                   "(default 8766; 0 picks a free one)")
    p.add_argument("--ws-port", type=int, default=None, help="WebSocket comment feed port (default: --port + 1; "
                   "0 picks a free one)")
    p.add_argument("--token", default=None, help=f"comment token (default ${TOKEN_ENV}, else one is generated "
                   "and printed)")
    p.add_argument("--stdin", action="store_true", help="also read comments as JSON lines from stdin")
    p.add_argument("--json", action="store_true", help="print the show's events as JSON lines on stdout")
    p.add_argument("--video-bitrate", type=int, default=1000, metavar="KBPS", help="H.264 bitrate (default 1000)")
    p.add_argument("--max-comment-chars", type=int, default=300, help="longer comments are dropped (default 300)")
    p.add_argument("--block", action="append", default=[], metavar="WORD",
                   help="drop comments containing WORD (repeatable)")
    p.add_argument("--block-file", metavar="FILE", help="a block list: one word or phrase per line")
    p.add_argument("--per-user-per-minute", type=int, default=3, help="a viewer's comments beyond this many "
                   "a minute are dropped (default 3)")
    config_options(p)
    p.set_defaults(func=cmd_live)


def _block_list(args) -> tuple[str, ...]:
    words = list(args.block)
    if args.block_file:
        try:
            with open(args.block_file, encoding="utf-8") as f:
                words += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ConfigError(f"cannot read the block list {args.block_file}: {exc.strerror or exc}") from None
    return tuple(words)


def cmd_live(args) -> int:
    from avatar.config import config_from_args
    from avatar.live.show import load_show
    from avatar.runtime.services import Services, cap_malloc_arenas

    if not (args.rtmp or args.hls or args.record):
        raise ConfigError("avatar live needs somewhere to stream: --rtmp URL, --hls DIR and/or --record FILE.mp4")
    if args.rtmp and not args.rtmp.startswith(("rtmp://", "rtmps://")):
        raise ConfigError(f"--rtmp takes an rtmp:// URL (e.g. rtmp://127.0.0.1/live/show), got {args.rtmp!r}")
    if args.minutes is not None and args.minutes <= 0:
        raise ConfigError("--minutes must be more than 0")
    import faulthandler

    faulthandler.enable()  # a show runs for hours: a native crash leaves every thread's stack in the log
    show = load_show(args.show)
    blocked = _block_list(args)
    config = config_from_args(args)
    if not config.video.enabled:
        raise ConfigError("avatar live streams the face: video.enabled must be true")
    # The show's rules and catalogue join the persona in the system prompt, before the models load (the
    # warm-up caches it): fixed for the whole show, whatever viewers write.
    config.persona.system_prompt = show.system_prompt(config.persona.system_prompt)
    cap_malloc_arenas()
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    services = Services.load(config, progress=progress)
    try:
        asyncio.run(run_live(services, show, args, blocked))
    except OSError as exc:
        raise AvatarError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. "
                          "Pick another --port.") from None
    finally:
        services.close()
    # Everything is written and closed (outputs, memory). Leave without the interpreter's teardown: with the
    # native runtimes' threads still alive there (LLM server, onnxruntime, PyAV), 1 in 2 runs of the live
    # command ended in SIGSEGV during finalization, after a complete show (faulthandler saw nothing).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def run_live(services, show, args, blocked: tuple[str, ...] = ()) -> None:
    from avatar.live.comments import CommentDesk
    from avatar.live.host import ShowHost
    from avatar.live.intake import LiveIntake
    from avatar.live.report import LiveReport
    from avatar.live.sink import LiveTimeline
    from avatar.live.stream import Streamer, StreamSettings
    from avatar.media.contract import played_out
    from avatar.net.metrics import resident_memory_bytes

    loop = asyncio.get_running_loop()
    cfg = services.config
    report = LiveReport(json_lines=args.json)
    desk = CommentDesk(max_chars=args.max_comment_chars, blocked=blocked,
                       per_user_per_minute=args.per_user_per_minute, on_change=report.comment)
    streamer = Streamer(StreamSettings(fps=cfg.video.fps, size=cfg.video.size, sample_rate=services.output_rate,
                                       video_bitrate=args.video_bitrate * 1000),
                        rtmp=args.rtmp, hls=args.hls, record=args.record)
    timeline = LiveTimeline(sample_rate=services.output_rate, fps=cfg.video.fps, size=cfg.video.size,
                            output=streamer.put, loop=loop, audio_lead_s=cfg.limits.audio_lead_s)
    report.attach(timeline=timeline, desk=desk, streamer=streamer)
    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(16)
    intake = LiveIntake(desk, token=token, metrics=report.render, health=report.health)
    http_port = intake.start_http(args.host, args.port)
    ws_port = await intake.start_ws(args.host, args.ws_port if args.ws_port is not None else
                                    (http_port + 1 if args.port else 0))
    if args.stdin:
        intake.start_stdin(loop)
    host = ShowHost(services, show, desk, timeline, report, minutes=args.minutes)
    host.open()
    streamer.start()
    timeline.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, host.stop)
        except (NotImplementedError, RuntimeError):
            pass
    outputs = ", ".join(f"{o.kind} {o.target}" for o in streamer.outputs)
    shown_token = token if not (args.token or os.environ.get(TOKEN_ENV)) else "(the one you gave)"
    rss_start = resident_memory_bytes()
    report.note("ready", f"avatar live is on air: {outputs}; {cfg.video.fps} fps, {cfg.video.size}px",
                http_port=http_port, ws_port=ws_port, rss_bytes=rss_start)
    print(f"comments: POST http://{args.host}:{http_port}/comments with 'Authorization: Bearer {shown_token}' "
          f"| ws://{args.host}:{ws_port}/comments?token=... | metrics: http://{args.host}:{http_port}/metrics",
          file=sys.stderr, flush=True)
    try:
        await host.run()
        # Let the last words play out before the stream ends.
        await played_out(timeline)
        await asyncio.sleep(0.5)
    finally:
        timeline.close()
        await asyncio.to_thread(timeline.join)
        await asyncio.to_thread(streamer.close)
        await intake.close()
        report.note("stopped", f"stream stopped after {timeline.frames} frames "
                    f"({timeline.frames_repeated} repeated), "
                    + ", ".join(f"{o.kind}: {o.frames_written} written, {o.frames_dropped} dropped, "
                                f"{o.reconnects} reconnects" for o in streamer.outputs),
                    frames=timeline.frames, repeated=timeline.frames_repeated,
                    seconds=round(time.monotonic() - timeline.started_at, 1) if timeline.started_at else 0.0,
                    rss_start_bytes=rss_start, rss_end_bytes=resident_memory_bytes(),
                    outputs={o.kind: {"written": o.frames_written, "dropped": o.frames_dropped,
                                      "reconnects": o.reconnects} for o in streamer.outputs})
