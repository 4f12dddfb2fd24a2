"""The harness of the adversarial suite (tests/test_adversarial_*.py), and its self-tests.

Shared by every adversarial test: stage configurations that run tests/hostile_stage.py,
`vvflow run` / `vvflow once` processes whose stderr goes to a file, the log the stages
keep, bounded waits, and the invariants a storage root must satisfy after any ordeal.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events

HOSTILE = Path(__file__).with_name("hostile_stage.py")
OUTPUT_DIRS = {"scan": ("analytic", "analytic"), "summarize": ("summaries", "summary"),
               "logline": ("loglines", "logline")}  # fmt: skip


@contextlib.contextmanager
def tmpfs_root(tmp_path: Path, video_bytes: bytes, mib: int) -> Iterator[Root]:
    """A root on a tmpfs of `mib` MiB (the stage log stays outside it); skips the test
    where a tmpfs cannot be mounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a tmpfs")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mountpoint)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        root = Root(mountpoint / "root", tmp_path / "runs.log", video_bytes)
        root.folder("pending").mkdir(parents=True)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    env.pop("VIDEO_STORAGE_ROOT", None)
    env.update(extra or {})
    return env


def wait_for(condition: Callable[[], bool], *, timeout: float = 30, what: str = "",
             detail: Callable[[], object] | None = None) -> None:  # fmt: skip
    """Poll `condition` until it holds; fail after `timeout` seconds, saying `detail()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            more = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{more}")
        time.sleep(0.05)


def tree(root: Root) -> dict[str, list[str]]:
    """What is where under input/, for failure messages."""
    found: dict[str, list[str]] = {}
    for path in sorted((root.path / "input").rglob("*")):
        rel = path.relative_to(root.path / "input")
        found.setdefault(rel.parts[0], []).append("/".join(rel.parts[1:]))
    return found


def hostile(root: Root, name: str, steps: str = "ok", *, inp: str = "{video}",
            pids: Path | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A `[[stages]]` table running tests/hostile_stage.py with `steps`."""
    folder, suffix = OUTPUT_DIRS.get(name, (name, name))
    command = [sys.executable, "-S", str(HOSTILE), steps, "--log", str(root.runlog),
               "--stage", name]  # fmt: skip
    if pids is not None:
        command += ["--pids", str(pids)]
    return {
        "name": name,
        "command": [*command, inp, "{output}"],
        "output": f"{folder}/{{stem}}.{suffix}.json",
        "backoff_seconds": 0.0,
        "backoff_max_seconds": 0.0,
        **extra,
    }


def hostile_three(root: Root, scan: str = "ok", summarize: str = "ok", logline: str = "ok",
                  **extra: Any) -> list[dict[str, Any]]:  # fmt: skip
    return [
        hostile(root, "scan", scan, **extra),
        hostile(root, "summarize", summarize, inp="{scan}", **extra),
        hostile(root, "logline", logline, inp="{summarize}", **extra),
    ]


def stage_log(root: Root) -> list[dict[str, Any]]:
    """Every `start` and `end` line the hostile stages wrote."""
    if not root.runlog.exists():
        return []
    with root.runlog.open(encoding="utf-8", errors="surrogateescape") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def log_time(ts: str) -> float:
    """Epoch seconds of a vvflow log timestamp like 2026-11-24T02:11:12.767Z."""
    whole, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] != b"Z"


def read_pids(path: Path) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            role, pid = line.split()
            roles.setdefault(role, []).append(int(pid))
    return roles


