"""``avatar soak`` (issue 5): a short run of the soak driver, which starts its own server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.server  # `avatar soak` starts a server of its own
def test_a_short_soak_reports_turns_memory_and_offsets():
    run = subprocess.run(
        [sys.executable, "-m", "avatar", "soak", "--clients", "2", "--minutes", "0.5", "--json",
         "--set", "llm.model=smollm2-135m", "--set", "video.enabled=false", "--set", "llm.max_tokens=60"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.stdout.strip(), run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in report.items() if k != "sessions"}))
    assert run.returncode == 0, report
    assert report["type"] == "soak" and report["clients"] == 2 and report["speech"]
    assert report["turns_completed"] >= 2 and report["error_total"] == 0
    assert report["server_rss_mb"]["start"] > 50 and report["server_rss_mb"]["end"] > 50
    assert report["server_healthy"] and report["server_exit_code"] == 0
    assert report["audio_reorders"] == 0 and report["stuck_clients"] == 0
    assert report["reply_latency_ms"]["p50"] is not None
    assert len(report["sessions"]) == 2
    for session in report["sessions"]:
        assert session["session_id"] and session["turns"] >= 1 and not session["closed"]
        assert session["audio_margin_ms"] is not None  # audio arrived ahead of the client's clock
        assert session["av_offset_ms"] is None  # video off in this run: no frames, no offset
