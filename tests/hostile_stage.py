"""A hostile stage program for the adversarial suite: `python hostile_stage.py STEPS
--log LOG --stage NAME [--pids FILE] INPUT OUTPUT`.

vvflow runs it exactly like a user's stage. STEPS is a comma-separated list, run in
order; a step either goes on to the next or ends the program. When no step ended it,
the stage writes OUTPUT (a JSON object naming the video, the run and its process) and
exits 0. Every run appends a `start` and, when it writes its output, an `end` line to
--log, each with a timestamp, its pid, its parent's pid (the vvflow instance) and a
run id that is also in OUTPUT, so a test can tell which run produced a final output.

  sleep:A[-B]        sleep A seconds (or a random time between A and B)
  wait:FILE          sleep until FILE exists (at most 120 s): a gate the test opens
  bad-if:TEXT        exit 65 (bad input) when TEXT is in the video's name
  fail-if:TEXT       exit 1 when TEXT is in the video's name
  big:BYTES          write OUTPUT with BYTES bytes (exit 1 with a clear line if it fails)
  big-if:TEXT:BYTES  the same, only when TEXT is in the video's name
  spew:MIB           print MIB MiB on stdout and as many on stderr
  group-child:S      leave a child in the stage's process group that holds its pipes S s
  daemon:DELAY       after writing OUTPUT, start a daemon in a new session that keeps
                     OUTPUT open and appends to it DELAY s after the stage exited
  escape:DELAY       start a process in a new session (out of vvflow's reach) that holds
                     OUTPUT open and, DELAY s later, writes into it and at its path
  ignore-term        ignore SIGTERM from here on
  hang               sleep for an hour
  linger:S           write half of OUTPUT, sleep S seconds, then go on
  first:FILE         only the first run that gets here (it creates FILE) goes on to the
                     next steps; later runs skip them and write OUTPUT at once
  noout              exit 0 without writing OUTPUT
  dir-out            make OUTPUT a folder and exit 0
  symlink-out:PATH   make OUTPUT a symlink to PATH and exit 0
  final-out:PATH     write PATH (not OUTPUT) and exit 0
  litter:PATH        write PATH (relative: in the working folder) and go on
  append-input       append a few bytes to INPUT (a stage that edits the video in place)

--pids gets one line per process a step starts or is: "<role> <pid>".
"""

from __future__ import annotations

import os
import sys
import time

# Started thousands of times in the suite: only what starts fast (see stage_program.py).
from stage_program import Args, json_text, parse_args, run_id, uniform

_LATE_WRITER = r"""
import os, sys, time
fd, path, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
time.sleep(delay)
try:
    os.write(fd, b"LATE-WRITE-FROM-AN-ESCAPED-PROCESS")
except OSError:
    pass
try:
    with open(path, "ab") as fh:
        fh.write(b"LATE-WRITE-BY-PATH")
except OSError:
    pass
time.sleep(float(sys.argv[4]))
"""


