"""Runs a claimed video through the configured stages.

Each stage is a subprocess started from an argv list (never a shell), in its own
process group, under a timeout that kills the whole group, with bounded retries. It
writes a temporary `{output}`; only after exit 0 with a non-empty regular file is
that renamed to the final output, so an output is whole or absent. The pipeline
knows nothing of the state folders: it gets a video path, a workspace and a report.

Capacity: each attempt of a stage holds that stage's slot (`concurrency`) and the
resources it `uses` (`[resources]`), and nothing else; the videos in flight (`workers`)
wait for them in the order they came (`Slots`). So a video waiting for the GPU holds
no other stage's slot, and the stages of different videos overlap: throughput is the
rate of the slowest stage, not the sum of all.

Progress: a stage may print `vvflow:progress 0.42` (optionally followed by a short
message) on stderr; the last such line is the stage's progress.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from vvflow import logs
from vvflow.atomicfs import fsync_dir, makedirs
from vvflow.config import OUTPUT_DIR_PLACEHOLDER, PLACEHOLDERS, StageConfig
from vvflow.errors import (
    AttemptFailed,
    BadInput,
    Cancelled,
    StageError,
    StageUnusable,
    StorageFailed,
    is_storage_error,
)
from vvflow.events import Event
from vvflow.instance import RUN_TOKEN, kill_group, process_start, stop_group, sweep
from vvflow.layout import DIR_SUFFIX, PUBLISH_PREFIX, STAGE_PID
from vvflow.report import Attempt, AttemptOutcome, Report, Saver, StageStatus, now_iso

EX_DATAERR = 65
TAIL_BYTES = 8192
REPORT_TAIL_CHARS = 2000
#: The longest stage line kept as a failure's reason.
DETAIL_CHARS = 300
#: How long a stage's leftover children may hold its pipes open after it exits.
PIPE_LINGER_SECONDS = 1.0
#: A stage's progress line on stderr: `vvflow:progress 0.42 [message]` (or `42%`).
PROGRESS_LINE = re.compile(rb"^vvflow:progress\s+([0-9]*\.?[0-9]+)(%?)(?:\s+(.*))?$")
#: The longest stderr line looked at for progress, and the longest message kept.
PROGRESS_LINE_BYTES = 1024
PROGRESS_MESSAGE_CHARS = 120
#: A stage's progress is logged at most this often (it is in `status` at all times).
PROGRESS_LOG_SECONDS = 5.0


@dataclass
class Activity:
    """What a video in flight does now: waits for a stage's slot, or runs the stage."""

    stage: str
    state: Literal["waiting", "running"]
    #: Wall-clock time this state began.
    since: float = field(default_factory=time.time)
    attempt: int = 0
    #: What it waits for: `stage <name>` (its concurrency) or a resource name.
    waiting_for: list[str] = field(default_factory=list)
    #: The stage's last progress report, 0..1, and its message; None when it sent none.
    progress: float | None = None
    message: str | None = None

    def fields(self) -> dict[str, object]:
        data: dict[str, object] = {"stage": self.stage, "state": self.state, "since": self.since}
        if self.state == "waiting":
            data["waiting_for"] = self.waiting_for
        else:
            data["attempt"] = self.attempt
            if self.progress is not None:
                data["progress"] = self.progress
                data["message"] = self.message
        return data


#: Called with a video's activity whenever it changes (None: between stages).
Watch = Callable[[Activity | None], None]


def _ignore(activity: Activity | None) -> None:
    pass


def parse_progress(line: bytes) -> tuple[float, str | None] | None:
    """(fraction, message) of a progress line, None when the line is not one."""
    match = PROGRESS_LINE.match(line.strip())
    if match is None:
        return None
    value = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    message = match.group(3)
    text = message.decode("utf-8", "replace").strip()[:PROGRESS_MESSAGE_CHARS] if message else None
    return min(1.0, max(0.0, value)), text or None


#: A slot key: ("stage", name) for a stage's concurrency, ("resource", name) for a resource.
SlotKey = tuple[str, str]


def slot_label(key: SlotKey) -> str:
    return f"stage {key[1]}" if key[0] == "stage" else key[1]


#: How long a video just claimed keeps its place in the line of its first stage's slots
#: before it asks for them itself (its history and report come first: milliseconds).
EXPECT_SECONDS = 2.0


