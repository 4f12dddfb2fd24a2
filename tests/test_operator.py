"""The operator's view: the status table, the progress bar on a terminal, text logs on
a terminal and JSON elsewhere, and the Prometheus endpoint — through the real command."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import Root, events
from tests.test_daemon import Running, wait_for


def _run_on_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run a command with its stdout and stderr on a pseudo-terminal; (exit, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    env["COLUMNS"] = "200"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env=env)  # fmt: skip
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def test_once_on_a_terminal_shows_a_progress_bar_and_text_logs(root: Root) -> None:
    root.configure(root.three_stages("sleep:0.2"))
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        root.drop(name)
    code, output = _run_on_a_terminal(
        [sys.executable, "-m", "vvflow", "once", "--root", str(root.path)]
    )
    assert code == 0, output
    assert "[" + "#" * 24 + "] 3/3  done 3  failed 0" in output
    assert "1/3" in output and ": scan" in output
    assert '{"ts"' not in output  # text, not JSON, for a person
    assert "completed" in output and "stage_succeeded" in output


def test_logs_are_json_lines_when_not_on_a_terminal(root: Root) -> None:
    root.configure()
    root.drop("a.mp4")
    proc = root.vvflow("once", check=0)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["event"] for ln in lines)
    assert "[#" not in proc.stderr


def test_status_table_shows_processing_and_newest_failures(root: Root, tmp_path: Path) -> None:
    root.configure([root.stage("scan", "fail", attempts=1)])
    for i in range(12):
        root.drop(f"bad{i:02d}.mp4")
    root.vvflow("once", check=1)
    # The stage outlives the run's stop: a short grace returns the video at once.
    root.configure([root.stage("scan", "sleep:30")], stable_seconds=0, shutdown_grace_seconds=1)
    root.vvflow("retry", "bad00.mp4", check=0)
    run = Running(root, log=tmp_path / "run.log")
    try:
        wait_for(lambda: bool(root.names("processing")), what="a claim")
        wait_for(lambda: bool(root.runs()[12:]), what="the stage")
        table = root.vvflow("status", check=0).stdout
    finally:
        run.stop()
        run.close()
    lines = table.splitlines()
    assert lines[0].startswith("vvflow storage root ")
    assert any(ln.split()[:2] == ["failed", "11"] for ln in lines)
    assert any(ln.split()[:2] == ["processing", "1"] for ln in lines)
    header = next(ln for ln in lines if ln.startswith("PROCESSING NOW"))
    row = lines[lines.index(header) + 1]
    assert row.split()[:2] == ["bad00.mp4", "scan"]
    assert "NEWEST FAILURES" in table and "... and 1 more" in table
    assert "exit 1: RuntimeError: boom in stage" in table
    data = json.loads(root.vvflow("status", "--json", check=0).stdout)
    assert data["processing"] == 0 and data["failed"] == 11  # the run stopped: back to pending
    assert data["pending"] == 1


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def test_metrics_endpoint_counts_what_happens(root: Root, tmp_path: Path) -> None:
    root.configure(root.three_stages(summarize="flaky:1", attempts=2, logline="ok"),
                   stable_seconds=0.1, metrics_port=0)  # fmt: skip
    root.drop("early.mp4")  # found by the first rescan
    run = Running(root, log=tmp_path / "run.log")
    try:
        wait_for(lambda: any(e["event"] == "metrics_serving" for e in run.events()),
                 what="metrics")  # fmt: skip
        address = next(e for e in run.events() if e["event"] == "metrics_serving")["address"]
        assert str(address).startswith("http://127.0.0.1:")
        wait_for(lambda: root.names("completed") == ["early.mp4"], what="early.mp4")
        root.drop("late.mp4")  # found by its event
        wait_for(lambda: len(root.names("completed")) == 2, what="late.mp4")
        # A video is filed first; then its `completed` event counts it and its worker
        # leaves the queue: scrape once both happened.
        scraped: list[dict[str, float]] = []

        def settled() -> bool:
            scraped.append(_scrape(str(address)))
            return (scraped[-1]['vvflow_videos_finished_total{state="completed"}'] == 2
                    and scraped[-1]['vvflow_queue_length{kind="inflight"}'] == 0)  # fmt: skip

        wait_for(settled, timeout=10, what="the metrics to settle")
        m = scraped[-1]
    finally:
        run.stop()
        run.close()
    assert m['vvflow_videos{state="completed"}'] == 2
    assert m['vvflow_videos{state="pending"}'] == 0
    assert m['vvflow_videos_finished_total{state="completed"}'] == 2
    assert m['vvflow_stage_attempts_total{stage="scan"}'] == 2
    assert m['vvflow_stage_attempts_total{stage="summarize"}'] == 4
    assert m['vvflow_stage_retries_total{stage="summarize"}'] == 2
    assert m['vvflow_stage_duration_seconds_count{outcome="succeeded",stage="logline"}'] == 2
    assert m['vvflow_videos_found_total{source="rescan"}'] == 1
    assert m['vvflow_videos_found_total{source="event"}'] == 1
    assert m['vvflow_queue_length{kind="inflight"}'] == 0
    assert m["vvflow_last_heartbeat_timestamp_seconds"] > time.time() - 60
    assert m["vvflow_lease_takeovers_total"] == 0


def test_metrics_port_in_use_is_a_clear_error(root: Root) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root.configure()
        proc = root.vvflow("run", "--metrics-port", str(port), check=2, timeout=30)
    assert "metrics: cannot listen on 127.0.0.1" in proc.stderr
    assert not [e for e in events(proc.stderr) if e["event"] == "claimed"]
