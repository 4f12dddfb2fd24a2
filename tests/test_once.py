"""`vvflow once`: videos through stages into completed/ or failed/, as DESIGN.md says."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from tests.conftest import Root, events


def test_three_videos_through_three_stages(root: Root) -> None:
    root.configure()
    for name in ("a.mp4", "b.mkv", "c.mov"):
        root.drop(name)
    proc = root.vvflow("once", check=0)

    assert root.names("completed") == ["a.mp4", "b.mkv", "c.mov"]
    assert root.names("pending") == [] and root.names("processing") == []
    for stem in ("a", "b", "c"):
        scan = json.loads((root.path / "analytic" / f"{stem}.analytic.json").read_text())
        summary = json.loads((root.path / "summaries" / f"{stem}.summary.json").read_text())
        logline = json.loads((root.path / "loglines" / f"{stem}.logline.json").read_text())
        name = next(n for n in root.names("completed") if n.startswith(stem + "."))
        assert scan["size"] == (root.folder("completed") / name).stat().st_size
        assert summary["input"] == str(root.path / "analytic" / f"{stem}.analytic.json")
        assert logline["input"] == str(root.path / "summaries" / f"{stem}.summary.json")
        assert scan["env"]["VVFLOW_STEM"] == stem
    report = root.report("a.mp4")
    assert report["state"] == "completed"
    assert [report["stages"][s]["status"] for s in ("scan", "summarize", "logline")] == [
        "succeeded"
    ] * 3
    assert report["identity"]["size"] == (root.folder("completed") / "a.mp4").stat().st_size
    # One log line per step, with durations.
    log = events(proc.stderr)
    done = [e for e in log if e["event"] == "stage_succeeded"]
    assert len(done) == 9 and all("duration_s" in e for e in done)
    assert Counter(e["event"] for e in log)["completed"] == 3
    status = root.status()
    assert (status["pending"], status["processing"], status["completed"], status["failed"]) == (
        0, 0, 3, 0,
    )  # fmt: skip
    assert status["failures"] == []


def test_second_once_runs_nothing(root: Root) -> None:
    root.configure()
    root.drop("a.mp4")
    root.vvflow("once", check=0)
    runs = len(root.runs())
    assert runs == 3
    root.vvflow("once", check=0)
    assert len(root.runs()) == runs
    assert root.names("completed") == ["a.mp4"]


def test_stage_environment_and_placeholders(root: Root) -> None:
    root.configure()
    root.drop("clip.final.mp4")
    root.vvflow("once", check=0)
    summary = json.loads((root.path / "summaries" / "clip.final.summary.json").read_text())
    env = summary["env"]
    assert env["VVFLOW_NAME"] == "clip.final.mp4"
    assert env["VVFLOW_STEM"] == "clip.final"
    assert env["VVFLOW_ROOT"] == str(root.path)
    assert env["VVFLOW_STAGE_SCAN"] == str(root.path / "analytic" / "clip.final.analytic.json")
    assert env["VVFLOW_VIDEO"].endswith("/clip.final.mp4")
    assert "/input/processing/" in env["VVFLOW_VIDEO"]
    # {output} is a temporary path inside processing/<instance>/, never the final one.
    assert "/input/processing/" in env["VVFLOW_OUTPUT"]
    assert "/input/processing/" in summary["cwd"]


def test_flaky_stage_succeeds_on_third_attempt(root: Root) -> None:
    root.configure([root.stage("scan", "flaky:2", attempts=3)])
    root.drop("a.mp4")
    proc = root.vvflow("once", check=0)
    assert root.names("completed") == ["a.mp4"]
    attempts = root.report("a.mp4")["stages"]["scan"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "succeeded"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert sum(1 for e in events(proc.stderr) if e["event"] == "retrying") == 2


def test_always_failing_stage_fails_after_exactly_attempts(root: Root) -> None:
    root.configure([*root.three_stages(summarize="fail", attempts=3)])
    root.drop("a.mp4")
    proc = root.vvflow("once", check=1)
    assert root.names("failed") == ["a.mp4"]
    assert Counter(r["stage"] for r in root.runs()) == {"scan": 1, "summarize": 3}
    report = root.report("a.mp4")
    assert report["state"] == "failed"
    assert report["failed_stage"] == "summarize"
    assert "RuntimeError: boom in stage" in report["stages"]["summarize"]["stderr_tail"]
    assert "exit 1: RuntimeError: boom in stage" in report["error"]
    # The scan output is whole and kept; nothing of the failed stage was published.
    assert (root.path / "analytic" / "a.analytic.json").exists()
    assert not (root.path / "summaries" / "a.summary.json").exists()
    status = root.status()
    assert status["failed"] == 1
    assert status["failures"] == [
        {"name": "a.mp4", "stage": "summarize", "error": report["error"],
         "finished_at": report["finished_at"]}
    ]  # fmt: skip
    text = root.vvflow("status", check=0).stdout
    row = next(line for line in text.splitlines() if line.startswith("a.mp4 "))
    assert row.split()[1] == "summarize" and "boom in stage" in row
    failed = [e for e in events(proc.stderr) if e["event"] == "failed"]
    assert failed and failed[0]["stage"] == "summarize"


def test_exit_65_fails_without_retry(root: Root) -> None:
    root.configure([root.stage("scan", "bad", attempts=5)])
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    assert root.names("failed") == ["a.mp4"]
    assert len(root.runs()) == 1
    report = root.report("a.mp4")
    assert report["stages"]["scan"]["attempts"][0]["outcome"] == "bad_input"
    assert "bad input (exit 65): not a video" in report["error"]


def test_a_failure_reason_is_never_a_progress_line(root: Root) -> None:
    """A stage that reports its progress and dies without a word: the reason is its
    exit (and the line before, if any said something), not `vvflow:progress 0.4`."""
    script = (
        "import sys; sys.stderr.write('loading model\\nvvflow:progress 0.4 decoding\\n'); "
        "sys.exit(3)"
    )
    root.configure([{"name": "scan", "command": [sys.executable, "-c", script],
                     "output": "analytic/{stem}.json", "attempts": 1}])  # fmt: skip
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    report = root.report("a.mp4")
    assert report["error"] == "scan: exit 3: loading model", report["error"]
    assert "vvflow:progress 0.4" in report["stages"]["scan"]["stderr_tail"]


def test_exit_zero_without_output_is_a_failed_attempt(root: Root) -> None:
    root.configure([root.stage("scan", "noout", attempts=2)])
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    assert len(root.runs()) == 2
    assert "no output" in root.report("a.mp4")["error"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


def test_hanging_stage_and_its_child_are_killed_at_timeout(root: Root, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    root.configure([root.stage("scan", "hang", pids=pids, timeout_seconds=1.5, attempts=1)])
    root.drop("a.mp4")
    started = time.monotonic()
    root.vvflow("once", check=1, timeout=30)
    assert time.monotonic() - started < 20
    stage_pid, child_pid = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while (_alive(stage_pid) or _alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(stage_pid) and not _alive(child_pid)
    report = root.report("a.mp4")
    assert report["stages"]["scan"]["attempts"][0]["outcome"] == "timeout"
    assert "timed out after 1.5s" in report["error"]


def test_retry_resumes_at_failed_stage_and_from_start_reruns_all(
    root: Root, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(summarize=f"until:{flag}", attempts=1))
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    assert root.names("failed") == ["a.mp4"]
    flag.touch()
    out = root.vvflow("retry", "a.mp4", check=0).stdout
    assert "a.mp4" in out
    assert root.names("pending") == ["a.mp4"] and root.names("failed") == []
    root.vvflow("once", check=0)
    assert root.names("completed") == ["a.mp4"]
    assert Counter(r["stage"] for r in root.runs()) == {"scan": 1, "summarize": 2, "logline": 1}


def test_retry_from_start_reruns_every_stage(root: Root) -> None:
    root.configure(root.three_stages(logline="fail", attempts=1))
    root.drop("a.mp4")
    root.drop("b.mp4")
    root.vvflow("once", check=1)
    assert root.names("failed") == ["a.mp4", "b.mp4"]
    root.vvflow("retry", "--all", "--from-start", check=0)
    assert root.names("pending") == ["a.mp4", "b.mp4"]
    root.vvflow("once", check=1)
    assert Counter(r["stage"] for r in root.runs()) == {"scan": 4, "summarize": 4, "logline": 4}


def test_retry_unknown_name_exits_2_and_moves_nothing(root: Root) -> None:
    root.configure([root.stage("scan", "fail", attempts=1)])
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    proc = root.vvflow("retry", "a.mp4", "nope.mp4", check=2)
    assert proc.stderr.count("\n") == 1 and "nope.mp4" in proc.stderr
    assert root.names("failed") == ["a.mp4"] and root.names("pending") == []
    root.vvflow("retry", check=2)


def test_redropped_name_gets_a_unique_name_and_overwrites_nothing(root: Root) -> None:
    root.configure()
    root.drop("a.mp4", b"first video" * 100)
    root.vvflow("once", check=0)
    first_scan = (root.path / "analytic" / "a.analytic.json").read_bytes()
    root.drop("a.mp4", b"second video" * 100)
    root.drop("a.mkv", b"third video" * 100)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["a-2.mkv", "a-3.mp4", "a.mp4"] or root.names(
        "completed"
    ) == ["a-2.mp4", "a-3.mkv", "a.mp4"]
    assert (root.path / "analytic" / "a.analytic.json").read_bytes() == first_scan
    assert (root.folder("completed") / "a.mp4").read_bytes() == b"first video" * 100
    sizes = {
        json.loads((root.path / "analytic" / f"{stem}.analytic.json").read_text())["size"]
        for stem in ("a", "a-2", "a-3")
    }
    assert sizes == {1100, 1200}
    for name in root.names("completed"):
        report = root.report(name)
        assert report["name"] == name and report["state"] == "completed"
    renamed = [root.report(n) for n in root.names("completed") if n != "a.mp4"]
    assert {r["original_name"] for r in renamed} == {"a.mp4", "a.mkv"}


def test_sigterm_during_stage_returns_video_to_pending(root: Root) -> None:
    import subprocess
    import sys

    root.configure([root.stage("scan", "sleep:30")], shutdown_grace_seconds=0.5)
    root.drop("a.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vvflow", "once", "--root", str(root.path)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not root.runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert root.names("pending") == ["a.mp4"]
    assert root.names("processing") == []
    assert any(e["event"] == "released" for e in events(stderr))