@dataclass(eq=False)
class _Waiter:
    order: tuple[int, int]
    ticket: int
    needs: dict[SlotKey, int]
    owner: str
    #: Set for a place kept by `expect` (the video has not asked yet): after this
    #: monotonic time it no longer holds anyone back.
    expires: float | None = None


class Slots:
    """The capacity of each stage with a `concurrency` and of each named resource,
    shared by the videos in flight in this instance.

    A waiter takes everything it needs at once, or nothing. Waiters stand in one line,
    ordered by their video's place (oldest first, Candidate.order), then by arrival; for
    each key a waiter waits behind those before it in line that want that key, while
    waiters for other keys pass. The first in line is first for all its keys, so one
    always gets through once its keys are free: no deadlock. A video just claimed keeps
    its place for its first stage (`expect`), so that a younger video claimed a moment
    later cannot take the slot before it asks."""

    def __init__(self, capacity: dict[SlotKey, int]) -> None:
        self.capacity = dict(capacity)
        self._free = dict(capacity)
        self._cond = threading.Condition()
        self._line: list[_Waiter] = []
        self._tickets = 0

    def needs_of(self, stage: StageConfig) -> dict[SlotKey, int]:
        needs: dict[SlotKey, int] = {}
        if ("stage", stage.name) in self.capacity:
            needs["stage", stage.name] = 1
        for name, amount in stage.uses.items():
            needs["resource", name] = amount
        return needs

    def _enter(self, waiter: _Waiter) -> None:
        bisect.insort(self._line, waiter, key=lambda w: (w.order, w.ticket))

    def _blocking(self, waiter: _Waiter) -> list[SlotKey]:
        """The keys this waiter cannot take now (not enough free, or one before it in
        line wants it)."""
        needs = waiter.needs
        blocked = [key for key, amount in needs.items() if self._free[key] < amount]
        now = time.monotonic()
        for other in self._line:
            if other is waiter:
                break
            if other.expires is not None and other.expires < now:
                continue
            blocked += [key for key in other.needs if key in needs and key not in blocked]
        return blocked

    def expect(self, owner: str, order: tuple[int, int], needs: dict[SlotKey, int]) -> None:
        """Keep `owner`'s place in line for `needs` (its first stage's) for
        EXPECT_SECONDS, or until it asks (`hold`) or is gone (`forget`)."""
        if not needs:
            return
        with self._cond:
            self._tickets += 1
            self._enter(
                _Waiter(order, self._tickets, needs, owner, time.monotonic() + EXPECT_SECONDS)
            )

    def forget(self, owner: str) -> None:
        """Drop the places `owner` kept and no longer needs (its video skipped the stage,
        or is done)."""
        with self._cond:
            kept = [w for w in self._line if w.owner == owner and w.expires is not None]
            for waiter in kept:
                self._line.remove(waiter)
            if kept:
                self._cond.notify_all()

    @contextlib.contextmanager
    def hold(
        self,
        needs: dict[SlotKey, int],
        cancel: threading.Event,
        waiting: Callable[[list[str]], None],
        order: tuple[int, int] = (1, 0),
        owner: str = "",
    ) -> Iterator[None]:
        """Hold `needs` for the `with` block; `waiting(labels)` is called once if it must
        wait first. Raises Cancelled when `cancel` is set while it waits."""
        if not needs:
            yield
            return
        with self._cond:
            kept = next(
                (w for w in self._line if w.owner == owner and owner and w.expires is not None),
                None,
            )
            if kept is not None and kept.needs == needs:
                waiter, kept.expires = kept, None  # it asks now, in the place it kept
            else:
                if kept is not None:
                    self._line.remove(kept)
                self._tickets += 1
                waiter = _Waiter(order, self._tickets, needs, owner)
                self._enter(waiter)
            try:
                said = False
                while blocked := self._blocking(waiter):
                    if cancel.is_set():
                        raise Cancelled("shutdown requested while waiting for a slot")
                    if not said:
                        said = True
                        waiting([slot_label(key) for key in blocked])
                    self._cond.wait(0.2)  # and look at `cancel` (and kept places) again
                for key, amount in needs.items():
                    self._free[key] -= amount
            finally:
                self._line.remove(waiter)
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                for key, amount in needs.items():
                    self._free[key] += amount
                self._cond.notify_all()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per slot: capacity, in use and waiting (for the metrics and `status`)."""
        with self._cond:
            waiting = {key: 0 for key in self.capacity}
            for waiter in self._line:
                if waiter.expires is None:
                    for key in waiter.needs:
                        waiting[key] += 1
            return {
                slot_label(key): {
                    "capacity": cap,
                    "in_use": cap - self._free[key],
                    "waiting": waiting[key],
                }
                for key, cap in self.capacity.items()
            }


def make_slots(stages: list[StageConfig], resources: dict[str, int]) -> Slots:
    capacity: dict[SlotKey, int] = {("resource", name): n for name, n in resources.items()}
    for stage in stages:
        if stage.concurrency is not None:
            capacity["stage", stage.name] = stage.concurrency
    return Slots(capacity)


@dataclass(frozen=True)
class Job:
    """One claimed video, as the stages see it."""

    video: Path
    name: str
    stem: str
    root: Path
    workspace: Path
    #: Its place in line for the stages' slots (Candidate.order): older videos first.
    order: tuple[int, int] = (1, 0)


@dataclass
class _Run:
    exit_code: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    stdout: bytes = b""
    stderr: bytes = b""


def _tail_text(data: bytes, limit: int = REPORT_TAIL_CHARS) -> str:
    return data.decode("utf-8", "replace")[-limit:]


def _last_line(data: bytes) -> str:
    """The last line that says something (a row of dashes, a bare prompt or a progress
    line does not)."""
    lines = [
        ln.strip()
        for ln in _tail_text(data).splitlines()
        if any(c.isalnum() for c in ln) and parse_progress(ln.encode()) is None
    ]
    return lines[-1] if lines else ""


def _readable(line: str, job: Job, tmp: Path) -> str:
    """A stage's line with the paths it names made short: the claimed video by its name
    (where it sits while claimed means nothing once it is filed), its temporary output
    as `{output}`, and anything else under the root relative to the root. The end of a
    long line, where the cause usually is, is kept."""
    line = line.replace(str(tmp), "{output}").replace(str(job.video), job.name)
    prefix = str(job.root).rstrip("/") + "/"
    if prefix != "/":
        line = line.replace(prefix, "")
    return line if len(line) <= DETAIL_CHARS else "…" + line[-(DETAIL_CHARS - 1) :]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Pipeline:
    """The ordered stages, and how to run one video through them."""

    def __init__(
        self,
        stages: list[StageConfig],
        root: Path,
        *,
        kill_grace_seconds: float = 2.0,
        extra_env: dict[str, str] | None = None,
        storage_check: Callable[[], None] = lambda: None,
        resources: dict[str, int] | None = None,
    ) -> None:
        self.stages = stages
        self.root = root
        self.kill_grace_seconds = kill_grace_seconds
        self.extra_env = extra_env or {}
        #: Raises StorageFailed when the root is out of space now.
        self.storage_check = storage_check
        self.slots = make_slots(stages, resources or {})

    def first_needs(self) -> dict[SlotKey, int]:
        """What the first stage's runs hold (where a video just claimed keeps its place)."""
        return self.slots.needs_of(self.stages[0])

    def output_path(self, stage: StageConfig, name: str, stem: str) -> Path:
        return self.root / stage.output.format_map({"name": name, "stem": stem})

    def output_paths(self, name: str, stem: str) -> dict[str, Path]:
        return {s.name: self.output_path(s, name, stem) for s in self.stages}

    def output_dir_path(self, stage: StageConfig, name: str, stem: str) -> Path | None:
        if stage.output_dir is None:
            return None
        return self.root / stage.output_dir.format_map({"name": name, "stem": stem})

    def output_dirs(self, name: str, stem: str) -> dict[str, Path]:
        """Stage name -> the final path of its folder output, for the stages with one."""
        dirs = {s.name: self.output_dir_path(s, name, stem) for s in self.stages}
        return {stage: path for stage, path in dirs.items() if path is not None}

    def all_outputs(self, name: str, stem: str) -> dict[str, Path]:
        """Every output path of a video: files by stage name, folders as `<stage>_dir`
        (the names the layout checks and carries when a video is renamed)."""
        dirs = {stage + DIR_SUFFIX: path for stage, path in self.output_dirs(name, stem).items()}
        return {**self.output_paths(name, stem), **dirs}

    def run(
        self,
        job: Job,
        report: Report,
        *,
        save: Saver,
        guard: Callable[[], None],
        cancel: threading.Event,
        watch: Watch = _ignore,
    ) -> None:
        """Run every stage not already done for this very file.

        Raises StageError when a stage gives up, Cancelled on shutdown, and whatever
        `guard` raises (LeaseLost) when the claim was taken over. `watch` is told what
        the video does: waiting for a slot, running a stage, its progress.
        """
        outputs: dict[str, Path] = {}
        for stage in self.stages:
            final = self.output_path(stage, job.name, job.stem)
            final_dir = self.output_dir_path(stage, job.name, job.stem)
            record = report.stage(stage.name)
            if (
                record.status == StageStatus.SUCCEEDED
                and record.identity == report.identity
                and _nonempty_file(final)
                and (final_dir is None or _real_dir(final_dir))
            ):
                logs.event(Event.STAGE_SKIPPED, video=job.name, stage=stage.name, reason="done")
                self.slots.forget(job.name)  # a place it kept for this stage
                outputs[stage.name] = final
                if final_dir is not None:
                    outputs[stage.name + DIR_SUFFIX] = final_dir
                continue
            # Saved once the stage has its slot: a video waiting for one is not running.
            record.status = StageStatus.RUNNING
            record.error = None
            clock = _StageClock()
            started = clock.started
            try:
                tmp = job.workspace / final.name
                self._run_stage(stage, job, report, outputs, tmp, cancel, save, guard, watch, clock)
                started = clock.started
                guard()
                if final_dir is not None:
                    publish_dir(_tmp_dir(job, stage), final_dir, self.root)
                    record.output_dir = os.path.relpath(final_dir, self.root)
                    outputs[stage.name + DIR_SUFFIX] = final_dir
                publish(tmp, final, self.root)
            except Cancelled:
                # Stopped by a shutdown: the stage will run again, it is not running now.
                record.status = StageStatus.PENDING
                record.duration_s = round(time.monotonic() - started, 3)
                save(True)
                raise
            except StorageFailed:
                # Not this stage's fault: it runs again, from scratch, when space is back.
                record.status = StageStatus.PENDING
                raise
            except StageError as exc:
                record.status = StageStatus.FAILED
                record.error = str(exc)
                record.duration_s = round(time.monotonic() - clock.started, 3)
                report.failed_stage = stage.name
                report.error = f"{stage.name}: {exc}"
                save(True)
                logs.event(
                    Event.STAGE_FAILED,
                    level=logging.WARNING,
                    video=job.name,
                    stage=stage.name,
                    attempts=len(record.attempts),
                    duration_s=time.monotonic() - clock.started,
                    waited_s=round(clock.waited, 3),
                    error=str(exc),
                )
                raise
            finally:
                watch(None)
            record.status = StageStatus.SUCCEEDED
            record.output = os.path.relpath(final, self.root)
            record.identity = report.identity
            record.duration_s = round(time.monotonic() - started, 3)
            save(True)
            logs.event(
                Event.STAGE_SUCCEEDED,
                video=job.name,
                stage=stage.name,
                attempts=len(record.attempts),
                duration_s=time.monotonic() - started,
                waited_s=round(clock.waited, 3),
                output=record.output,
            )
            outputs[stage.name] = final

    def _run_stage(
        self,
        stage: StageConfig,
        job: Job,
        report: Report,
        outputs: dict[str, Path],
        tmp: Path,
        cancel: threading.Event,
        save: Saver,
        guard: Callable[[], None],
        watch: Watch,
        clock: _StageClock,
    ) -> None:
        """Run a stage, with its retries, until it leaves a finished output at `tmp`.
        Each attempt holds the stage's slots; the backoff between attempts holds none."""
        values = {
            "video": str(job.video),
            "name": job.name,
            "stem": job.stem,
            "root": str(self.root),
            "output": str(tmp),
            **{name: str(path) for name, path in outputs.items()},
        }
        if stage.output_dir is not None:
            values[OUTPUT_DIR_PLACEHOLDER] = str(_tmp_dir(job, stage))
        first_attempt = len(report.stage(stage.name).attempts) + 1

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            logs.event(
                Event.RETRYING,
                video=job.name,
                stage=stage.name,
                attempt=state.attempt_number,
                wait_s=round(wait, 3),
                error=str(exc),
            )

        retrying = Retrying(
            stop=stop_after_attempt(stage.attempts),
            wait=wait_exponential_jitter(
                initial=stage.backoff_seconds,
                max=stage.backoff_max_seconds,
                jitter=stage.backoff_seconds,
            ),
            retry=retry_if_exception(lambda e: isinstance(e, StageError) and e.retryable),
            reraise=True,
            sleep=_interruptible(cancel),
            before_sleep=before_sleep,
        )
        needs = self.slots.needs_of(stage)

        def waiting(labels: list[str]) -> None:
            watch(Activity(stage.name, "waiting", waiting_for=labels))
            logs.event(Event.STAGE_WAITING, video=job.name, stage=stage.name, waiting_for=labels)

        for attempt in retrying:
            with attempt:
                number = first_attempt + attempt.retry_state.attempt_number - 1
                asked = time.monotonic()
                with self.slots.hold(needs, cancel, waiting, job.order, job.name):
                    clock.held(asked)
                    guard()
                    if number == first_attempt:
                        save()  # the stage's `running` record
                    activity = Activity(stage.name, "running", attempt=number)
                    watch(activity)
                    progress = _ProgressLog(job.name, activity, watch)
                    self._attempt(stage, job, report, values, tmp, number, cancel, save, progress)

    def _attempt(
        self,
        stage: StageConfig,
        job: Job,
        report: Report,
        values: dict[str, str],
        tmp: Path,
        number: int,
        cancel: threading.Event,
        save: Saver,
        progress: _ProgressLog,
    ) -> None:
        if cancel.is_set():
            raise Cancelled("shutdown requested")
        record = report.stage(stage.name)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if stage.output_dir is not None:
            # Each attempt starts from an empty folder: nothing of a failed one is kept.
            folder = _tmp_dir(job, stage)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        argv = [arg.format_map(values) for arg in stage.command]
        env = dict(os.environ)
        env.update(self.extra_env)
        for key, value in values.items():
            own = key in PLACEHOLDERS or key == OUTPUT_DIR_PLACEHOLDER
            prefix = "VVFLOW_" if own else "VVFLOW_STAGE_"
            env[prefix + key.upper()] = value
        started_at, started = now_iso(), time.monotonic()
        logs.event(Event.STAGE_STARTED, video=job.name, stage=stage.name, attempt=number)

        def finish(outcome: AttemptOutcome, exit_code: int | None, error: str | None) -> None:
            record.attempts.append(
                Attempt(
                    number=number,
                    started_at=started_at,
                    duration_s=round(time.monotonic() - started, 3),
                    outcome=outcome,
                    exit_code=exit_code,
                    error=error,
                )
            )
            if outcome != "succeeded":
                # A success is saved with the stage's result right after its output is
                # published (one report write less per stage: each costs a rename on
                # the file server of a network filesystem).
                save()

        token = uuid.uuid4().hex
        env[RUN_TOKEN] = token
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=job.workspace,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"cannot start {argv[0]!r}: {exc.strerror}"
            finish("unusable", None, message)
            raise StageUnusable(message) from None
        pidfile = job.workspace / STAGE_PID
        with contextlib.suppress(OSError):
            pidfile.write_text(f"{proc.pid} {process_start(proc.pid) or 0} {token}\n")
        try:
            run = self._wait(proc, stage.timeout_seconds, cancel, progress.report)
        finally:
            # Whatever it left running outside its process group (a daemon in a new
            # session) carries its token: stop it before its output is looked at.
            sweep(token)
            with contextlib.suppress(OSError):
                pidfile.unlink()
        record.stdout_tail = _tail_text(run.stdout)
        record.stderr_tail = _tail_text(run.stderr)
        detail = _readable(_last_line(run.stderr) or _last_line(run.stdout), job, tmp)
        suffix = f": {detail}" if detail else ""
        if run.cancelled:
            finish("cancelled", run.exit_code, "stopped by shutdown")
            raise Cancelled("shutdown requested")

        def failed(outcome: AttemptOutcome, exit_code: int | None, message: str) -> None:
            # A stage that fails while the root is out of space most likely failed for
            # it (it could not write its output): not the video's fault. Its own partial
            # output is deleted first, so that an output larger than the whole disk
            # stays the failure of its video instead of pausing the instance forever.
            with contextlib.suppress(OSError):
                tmp.unlink()
            try:
                self.storage_check()
            except StorageFailed as exc:
                finish("no_space", exit_code, f"{message}; {exc}")
                raise
            finish(outcome, exit_code, message)

        if run.timed_out:
            message = f"timed out after {stage.timeout_seconds:g}s; process group killed"
            failed("timeout", run.exit_code, message)
            raise AttemptFailed(message)
        code = run.exit_code
        assert code is not None
        if code == EX_DATAERR:
            message = f"bad input (exit 65){suffix}"
            finish("bad_input", code, message)
            raise BadInput(message, exit_code=code)
        if code != 0:
            why = f"killed by {_signal_name(code)}" if code < 0 else f"exit {code}"
            failed("failed", code, why + suffix)
            raise AttemptFailed(why + suffix, exit_code=code)
        if not _nonempty_file(tmp):
            message = "exit 0 but no output: {output} is missing, empty or not a regular file"
            failed("no_output", code, message)
            raise AttemptFailed(message, exit_code=code)
        if stage.output_dir is not None and not _real_dir(values[OUTPUT_DIR_PLACEHOLDER]):
            message = "exit 0 but {output_dir} is gone or no longer a folder"
            failed("no_output", code, message)
            raise AttemptFailed(message, exit_code=code)
        finish("succeeded", code, None)

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        timeout: float,
        cancel: threading.Event,
        on_progress: Callable[[float, str | None], None],
    ) -> _Run:
        """Wait for the stage, keeping only the tails of its output (memory stays bounded
        whatever it prints), until it exits, times out or a shutdown cancels it. Progress
        lines on its stderr go to `on_progress`."""
        run = _Run()
        tails: dict[int, bytearray] = {}
        line = bytearray()  # the stderr line read so far
        sel = selectors.DefaultSelector()
        streams: list[IO[bytes]] = [s for s in (proc.stdout, proc.stderr) if s is not None]
        out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
        err_fd = proc.stderr.fileno() if proc.stderr is not None else -1
        for stream in streams:
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ)
            tails[stream.fileno()] = bytearray()
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if cancel.is_set():
                    run.cancelled = True
                    stop_group(proc, self.kill_grace_seconds)
                    break
                if now >= deadline:
                    run.timed_out = True
                    stop_group(proc, self.kill_grace_seconds)
                    break
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    if not sel.get_map() or now - exited_at > PIPE_LINGER_SECONDS:
                        break
                step = min(deadline - now, 0.2)
                if sel.get_map():
                    for key, _ in sel.select(step):
                        fd = key.fd
                        try:
                            chunk = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        tail = tails[fd]
                        tail += chunk
                        del tail[:-TAIL_BYTES]
                        if fd == err_fd:
                            _progress_lines(line, chunk, on_progress)
                else:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=step)
        finally:
            # Whatever the stage left behind in its group (a daemon it forked, a child
            # still writing) is stopped with it.
            kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            sel.close()
            for stream in streams:
                stream.close()
        run.exit_code = proc.returncode
        run.stdout = bytes(tails.get(out_fd, b""))
        run.stderr = bytes(tails.get(err_fd, b""))
        return run


