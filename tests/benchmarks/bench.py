"""Benchmarks of vvflow against the seed design it replaces and against the machine's limits.

    python tests/benchmarks/bench.py --quick            # under 3 minutes on 2 cores
    python tests/benchmarks/bench.py --json results.json

Every figure is printed beside a baseline measured in the same run, and as a ratio that
always says how many times better vvflow is (> 1: vvflow is better), because absolute
times drift from one run to the next on shared machines. vvflow runs as real
subprocesses (``python -m vvflow ...``) on real storage roots in a temporary folder that
is removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import queue
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests.*` importable
    sys.path.insert(0, str(REPO))

from tests import gluster  # noqa: E402
from tests.benchmarks import seed  # noqa: E402
from tests.footage import make_footage  # noqa: E402
from tests.media import Caption, Chord, Sentence, make_video  # noqa: E402

VIDEO_SECONDS, VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS, VIDEO_CUTS = 60, 1280, 720, 30, 19
# The built-in pipeline's video: a talk with cuts and a caption, spoken by espeak-ng in two
# voices at two speeds, no sentence twice (Whisper re-decodes a window that repeats).
TALK_CAPTION = "CITY COUNCIL LIVE"
TALK_SENTENCES = (
    "Good evening and welcome to the city council meeting.",
    "Tonight we vote on the new bridge across the river.",
    "The bridge would carry trams, bicycles and people on foot.",
    "Engineers tested the steel deck for several weeks.",
    "Some neighbours worry about noise during the building work.",
    "The mayor promised quiet hours at night and on weekends.",
    "Shops near the old market hope for more visitors.",
    "The vote is expected before the end of the month.",
    "Cyclists asked for a wide lane on both sides.",
    "The river will stay open to boats while the work goes on.",
    "A public meeting about the plans takes place next week.",
    "Thank you for watching and good night.",
)
TALK_VOICES = (("en-us", 150), ("en-gb+f3", 175), ("en-us+m3", 185), ("en-gb", 140))
# Burnt into the captioned variant of the scan rows' video (``Bench.video(captioned=True)``):
# captions that change a few times (one revealed in two steps), over cuts, with stretches
# without text between them.
CAPTIONS = (
    Caption("OPEN DAY 2024", 1.0, 6.0, at=0.5, size=0.1),
    Caption("Welcome to the robotics lab", 8.0, 14.0),
    Caption("Meet the team beh", 20.0, 21.0),
    Caption("Meet the team behind the rover", 21.0, 27.0),
    Caption("Questions? Ask at the front desk", 36.0, 42.0, at=0.12),
    Caption("Thanks for watching", 50.0, 56.0),
)
CAPTIONS_SHOWN = [  # what a person reads on screen: each caption once, whole
    "OPEN DAY 2024",
    "Welcome to the robotics lab",
    "Meet the team behind the rover",
    "Questions? Ask at the front desk",
    "Thanks for watching",
]
# Decoding alone, as the scan stage's practical limit: every frame, no conversion, with
# the decoder's frame threads on every core (PyAV's default threads only slices, which
# most footage, one slice per frame, cannot use).
DECODE_ONLY = """\
import sys, av
with av.open(sys.argv[1]) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    print(sum(1 for _ in container.decode(stream)))
"""
# The bare interpreter of idle_rss_mb: what `vvflow run` imports, and nothing running.
BARE_IMPORTS = """\
import sys, time
import vvflow.cli, vvflow.daemon, watchdog.observers, watchdog.observers.polling
sys.stdout.write("ready\\n")
sys.stdout.flush()
time.sleep(600)
"""
NOOP_C = r"""
#include <fcntl.h>
#include <unistd.h>
/* A stage that does nothing but write its {output}: its last argument. */
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 1;
    if (write(fd, "{}\n", 3) != 3) return 1;
    return close(fd) == 0 ? 0 : 1;
}
"""
NOOP_PY = 'import sys\nwith open(sys.argv[-1], "w") as f:\n    f.write("{}\\n")\n'
WAIT_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* A stage that waits argv[1] seconds from its start, then writes its {output}: its last
   argument. */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    double seconds = atof(argv[1]);
    struct timespec left = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&left, &left) != 0) {}
    int fd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 1;
    if (write(fd, "{}\n", 3) != 3) return 1;
    return close(fd) == 0 ? 0 : 1;
}
"""
# The same in Python, the wait measured from the process's start (/proc), so that the
# interpreter's own start is part of it.
WAIT_FROM_START_PY = """\
import os, sys, time
with open("/proc/self/stat", "rb") as f:
    stat = f.read()
began = int(stat[stat.rfind(b")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")
left = float(sys.argv[1]) - (time.clock_gettime(time.CLOCK_BOOTTIME) - began)
if left > 0:
    time.sleep(left)
with open(sys.argv[-1], "w") as f:
    f.write("{}\\n")
"""
# A stage that waits (as one calling a model server would), then writes its {output}.
WAIT_PY = (
    'import sys, time\ntime.sleep(float(sys.argv[1]))\nwith open(sys.argv[-1], "w") as f:\n'
    '    f.write("{}\\n")\n'
)


@dataclass(frozen=True)
class Mode:
    """How big and how often: `--quick` or the full run."""

    name: str
    rescan_files: int
    rescan_mb: int
    rescan_repeats: int
    history_files: int
    startup_repeats: int
    noop_videos: int
    noop_repeats: int
    drops_inotify: int
    drops_polling: int
    scan_repeats: int
    shared_videos: int
    pipelined_videos: int
    builtin_repeats: int
    web_requests: int = 40


QUICK = Mode("quick", 20, 50, 3, 100_000, 5, 40, 2, 15, 8, 3, 40, 15, 1)
FULL = Mode("full", 100, 50, 3, 100_000, 9, 200, 3, 100, 40, 7, 100, 30, 3, web_requests=200)
#: Completed videos of web_overview_100k.
WEB_FILED = 100_000


@dataclass(frozen=True)
class Result:
    """One row of the table: ``ratio`` > 1 means vvflow is better."""

    name: str
    vvflow: float
    baseline: float
    ratio: float
    unit: str
    note: str


def lower_is_better(name: str, vvflow: float, baseline: float, unit: str, note: str) -> Result:
    ratio = baseline / vvflow if vvflow else float("inf")
    return Result(name, vvflow, baseline, ratio, unit, note)


def higher_is_better(name: str, vvflow: float, baseline: float, unit: str, note: str) -> Result:
    ratio = vvflow / baseline if baseline else float("inf")
    return Result(name, vvflow, baseline, ratio, unit, note)


SHARED_WORKERS = 4
SHARED_STAGE_SECONDS = 0.2
PIPELINED_STAGE_SECONDS = 0.2
PIPELINED_STAGES = 3


@dataclass(frozen=True)
class PipelinedRun:
    """One run of pipelined_throughput: videos/s, the mean time from one run of a stage
    to the next run of the same stage (its slot's turnover, ms) and the load average."""

    videos_per_second: float
    turnover_ms: float
    load: float


@dataclass(frozen=True)
class ScanRounds:
    """The commands of the scan rows on one video: their timings, its frames and scenes."""

    runs: dict[str, list[Timing]]
    frames: int
    scenes: int


@dataclass(frozen=True)
class SharedRun:
    """One run of the shared-storage rows: throughput and each video's claim-to-first-
    stage latency."""

    videos_per_second: float
    latencies_ms: list[float]
    cpu_busy: float  # share of the machine's CPU time busy while it ran (all processes)
    cpu_vvflow: float  # CPU seconds of the instances and their stages
    cpu_storage: float  # CPU seconds of glusterd, the bricks and the FUSE clients
    operations: dict[str, int]  # calls per file operation at the bricks (GlusterFS only)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def say(message: str) -> None:
    """Progress on stderr, so that stdout is only the table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with ``share`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * share)) - 1]


def clean_environment() -> dict[str, str]:
    """This process's environment without vvflow settings, with the repo importable."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VVFLOW_") and key != "VIDEO_STORAGE_ROOT"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def vvflow(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vvflow", *map(str, args)]


@dataclass(frozen=True)
class Timing:
    """One command: wall seconds from start to exit, and the CPU seconds it used."""

    wall: float
    cpu: float


