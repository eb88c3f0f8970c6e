"""The livestream virtual host: ``avatar live --show SHOW.toml``.

A headless host presents a show's segments (products with name, price and selling points; a script line
or a prompt to improvise from), answers viewers' comments between segments (or pausing one), and streams
one continuous audio/video feed (H.264 + AAC at a constant frame rate on the audio clock) to RTMP, HLS
and/or an MP4 file.

    show.py      the show file (segments, order, looping, rules) and the host's fixed system prompt
    comments.py  a viewer comment: parsing, moderation (length, block list, rate, duplicates), priority
    intake.py    where comments come from: HTTP POST, a WebSocket feed, stdin JSON lines, adapters
    sink.py      the headless output timeline: the session's audio and the face's frames, paced in real time
    stream.py    PyAV encoding once and muxing to every output; RTMP reconnects without stopping the show
    host.py      the show loop driving a Session (avatar.conversation.session) through its turns
    report.py    log lines and Prometheus metrics of the show
    cli.py       the ``live`` subcommand
"""