def _progress_lines(
    line: bytearray, chunk: bytes, on_progress: Callable[[float, str | None], None]
) -> None:
    """Feed a chunk of stderr; report each complete progress line in it. A line longer
    than PROGRESS_LINE_BYTES is no progress line: only its end is kept, then dropped."""
    line += chunk
    *complete, rest = bytes(line).split(b"\n")
    for text in complete:
        if text.startswith(b"vvflow:progress") and len(text) <= PROGRESS_LINE_BYTES:
            parsed = parse_progress(text)
            if parsed is not None:
                on_progress(*parsed)
    line[:] = rest if len(rest) <= PROGRESS_LINE_BYTES else b"x"


class _StageClock:
    """When a stage began to run (its first attempt got its slots) and how long it
    waited for slots in all."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.waited = 0.0
        self._first = True

    def held(self, asked: float) -> None:
        now = time.monotonic()
        self.waited += now - asked
        if self._first:
            self._first = False
            self.started = now


class _ProgressLog:
    """A running attempt's progress: kept in its Activity (for `status` and the
    metrics), logged at most every PROGRESS_LOG_SECONDS."""

    def __init__(self, video: str, activity: Activity, watch: Watch) -> None:
        self.video = video
        self.activity = activity
        self.watch = watch
        self.started = time.monotonic()
        self._logged = -PROGRESS_LOG_SECONDS

    def report(self, fraction: float, message: str | None) -> None:
        self.activity.progress, self.activity.message = fraction, message
        self.watch(self.activity)
        now = time.monotonic()
        if now - self._logged < PROGRESS_LOG_SECONDS and fraction < 1.0:
            return
        self._logged = now
        elapsed = now - self.started
        fields: dict[str, Any] = {"progress": round(fraction, 4), "elapsed_s": elapsed}
        if 0 < fraction < 1:
            fields["eta_s"] = round(elapsed * (1 - fraction) / fraction, 1)
        if message:
            fields["message"] = message
        logs.event(Event.STAGE_PROGRESS, video=self.video, stage=self.activity.stage, **fields)


def _interruptible(cancel: threading.Event) -> Callable[[float], None]:
    """A sleep for the retry backoff that a shutdown cuts short."""

    def sleep(seconds: float) -> None:
        cancel.wait(seconds)

    return sleep


def _nonempty_file(path: Path) -> bool:
    """A regular file (not a symlink a stage planted) with content."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _tmp_dir(job: Job, stage: StageConfig) -> Path:
    """A stage's `{output_dir}`: a folder in the video's workspace."""
    return job.workspace / f"{stage.name}{DIR_SUFFIX}"