class Vvflow:
    """A `vvflow run` or `vvflow once` subprocess with its stderr in a file."""

    def __init__(
        self, root: Root, command: str, *args: str, log: Path,
        env: dict[str, str] | None = None, wait_watching: bool = True,
    ) -> None:  # fmt: skip
        self.log = log
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vvflow", command, "--root", str(root.path), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=clean_env(env),
        )  # fmt: skip
        if command == "run" and wait_watching:
            wait_for(lambda: b'"watching"' in log.read_bytes() or self.proc.poll() is not None,
                     what="the observer to start")  # fmt: skip
            assert self.proc.poll() is None, self.text()[-3000:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_bytes().decode("utf-8", "surrogateescape")

    def events(self) -> list[dict[str, Any]]:
        return events(self.text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a SIGSTOPped process too
        self.proc.wait()
        self._stderr.close()


#: Run as the pid 1 of a fresh PID and UTS namespace: name the host, then become vvflow.
_OTHER_HOST = (
    "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"
)


def other_host_argv(host: str, *vvflow_args: str) -> list[str]:
    """`python -m vvflow ARGS` as on another host: its own PID and UTS namespaces
    (hostname `host`, its own /proc)."""
    return ["unshare", "--pid", "--fork", "--uts", "--mount-proc", "--kill-child",
            sys.executable, "-c", _OTHER_HOST, host,
            sys.executable, "-m", "vvflow", *vvflow_args]  # fmt: skip


class OtherHost(Vvflow):
    """`vvflow run` on `root` as on another host (see `other_host_argv`), with `env`."""

    def __init__(self, root: Root, host: str, *, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen(
            other_host_argv(host, "run", "--root", str(root.path)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env,
        )  # fmt: skip
        wait_for(lambda: b'"watching"' in log.read_bytes() or self.proc.poll() is not None,
                 what="the other host's observer to start")  # fmt: skip
        assert self.proc.poll() is None, self.text()[-3000:]

    def send(self, sig: int) -> None:
        # unshare does not pass signals on: signal its child, the namespace's pid 1.
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        for child in children.split():
            os.kill(int(child), sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.send(sig)
        return self.proc.wait(timeout=timeout)


class Fleet:
    """`vvflow run|once` processes started for one test; all killed and reaped on exit."""

    def __init__(self, root: Root, logs: Path) -> None:
        self.root = root
        self.logs = logs
        self.started: list[Vvflow] = []

    def start(self, command: str = "run", *args: str, env: dict[str, str] | None = None,
              wait_watching: bool = True) -> Vvflow:  # fmt: skip
        proc = Vvflow(self.root, command, *args, log=self.logs / f"vvflow{len(self.started)}.log",
                      env=env, wait_watching=wait_watching)  # fmt: skip
        self.started.append(proc)
        return proc

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.started:
            proc.close()


# -- invariants ----------------------------------------------------------------------


def entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def output_paths(root: Root, stages: Iterable[str], stem: str) -> dict[str, Path]:
    paths = {}
    for name in stages:
        folder, suffix = OUTPUT_DIRS.get(name, (name, name))
        paths[name] = root.path / folder / f"{stem}.{suffix}.json"
    return paths


def assert_settled(root: Root, names: Iterable[str], stages: Iterable[str] = OUTPUT_DIRS) -> None:
    """The invariants of a root at rest after any ordeal, for the videos `names`:

    - every name is in exactly one of completed/ and failed/, and nothing else is there
      (no `-2` duplicate, no stray file); pending/ and processing/ are empty;
    - a completed video has every output, each whole JSON written for that very video
      (a duplicate's, derived from its original's, name the original);
    - every report agrees with the folder its video is in;
    - no temporary or hidden file is left anywhere under the root.
    """
    names = sorted(names)
    stages = list(stages)
    completed = entries(root.folder("completed"))
    failed = entries(root.folder("failed"))
    assert sorted(completed + failed) == names, {
        "missing": sorted(set(names) - set(completed) - set(failed)),
        "extra": sorted(set(completed + failed) - set(names)),
        "both": sorted(set(completed) & set(failed)),
    }
    assert entries(root.folder("pending")) == [], entries(root.folder("pending"))
    assert entries(root.folder("processing")) == [], list(root.folder("processing").rglob("*"))
    for name in completed:
        stem = os.path.splitext(name)[0]
        rep = root.report(name)
        # A duplicate's outputs are its original's: the name in them is the original's.
        ran = rep.get("duplicate_of") or name
        for stage, path in output_paths(root, stages, stem).items():
            data = json.loads(path.read_bytes())  # whole: it parses
            assert data["stage"] == stage and data["video"] == ran, (path, data)
        assert rep["state"] == "completed", (name, rep["state"])
        assert all(rep["stages"][s]["status"] == "succeeded" for s in stages), rep["stages"]
    for name in failed:
        rep = root.report(name)
        assert rep["state"] == "failed" and rep["error"], (name, rep)
    assert leftovers(root) == [], leftovers(root)


def leftovers(root: Root) -> list[Path]:
    """Temporary or hidden files anywhere under the root (debris of an interrupted step)."""
    found = []
    for path in root.path.rglob("*"):
        if path.relative_to(root.path).parts[0] == "index" and path.name == ".built":
            continue  # the content index's "built" marker is bookkeeping, not debris
        if path.name.startswith(".") or path.name.endswith((".tmp", ".move")):
            found.append(path)
    return found


def video_inodes(root: Root) -> dict[int, list[Path]]:
    """Where every regular file under input/ is, by inode (a mid-move file has two)."""
    found: dict[int, list[Path]] = {}
    for path in (root.path / "input").rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and not path.name.startswith(".") and ".work" not in str(path):
            found.setdefault(st.st_ino, []).append(path)
    return found


# -- self-tests of the harness ------------------------------------------------------


def test_hostile_stage_writes_output_and_logs_start_and_end(root: Root, tmp_path: Path) -> None:
    video = root.drop("a.mp4")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-S", str(HOSTILE), "sleep:0.01,bad-if:zzz", "--log", str(root.runlog),
         "--stage", "scan", str(video), str(out)],
        env={**clean_env(), "VVFLOW_NAME": "a.mp4"}, capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_bytes())
    assert data["video"] == "a.mp4" and data["size"] == video.stat().st_size
    log = stage_log(root)
    assert [r["event"] for r in log] == ["start", "end"]
    assert log[0]["run"] == log[1]["run"] == data["run"]


def test_hostile_stage_bad_input_exits_65(root: Root, tmp_path: Path) -> None:
    video = root.drop("bad-one.mp4")
    proc = subprocess.run(
        [sys.executable, "-S", str(HOSTILE), "bad-if:bad", "--log", str(root.runlog),
         "--stage", "scan", str(video), str(tmp_path / "o")],
        env={**clean_env(), "VVFLOW_NAME": "bad-one.mp4"}, capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 65 and not (tmp_path / "o").exists()


def test_log_time_parses_vvflow_timestamps() -> None:
    assert log_time("1970-01-01T00:00:01.250Z") == pytest.approx(1.25)