class Stage:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.video = os.environ.get("VVFLOW_NAME", "?")
        self.run = run_id()
        self.output = args.output

    def log(self, event: str, **extra: object) -> None:
        record = {
            "event": event,
            "stage": self.args.stage,
            "video": self.video,
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "run": self.run,
            "t": time.time(),
            **extra,
        }
        line = (json_text(record) + "\n").encode("utf-8", "surrogateescape")
        fd = os.open(self.args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write with O_APPEND: lines of concurrent runs never mix
        finally:
            os.close(fd)

    def pid(self, role: str, pid: int) -> None:
        if self.args.pids:
            with open(self.args.pids, "a", encoding="utf-8") as fh:
                fh.write(f"{role} {pid}\n")

    def payload(self) -> bytes:
        data = {
            "stage": self.args.stage,
            "video": self.video,
            "input": self.args.input,
            "size": os.path.getsize(self.args.input),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "run": self.run,
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
        }
        return json_text(data).encode()

    def write_output(self, size: int | None = None) -> int | None:
        data = self.payload()
        try:
            with open(self.output, "wb") as fh:
                if size is None:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    fh.write(data[len(data) // 2 :])
                else:
                    chunk = b"x" * (1 << 20)
                    left = size
                    while left > 0:
                        fh.write(chunk[: min(left, len(chunk))])
                        left -= len(chunk)
        except OSError as exc:
            sys.stderr.write(f"cannot write output: {exc.strerror}\n")
            return 1
        return None

    def late_process(self, delay: float, linger: float) -> int:
        """A process in a new session holding OUTPUT open: vvflow cannot reach its group."""
        import subprocess

        fd = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _LATE_WRITER, str(fd), str(self.output),
                 str(delay), str(linger)],
                pass_fds=(fd,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(fd)
        self.pid("escaped", proc.pid)
        return proc.pid

    def step(self, kind: str, arg: str) -> int | None:
        """Run one step; an exit code ends the stage, None goes on."""
        if kind == "sleep":
            low, _, high = arg.partition("-")
            time.sleep(uniform(float(low), float(high or low)))
        elif kind == "wait":
            deadline = time.monotonic() + 120
            while not os.path.exists(arg) and time.monotonic() < deadline:
                time.sleep(0.02)
        elif kind in ("bad-if", "fail-if"):
            if arg in self.video:
                bad = kind == "bad-if"
                sys.stderr.write("not a video: no stream\n" if bad else "failing on purpose\n")
                return 65 if bad else 1
        elif kind == "big":
            return self.finish(size=int(arg))
        elif kind == "big-if":
            text, _, size = arg.rpartition(":")
            if text in self.video:
                return self.finish(size=int(size))
        elif kind == "spew":
            block = (b"spew " * 13107)[:65536]
            for _ in range(int(arg) * 16):
                sys.stdout.buffer.write(block)
                sys.stderr.buffer.write(block)
            sys.stdout.flush()
            sys.stderr.flush()
        elif kind == "group-child":
            import subprocess

            child = subprocess.Popen(
                [sys.executable, "-S", "-c", f"import time; time.sleep({arg})"]
            )
            self.pid("group-child", child.pid)
        elif kind == "daemon":
            code = self.finish()
            self.late_process(float(arg), 30.0)
            return code
        elif kind == "escape":
            self.late_process(float(arg), 0.5)
        elif kind == "ignore-term":
            import signal

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.pid("stage", os.getpid())
        elif kind == "hang":
            self.pid("stage", os.getpid())
            time.sleep(3600)
        elif kind == "linger":
            data = self.payload()
            with open(self.output, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                time.sleep(float(arg))
                fh.write(data[len(data) // 2 :])
            self.log("end")
            return 0
        elif kind == "first":
            try:
                os.close(os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                return self.finish()
        elif kind == "noout":
            return 0
        elif kind == "dir-out":
            os.mkdir(self.output)
            return 0
        elif kind == "symlink-out":
            os.symlink(arg, self.output)
            return 0
        elif kind == "append-input":
            with open(self.args.input, "ab") as fh:
                fh.write(b"\0edited in place")
        elif kind == "litter":
            with open(arg, "wb") as fh:
                fh.write(b"litter")
        elif kind == "final-out":
            os.makedirs(os.path.dirname(arg) or ".", exist_ok=True)
            with open(arg, "wb") as fh:
                fh.write(self.payload())
            return 0
        elif kind != "ok":
            sys.stderr.write(f"hostile_stage: unknown step {kind!r}\n")
            return 2
        return None

    def finish(self, size: int | None = None) -> int:
        failed = self.write_output(size)
        if failed is not None:
            return failed
        self.log("end")
        return 0


def main() -> int:
    stage = Stage(
        parse_args(sys.argv[1:], ("steps", "input", "output"), ("log", "stage"), ("pids",))
    )
    stage.log("start", argv=sys.argv[1:])
    for step in stage.args.steps.split(","):
        kind, _, arg = step.partition(":")
        code = stage.step(kind, arg)
        if code is not None:
            return code
    return stage.finish()


if __name__ == "__main__":
    sys.exit(main())
