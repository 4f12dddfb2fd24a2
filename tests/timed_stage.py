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

import os
import sys
import time

# Started for every stage run of the capacity tests: only what starts fast (see
# stage_program.py).
from stage_program import json_text, parse_args, run_id


def main() -> int:
    started = time.time()
    args = parse_args(sys.argv[1:], ("input", "output"), ("log", "stage"),
                      ("seconds", "progress", "gate"))  # fmt: skip
    record = {
        "stage": args.stage,
        "video": os.environ.get("VVFLOW_NAME", "?"),
        "pid": os.getpid(),
        "run": run_id(),
    }

    def log(event: str, **extra: float) -> None:
        line = json_text({"event": event, **record, "t": time.time(), **extra}) + "\n"
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
    time.sleep(float(args.seconds or 0.0))
    with open(args.output, "w", encoding="utf-8") as fh:
        fh.write(json_text({**record, "input": args.input}))
    log("end", start=started, end=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
