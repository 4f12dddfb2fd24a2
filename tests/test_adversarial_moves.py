"""Crash inside a move, SQLite style: `vvflow once` is killed with SIGKILL right before
each of its filesystem changes in turn (inside a no-overwrite move between link and
unlink, between writing a report and renaming it into place, ...), then the recovery
is itself killed part-way, then a third run must repair everything.

The crash is real: a Python audit hook in the vvflow process counts the operations that
change something under the root (rename, link, unlink, rmdir, utime, rmtree and the
renameat2 call) and sends the process SIGKILL before the N-th one. Nothing in vvflow is
replaced or patched."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    assert_settled,
    clean_env,
    entries,
    hostile,
    stage_log,
    video_inodes,
)
from vvflow import atomicfs, instance
from vvflow.layout import MOVES, Layout

#: Runs vvflow with an audit hook that kills the process before its N-th change under
#: the root (N = 0: never) and appends a line per counted change (or only the fatal one)
#: to a trace file. `open` for writing is not a crash point: crashing before it leaves
#: the same state as crashing before the change that follows the previous write.
#:
#: A test makes 60 to 90 such runs, and starting Python and importing vvflow is most of
#: what each costs (0.5 s of CPU): this process imports vvflow once, then, for each
#: request on stdin ({"root", "target", "trace", "every", "stderr", "argv"}), forks a
#: child that is the run (stdin and stdout /dev/null, stderr to the file named, the hook
#: added, then `vvflow ARGV`), and answers with the child's exit code (-9 when killed;
#: "timeout", after killing it, when it ran 60 s). A child starts from the state the
#: imports left, as a fresh `python -m vvflow` does; the hook is added before vvflow
#: does anything, so each run counts the same changes a fresh process would.
CRASHER = r"""
import json, os, select, signal, sys

import vvflow.commands  # what main() imports for `vvflow once`
from vvflow.cli import main

ROOT = b""  # these four are set in each child, from its request
TARGET = 0
TRACE = ""
EVERY = False
COUNT = 0
CHANGES = ("os.rename", "os.link", "os.remove", "os.rmdir", "os.utime", "os.truncate",
           "os.symlink", "shutil.rmtree")


def _path(value):
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        value = os.fsencode(value)
    return value if isinstance(value, bytes) else None


def _ours(value):
    path = _path(value)
    return path is not None and (path.startswith(ROOT) or not path.startswith(b"/"))


def _change(event, args):
    if event in CHANGES and _ours(args[0]):
        dst = _path(args[1]) if event in ("os.rename", "os.link") else b""
        return _path(args[0]), dst or b""
    if event == "ctypes.call_function":
        paths = [a for a in args[1] if isinstance(a, bytes) and a.startswith(ROOT)]
        if paths:
            return paths[0], paths[-1]
    return None


def hook(event, args):
    global COUNT
    change = _change(event, args)
    if change is None:
        return
    COUNT += 1
    if EVERY or COUNT == TARGET:
        src, dst = (os.fsdecode(p).replace(os.fsdecode(ROOT), "") for p in change)
        with open(TRACE, "a", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(f"{COUNT}\t{event}\t{src}\t{dst}\n")
    if COUNT == TARGET:
        os.kill(os.getpid(), signal.SIGKILL)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the run
        null = os.open(os.devnull, os.O_RDWR)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr, 2)
        os.close(null)
        os.close(stderr)
        ROOT = os.fsencode(request["root"])
        TARGET = request["target"]
        TRACE = request["trace"]
        EVERY = request["every"]
        sys.addaudithook(hook)
        sys.argv = ["vvflow", *request["argv"]]
        sys.exit(main())  # ends this child (the loop too) with vvflow's exit code
    child = os.pidfd_open(pid)
    answer = None
    if not select.select([child], [], [], 60)[0]:
        os.kill(pid, signal.SIGKILL)
        answer = "timeout"
    _, status = os.waitpid(pid, 0)
    os.close(child)
    print(answer or os.waitstatus_to_exitcode(status), flush=True)
