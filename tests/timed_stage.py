"""A stage that takes a known time, for the capacity tests: `python timed_stage.py
--log LOG --stage NAME [--seconds S] [--progress TEXT] [--gate FILE] INPUT OUTPUT`.

vvflow runs it exactly like a user's stage. It appends a `start` line to --log as soon
as it runs, then prints `vvflow:progress TEXT` on stderr (with --progress), waits until
FILE exists (with --gate, at most 120 s), sleeps S seconds, writes OUTPUT (a JSON object
naming the stage, the video and the run) and appends an `end` line with its start and
end times. Each line is one O_APPEND write of {event, stage, video, pid, run, t} (and
`start`, `end` on the end line), times by time.time(), so the intervals of concurrent
runs, even of different stages, can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid


def main() -> int:
    started = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--progress")
    parser.add_argument("--gate")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    record = {
        "stage": args.stage,
        "video": os.environ.get("VVFLOW_NAME", "?"),
        "pid": os.getpid(),
        "run": uuid.uuid4().hex,
    }

    def log(event: str, **extra: float) -> None:
        line = json.dumps({"event": event, **record, "t": time.time(), **extra}) + "\n"
        fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))  # concurrent lines never mix
        finally:
            os.close(fd)

    log("start", start=started)
    if args.progress is not None:
        sys.stderr.write(f"vvflow:progress {args.progress}\n")
        sys.stderr.flush()
    if args.gate is not None:
        deadline = time.monotonic() + 120
        while not os.path.exists(args.gate) and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(args.seconds)
    with open(args.output, "w", encoding="utf-8") as fh:
        json.dump({**record, "input": args.input}, fh)
    log("end", start=started, end=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