def _real_dir(path: Path | str) -> bool:
    """A folder (not a symlink a stage planted)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _inside_root(final: Path, root: Path | None) -> None:
    if root is None:
        return
    folder = final.parent
    while folder != root and root in folder.parents:
        if folder.is_symlink():
            raise AttemptFailed(f"{folder} is a symlink; not publishing outside the root")
        folder = folder.parent


def _copy_tree(src: Path, dst: Path, *, skip_special: bool = False) -> None:
    """Copy a folder output: folders and regular files only, each file synced. A symlink
    or special file in it fails the attempt (a link could publish a file from anywhere
    on the host), or with `skip_special` is left out."""
    dst.mkdir()
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            _copy_tree(Path(entry.path), target, skip_special=skip_special)
        elif entry.is_file(follow_symlinks=False):
            shutil.copyfile(entry.path, target)
            with target.open("rb+") as fh:
                os.fsync(fh.fileno())
        elif not skip_special:
            raise AttemptFailed(
                f"{{output_dir}} holds {entry.name!r}, which is neither a file nor a folder "
                "(a symlink?); only files and folders are published"
            )
    fsync_dir(dst)


def publish_dir(
    tmp: Path, final: Path, root: Path | None = None, *, staging: Path | None = None
) -> None:
    """Make a stage's finished `{output_dir}` its final folder output, whole: a copy
    made beside it in the workspace is renamed into place in one step (an earlier run's
    folder is first renamed away, then deleted), so readers see the old folder, no
    folder, or the whole new one, never a part; then `tmp` is deleted.

    With `staging` (a folder in the workspace), `tmp` is a folder vvflow published
    already (a duplicate's original): the copy is made in `staging`, `tmp` stays as it
    is, and what is neither a file nor a folder in it is left out."""
    _inside_root(final, root)
    fresh = (staging or tmp.parent) / f"{PUBLISH_PREFIX}{uuid.uuid4().hex}"
    old = fresh.with_name(fresh.name + ".old")
    try:
        makedirs(final.parent)
        try:
            _copy_tree(tmp, fresh, skip_special=staging is not None)
        except AttemptFailed:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        try:
            os.rename(final, old)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            os.unlink(final)  # a file where the folder goes: a stale leftover
        os.rename(fresh, final)
        if staging is None:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(fresh, ignore_errors=True)
        message = f"cannot publish output folder {final}: {exc.strerror}"
        if is_storage_error(exc):
            raise StorageFailed(message) from None
        raise AttemptFailed(message) from None
    finally:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def publish(tmp: Path, final: Path, root: Path | None = None) -> None:
    """Make a stage's finished temporary output its final output, whole, in one rename.

    The final path belongs to this video alone (its stem is unique among all videos),
    so replacing it is a rerun of the same video, never another video's result."""
    # A copy, not the stage's own file: a process the stage left behind may still hold
    # that file open, and nothing may change an output once it is published.
    fresh = tmp.with_name(f"{PUBLISH_PREFIX}{uuid.uuid4().hex}")
    _inside_root(final, root)
    try:
        makedirs(final.parent)
        shutil.copyfile(tmp, fresh)
        with fresh.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(fresh, final)
        tmp.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            fresh.unlink()
        message = f"cannot publish output {final}: {exc.strerror}"
        if is_storage_error(exc):
            raise StorageFailed(message) from None
        raise AttemptFailed(message) from None
    fsync_dir(final.parent)