"""


class Crashers:
    """`workers` CRASHER processes (each runs one crash run at a time), for one test."""

    def __init__(self, script: Path, env: dict[str, str], workers: int) -> None:
        self._all: list[subprocess.Popen[str]] = []
        self._free: queue.Queue[subprocess.Popen[str]] = queue.Queue()
        for _ in range(workers):
            proc = subprocess.Popen([sys.executable, str(script)], env=clean_env(env), text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
            self._all.append(proc)
            self._free.put(proc)

    def run(self, root: Root, target: int, trace: Path, *, every: bool = False) -> int:
        """`vvflow once` on `root`, killed before its change `target` (0: never)."""
        stderr = trace.with_name(trace.name + ".stderr")
        request = {"root": str(root.path), "target": target, "trace": str(trace), "every": every,
                   "stderr": str(stderr), "argv": ["once", "--root", str(root.path)]}  # fmt: skip
        proc = self._free.get()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
        finally:
            self._free.put(proc)
        if answer not in ("0", "-9"):
            tail = stderr.read_bytes().decode(errors="replace")[-1500:] if stderr.exists() else ""
            raise AssertionError(f"exit {answer or '(the crasher died)'}: {tail}")
        return int(answer)

    def close(self) -> None:
        for proc in self._all:
            assert proc.stdin is not None
            proc.stdin.close()  # the end of the requests: it exits
        for proc in self._all:
            proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()


def _fresh_root(base: Path, video_bytes: bytes, content: bytes) -> Root:
    """A root of its own for one crash point, with one video pending and one stage."""
    base.mkdir()
    root = Root(base / "root", base / "runs.log", video_bytes)
    root.folder("pending").mkdir(parents=True)
    (root.folder("pending") / "v.mp4").write_bytes(content)
    root.configure([hostile(root, "scan")], workers=1)
    return root


def _where(root: Root, size: int) -> list[Path]:
    """Every place the video is (by content size, as its inode changes on no move)."""
    found = [p for paths in video_inodes(root).values() for p in paths]
    return [p for p in found if p.stat().st_size == size]


def _in_completed(root: Root) -> bool:
    return "v.mp4" in entries(root.folder("completed"))


def _crash_point(base: Path, video_bytes: bytes, content: bytes, crashers: Crashers,
                 n: int) -> tuple[str, str | None]:  # fmt: skip
    """Kill a run before change n, a recovery before its change 3..12, run clean, check.
    Returns the fatal change and what broke (None: nothing)."""
    root = _fresh_root(base, video_bytes, content)
    trace = base / "crash.trace"
    crashers.run(root, n, trace)
    fatal = trace.read_text().rstrip("\n") if trace.exists() else ""
    try:
        assert _where(root, len(content)), "after the crash the video is gone"
        for target in (3 + n % 10, 0):
            done_before = _in_completed(root)
            starts_before = len(stage_log(root))
            crashers.run(root, target, base / "recover.trace")
            assert _where(root, len(content)), f"a recovery killed before change {target}: gone"
            if done_before:
                assert len(stage_log(root)) == starts_before, "a stage ran for a completed video"
        assert_settled(root, ["v.mp4"], ["scan"])
        assert (root.folder("completed") / "v.mp4").read_bytes() == content
    except AssertionError as exc:
        return fatal, str(exc)[:1500]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return fatal, None


@pytest.mark.timeout(150)
@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_crash_before_every_change_then_during_recovery_is_repaired(
    tmp_path: Path, video_bytes: bytes, rename: str
) -> None:
    """One video, one stage. For every change N that a clean `vvflow once` makes under
    the root (about 30 with the link fallback, 20 with renameat2), a run is killed
    right before change N, then a recovery run is killed before its own change 3..12
    (cycling with N), then a clean run. After each kill the video exists somewhere
    under input/ (never lost); after the clean run the root is settled: the video
    completed once (no `v-2.mp4`), its output whole, its report agreeing, no temporary
    file; and no stage starts in a run that began with the video already completed.
    Two crash points run at a time, each on a root of its own."""
    env = {"VVFLOW_RENAME": "link"} if rename == "link" else {}
    crasher = tmp_path / "crasher.py"
    crasher.write_text(CRASHER)
    content = video_bytes + b"\0crash-point"
    crashers = Crashers(crasher, env, workers=2)
    try:
        probe = _fresh_root(tmp_path / "probe", video_bytes, content)
        assert crashers.run(probe, 0, tmp_path / "probe.trace", every=True) == 0
        points = (tmp_path / "probe.trace").read_text().splitlines()
        assert len(points) >= 10, points

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(
                pool.map(
                    lambda n: _crash_point(tmp_path / f"p{n}", video_bytes, content, crashers, n),
                    range(1, len(points) + 1),
                )
            )
    finally:
        crashers.close()
    broken = [
        f"crash before change {n} ({' '.join(points[n - 1].split(chr(9))[1:])}): {why}"
        for n, (_fatal, why) in enumerate(results, start=1)
        if why is not None
    ]
    assert broken == [], "\n".join(broken)
    fatal = [line for line, _why in results if line]

    # The crash points include the two the issue names.
    kinds = {tuple(line.split("\t")[1:]) for line in fatal}
    assert any(
        event in ("os.rename", "ctypes.call_function") and dst.startswith("/reports/")
        for event, _src, dst in kinds
    ), "no crash between writing a report and renaming it"
    if rename == "link":
        # The protocol without RENAME_NOREPLACE: rename to a private name, link, unlink.
        assert any(
            event == "os.link" and "/.moves/" in src and src.endswith(".staged")
            for event, src, _dst in kinds
        ), "no crash between taking a file under a private name and linking it"
        assert any(
            event == "os.remove" and "/.moves/" in src and src.endswith(".staged")
            for event, src, _dst in kinds
        ), "no crash between link and unlink of a move"
    print(f"\ncrash points ({rename}): {len(points)} crash points, each with a crashed recovery")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recovery_killed_inside_its_own_move_is_repaired_by_the_next(root: Root) -> None:
    """The minimal form of the crash the exhaustive test finds. Instance A died holding
    v.mp4; instance B, recovering A, died between the link of v.mp4 into pending/ and
    the unlink from A's folder (its intent is in its journal). The next run must finish
    B's move and process the video once, as v.mp4, not also as v-2.mp4."""
    root.configure([hostile(root, "scan")])
    layout = Layout(root.path, [".mp4"])
    layout.ensure()
    # Sorted as recovery walks them: the owner first, as a recoverer started later
    # usually has the higher pid.
    owner, recoverer = sorted(instance.InstanceId.local(_dead_pid(), 1).name for _ in range(2))
    owner_dir, recoverer_dir = layout.processing / owner, layout.processing / recoverer
    owner_dir.mkdir()
    (recoverer_dir / MOVES).mkdir(parents=True)
    claimed = owner_dir / "v.mp4"
    claimed.write_bytes(root.video_bytes + b"\0journal")
    back = layout.pending / "v.mp4"
    record = {"src": os.fsencode(claimed).hex(), "dst": os.fsencode(back).hex()}
    (recoverer_dir / MOVES / f"r{atomicfs.INTENT_SUFFIX}").write_text(json.dumps(record))
    os.link(claimed, back)

    root.vvflow("once", check=0)
    assert entries(root.folder("completed")) == ["v.mp4"]
    assert_settled(root, ["v.mp4"], ["scan"])
