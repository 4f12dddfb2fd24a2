"""`kill -9` of `vvflow once` at random moments, many times: nothing is lost, every video
ends in completed/ exactly once with whole outputs, and processing/ is left empty."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import Root

VIDEOS = 12
KILLS = 20


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_kill_9_at_random_moments_loses_nothing(root: Root, rename: str) -> None:
    rng = random.Random(1234 if rename == "link" else 4321)
    root.configure(root.three_stages("sleep:0.05-0.5", "sleep:0.05-0.5", "sleep:0.05-0.5"),
                   workers=2)  # fmt: skip
    names = [f"video {i:02d}.mp4" for i in range(VIDEOS)]
    for name in names:
        root.drop(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    if rename == "link":
        env["VVFLOW_RENAME"] = "link"
    command = [sys.executable, "-m", "vvflow", "once", "--root", str(root.path)]
    kills = 0
    for _ in range(3 * KILLS):
        if kills >= KILLS or not (root.names("pending") or root.names("processing")):
            break
        proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.7))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= KILLS // 2, kills

    assert root.names("completed") == names
    assert root.names("pending") == [] and root.names("failed") == []
    assert list((root.path / "input" / "processing").iterdir()) == []
    for name in names:
        stem = name.removesuffix(".mp4")
        for folder, suffix in (("analytic", "analytic"), ("summaries", "summary"),
                               ("loglines", "logline")):  # fmt: skip
            data = json.loads((root.path / folder / f"{stem}.{suffix}.json").read_text())
            assert data["size"] > 0
        report = root.report(name)
        assert report["state"] == "completed"
        assert {s["status"] for s in report["stages"].values()} == {"succeeded"}
    # No temporary file anywhere outside processing/ (which is empty).
    leftovers = [p for p in root.path.rglob("*") if p.name.endswith(".tmp") or
                 (p.name.startswith(".") and p.name != ".built")]  # fmt: skip
    assert leftovers == []
    # Once every video is filed, another run starts no stage at all.
    before = len(root.runs())
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert len(root.runs()) == before