def run_timed(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> Timing:
    """Run one command to its exit; a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{argv[:6]} exited {done.returncode}:\n{tail}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timing(seconds, cpu)


def run_json(argv: list[str], *, timeout: float = 600) -> dict[str, Any]:
    """The JSON object a helper module prints on stdout."""
    done = subprocess.run(
        argv,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:6]} exited {done.returncode}:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and lists are valid TOML


def once_all_completed(root: Path, count: int, what: str) -> tuple[list[dict[str, Any]], float]:
    """Run `vvflow once` on `root`, which must complete all `count` videos; its log
    records, and the seconds from its first claim to its last completion."""
    done = subprocess.run(
        vvflow("once", "--root", root),
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    completed = [r for r in records if r.get("event") == "completed"]
    if done.returncode != 0 or len(completed) != count:
        raise RuntimeError(f"vvflow once ({what}) failed:\n{done.stderr[-2000:]}")
    first = min(log_time(r["ts"]) for r in records if r.get("event") == "claimed")
    last = max(log_time(r["ts"]) for r in completed)
    return records, max(last - first, 1e-3)


def log_time(ts: str) -> float:
    """A vvflow log line's ``ts`` (UTC, millisecond precision) as a Unix time."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def field_is(key: str, value: str) -> Callable[[dict[str, Any]], bool]:
    """A log record filter: ``record[key] == value``."""
    return lambda record: record.get(key) == value


def fill_folder(
    folder: Path, count: int, *, suffix: str = ".mp4", size: int = 16, same_size: bool = True
) -> None:
    """``count`` small files with distinct contents, named like videos; ``same_size``
    False gives each its own size too, as real videos have."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        name = f"clip-{number:06d}{suffix}"
        data = f"{name}\n".encode().ljust(size if same_size else size + number, b"\0")
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class Daemon:
    """A real ``vvflow run`` (or ``command``) subprocess whose JSON log lines arrive on a
    queue."""

    def __init__(
        self, root: Path, *args: str, command: str = "run", env: dict[str, str] | None = None
    ) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            vvflow(command, "--root", root, *args),
            env=env or clean_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.events.put(record)

    def wait_for(
        self, event: str, timeout: float, match: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """The next log record of ``event`` that ``match``es; others are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"vvflow run: no {event!r} event within {timeout:.0f} s")
            try:
                record = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if record.get("event") == event and match(record):
                return record

    def wait_for_all(self, events: tuple[str, ...], timeout: float) -> dict[str, dict[str, Any]]:
        """The first log record of each of ``events``, whatever their order."""
        deadline = time.monotonic() + timeout
        found: dict[str, dict[str, Any]] = {}
        while len(found) < len(events):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                missing = sorted(set(events) - set(found))
                raise RuntimeError(f"vvflow: no {missing} event within {timeout:.0f} s")
            with contextlib.suppress(queue.Empty):
                record = self.events.get(timeout=min(left, 0.5))
                if record.get("event") in events:
                    found.setdefault(record["event"], record)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


