"""A tiny ``avatar bench`` run: it must measure every figure it reports (not how fast they are)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.server  # `avatar bench` starts a server of its own
def test_quick_bench_measures_every_figure(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "avatar", "bench", "--quick", "--set", "llm.model=smollm2-135m",
         "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    level = report["levels"]["1"]
    assert level["turns"] == 3 and level["errors"] == 0
    for figure in ("voice_to_voice", "first_frame", "av_offset_ms"):
        assert level[figure]["n"] == 3, figure
        assert level[figure]["p50"] is not None and level[figure]["p50"] <= level[figure]["max"]
    assert level["voice_to_voice"]["p50"] > 0
    for stage in ("endpoint", "asr_final", "llm_first_token", "tts_first_audio", "first_frame"):
        assert level["stages"][stage]["n"] == 3, stage
    baseline = report["baseline"]
    assert baseline["naive_pipeline"]["n"] == 3 and baseline["speedup_vs_naive"] > 0
    assert baseline["orchestration_overhead"] > 0
    assert report["render"]["fps"] > 0 and report["render"]["size"] == 512
    assert "avatar bench" in report["run"]["command"]
    # People get a table too.
    table = subprocess.run([sys.executable, "-c", "import json,sys; from avatar.tools.bench import print_table; "
                            f"print_table(json.load(open({str(tmp_path / 'report.json')!r})))"],
                           capture_output=True, text=True)
    assert "voice-to-voice" in table.stdout and "streaming is" in table.stdout


def test_every_level_speaks_the_same_recordings():
    """The p95 ratio between levels must measure the load, not which recordings each level happened to get."""
    from collections import Counter
    from pathlib import Path

    from avatar.tools.bench_utterances import Utterance, schedule, share

    utterances = [Utterance(f"u{i}", Path(f"u{i}.wav"), "") for i in range(9)]
    recordings = schedule(utterances, turns=3, busiest=4)
    assert len(recordings) == 12 and {u.name for u in recordings} == {u.name for u in utterances}
    spoken = {}
    for sessions in (1, 2, 4):
        per_client = share(recordings, sessions)
        assert {len(c) for c in per_client} == {12 // sessions}
        spoken[sessions] = Counter(u.name for c in per_client for u in c)
    assert spoken[1] == spoken[2] == spoken[4]
