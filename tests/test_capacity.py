"""Stage capacity and pipelining (issue 12): per-stage `concurrency`, named `[resources]`
shared by stages, oldest-first claiming, `vvflow pause` / `resume` and progress lines,
with real `vvflow once` / `vvflow run` processes and stages (tests/timed_stage.py) that
record their own start and end times."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events, toml_value
from tests.test_adversarial_support import Fleet, Vvflow, stage_log, tree, wait_for

TIMED = Path(__file__).with_name("timed_stage.py")
INPUTS = {"scan": "{video}", "summarize": "{scan}", "logline": "{summarize}"}


def timed(root: Root, name: str, seconds: float = 0.0, *, inp: str | None = None,
          progress: str | None = None, gate: Path | None = None,
          **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A `[[stages]]` table running tests/timed_stage.py for `seconds`."""
    command = [sys.executable, "-S", str(TIMED), "--log", str(root.runlog), "--stage", name,
               "--seconds", str(seconds)]  # fmt: skip
    if progress is not None:
        command += ["--progress", progress]
    if gate is not None:
        command += ["--gate", str(gate)]
    return {
        "name": name,
        "command": [*command, inp or INPUTS.get(name, "{video}"), "{output}"],
        "output": f"{name}/{{stem}}.json",
        "attempts": 1,
        "backoff_seconds": 0.0,
        "backoff_max_seconds": 0.0,
        **extra,
    }


def value(item: Any) -> str:
    """A TOML value: a dict becomes an inline table (`{ gpu = 1 }`)."""
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
    return toml_value(item)


def configure(root: Root, stages: list[dict[str, Any]], *,
              resources: dict[str, int] | None = None, **top: Any) -> None:  # fmt: skip
    """Write vvflow.toml: top-level keys, then `[resources]`, then the stages."""
    top.setdefault("stable_seconds", 0.0)
    lines = [f"{key} = {value(v)}" for key, v in top.items()]
    if resources is not None:
        lines += ["", "[resources]", *(f"{key} = {value(v)}" for key, v in resources.items())]
    for stage in stages:
        lines += ["", "[[stages]]", *(f"{key} = {value(v)}" for key, v in stage.items())]
    (root.path / "vvflow.toml").write_text("\n".join(lines) + "\n")


Interval = tuple[float, float, str, str]  # start, end, stage, video


def intervals(root: Root, stages: Iterable[str] | None = None) -> list[Interval]:
    """The runs that ended, as the stages recorded them, sorted by start."""
    wanted = None if stages is None else set(stages)
    found = [
        (r["start"], r["end"], r["stage"], r["video"])
        for r in stage_log(root)
        if r["event"] == "end" and (wanted is None or r["stage"] in wanted)
    ]
    return sorted(found)


def overlaps(runs: list[Interval]) -> list[tuple[Interval, Interval]]:
    """Every pair of runs that were running at the same moment."""
    return [
        (a, b)
        for i, a in enumerate(runs)
        for b in runs[i + 1 :]
        if max(a[0], b[0]) < min(a[1], b[1])
    ]


def starts(root: Root) -> Counter[tuple[str, str]]:
    return Counter((r["video"], r["stage"]) for r in stage_log(root) if r["event"] == "start")


def ends(root: Root) -> Counter[tuple[str, str]]:
    return Counter((r["video"], r["stage"]) for r in stage_log(root) if r["event"] == "end")


def once_each(root: Root, names: Iterable[str], stages: Iterable[str]) -> None:
    """Every stage started and ended exactly once for every video, and for no other."""
    expected = Counter({(n, s): 1 for n in names for s in stages})
    assert starts(root) == expected, starts(root) - expected or expected - starts(root)
    assert ends(root) == expected, ends(root) - expected or expected - ends(root)


def claims(root: Root) -> list[str]:
    """The videos in processing/ (every instance's folder), hidden names left out."""
    return root.names("processing")


