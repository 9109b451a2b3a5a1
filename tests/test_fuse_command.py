"""`manage.py fuse` against the scripted upstream over real HTTP (no database)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command


ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "sim/a": {"ttft_ms": 20, "tokens_per_s": 2000},
    "sim/b": {"ttft_ms": 20, "tokens_per_s": 2000},
    "sim/broken": {
        "ttft_ms": 20,
        "tokens_per_s": 2000,
        "faults": [{"type": "error_mid_stream", "after_chars": 30, "times": -1}],
    },
    "sim/slow": {"ttft_ms": 50, "tokens_per_s": 5, "content": "slow " * 500},
    "sim/analyst": {},
    "sim/writer": {"tokens_per_s": 2000},
}


@pytest.fixture
def upstream(settings, scripted_thread):
    up = scripted_thread(SCRIPTS, time_scale=1.0)
    settings.OPENROUTER_BASE_URL = up.base_url
    return up


def fuse(capsys, *args: str) -> tuple[int, str, str]:
    try:
        call_command("fuse", "Why is the sky blue?", *args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


class TestFuseCommand:
    def test_it_prints_a_fused_answer_with_a_valid_analysis_as_json(self, upstream, capsys):
        code, out, err = fuse(
            capsys, "--panel", "sim/a,sim/b", "--analyst", "sim/analyst", "--writer", "sim/writer", "--json"
        )
        assert code == 0, err
        data = json.loads(out)
        assert data["answer"]
        assert set(data["analysis"]) == {
            "consensus",
            "contradictions",
            "partial_coverage",
            "unique_insights",
            "blind_spots",
        }
        assert [r["model"] for r in data["responses"]] == ["sim/a", "sim/b"]
        assert all(r["status"] == "complete" and r["ttft_ms"] is not None for r in data["responses"])
        assert data["usage"]["cost"] > 0 and data["failed_models"] == []
        assert "sim/a" in err and "done" in err  # progress lines on stderr, not tokens

    def test_a_member_failing_mid_stream_is_listed_and_the_others_are_fused(self, upstream, capsys):
        code, out, err = fuse(
            capsys, "--panel", "sim/a,sim/broken", "--analyst", "sim/analyst", "--writer", "sim/writer", "--json"
        )
        assert code == 0, err
        data = json.loads(out)
        assert data["failed_models"] == ["sim/broken"]
        assert data["answer"]
        broken = next(r for r in data["responses"] if r["model"] == "sim/broken")
        assert broken["status"] == "failed" and broken["error"]["kind"] == "upstream_error"

    def test_it_exits_non_zero_with_a_reason_when_nothing_came_back(self, upstream, capsys):
        code, out, err = fuse(capsys, "--panel", "sim/broken", "--analyst", "sim/analyst", "--writer", "sim/writer")
        assert code == 1
        assert "fuse failed" in err and out == ""

    def test_plain_output_is_the_answer_only(self, upstream, capsys):
        code, out, err = fuse(capsys, "--panel", "sim/a", "--analyst", "sim/analyst", "--writer", "sim/writer")
        assert code == 0 and out.strip() and not out.lstrip().startswith("{")

    def test_ctrl_c_closes_every_upstream_connection_before_exiting(self, upstream):
        env = {**os.environ, "OPENROUTER_BASE_URL": upstream.base_url, "DJANGO_SETTINGS_MODULE": "fusionsite.settings"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "fuse",
                "hi",
                "--panel",
                "sim/slow,sim/slow",
                "--analyst",
                "sim/analyst",
                "--writer",
                "sim/writer",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while len([r for r in upstream.requests if r["model"] == "sim/slow"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert "cancelled" in err
        assert upstream.disconnects.count("sim/slow") == 2