@contextlib.contextmanager
def running(
    root: Path, *args: str, command: str = "run", env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    daemon = Daemon(root, *args, command=command, env=env)
    try:
        yield daemon
    finally:
        daemon.stop()


class Bench:
    """The temporary folder, the tools built for the run and the rows measured so far."""

    def __init__(self, mode: Mode, work: Path, video_cache: Path | None) -> None:
        self.mode = mode
        self.work = work
        self.video_cache = video_cache
        self.results: list[Result] = []
        self.skipped: dict[str, str] = {}
        self.noop = self._build("noop", NOOP_C, NOOP_PY)
        self.waiter = self._build("wait", WAIT_C, WAIT_FROM_START_PY)

    # -- tools -------------------------------------------------------------------------

    def _build(self, name: str, c_source: str, py_source: str) -> list[str]:
        """A stand-in stage: a compiled C program, else a tiny Python script."""
        source = self.work / f"{name}.c"
        source.write_text(c_source)
        binary = self.work / name
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is not None:
            done = subprocess.run(
                [compiler, "-O2", "-o", str(binary), str(source)], capture_output=True, check=False
            )
            if done.returncode == 0:
                return [str(binary)]
        script = self.work / f"{name}.py"
        script.write_text(py_source)
        return [sys.executable, "-S", str(script)]

    def noop_root(self, name: str, **settings: Any) -> Path:
        """A storage root whose pipeline is three no-op stages."""
        root = self.work / name
        (root / "input" / "pending").mkdir(parents=True)
        lines = [f"{key} = {toml_value(value)}" for key, value in settings.items()]
        for number in (1, 2, 3):
            lines += [
                "",
                "[[stages]]",
                f'name = "noop{number}"',
                f"command = {toml_value([*self.noop, '{output}'])}",
                f'output = "noop{number}/{{stem}}.json"',
                "attempts = 1",
            ]
        (root / "vvflow.toml").write_text("\n".join(lines) + "\n")
        return root

    def video(self, *, captioned: bool = False) -> Path:
        """The 60 s 1280x720 test video, generated once per run (or kept in --video-cache);
        ``captioned``: with ``CAPTIONS`` burnt in."""
        name = (
            f"bench-{VIDEO_SECONDS}s-{VIDEO_WIDTH}x{VIDEO_HEIGHT}-{VIDEO_FPS}fps-{VIDEO_CUTS}cuts"
            + ("-captioned" if captioned else "")
        )
        return self._generated(
            name,
            "tests/media.py (about half a minute)",
            lambda partial: make_video(
                partial,
                seconds=VIDEO_SECONDS,
                width=VIDEO_WIDTH,
                height=VIDEO_HEIGHT,
                fps=VIDEO_FPS,
                cuts=VIDEO_CUTS,
                captions=CAPTIONS if captioned else (),
            ),
        )

    def _generated(self, name: str, how: str, make: Callable[[Path], object]) -> Path:
        """``<name>.mp4`` in --video-cache (else the run's folder), made by ``make`` into a
        hidden partial file and renamed into place the first time it is asked for."""
        folder = self.video_cache or self.work
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.mp4"
        if not path.exists():
            say(f"generating {path.name} with {how}")
            partial = folder / f".{name}.partial.mp4"
            make(partial)
            partial.rename(path)
        return path

    def footage(self) -> Path:
        """A 60 s 1280x720 video that decodes like camera footage (texture, grain, a
        panning camera, CABAC and B-frames: about 5 times the decoding work of
        ``video``), with VIDEO_CUTS hard cuts; generated once per run (or kept in
        --video-cache)."""
        name = (
            f"bench-footage-{VIDEO_SECONDS}s-{VIDEO_WIDTH}x{VIDEO_HEIGHT}-{VIDEO_FPS}fps-"
            f"{VIDEO_CUTS}cuts"
        )
        return self._generated(
            name,
            "tests/footage.py (about a minute)",
            lambda partial: make_footage(
                partial,
                seconds=VIDEO_SECONDS,
                width=VIDEO_WIDTH,
                height=VIDEO_HEIGHT,
                fps=VIDEO_FPS,
                cuts=VIDEO_CUTS,
            ),
        )

    # -- rows --------------------------------------------------------------------------

    def rescan_vs_seed_poll(self) -> None:
        mode = self.mode
        say(f"rescan_vs_seed_poll: writing {mode.rescan_files} x {mode.rescan_mb} MB")
        root = self.work / "rescan"
        pending = root / "input" / "pending"
        pending.mkdir(parents=True)
        block = random.Random(7).randbytes(1 << 20)
        for number in range(mode.rescan_files):
            with (pending / f"large-{number:03d}.mp4").open("wb") as handle:
                handle.write(f"large video {number}\n".encode())  # distinct digests
                for _ in range(mode.rescan_mb):
                    handle.write(block)
        log = self.work / "processed_videos.log"
        rng = random.Random(8)
        log.write_text("".join(f"{rng.randbytes(32).hex()}\n" for _ in range(1000)))
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(mode.rescan_repeats):
            seeds = run_json(
                [sys.executable, "-m", "tests.benchmarks.seed", str(pending), str(log)]
            )
            assert seeds["hashed"] == mode.rescan_files
            theirs.append(seeds["seconds"])
            rescan = run_json([sys.executable, "-m", "tests.benchmarks.rescan_pass", str(root)])
            assert rescan["tracked"] == mode.rescan_files
            ours.append(rescan["seconds"])
        shutil.rmtree(root)
        gb = mode.rescan_files * mode.rescan_mb / 1000
        self.results.append(
            lower_is_better(
                "rescan_vs_seed_poll",
                statistics.median(ours) * 1000,
                statistics.median(theirs) * 1000,
                "ms",
                f"one pass over {mode.rescan_files} x {mode.rescan_mb} MB pending "
                f"({gb:.1f} GB, page cache warm): vvflow's daemon rescan (scandir, lstat of "
                "each candidate, nothing read) vs the seed's (read processed_videos.log, "
                f"SHA-256 of every file in {seed.CHUNK >> 20} MiB chunks); median of "
                f"{mode.rescan_repeats}; goal >= 100x",
            )
        )

    def startup_100k_completed_vs_empty(self) -> Path:
        """Returns the folder of history files, for idle_rss_mb to reuse."""
        mode = self.mode
        say(f"startup_100k_completed_vs_empty: {mode.history_files:,} files in completed/")
        empty = self.work / "startup-empty"
        full = self.work / "startup-history"
        for root in (empty, full):
            (root / "input").mkdir(parents=True)
        fill_folder(full / "input" / "completed", mode.history_files)
        for root in (empty, full):  # first start: folders, digest index
            run_timed(vvflow("once", "--root", root))
        with_history: list[float] = []
        without: list[float] = []
        for _ in range(mode.startup_repeats):
            without.append(run_timed(vvflow("once", "--root", empty)).wall)
            with_history.append(run_timed(vvflow("once", "--root", full)).wall)
        seed_log = self.work / "seed-history.log"
        rng = random.Random(9)
        digests = (f"{rng.randbytes(32).hex()}\n" for _ in range(mode.history_files))
        seed_log.write_text("".join(digests))
        reads = []
        for _ in range(5):
            started = time.perf_counter()
            assert len(seed.read_log(seed_log)) == mode.history_files
            reads.append(time.perf_counter() - started)
        self.results.append(
            lower_is_better(
                "startup_100k_completed_vs_empty",
                statistics.median(with_history),
                statistics.median(without),
                "s",
                f"`vvflow once` start to exit, nothing pending: {mode.history_files:,} files "
                f"in completed/ vs an empty root; median of {mode.startup_repeats}; the seed "
                f"would read a {mode.history_files:,}-line processed_videos.log into a set "
                f"on every pass: {statistics.median(reads) * 1000:.0f} ms; goal >= 0.8",
            )
        )
        return full / "input" / "completed"

    def dedupe_lookup_100k(self) -> None:
        """The content-identity lookup a worker makes at each claim (the completed
        originals of the claimed video's content), with 100,000 completed originals in
        the index against 10."""
        count = self.mode.history_files
        say(f"dedupe_lookup_100k: {count:,} completed originals vs 10")
        timings = {}
        for originals in (10, count):
            index = _history_index(
                self.work / f"dedupe-{originals}", [1_000_000 + i for i in range(originals)]
            )
            rng = random.Random(5)
            hits = [rng.randrange(originals) for _ in range(2000)]
            probes = [(1_000_000 + i, f"{i:064x}") for i in hits]
            probes += [(5_000_000 + n, f"{n:064x}") for n in range(2000)]  # sizes never seen
            started = time.perf_counter()
            found = sum(_find(index, size, digest) for size, digest in probes)
            timings[originals] = (time.perf_counter() - started) / len(probes)
            assert found == 2000, found
            shutil.rmtree(index.layout.root)
        self.results.append(
            lower_is_better(
                "dedupe_lookup_100k",
                timings[count] * 1e6,
                timings[10] * 1e6,
                "us",
                f"mean lookup per claim (the size's marker, the digest's entry, its report "
                f"checked), half hits half misses, {count:,} completed originals vs 10; "
                "goal ~1x",
            )
        )

    def dedupe_lookup_same_size(self) -> None:
        """The same lookup when every completed original has the claimed video's size
        (fixed-size camera segments) against originals of distinct sizes."""
        count, lookups, rounds = 1000, 200, 5
        say(f"dedupe_lookup_same_size: {count:,} originals of one size vs distinct sizes")
        indexes, probes = {}, {}
        for kind in ("distinct", "same"):
            sizes = [1_000_000 if kind == "same" else 1_000_000 + i for i in range(count)]
            indexes[kind] = _history_index(self.work / f"dedupe-{kind}", sizes)
            hits = random.Random(6).sample(range(count), lookups // 2)
            probes[kind] = [(sizes[i], f"{i:064x}") for i in hits]
            # Misses of a size that has originals: the claimed video is hashed and looked up.
            probes[kind] += [(sizes[i], f"{count + i:064x}") for i in hits]
        timings: dict[str, list[float]] = {"distinct": [], "same": []}
        for _ in range(rounds):  # interleaved, so that drift hits both alike
            for kind, index in indexes.items():
                started = time.perf_counter()
                found = sum(_find(index, size, digest) for size, digest in probes[kind])
                timings[kind].append((time.perf_counter() - started) / len(probes[kind]))
                assert found == lookups // 2, found
        for index in indexes.values():
            shutil.rmtree(index.layout.root)
        same, distinct = statistics.median(timings["same"]), statistics.median(timings["distinct"])
        ratio = distinct / same
        verdict = "met" if ratio >= 0.8 else f"missed by {0.8 - ratio:.2f}"
        self.results.append(
            lower_is_better(
                "dedupe_lookup_same_size",
                same * 1e6,
                distinct * 1e6,
                "us",
                f"mean lookup per claim, {count:,} completed originals all of the claimed "
                f"video's size vs {count:,} of distinct sizes, {lookups // 2} hits and "
                f"{lookups // 2} misses of a known size each (the claimed video's own "
                f"hashing not included); median of {rounds} interleaved rounds; goal >= "
                f"0.8x: {verdict}",
            )
        )

    def noop_pipeline_throughput(self) -> None:
        mode = self.mode
        say(f"noop_pipeline_throughput: {mode.noop_videos} videos x {mode.noop_repeats}")
        ours: list[float] = []
        walls: list[float] = []
        for repeat in range(mode.noop_repeats):
            throughput, wall = self._noop_once(f"noop-{repeat}", same_size=False)
            ours.append(throughput)
            walls.append(wall)
        # vvflow hashes a video when a completed one has its size, and runs one video of
        # a size at a time: the worst case, every video of one size.
        same_size, _ = self._noop_once("noop-same-size", same_size=True)
        floor = self._launch_floor(lanes=2)
        serial = self._launch_floor(lanes=1)
        self.results.append(
            higher_is_better(
                "noop_pipeline_throughput",
                statistics.median(ours),
                floor,
                "videos/s",
                f"{mode.noop_videos} videos through 3 no-op stages ({Path(self.noop[-1]).name}), "
                "workers = 2, first claim to last completion (with interpreter start and "
                f"recovery: {statistics.median(walls):.1f}/s); floor: the same 3 processes "
                f"launched back to back in 2 lanes, no orchestration (1 lane: {serial:.1f}/s); "
                f"videos of distinct sizes (all of one size: {same_size:.1f}/s); goal >= 0.7",
            )
        )

    def _noop_once(self, name: str, *, same_size: bool) -> tuple[float, float]:
        """`vvflow once` over the no-op pipeline: (videos/s from the first claim to the last
        completion, videos/s from start to exit)."""
        count = self.mode.noop_videos
        root = self.noop_root(name, stable_seconds=0.0, workers=2)
        fill_folder(root / "input" / "pending", count, size=1024, same_size=same_size)
        started = time.time()
        _, busy = once_all_completed(root, count, "no-op stages")
        wall = time.time() - started
        shutil.rmtree(root)
        return count / busy, count / wall

    def _launch_floor(self, *, lanes: int) -> float:
        """Videos per second when each video is just its three stage processes in a row."""
        out = self.work / f"floor-{lanes}"
        out.mkdir()
        count = self.mode.noop_videos

        def lane(numbers: range) -> None:
            for number in numbers:
                for stage in (1, 2, 3):
                    subprocess.run(
                        [*self.noop, str(out / f"{number}-{stage}.json")],
                        stdin=subprocess.DEVNULL,
                        check=True,
                    )

        threads = [
            threading.Thread(target=lane, args=(range(first, count, lanes),))
            for first in range(lanes)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        shutil.rmtree(out)
        return count / seconds

    def pipelined_throughput(self) -> None:
        """Three stages of `concurrency = 1` that each wait, workers = 3: videos flow
        between the stages, so the rate is the one stage's, against its ideal and against
        workers = 1 (each video through every stage before the next)."""
        count = self.mode.pipelined_videos
        seconds = PIPELINED_STAGE_SECONDS
        say(f"pipelined_throughput: {count} videos, workers = 3, then 4, then 1")
        flowing = self._pipelined_once("pipelined-3", workers=3)
        # One video more than stages: one waits in reserve, claimed and ready for the
        # first stage, while a video is filed.
        spare = self._pipelined_once("pipelined-4", workers=4)
        sequential = self._pipelined_once("pipelined-1", workers=1)
        ideal = 1 / seconds
        ideal_sequential = 1 / (PIPELINED_STAGES * seconds)
        ratio = flowing.videos_per_second / ideal
        # Filling and draining the pipeline: the first video's first stages and the last
        # one's last stages run alone.
        cap = count / (count + PIPELINED_STAGES - 1)
        overhead = flowing.turnover_ms - seconds * 1000
        verdict = "met"
        if ratio < 0.8:
            verdict = (
                f"missed by {0.8 - ratio:.2f}: a stage starts a run every "
                f"{flowing.turnover_ms:.0f} ms, not {seconds * 1000:.0f}: {overhead:.0f} ms "
                f"between one run's end and the next one's start (vvflow noticing the exit, "
                f"the next video's turn, starting its process; with workers = 3 for 3 "
                f"stages no video waits in reserve, so each filing and the next claim come "
                f"between the runs of the first stage) on 2 CPUs with a load average of "
                f"{flowing.load:.1f}"
            )
        self.results.append(
            higher_is_better(
                "pipelined_throughput",
                flowing.videos_per_second,
                ideal,
                "videos/s",
                f"{count} videos through {PIPELINED_STAGES} stages of `concurrency = 1` that "
                f"each wait {seconds:g} s ({Path(self.waiter[-1]).name}), workers = 3, first "
                f"claim to last completion, vs the ideal 1/{seconds:g} s; each stage started "
                f"a run every {flowing.turnover_ms:.0f} ms (`stage_started` to the next of "
                f"that stage); workers = 4 in the same run: "
                f"{spare.videos_per_second:.2f}/s ({spare.videos_per_second / ideal:.2f}x, a "
                f"run every {spare.turnover_ms:.0f} ms); workers = 1: "
                f"{sequential.videos_per_second:.2f}/s "
                f"({sequential.videos_per_second / ideal_sequential:.2f}x its ideal "
                f"1/{PIPELINED_STAGES * seconds:g} s), so pipelining gives "
                f"{flowing.videos_per_second / sequential.videos_per_second:.2f}x "
                f"(at most {PIPELINED_STAGES}x); filling and draining the pipeline alone "
                f"caps the ratio at {cap:.2f}x; goal >= 0.8x: {verdict}",
            )
        )

    def _pipelined_once(self, name: str, *, workers: int) -> PipelinedRun:
        """`vvflow once` over the waiting stages of `concurrency = 1`."""
        count = self.mode.pipelined_videos
        root = self.work / name
        (root / "input" / "pending").mkdir(parents=True)
        lines = [f"stable_seconds = 0\nworkers = {workers}"]
        for number in range(1, PIPELINED_STAGES + 1):
            command = [*self.waiter, str(PIPELINED_STAGE_SECONDS), "{output}"]
            lines += [
                "",
                "[[stages]]",
                f'name = "wait{number}"',
                f"command = {toml_value(command)}",
                f'output = "wait{number}/{{stem}}.json"',
                "attempts = 1",
                "concurrency = 1",
            ]
        (root / "vvflow.toml").write_text("\n".join(lines) + "\n")
        fill_folder(root / "input" / "pending", count, size=1024, same_size=False)
        records, busy = once_all_completed(root, count, "waiting stages")
        # Per stage, the time from one run's start to the next run's start: the stage
        # holds its one slot for the whole run, so this is the slot's turnover.
        began: dict[str, list[float]] = {}
        for r in records:
            if r.get("event") == "stage_started":
                began.setdefault(r["stage"], []).append(log_time(r["ts"]))
        steps = [
            later - earlier
            for times in began.values()
            for earlier, later in itertools.pairwise(sorted(times))
        ]
        shutil.rmtree(root)
        return PipelinedRun(count / busy, statistics.mean(steps) * 1000, os.getloadavg()[0])

    def drop_to_claim_latency(self) -> None:
        mode = self.mode
        # (observer, how the drops arrive, how many, pause before each drop)
        plans: list[tuple[str, str, int, Callable[[], float]]] = [
            # Isolated: nothing else happened in pending/ for most of a second.
            ("inotify", "isolated", mode.drops_inotify, lambda: 0.7),
            # A stream: each drop 20 ms after the previous video was done.
            ("inotify", "stream", mode.drops_inotify, lambda: 0.02),
            # Polling wakes once a second: drop at a random phase of its cycle.
            ("polling", "isolated", mode.drops_polling, lambda: random.uniform(0.0, 1.0)),
        ]
        figures: dict[tuple[str, str], list[float]] = {}
        for observer in ("inotify", "polling"):
            root = self.noop_root(f"latency-{observer}", stable_seconds=0.0, workers=2)
            outside = root / "drops"  # same filesystem, so that the drop is one rename
            outside.mkdir()
            with running(root, "--observer", observer, "--stable-seconds", "0") as daemon:
                watching = daemon.wait_for("watching", 60)
                if watching.get("observer") != observer:
                    raise RuntimeError(f"asked for the {observer} observer, got {watching}")
                for kind, arrival, drops, pause in plans:
                    if kind != observer:
                        continue
                    say(f"drop_to_claim_latency: {drops} drops, {observer}, {arrival}")
                    latencies = figures.setdefault((observer, arrival), [])
                    for number in range(drops):
                        name = f"{arrival}-{number:04d}.mp4"
                        data = f"{name}\n".encode().ljust(512 + number, b"\0")  # sizes differ
                        (outside / name).write_bytes(data)
                        time.sleep(pause())
                        dropped = time.time()
                        os.rename(outside / name, root / "input" / "pending" / name)
                        claimed = daemon.wait_for("claimed", 30, field_is("original_name", name))
                        latencies.append((log_time(claimed["ts"]) - dropped) * 1000)
                        daemon.wait_for("completed", 30, field_is("video", name))
            shutil.rmtree(root)
        seed_ms = seed.POLL_SECONDS / 2 * 1000
        baseline = (
            "baseline: the seed's expected wait, half its 300 s poll (its p95 would be 285 s)"
        )
        rows = [
            (
                "drop_to_claim_latency",
                ("inotify", "isolated"),
                "renames into pending/ to the `claimed` log line (1 ms resolution), "
                "stable_seconds = 0, inotify, each drop 0.7 s after the previous video completed; "
                f"{baseline}; goal p95 < 50 ms",
            ),
            (
                "drop_to_claim_latency_stream",
                ("inotify", "stream"),
                "as above, each drop 20 ms after the previous video completed, right behind "
                "a claim's rename out of pending/ (watchdog would hold it 0.5 s to pair "
                "moves, issue 649; vvflow turns that delay off)",
            ),
            (
                "drop_to_claim_latency_polling",
                ("polling", "isolated"),
                "as the first, with the polling observer (1 s period), drops at random phases",
            ),
        ]
        for name, key, note in rows:
            values = figures[key]
            self.results.append(
                lower_is_better(
                    name,
                    percentile(values, 0.95),
                    seed_ms,
                    "ms",
                    f"p95 of {len(values)} (p50 {percentile(values, 0.5):.1f} ms): {note}",
                )
            )

    def scan_rows(self) -> None:
        """The scan stage against decoding alone and against PySceneDetect's command line,
        on footage-like video; the flat synthetic video of the other rows, which decodes
        about 5 times faster, is measured alongside for the note."""
        mode = self.mode
        say(f"scan_vs_decode, scan_vs_scenedetect_cli: {mode.scan_repeats} rounds x 2 videos")
        footage = self._scan_rounds(self.footage())
        flat = self._scan_rounds(self.video())
        # The best of the rounds: on a shared machine the others measure its neighbours.
        best = {key: min(t.wall for t in values) for key, values in footage.runs.items()}
        cpu = {key: min(t.cpu for t in values) for key, values in footage.runs.items()}
        flat_best = {key: min(t.wall for t in values) for key, values in flat.runs.items()}
        load = os.getloadavg()[0]
        fps = {key: footage.frames / seconds for key, seconds in best.items()}
        common = (
            f"{footage.frames} frames of footage-like video ({VIDEO_SECONDS} s "
            f"{VIDEO_WIDTH}x{VIDEO_HEIGHT} H.264 High, grain, pans, {footage.scenes} "
            f"scenes; tests/footage.py); whole commands as `python` processes, interpreter "
            f"start and imports included in both; best wall time of {mode.scan_repeats}, "
            f"load average {load:.1f}"
        )
        self.results.append(
            higher_is_better(
                "scan_vs_decode",
                fps["scan"],
                fps["decode"],
                "frames/s",
                f"`vvflow stage scan` (metadata, scenes, keyframes, contact sheet; what the "
                f"built-in pipeline runs) vs decoding every frame with PyAV and nothing else "
                f"(frame threads on, `python -c`); {common}; CPU seconds: scan "
                f"{cpu['scan']:.2f}, decode {cpu['decode']:.2f}; on the flat synthetic "
                f"video: {flat_best['decode'] / flat_best['scan']:.2f} "
                f"({flat_best['scan']:.2f} s vs {flat_best['decode']:.2f} s); goal >= 0.6"
                + _missed(fps["scan"] / fps["decode"], 0.6, "decoding is most of the scan"),
            )
        )
        self.results.append(
            higher_is_better(
                "scan_vs_scenedetect_cli",
                fps["scan"],
                fps["cli"],
                "frames/s",
                f"`vvflow stage scan` vs `scenedetect -i FILE -q detect-content list-scenes "
                f"-n` (PySceneDetect {_version('scenedetect-headless')}, OpenCV backend, "
                f"its defaults), which writes no keyframes; {common}; CPU seconds: scan "
                f"{cpu['scan']:.2f}, scenedetect {cpu['cli']:.2f}; on the flat synthetic "
                f"video: {flat_best['cli'] / flat_best['scan']:.2f} "
                f"({flat_best['scan']:.2f} s vs {flat_best['cli']:.2f} s); goal >= 1.5"
                + _missed(
                    fps["scan"] / fps["cli"],
                    1.5,
                    "decoding every frame is about three quarters of the command line's "
                    "work on footage (41.8 of 55.7 G instructions), so a scan that only "
                    "decoded would reach 1.33-1.40x",
                ),
            )
        )

    def _scan_rounds(self, video: Path) -> ScanRounds:
        """Decode-only, `vvflow stage scan` and the scenedetect command line on ``video``,
        interleaved ``scan_repeats`` times, so that drift hits all alike."""
        place = self.work / "scan"
        place.mkdir()
        analytic = place / "bench.analytic.json"
        scenedetect = Path(sys.executable).with_name("scenedetect")
        cli = [str(scenedetect)] if scenedetect.exists() else [sys.executable, "-m", "scenedetect"]
        commands = {
            "decode": [sys.executable, "-c", DECODE_ONLY, str(video)],
            "scan": vvflow("stage", "scan", video, analytic),
            "cli": [*cli, "-i", str(video), "-q", "detect-content", "list-scenes", "-n"],
        }
        runs: dict[str, list[Timing]] = {key: [] for key in commands}
        for _ in range(self.mode.scan_repeats):
            for key, argv in commands.items():
                runs[key].append(run_timed(argv, cwd=place))
        document = json.loads(analytic.read_text())
        shutil.rmtree(place)
        return ScanRounds(runs, int(document["video"]["frame_count"]), document["scene_count"])

    # -- the built-in pipeline -------------------------------------------------------

    def talk_video(self, *, speech: bool) -> Path:
        """A 60 s 1280x720 video with cuts and a caption burnt in, and either
        ``TALK_SENTENCES`` spoken one after another (about 5 s apart) or, instead of
        speech, a chord now and then over silence."""
        name = (
            f"talk-{'speech' if speech else 'music'}-{VIDEO_SECONDS}s-{VIDEO_WIDTH}x{VIDEO_HEIGHT}"
        )
        step = VIDEO_SECONDS / len(TALK_SENTENCES)
        sounds: list[Sentence | Chord] = (
            [
                Sentence(text, 0.3 + n * step, *TALK_VOICES[n % len(TALK_VOICES)])
                for n, text in enumerate(TALK_SENTENCES)
            ]
            if speech
            else [Chord(start, 3.0) for start in range(2, VIDEO_SECONDS - 4, 10)]
        )
        return self._generated(
            name,
            "tests/media.py (about a minute)",
            lambda partial: make_video(
                partial,
                seconds=VIDEO_SECONDS,
                width=VIDEO_WIDTH,
                height=VIDEO_HEIGHT,
                fps=VIDEO_FPS,
                cuts=5,
                text=TALK_CAPTION,
                sounds=sounds,
            ),
        )

    def builtin_rows(self) -> None:
        """The whole built-in pipeline (scan, summarize, logline as `vvflow once` runs
        them, every interpreter start included) on a 60 s 720p video, against its length."""
        for speech, row, goal in (
            (True, "builtin_realtime_factor", 0.5),
            (False, "builtin_realtime_factor_no_speech", 0.25),
        ):
            video = self.talk_video(speech=speech)
            runs = []
            for attempt in range(self.mode.builtin_repeats):
                root = self.work / f"{row}-{attempt}"
                (root / "input" / "pending").mkdir(parents=True)
                (root / "vvflow.toml").write_text("stable_seconds = 0\n")
                shutil.copyfile(video, root / "input" / "pending" / video.name)
                records, seconds = once_all_completed(root, 1, row)
                stages = {
                    r["stage"]: r["duration_s"]
                    for r in records
                    if r.get("event") == "stage_succeeded"
                }
                runs.append(
                    (
                        seconds,
                        stages,
                        json.loads((root / "summaries" / f"{video.stem}.summary.json").read_text()),
                    )
                )
                shutil.rmtree(root)
            seconds, stages, summary = min(runs, key=lambda run: run[0])
            factor = seconds / VIDEO_SECONDS
            said = summary["transcript"]
            spent = ", ".join(f"{name} {value:.1f} s" for name, value in stages.items())
            verdict = "met" if factor <= goal else f"missed by {factor - goal:.2f}"
            sound = "12 spoken sentences" if speech else "chords and silence, no speech"
            self.results.append(
                lower_is_better(
                    row,
                    seconds,
                    float(VIDEO_SECONDS),
                    "s",
                    f"realtime factor {factor:.3f} (goal <= {goal}: {verdict}): the built-in "
                    f"pipeline's wall time, first claim to completion, as `vvflow once` runs "
                    f"it, best of {self.mode.builtin_repeats}, against the video's {VIDEO_SECONDS} "
                    f"s ({VIDEO_WIDTH}x{VIDEO_HEIGHT} H.264 {VIDEO_FPS} fps, 6 shots, a burnt-in "
                    f"caption, {sound}); "
                    f"stages: {spent}; transcript {said['status']}, "
                    f"{said['speech_s']:.0f} s of speech; load average {os.getloadavg()[0]:.1f}",
                )
            )

    def ocr_frames_read(self) -> None:
        """Frames given to the OCR detector per minute of video: the text gate (and one
        reading per distinct caption) against the policy before it, 3 to 6 whole frames
        per scene."""
        video = self.video(captioned=True)
        say("ocr_frames_read: scan, then summarize the captioned video")
        place = self.work / "ocr"
        place.mkdir()
        analytic, summary = place / "bench.analytic.json", place / "bench.summary.json"
        run_timed(vvflow("stage", "scan", video, analytic), cwd=place)
        timing = run_timed(vvflow("stage", "summarize", analytic, summary), cwd=place)
        scenes = json.loads(analytic.read_text())["scenes"]
        document = json.loads(summary.read_text())
        shutil.rmtree(place)
        counters = document["ocr"]
        minutes = VIDEO_SECONDS / 60
        before = sum(_frames_read_before(scene) for scene in scenes)
        read = document["on_screen_text"]
        right = sum(1 for text in CAPTIONS_SHOWN if text in read)
        self.results.append(
            lower_is_better(
                "ocr_frames_read",
                counters["frames_read"] / minutes,
                before / minutes,
                "frames/min",
                f"frames given to the OCR detector per minute of video: vvflow samples a "
                f"frame every 0.5 s ({counters['frames_sampled']}), its gate passes those "
                f"that look like text ({counters['frames_with_text']}), and only frames "
                f"holding a block of text not read before go to the detector, as "
                f"{counters['regions_read']} crops around the blocks; baseline: the policy "
                f"before, 3 to 6 whole frames for each of the {len(scenes)} scenes. "
                f"{VIDEO_SECONDS} s {VIDEO_WIDTH}x{VIDEO_HEIGHT} H.264 with "
                f"{len(CAPTIONS_SHOWN)} captions (one revealed in two steps) over "
                f"{VIDEO_CUTS} cuts and stretches without text; read {right} of "
                f"{len(CAPTIONS_SHOWN)} exactly, {len(read) - right} other; `vvflow stage "
                f"summarize` took {timing.wall:.1f} s ({timing.cpu:.1f} s CPU), interpreter "
                f"start included; goal: fewer",
            )
        )

    # -- shared storage: GlusterFS (tests/gluster.py) ---------------------------------

    def gluster_rows(self) -> None:
        """Two instances on two clients of one GlusterFS volume against one instance, and
        the claim-to-first-stage latency there against the local disk."""
        names = ("gluster_two_instances_throughput", "gluster_claim_to_first_stage")
        reason = gluster.skip_reason()
        if reason is not None:
            self.skip(names, reason)
            return
        count = self.mode.shared_videos
        try:
            with gluster.gluster_volume(self.work / "gluster") as volume:
                say(
                    f"gluster rows: volume up in {volume.setup_seconds:.1f} s; {count} videos "
                    "through one instance, then two"
                )
                one = self._waiting_run("gluster-one", [volume.mounts[0]], volume)
                two = self._waiting_run("gluster-two", list(volume.mounts), volume)
        except gluster.Unavailable as exc:
            self.skip(names, str(exc))
            return
        say(f"gluster rows: {count} videos through one instance on the local disk")
        local = self._waiting_run("local-one", [self.work])
        stages = f"2 stages that wait {SHARED_STAGE_SECONDS:g} s each (a Python script)"

        def per_video(run: SharedRun) -> str:
            top = sorted(run.operations.items(), key=lambda item: -item[1])[:3]
            each = ", ".join(f"{op} {calls / count:.0f}" for op, calls in top)
            return f"{sum(run.operations.values()) / count:.0f} ({each})"

        self.results.append(
            higher_is_better(
                "gluster_two_instances_throughput",
                two.videos_per_second,
                one.videos_per_second,
                "videos/s",
                f"{count} videos, {stages}, workers = {SHARED_WORKERS}, first claim to last "
                "completion: two `vvflow run` on two FUSE clients of a 2-brick GlusterFS "
                "volume (served from this machine, in its own network namespace) vs one; "
                f"CPUs busy {one.cpu_busy:.0%} and {two.cpu_busy:.0%} (everything running), "
                f"CPU seconds vvflow + stages {one.cpu_vvflow:.1f} and {two.cpu_vvflow:.1f}, "
                f"GlusterFS {one.cpu_storage:.1f} and {two.cpu_storage:.1f}; operations at "
                f"the bricks per video {per_video(one)} and {per_video(two)}; at most "
                f"{SHARED_WORKERS / (2 * SHARED_STAGE_SECONDS):g}/s per instance; one "
                f"instance on the local disk: {local.videos_per_second:.2f}/s; goal >= 1.7x",
            )
        )
        self.results.append(
            lower_is_better(
                "gluster_claim_to_first_stage",
                percentile(one.latencies_ms, 0.5),
                percentile(local.latencies_ms, 0.5),
                "ms",
                f"p50 of {len(one.latencies_ms)}, the `claimed` to the first `stage_started` "
                f"log line of a video, one instance on GlusterFS vs on the local disk "
                f"(p95 {percentile(one.latencies_ms, 0.95):.0f} vs "
                f"{percentile(local.latencies_ms, 0.95):.0f} ms; two instances on GlusterFS: "
                f"p50 {percentile(two.latencies_ms, 0.5):.0f} ms); {stages}",
            )
        )

    def skip(self, names: tuple[str, ...], reason: str) -> None:
        say(f"SKIPPED {', '.join(names)}: {reason}")
        for name in names:
            self.skipped[name] = reason

    def _waiting_run(
        self, name: str, mounts: list[Path], volume: gluster.GlusterVolume | None = None
    ) -> SharedRun:
        """`shared_videos` videos through one `vvflow run` per mount, all on the root
        `name` (one folder seen through each mount), stages that wait."""
        count = self.mode.shared_videos
        roots = [mount / name for mount in mounts]
        pending = roots[0] / "input" / "pending"
        pending.mkdir(parents=True)
        script = self.work / "wait.py"
        script.write_text(WAIT_PY)
        lines = [f"stable_seconds = 0\nworkers = {SHARED_WORKERS}\nrescan_seconds = 1"]
        for number in (1, 2):
            command = [sys.executable, "-S", str(script), str(SHARED_STAGE_SECONDS), "{output}"]
            lines += [
                "",
                "[[stages]]",
                f'name = "wait{number}"',
                f"command = {toml_value(command)}",
                f'output = "wait{number}/{{stem}}.json"',
                "attempts = 1",
            ]
        (roots[0] / "vvflow.toml").write_text("\n".join(lines) + "\n")
        outside = roots[0] / "drops"  # on the same filesystem: each drop is one rename
        fill_folder(outside, count, size=1024, same_size=False)
        storage_before = volume.cpu_seconds() if volume else 0.0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        vvflow_before = usage.ru_utime + usage.ru_stime
        daemons = [Daemon(root) for root in roots]
        records: list[tuple[int, dict[str, Any]]] = []
        try:
            for daemon in daemons:
                daemon.wait_for("watching", 60)
            cpu_before = cpu_times()
            if volume is not None:
                volume.profile()  # from here on
            for path in sorted(outside.iterdir()):
                os.rename(path, pending / path.name)
            deadline = time.monotonic() + 600
            while sum(r["event"] == "completed" for _, r in records) < count:
                if time.monotonic() > deadline or any(d.proc.poll() is not None for d in daemons):
                    raise RuntimeError(f"{name}: {len(records)} log lines, not all completed")
                for number, daemon in enumerate(daemons):
                    with contextlib.suppress(queue.Empty):
                        while True:
                            records.append((number, daemon.events.get_nowait()))
                time.sleep(0.05)
            cpu_after = cpu_times()
            operations = dict(volume.profile()) if volume is not None else {}
        finally:
            for daemon in daemons:
                daemon.stop()
        first = min(log_time(r["ts"]) for _, r in records if r["event"] == "claimed")
        last = max(log_time(r["ts"]) for _, r in records if r["event"] == "completed")
        claimed = {
            (n, r["video"]): log_time(r["ts"]) for n, r in records if r["event"] == "claimed"
        }
        started: dict[tuple[int, str], float] = {}
        for n, r in records:
            if r["event"] == "stage_started":
                started.setdefault((n, r["video"]), log_time(r["ts"]))
        latencies = [(started[key] - at) * 1000 for key, at in claimed.items() if key in started]
        shutil.rmtree(roots[0])
        busy = (cpu_after[0] - cpu_before[0]) / max(cpu_after[1] - cpu_before[1], 1)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        vvflow_cpu = usage.ru_utime + usage.ru_stime - vvflow_before
        storage_cpu = volume.cpu_seconds() - storage_before if volume else 0.0
        return SharedRun(
            count / max(last - first, 1e-3), latencies, busy, vvflow_cpu, storage_cpu, operations
        )

    def idle_rss_mb(self, history: Path) -> None:
        say("idle_rss_mb: idle, with 100,000 pending, and a bare interpreter")
        # stable_seconds so long that nothing is ever claimed: the daemon tracks every
        # pending candidate and runs nothing, so the figure is vvflow's own bookkeeping.
        settings = {"stable_seconds": 1e6, "workers": 2}
        empty = self.noop_root("rss-empty", **settings)
        crowded = self.noop_root("rss-crowded", **settings)
        pending = crowded / "input" / "pending"
        pending.rmdir()
        history.rename(pending)  # one rename: the 100,000 files of the startup row
        count = sum(1 for _ in os.scandir(pending))
        with running(empty) as daemon:
            daemon.wait_for("watching", 60)
            time.sleep(1.5)
            idle, _ = rss_mb(daemon.proc.pid)
        with running(crowded) as daemon:
            found = daemon.wait_for("rescan_found", 300)
            time.sleep(1.5)
            busy, peak = rss_mb(daemon.proc.pid)
        # The same files where no extension matches: seen by every rescan, never tracked.
        unmatched = self.noop_root("rss-unmatched", extensions=[".mkv"], **settings)
        (unmatched / "input" / "pending").rmdir()
        pending.rename(unmatched / "input" / "pending")
        with running(unmatched) as daemon:
            daemon.wait_for("watching", 60)
            time.sleep(3)  # its first rescan lstats the 100,000 names, well within this
            ignoring, _ = rss_mb(daemon.proc.pid)
        bare_proc = subprocess.Popen(
            [sys.executable, "-c", BARE_IMPORTS],
            env=clean_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert bare_proc.stdout is not None
            bare_proc.stdout.readline()
            bare, _ = rss_mb(bare_proc.pid)
        finally:
            bare_proc.kill()
            bare_proc.wait()
        self.results.append(
            lower_is_better(
                "idle_rss_mb",
                idle,
                bare,
                "MiB",
                "RSS of an idle `vvflow run` on an empty root (inotify observer, 2 workers "
                "waiting) vs a bare interpreter that imports the same modules and sleeps",
            )
        )
        self.results.append(
            lower_is_better(
                "idle_rss_mb_100k_pending",
                busy,
                bare,
                "MiB",
                f"the same daemon with {count:,} candidate videos pending, every one tracked "
                f"by the stability check ({found.get('count')} found by its first rescan; "
                f"stable_seconds = 10^6, so none is claimed and no stage runs): the "
                f"bookkeeping of a huge drop still being copied in; peak {peak:.1f} MiB; the "
                f"same files with no matching extension (never tracked): {ignoring:.1f} MiB",
            )
        )

    # -- the web page --------------------------------------------------------------------

    def filed_root(self, count: int) -> Path:
        """A storage root with ``count`` videos in completed/: one-byte files, each with
        its report (the report module's format, filled in without its cost) and one in
        ten with a logline output; made once per run, or kept in --video-cache (the
        reports name the files' inodes: the root is used where it was made)."""
        name = f"web-{count}-filed"
        folder = self.video_cache or self.work
        folder.mkdir(parents=True, exist_ok=True)
        root, done = folder / name, folder / f".{name}.done"
        if done.exists() and root.is_dir():
            return root
        say(f"generating {count:,} filed videos with reports (a few seconds per 10,000)")
        from vvflow import report as reports

        shutil.rmtree(root, ignore_errors=True)
        for state in ("pending", "processing", "completed", "failed"):
            (root / "input" / state).mkdir(parents=True)
        (root / "reports").mkdir()
        (root / "loglines").mkdir()
        template = reports.dumps(
            reports.Report(
                name="@name", original_name="@name", state="completed", duration_s=61.5,
                identity=reports.Identity(size=1, mtime_ns=1234567890123, inode=987654321),
                finished_at="@when",
            )
        ).decode()  # fmt: skip

        def create(path: Path, data: bytes) -> os.stat_result:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                return os.fstat(fd)
            finally:
                os.close(fd)

        for number in range(count):
            video = f"clip-{number:06d}.mp4"
            st = create(root / "input" / "completed" / video, b"v")
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + number))
            text = template.replace("@name", video).replace("@when", when)
            text = text.replace("1234567890123", str(st.st_mtime_ns))
            text = text.replace("987654321", str(st.st_ino))
            create(root / "reports" / f"{video}.json", text.encode())
            if number % 10 == 0:
                logline = {"logline": f"A talk about bridge number {number}.", "kind": "talk"}
                create(root / "loglines" / f"clip-{number:06d}.logline.json",
                       json.dumps(logline).encode())  # fmt: skip
        done.touch()
        return root

    def web_overview_100k(self) -> None:
        """The overview page (GET /) and its JSON (GET /api/overview) of a real `vvflow
        web`, with 100,000 completed videos against an empty root."""
        count = WEB_FILED
        say(f"web_overview_100k: `vvflow web` with {count:,} completed vs an empty root")
        full = self.filed_root(count)
        empty = self.work / "web-empty"
        for state in ("pending", "processing", "completed", "failed"):
            (empty / "input" / state).mkdir(parents=True)
        caches = {label: self.work / f"xdg-{label}" for label in ("empty", "full")}
        envs = {label: {**clean_environment(), "XDG_CACHE_HOME": str(path)}
                for label, path in caches.items()}  # fmt: skip
        args = ("--web-port", "0")
        with (
            running(empty, *args, command="web", env=envs["empty"]) as page_empty,
            running(full, *args, command="web", env=envs["full"]) as page_full,
        ):
            started = time.monotonic()
            served = {
                "empty": page_empty.wait_for("web_serving", 60)["address"],
                "full": page_full.wait_for("web_serving", 60)["address"],
            }
            serving_s = time.monotonic() - started
            pages = {label: _Page(address) for label, address in served.items()}
            try:
                deadline = time.monotonic() + 300
                while pages["full"].json("/api/overview")["counts"]["completed"] != count:
                    if time.monotonic() > deadline:
                        raise RuntimeError("web_overview_100k: the catalog never listed")
                    time.sleep(0.05)
                listed_s = time.monotonic() - started
                during = [pages["full"].get_ms("/") for _ in range(20)]
                while _unread_texts(caches["full"]) != 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("web_overview_100k: texts still unread after 300 s")
                    time.sleep(0.2)
                texts_s = time.monotonic() - started
                timings: dict[tuple[str, str], list[float]] = {}
                rng = random.Random(13)
                for _ in range(self.mode.web_requests):
                    order = [(label, path) for label in pages for path in ("/", "/api/overview")]
                    rng.shuffle(order)  # interleaved: the load drifts for both alike
                    for label, path in order:
                        timings.setdefault((label, path), []).append(pages[label].get_ms(path))
                rss = {label: rss_mb(page.proc.pid)[0]
                       for label, page in (("empty", page_empty), ("full", page_full))}  # fmt: skip
                lists = {
                    what: statistics.median(pages["full"].get_ms(path) for _ in range(10))
                    for what, path in (
                        ("first", "/completed"),
                        ("last", f"/completed?page={count // 50}"),
                        ("search", "/completed?q=bridge"),
                    )
                }
            finally:
                for page in pages.values():
                    page.close()
        median = {key: statistics.median(values) for key, values in timings.items()}
        html, api = (
            (median[("full", "/")], median[("empty", "/")]),
            (
                median[("full", "/api/overview")],
                median[("empty", "/api/overview")],
            ),
        )
        api_ratio = api[1] / api[0]
        ratio = html[1] / html[0]
        self.results.append(
            lower_is_better(
                "web_overview_100k",
                html[0],
                html[1],
                "ms",
                f"GET / of a real `vvflow web` (127.0.0.1, one kept-alive connection), "
                f"{count:,} completed videos (reports, a logline for one in ten) vs an "
                f"empty root, median of {self.mode.web_requests} interleaved; GET "
                f"/api/overview {api[0]:.1f} vs {api[1]:.1f} ms ({api_ratio:.2f}x); the "
                f"100,000 listed {listed_s:.1f} s after the start (serving after "
                f"{serving_s:.1f} s), every text read after {texts_s:.0f} s, GET / "
                f"meanwhile {statistics.median(during):.1f} ms; /completed first page "
                f"{lists['first']:.1f} ms, last page {lists['last']:.1f} ms, search "
                f"?q=bridge {lists['search']:.1f} ms; RSS {rss['full']:.0f} vs "
                f"{rss['empty']:.0f} MiB; load {os.getloadavg()[0]:.1f}; goal "
                f">= 0.5" + _missed(ratio, 0.5, "see the note's timings"),
            )
        )

    def web_idle_rss(self) -> None:
        """The idle RSS of `vvflow run` with the page on (--web-port) against off."""
        say("web_idle_rss: an idle `vvflow run` with --web-port vs without")
        settings = {"stable_seconds": 1e6, "workers": 2}
        env = {**clean_environment(), "XDG_CACHE_HOME": str(self.work / "xdg-rss")}
        off = self.noop_root("web-rss-off", **settings)
        on = self.noop_root("web-rss-on", **settings)
        with running(off, env=env) as daemon:
            daemon.wait_for("watching", 60)
            time.sleep(2)
            without, _ = rss_mb(daemon.proc.pid)
        with running(on, "--web-port", "0", env=env) as daemon:
            address = daemon.wait_for_all(("watching", "web_serving"), 60)["web_serving"]
            page = _Page(address["address"])
            try:
                for path in ("/", "/api/overview", "/completed", "/failed", "/now"):
                    page.get_ms(path)  # looked at once: templates compiled, catalog read
            finally:
                page.close()
            time.sleep(2)
            with_page, peak = rss_mb(daemon.proc.pid)
        self.results.append(
            lower_is_better(
                "web_idle_rss",
                with_page,
                without,
                "MiB",
                f"RSS of an idle `vvflow run` on an empty root with --web-port 0 (each page "
                f"requested once, then 2 s idle) vs the same without the page: "
                f"+{with_page - without:.1f} MiB (peak {peak:.1f} MiB): Starlette, uvicorn, "
                "Jinja2 and the catalog's SQLite",
            )
        )


class _Page:
    """One kept-alive HTTP connection to a served page on 127.0.0.1 (opened again when
    the server closed it: uvicorn closes a connection idle for 5 s)."""

    def __init__(self, address: str) -> None:
        parsed = urllib.parse.urlsplit(address)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def _get(self, path: str) -> tuple[bytes, float]:
        """The body of a 200 answer, and the milliseconds the request took."""
        for _ in range(2):
            started = time.perf_counter()
            try:
                self.connection.request("GET", path)
                response = self.connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
            return body, elapsed
        raise RuntimeError(f"GET {path}: the connection was closed twice")

    def get_ms(self, path: str) -> float:
        return self._get(path)[1]

    def json(self, path: str) -> Any:
        return json.loads(self._get(path)[0])

    def close(self) -> None:
        self.connection.close()


def _unread_texts(cache_home: Path) -> int | None:
    """Entries whose texts the catalog of a page whose $XDG_CACHE_HOME is ``cache_home``
    has not read yet (vvflow/web/catalog.py's cache file, opened read-only); None before
    it exists."""
    found = sorted((cache_home / "vvflow").glob("catalog-*.sqlite3"))
    if not found:
        return None
    uri = f"file:{found[0]}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        unread: int = db.execute("SELECT count(*) FROM entries WHERE indexed = 0").fetchone()[0]
    return unread


def _frames_read_before(scene: dict[str, Any]) -> int:
    """Frames the summarize stage gave RapidOCR in a scene before the text gate: 3, one
    more for every 4 s from 8 s on, at most 6, at most the scene's frames."""
    length = int(scene["end_frame"]) - int(scene["start_frame"])
    seconds = float(scene["end_s"]) - float(scene["start_s"])
    return max(1, min(length, 3 + max(0, math.floor(seconds / 4) - 1), 6))


def _history_index(root: Path, sizes: list[int]) -> Any:
    """A root with one completed original of each of `sizes` (sparse files, reports with
    the digest `f"{i:064x}"` of the i-th), and its content index rebuilt from them."""
    from vvflow import report as reports
    from vvflow.dedupe import ContentIndex
    from vvflow.layout import Layout

    layout = Layout(root, [".mp4"])
    layout.ensure()
    for i, size in enumerate(sizes):
        name = f"v{i:06d}.mp4"
        path = layout.completed / name
        with path.open("wb") as handle:
            handle.truncate(size)
        rep = reports.Report(
            name=name, original_name=name, state="completed",
            identity=reports.Identity.of(path.stat()), sha256=f"{i:064x}",
        )  # fmt: skip
        # Setup only: no fsync for 100,000 files.
        reports.save(layout.report_path(name), rep, durable=False)
    index = ContentIndex(layout)
    index.rebuild()
    return index


def _find(index: Any, size: int, digest: str) -> int:
    """1 when the lookup of a claimed video of `size` bytes and `digest` finds an original."""
    found = index.find(size, lambda: digest, exclude="", cancel=threading.Event())
    return int(found is not None)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


ORDER = (
    "rescan_vs_seed_poll",
    "startup_100k_completed_vs_empty",
    "noop_pipeline_throughput",
    "pipelined_throughput",
    "drop_to_claim_latency",
    "drop_to_claim_latency_stream",
    "drop_to_claim_latency_polling",
    "scan_vs_decode",
    "scan_vs_scenedetect_cli",
    "builtin_realtime_factor",
    "builtin_realtime_factor_no_speech",
    "ocr_frames_read",
    "idle_rss_mb",
    "idle_rss_mb_100k_pending",
    "dedupe_lookup_100k",
    "dedupe_lookup_same_size",
    "web_overview_100k",
    "web_idle_rss",
    "gluster_two_instances_throughput",
    "gluster_claim_to_first_stage",
)


def measure(bench: Bench, only: set[str] | None) -> None:
    def wanted(*names: str) -> bool:
        return only is None or bool(only & set(names))

    if wanted("rescan_vs_seed_poll"):
        bench.rescan_vs_seed_poll()
    rss = ("idle_rss_mb", "idle_rss_mb_100k_pending")
    if wanted("startup_100k_completed_vs_empty", *rss):
        history = bench.startup_100k_completed_vs_empty()  # its files serve idle_rss_mb
        if wanted(*rss):
            bench.idle_rss_mb(history)
    if wanted("noop_pipeline_throughput"):
        bench.noop_pipeline_throughput()
    if wanted("pipelined_throughput"):
        bench.pipelined_throughput()
    if wanted(*(name for name in ORDER if name.startswith("drop_to_claim_latency"))):
        bench.drop_to_claim_latency()
    if wanted("scan_vs_decode", "scan_vs_scenedetect_cli"):
        bench.scan_rows()
    if wanted("builtin_realtime_factor", "builtin_realtime_factor_no_speech"):
        bench.builtin_rows()
    if wanted("ocr_frames_read"):
        bench.ocr_frames_read()
    if wanted("dedupe_lookup_100k"):
        bench.dedupe_lookup_100k()
    if wanted("dedupe_lookup_same_size"):
        bench.dedupe_lookup_same_size()
    if wanted("web_overview_100k"):
        bench.web_overview_100k()
    if wanted("web_idle_rss"):
        bench.web_idle_rss()
    if wanted("gluster_two_instances_throughput", "gluster_claim_to_first_stage"):
        bench.gluster_rows()


def _missed(ratio: float, goal: float, why: str) -> str:
    """The end of a row's note: nothing when ``ratio`` meets ``goal``, else by how much
    and why it is missed."""
    return "" if ratio >= goal else f": missed by {goal - ratio:.2f}: {why}"


def _figure(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def in_order(results: list[Result]) -> list[Result]:
    """The rows in the order of the issue that asked for them."""
    return sorted(results, key=lambda r: ORDER.index(r.name) if r.name in ORDER else len(ORDER))


def markdown(results: list[Result]) -> str:
    rows = in_order(results)
    lines = [
        "| name | vvflow | baseline | ratio | unit | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {r.name} | {_figure(r.vvflow)} | {_figure(r.baseline)} | {_figure(r.ratio)}x "
        f"| {r.unit} | {r.note} |"
        for r in rows
    ]
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; under 3 minutes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--only", action="append", choices=ORDER, help="measure only this row (repeatable)"
    )
    parser.add_argument(
        "--video-cache",
        type=Path,
        metavar="DIR",
        help="keep the generated test video here between runs (default: generated per run)",
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()
    # On the storage's filesystem of choice: /tmp unless $TMPDIR says otherwise.
    work = Path(tempfile.mkdtemp(prefix="vvflow-bench-"))
    try:
        bench = Bench(mode, work, args.video_cache)
        measure(bench, set(args.only) if args.only else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    sys.stdout.write(f"vvflow benchmarks, {mode.name} mode, {elapsed:.0f} s; {machine()}\n\n")
    sys.stdout.write(markdown(bench.results) + "\n")
    for name, reason in bench.skipped.items():
        sys.stdout.write(f"\nSKIPPED {name}: {reason}\n")
    if args.json is not None:
        document = {
            "results": [asdict(r) for r in in_order(bench.results)],
            "skipped": bench.skipped,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
