"""A real stage program for the tests: `python stagecmd.py MODE [options] INPUT OUTPUT`.

It is run by vvflow exactly like a user's stage: a subprocess with argv placeholders.
Every run appends one JSON line to --log (so tests can count what ran), then behaves
as MODE says:

  ok          write OUTPUT: a JSON object naming the input, its size and the env seen
  flaky:N     fail (exit 1) the first N runs for this video, then behave as ok
  fail        print a traceback-like message on stderr and exit 1
  bad         say the input is bad and exit 65
  noout       exit 0 without writing OUTPUT
  hang        start a child that sleeps, record both pids in --pids, sleep forever
  sleep:S     sleep S seconds (a float, or a range A-B chosen at random), then ok
  until:FILE  fail until FILE exists, then ok
"""

from __future__ import annotations

import os
import sys
import time

# Started thousands of times in the suite: only what starts fast (see stage_program.py).
from stage_program import json_text, parse_args, uniform


def main() -> int:
    args = parse_args(sys.argv[1:], ("mode", "input", "output"), ("log", "stage"), ("pids",))
    video = os.environ.get("VVFLOW_NAME", "?")
    record = {"stage": args.stage, "video": video, "pid": os.getpid(), "mode": args.mode}
    with open(args.log, "a", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(json_text(record) + "\n")
    mode, _, arg = args.mode.partition(":")
    if mode == "flaky":
        import hashlib
        from pathlib import Path

        key = hashlib.sha1(os.fsencode(video)).hexdigest()[:12]
        counter = Path(args.log).with_suffix(f".{args.stage}.{key}.count")
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        if seen < int(arg):
            sys.stderr.write(f"transient failure {seen + 1}\n")
            return 1
    elif mode == "fail":
        sys.stderr.write("Traceback (most recent call last):\nRuntimeError: boom in stage\n")
        return 1
    elif mode == "bad":
        sys.stderr.write("not a video: cannot find a video stream\n")
        return 65
    elif mode == "noout":
        return 0
    elif mode == "hang":
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        with open(args.pids, "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(3600)
    elif mode == "sleep":
        low, _, high = arg.partition("-")
        time.sleep(uniform(float(low), float(high or low)))
    elif mode == "until" and not os.path.exists(arg):
        sys.stderr.write(f"waiting for {arg}\n")
        return 1
    size = os.path.getsize(args.input)
    payload = {
        "stage": args.stage,
        "input": args.input,
        "size": size,
        "env": {k: v for k, v in os.environ.items() if k.startswith("VVFLOW_")},
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }
    data = json_text(payload).encode()
    # Write in two steps so a kill between them would leave a half file, which vvflow
    # must never publish.
    with open(args.output, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        fh.write(data[len(data) // 2 :])
    return 0


if __name__ == "__main__":
    sys.exit(main())
