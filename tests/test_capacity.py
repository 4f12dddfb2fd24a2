"""Stage capacity and pipelining (issue 12): per-stage `concurrency`, named `[resources]`
shared by stages, oldest-first claiming, `vvflow pause` / `resume` and progress lines,
with real `vvflow once` / `vvflow run` processes and stages (tests/timed_stage.py) that
record their own start and end times."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events, toml_value
from tests.test_adversarial_support import Fleet, stage_log, tree, wait_for

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


# -- order ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["once", "run"])
def test_pending_videos_are_taken_oldest_first(root: Root, tmp_path: Path, command: str) -> None:
    configure(root, [timed(root, "scan")], workers=1, stable_seconds=0.2)
    arrival = ["c.mp4", "a.mp4", "e.mp4", "b.mp4", "d.mp4"]  # not name order
    now = time.time()
    for number, name in enumerate(arrival):
        path = root.drop(name)
        # The later a video arrives, the older its mtime: mtime order is wrong too.
        # (utime changes the ctime too: to now, which keeps the arrival order.)
        os.utime(path, (now - 1000 * number, now - 1000 * number))
        time.sleep(0.05)  # beyond the coarse clock of file times
    ctimes = [(root.folder("pending") / n).stat().st_ctime_ns for n in arrival]
    assert ctimes == sorted(ctimes) and len(set(ctimes)) == len(ctimes), ctimes

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