def since(log: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The records of `log` after its first `event` record."""
    for number, record in enumerate(log):
        if record["event"] == event:
            return log[number + 1 :]
    raise AssertionError(f"no {event!r} in {[r['event'] for r in log]}")


# -- concurrency ----------------------------------------------------------------------


def test_stages_of_concurrency_one_run_one_at_a_time_and_beside_each_other(root: Root) -> None:
    stages = ("scan", "summarize", "logline")
    configure(root, [timed(root, s, 0.3, concurrency=1) for s in stages], workers=3)
    names = [f"v{i}.mp4" for i in range(8)]
    for name in names:
        root.drop(name)
    log = events(root.vvflow("once", check=0).stderr)

    assert root.names("completed") == names, tree(root)
    once_each(root, names, stages)
    waits = [e for e in log if e["event"] == "stage_waiting"]
    assert waits and all(any(e["stage"] in w for w in e["waiting_for"]) for e in waits), waits
    runs = intervals(root)
    for stage in stages:
        same = [r for r in runs if r[2] == stage]
        assert overlaps(same) == [], f"two runs of {stage} at once"
    # Videos flow between the stages: different stages run at the same time.
    beside = [(a, b) for a, b in overlaps(runs) if a[2] != b[2]]
    assert beside, f"no two stages ever ran at once: {runs}"
    longest = max(min(a[1], b[1]) - max(a[0], b[0]) for a, b in beside)
    assert longest >= 0.1, f"stages overlapped by {longest:.3f}s at most"
    # A video never skips a stage: each starts after the previous one ended for it.
    for name in names:
        mine = [next(r for r in runs if r[2] == s and r[3] == name) for s in stages]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine)), mine


def test_stages_using_one_gpu_never_overlap(root: Root) -> None:
    stages = [
        timed(root, "scan", 0.1),
        timed(root, "embed", 0.15, inp="{scan}", uses=["gpu"]),
        timed(root, "summarize", 0.15, inp="{embed}", uses={"gpu": 1}),  # the table form
    ]
    configure(root, stages, resources={"gpu": 1}, workers=3)
    names = [f"v{i:02d}.mp4" for i in range(10)]
    for name in names:
        root.drop(name)
    log = events(root.vvflow("once", check=0).stderr)

    assert root.names("completed") == names, tree(root)
    once_each(root, names, ("scan", "embed", "summarize"))
    waits = [e for e in log if e["event"] == "stage_waiting"]
    assert waits and all(e["waiting_for"] == ["gpu"] for e in waits), waits
    gpu = intervals(root, ("embed", "summarize"))
    assert len(gpu) == 20
    assert overlaps(gpu) == [], "two stages held the one gpu at once"
    # The stage that uses no gpu keeps flowing beside the gpu stages.
    runs = intervals(root)
    assert any(a[2] == "scan" or b[2] == "scan" for a, b in overlaps(runs)), runs


@pytest.mark.parametrize(
    ("resources", "stage", "expected"),
    [
        ({"gpu": 1}, {"uses": ["tpu"]}, ("uses", "tpu")),
        ({"gpu": 1}, {"uses": {"tpu": 1}}, ("uses", "tpu")),
        ({"gpu": 1}, {"uses": {"gpu": 2}}, ("uses", "gpu")),
        ({"gpu": 0}, {"uses": ["gpu"]}, ("resources", "gpu")),
        (None, {"uses": ["gpu"]}, ("uses", "gpu")),
        (None, {"concurrency": 0}, ("stages.0.concurrency",)),
    ],
)  # fmt: skip
def test_capacity_config_errors_exit_2_with_one_line(
    root: Root, resources: dict[str, int] | None, stage: dict[str, Any],
    expected: tuple[str, ...],
) -> None:  # fmt: skip
    configure(root, [timed(root, "scan", **stage)], resources=resources)
    root.drop("a.mp4")
    proc = root.vvflow("once", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(word in lines[0] for word in expected), lines[0]
    assert root.names("pending") == ["a.mp4"] and stage_log(root) == []


# -- order ----------------------------------------------------------------------------


def drop_in_order(root: Root, arrival: list[str]) -> None:
    """Drop `arrival` into pending/ in that order, the later the older its mtime."""
    now = time.time()
    for number, name in enumerate(arrival):
        path = root.drop(name)
        # The later a video arrives, the older its mtime: mtime order is wrong too.
        # (utime changes the ctime too: to now, which keeps the arrival order.)
        os.utime(path, (now - 1000 * number, now - 1000 * number))
        time.sleep(0.05)  # beyond the coarse clock of file times
    ctimes = [(root.folder("pending") / n).stat().st_ctime_ns for n in arrival]
    assert ctimes == sorted(ctimes) and len(set(ctimes)) == len(ctimes), ctimes


@pytest.mark.parametrize("command", ["once", "run"])
def test_pending_videos_are_taken_oldest_first(root: Root, tmp_path: Path, command: str) -> None:
    configure(root, [timed(root, "scan")], workers=1, stable_seconds=0.2)
    arrival = ["c.mp4", "a.mp4", "e.mp4", "b.mp4", "d.mp4"]  # not name order
    drop_in_order(root, arrival)

    if command == "once":
        log = events(root.vvflow("once", check=0).stderr)
    else:
        with Fleet(root, tmp_path) as fleet:
            run = fleet.start("run")
            wait_for(lambda: len(root.names("completed")) == len(arrival), timeout=30,
                     what="every video completed", detail=lambda: tree(root))  # fmt: skip
            assert run.stop() == 0
            log = run.events()
    claimed = [r["video"] for r in log if r["event"] == "claimed"]
    assert claimed == arrival
    assert [r["video"] for r in stage_log(root) if r["event"] == "start"] == arrival


def test_several_workers_take_pending_videos_oldest_first(root: Root) -> None:
    """With workers = 3 too, the oldest videos are claimed first, and the one slot of a
    stage goes to them in the order they arrived."""
    configure(root, [timed(root, "scan", 0.1, concurrency=1)], workers=3, stable_seconds=0.2)
    arrival = ["c.mp4", "a.mp4", "e.mp4", "b.mp4", "d.mp4"]
    drop_in_order(root, arrival)
    log = events(root.vvflow("once", check=0).stderr)
    assert [r["video"] for r in log if r["event"] == "claimed"] == arrival
    assert [r["video"] for r in stage_log(root) if r["event"] == "start"] == arrival


# -- pause ----------------------------------------------------------------------------


def paused_file(root: Root) -> Path:
    return root.path / "input" / ".paused"


def said(run: Vvflow, event: str, timeout: float = 20) -> dict[str, Any]:
    """The first `event` record `run` logs, waiting for it."""

    def found() -> list[dict[str, Any]]:
        return [e for e in run.events() if e["event"] == event]

    wait_for(lambda: bool(found()), timeout=timeout, what=f"{event!r} from {run.pid}",
             detail=lambda: run.text()[-2000:])  # fmt: skip
    return found()[0]


def test_pause_finishes_what_runs_claims_nothing_and_survives_a_restart(
    root: Root, tmp_path: Path
) -> None:
    # The stage waits for the gate: the first videos are still running when the pause
    # takes effect however slowly `vvflow pause` starts on a busy machine.
    gate = tmp_path / "gate"
    configure(root, [timed(root, "scan", 0.3, gate=gate)], workers=2)
    names = [f"v{i}.mp4" for i in range(8)]
    with Fleet(root, tmp_path) as fleet:
        first, second = fleet.start("run"), fleet.start("run")
        for name in names:
            root.drop(name)
        wait_for(lambda: starts(root).total() == 4, what="both instances' 2 workers busy",
                 detail=lambda: tree(root))  # fmt: skip
        root.vvflow("pause", "--reason", "maintenance window", check=0)
        state = json.loads(paused_file(root).read_bytes())
        assert state["reason"] == "maintenance window" and state["since"] and state["by"]

        # Each instance says it is paused, finishes what it claimed and claims no more,
        # though its workers are free again and pending/ holds more.
        for run in (first, second):
            said(run, "paused")
        gate.touch()
        wait_for(lambda: claims(root) == [], timeout=30, what="the claims filed",
                 detail=lambda: tree(root))  # fmt: skip
        claimed = sorted(
            e["video"] for run in (first, second) for e in run.events() if e["event"] == "claimed"
        )
        assert len(claimed) == 4, claimed
        for run in (first, second):
            assert [e for e in since(run.events(), "paused") if e["event"] == "claimed"] == []
        assert root.names("completed") == claimed, tree(root)
        waiting = sorted(set(names) - set(claimed))
        assert root.names("pending") == waiting

        status = root.status()
        assert status["paused"], status
        assert status["paused"]["reason"] == "maintenance window", status["paused"]
        assert "paused" in root.vvflow("status", check=0).stdout.lower()
        health = root.vvflow("health", check=0)
        assert "paused" in health.stdout.lower(), health.stdout

        time.sleep(2.0)  # a few seconds in which nothing may be claimed
        assert root.names("pending") == waiting and claims(root) == []
        assert sorted(v for v, _ in starts(root)) == claimed
        assert first.stop() == 0 and second.stop() == 0

        # Paused with no instance running: `once` claims nothing and exits 0.
        proc = root.vvflow("once", check=0)
        assert not [e for e in events(proc.stderr) if e["event"] == "claimed"], proc.stderr
        assert root.names("pending") == waiting

        # A new instance starts paused.
        third = fleet.start("run")
        said(third, "paused")
        time.sleep(1.5)
        assert root.names("pending") == waiting and claims(root) == []
        assert not [e for e in third.events() if e["event"] == "claimed"]

        root.vvflow("resume", check=0)
        assert not paused_file(root).exists()
        wait_for(lambda: root.names("completed") == names, timeout=30,
                 what="the rest processed after resume", detail=lambda: tree(root))  # fmt: skip
        assert any(e["event"] == "resumed" for e in third.events()), third.text()[-2000:]
        assert third.stop() == 0
    once_each(root, names, ["scan"])
    assert "paused" not in root.status() or not root.status()["paused"]


# -- kill -9 ---------------------------------------------------------------------------


def test_sigkill_while_videos_wait_for_a_slot_recovers_each_stage_once(
    root: Root, tmp_path: Path
) -> None:
    stages = ("scan", "summarize", "logline")
    configure(root, [timed(root, "scan"), timed(root, "summarize", 1.5, concurrency=1),
                     timed(root, "logline")], workers=3)  # fmt: skip
    names = ["a.mp4", "b.mp4", "c.mp4"]
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        for name in names:
            root.drop(name)

        def waiting() -> set[str]:
            return {e["video"] for e in run.events()
                    if e["event"] == "stage_waiting" and e["stage"] == "summarize"}  # fmt: skip

        def one_runs_two_wait() -> bool:
            return len(waiting()) >= 2 and sum(starts(root)[n, "summarize"] for n in names) == 1

        wait_for(one_runs_two_wait,
                 what="one video in summarize, two waiting for its slot",
                 detail=lambda: run.text()[-3000:])  # fmt: skip
        running = [n for n in names if starts(root)[n, "summarize"]]
        assert len(running) == 1 and ends(root)[running[0], "summarize"] == 0, stage_log(root)
        wait_record = next(e for e in run.events() if e["event"] == "stage_waiting")
        assert any("summarize" in w for w in wait_record["waiting_for"]), wait_record
        os.kill(run.pid, signal.SIGKILL)
        run.proc.wait()
        assert sorted(claims(root)) == names

        again = fleet.start("run")
        wait_for(lambda: root.names("completed") == names, timeout=40,
                 what="every video completed after the kill",
                 detail=lambda: tree(root))  # fmt: skip
        assert again.stop() == 0
    assert claims(root) == [] and root.names("pending") == []
    # The stage that was running when the instance died runs again for its video; every
    # other stage ran once per video, and each published output is from a run that ended.
    expected = Counter({(n, s): 1 for n in names for s in stages})
    expected[running[0], "summarize"] = 2
    assert starts(root) == expected
    for name in names:
        for stage in stages:
            out = json.loads((root.path / stage / f"{Path(name).stem}.json").read_bytes())
            ended = [r for r in stage_log(root) if r["event"] == "end" and r["run"] == out["run"]]
            assert len(ended) == 1 and ended[0]["video"] == name, (name, stage, out)
    runs = intervals(root, ["summarize"])
    assert overlaps(runs) == [], runs


# -- progress ----------------------------------------------------------------------------


def test_progress_and_waiting_show_in_status_and_log(root: Root, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    scan = timed(root, "scan", progress="0.5 halfway there", gate=gate, concurrency=1)
    configure(root, [scan], workers=2)
    root.drop("a.mp4")
    root.drop("b.mp4")
    with Fleet(root, tmp_path) as fleet:
        once: Vvflow = fleet.start("once", wait_watching=False)
        wait_for(lambda: bool(starts(root)), what="the stage to start")
        seen: dict[str, Any] = {}

        # Which of the two gets the slot first is for the test of the order to check.
        first = next(iter(starts(root)))[0]
        second = "b.mp4" if first == "a.mp4" else "a.mp4"

        def shown() -> bool:
            seen.update((p["name"], p) for p in root.status()["processing_now"])
            return seen.get(first, {}).get("progress") == 0.5 and second in seen

        wait_for(shown, timeout=30, what=f"{first} at 0.5 and {second} waiting in status",
                 detail=lambda: seen)  # fmt: skip
        running, waiting = seen[first], seen[second]
        assert running["stage"] == "scan" and running["message"] == "halfway there", running
        assert waiting["stage"] == "scan" and waiting["activity"] == "waiting", waiting
        assert any("scan" in label for label in waiting["waiting_for"]), waiting
        assert waiting.get("progress") is None, waiting
        text = root.vvflow("status", check=0).stdout
        assert "50%" in text and "waiting for" in text, text
        record = said(once, "stage_progress")
        assert (record["video"], record["stage"], record["progress"]) == (first, "scan", 0.5)
        assert record["elapsed_s"] >= 0
        record = said(once, "stage_waiting")
        assert (record["video"], record["stage"]) == (second, "scan"), record
        assert starts(root) == Counter({(first, "scan"): 1})
        gate.touch()
        assert once.proc.wait(timeout=30) == 0, once.text()[-3000:]
    assert root.names("completed") == ["a.mp4", "b.mp4"]
    assert overlaps(intervals(root)) == []
