"""Bad stages: one that prints megabytes, one that leaves a child holding its pipes,
one that forks a daemon into a new session, one that ignores SIGTERM, and ones that
write somewhere other than their `{output}`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    alive,
    assert_settled,
    entries,
    hostile,
    leftovers,
    read_pids,
    stage_log,
    wait_for,
)

SPEW_MIB = 64


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(60)
def test_stage_printing_megabytes_keeps_vvflow_memory_bounded(root: Root, tmp_path: Path) -> None:
    """A stage prints 64 MiB on stdout and 64 MiB on stderr, three times (one per
    stage). The `vvflow run` process's peak resident memory grows by less than 16 MiB,
    the video completes, and the report keeps only the last 2,000 characters of each."""
    root.configure(
        [hostile(root, "scan", f"spew:{SPEW_MIB}"),
         hostile(root, "summarize", f"spew:{SPEW_MIB}", inp="{scan}"),
         hostile(root, "logline", f"spew:{SPEW_MIB}", inp="{summarize}")],
        stable_seconds=0.1, rescan_seconds=0.5,
    )  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        time.sleep(0.5)  # let the daemon settle (first rescan, health record)
        before = _hwm_kib(run.pid)
        root.drop("loud.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["loud.mp4"], timeout=45,
                 what="loud.mp4 completed")  # fmt: skip
        growth = _hwm_kib(run.pid) - before
        assert run.stop() == 0
    assert growth < 16 * 1024, f"vvflow grew by {growth} KiB for {3 * 2 * SPEW_MIB} MiB printed"
    rep = root.report("loud.mp4")
    for stage in ("scan", "summarize", "logline"):
        record = rep["stages"][stage]
        assert 0 < len(record["stdout_tail"]) <= 2000 and 0 < len(record["stderr_tail"]) <= 2000
        assert "spew" in record["stdout_tail"]
    assert_settled(root, ["loud.mp4"])
    print(f"\nspew: {3 * 2 * SPEW_MIB} MiB printed, vvflow peak RSS grew {growth} KiB")


@pytest.mark.timeout(60)
def test_child_left_in_the_stage_group_holding_its_pipes(root: Root, tmp_path: Path) -> None:
    """The stage exits 0 but leaves a child in its process group that holds stdout and
    stderr open for 30 s. vvflow does not wait for it (the video completes in a few
    seconds) and kills it with the group."""
    pids = tmp_path / "pids"
    root.configure([hostile(root, "scan", "group-child:30", pids=pids)], stable_seconds=0.1,
                   rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("a.mp4")
        wait_for(lambda: "group-child" in read_pids(pids), what="the child")
        child = read_pids(pids)["group-child"][0]
        wait_for(lambda: entries(root.folder("completed")) == ["a.mp4"], timeout=10,
                 what="a.mp4 completed despite the child")  # fmt: skip
        wait_for(lambda: not alive(child), timeout=5, what="the child killed")
        assert run.stop() == 0
    assert_settled(root, ["a.mp4"], ["scan"])


def _daemon_run(root: Root, tmp_path: Path) -> tuple[int, bytes, Path]:
    """Run one video whose stage leaves a daemon in a new session that holds the output
    open and appends to it 1.5 s later; return the daemon's pid, the output as it was
    when published and its path."""
    pids = tmp_path / "pids"
    root.configure([hostile(root, "scan", "daemon:1.5", pids=pids)], stable_seconds=0.1,
                   rescan_seconds=0.5)  # fmt: skip
    output = root.path / "analytic" / "a.analytic.json"
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("a.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["a.mp4"], timeout=10,
                 what="a.mp4 completed: the daemon did not block it")  # fmt: skip
        published = output.read_bytes()
        daemon = read_pids(pids)["escaped"][0]
        ended = next(r["t"] for r in stage_log(root) if r["event"] == "end")
        # Past the daemon's write (1.5 s after its start) plus a margin.
        wait_for(lambda: time.time() > ended + 2.5, timeout=10, what="the daemon's write time")
        assert run.stop() == 0
    return daemon, published, output


@pytest.mark.timeout(60)
def test_stage_daemon_in_a_new_session_never_changes_a_published_output(
    root: Root, tmp_path: Path
) -> None:
    """The stage forks a daemon into a new session (out of its process group) that keeps
    the stage's output open and appends to it 1.5 s after the stage exited. The video
    completes without waiting for it, and its published output stays exactly as
    published: whole JSON, no late bytes."""
    daemon, published, output = _daemon_run(root, tmp_path)
    try:
        assert json.loads(published)["video"] == "a.mp4"
        assert output.read_bytes() == published, output.read_bytes()[-80:]
    finally:
        if alive(daemon):
            os.kill(daemon, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_stage_daemon_in_a_new_session_does_not_outlive_its_stage(
    root: Root, tmp_path: Path
) -> None:
    """The same daemon must not outlive the stage that started it by more than a few
    seconds."""
    daemon, _, _ = _daemon_run(root, tmp_path)
    try:
        assert not alive(daemon), f"the stage's daemon {daemon} is still running"
    finally:
        if alive(daemon):
            os.kill(daemon, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_stage_ignoring_sigterm_is_killed_at_its_timeout(root: Root, tmp_path: Path) -> None:
    """A stage that ignores SIGTERM and hangs, with a 1 s timeout and one attempt: the
    video fails with a timeout reason within 10 s, and the stage process is gone."""
    pids = tmp_path / "pids"
    root.configure([hostile(root, "scan", "ignore-term,hang", pids=pids, timeout_seconds=1.0,
                            attempts=1)], stable_seconds=0.1, rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("stuck.mp4")
        wait_for(lambda: "stage" in read_pids(pids), what="the stage to start")
        started = time.monotonic()
        wait_for(lambda: entries(root.folder("failed")) == ["stuck.mp4"], timeout=10,
                 what="stuck.mp4 failed on its timeout")  # fmt: skip
        took = time.monotonic() - started
        stage = read_pids(pids)["stage"][0]
        wait_for(lambda: not alive(stage), timeout=5, what="the stage killed")
        assert run.stop() == 0
    assert "timed out" in root.report("stuck.mp4")["error"]
    assert_settled(root, ["stuck.mp4"], ["scan"])
    print(f"\nsigterm-ignoring stage with a 1 s timeout: failed after {took:.1f}s")


@pytest.mark.timeout(60)
def test_stage_ignoring_sigterm_does_not_hold_up_shutdown(root: Root, tmp_path: Path) -> None:
    """SIGTERM to `vvflow run` while a stage that ignores SIGTERM hangs: vvflow exits 0
    within its 0.5 s grace plus the kill delay (10 s bound), the stage is gone and the
    video is back in pending/."""
    pids = tmp_path / "pids"
    root.configure([hostile(root, "scan", "ignore-term,hang", pids=pids)],
                   stable_seconds=0.1, rescan_seconds=0.5,
                   shutdown_grace_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("stuck.mp4")
        wait_for(lambda: "stage" in read_pids(pids), what="the stage to start")
        started = time.monotonic()
        assert run.stop(timeout=10) == 0
        took = time.monotonic() - started
        stage = read_pids(pids)["stage"][0]
        wait_for(lambda: not alive(stage), timeout=5, what="the stage killed")
    assert entries(root.folder("pending")) == ["stuck.mp4"]
    assert entries(root.folder("processing")) == []
    print(f"\nshutdown with a SIGTERM-ignoring stage: {took:.1f}s")


@pytest.mark.timeout(60)
def test_stages_writing_anywhere_but_their_output(root: Root, tmp_path: Path) -> None:
    """Videos whose one stage misbehaves: `final` writes the final output path itself
    and no `{output}`; `link` makes `{output}` a symlink to a file outside the root;
    `dir` makes it a folder; `litter` writes its output and litters its working folder.
    The first three fail as "no output" after one attempt, nothing is published for
    them, the outside file is neither changed nor moved in, no symlink appears under
    the root; `litter` completes and its litter is cleaned up."""
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": true}')
    steps = {
        "final": "final-out:{root}/analytic/{stem}.analytic.json",
        "link": f"symlink-out:{outside}",
        "dir": "dir-out",
    }
    for key, step in steps.items():
        root.configure([hostile(root, "scan", step, attempts=1)], stable_seconds=0.1)
        root.drop(f"{key}.mp4")
        root.vvflow("once", timeout=60, check=1)
        assert f"{key}.mp4" in entries(root.folder("failed"))
        rep = root.report(f"{key}.mp4")
        assert "no output" in rep["error"], rep["error"]
        assert rep["stages"]["scan"]["output"] is None
    root.configure([hostile(root, "scan", "litter:litter-in-cwd.bin")], stable_seconds=0.1)
    root.drop("litter.mp4")
    root.vvflow("once", timeout=60, check=0)

    assert outside.read_text() == '{"secret": true}'
    assert not [p for p in root.path.rglob("*") if p.is_symlink()]
    assert not (root.path / "analytic" / "link.analytic.json").exists()
    assert not (root.path / "analytic" / "dir.analytic.json").exists()
    assert entries(root.folder("completed")) == ["litter.mp4"]
    assert entries(root.folder("failed")) == ["dir.mp4", "final.mp4", "link.mp4"]
    assert not list(root.path.rglob("litter-in-cwd.bin"))
    assert leftovers(root) == [] and entries(root.folder("processing")) == []


@pytest.mark.timeout(60)
def test_stage_that_edits_its_video_in_place_is_not_rerun_forever(
    root: Root, tmp_path: Path
) -> None:
    """A stage that appends to the video it is given (a tagger writing metadata in
    place) changes the file's identity under vvflow every time it runs. Whatever vvflow
    makes of that (complete it, fail it, return it once), it must settle: within 6 s
    the video is in completed/ or failed/ and the stage has not run more than 3 times."""
    root.configure([hostile(root, "scan", "append-input")], stable_seconds=0.1,
                   rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("tagged.mp4")
        wait_for(lambda: entries(root.folder("completed")) + entries(root.folder("failed"))
                 == ["tagged.mp4"], timeout=6, what="tagged.mp4 settled",
                 detail=lambda: (len(stage_log(root)), run.text()[-1500:]))  # fmt: skip
        time.sleep(1.0)  # two more rescans: it must not come back
        assert run.stop() == 0
    starts = [r for r in stage_log(root) if r["event"] == "start"]
    assert len(starts) <= 3, f"the stage ran {len(starts)} times"
    assert entries(root.folder("pending")) == [] and entries(root.folder("processing")) == []
