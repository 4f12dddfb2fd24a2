"""Notifications that are never lost: real `vvflow run` and `once` processes, the fast
test stages, a real HTTP receiver on 127.0.0.1 (tests/notify_receiver.py), real
SIGKILLs, and crashes at the exact points that matter (an audit hook in the vvflow
process kills it right after the notification is staged, or right after the video is
filed; nothing in vvflow is patched)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events
from tests.notify_receiver import Receiver, free_port
from tests.test_adversarial_support import clean_env, wait_for
from vvflow.notify import ONCE_SECONDS

SECRET = "s3cret-for-tests"
REPO = Path(__file__).resolve().parents[1]

#: Runs `vvflow ARGV` in this process with an audit hook that SIGKILLs it at the first
#: change under the root after a marker: `staged` (a notification was renamed into
#: `.notify/staged/`: the crash falls between staging and filing) or `filed` (a rename,
#: link into input/completed/: the crash falls between filing and
#: publishing the notification). Run with the link protocol (see `_crash`).
CRASH = r"""
import os, signal, sys

from vvflow.cli import main

WHEN, ROOT = sys.argv[1], os.fsencode(sys.argv[2])
MARK = {"staged": b"/.notify/staged/", "filed": b"/input/completed/"}[WHEN]
CHANGES = ("os.rename", "os.link", "os.remove", "os.rmdir", "shutil.rmtree")
seen = False


def paths(event, args):
    if event not in CHANGES:
        return []
    found = [os.fsencode(os.fspath(a)) for a in args[:2] if isinstance(a, (str, os.PathLike))]
    return [p for p in found if p.startswith(ROOT)]


def hook(event, args):
    global seen
    found = paths(event, args)
    if not found:
        return
    if seen:
        os.kill(os.getpid(), signal.SIGKILL)
    if event != "os.remove" and MARK in found[-1]:
        seen = True


sys.addaudithook(hook)
sys.argv = ["vvflow", *sys.argv[3:]]
sys.exit(main())
"""


def _configure(root: Root, targets: list[dict[str, Any]], **top: Any) -> None:
    stages = [
        root.stage("scan"),
        {
            "name": "logline",
            "command": [
                sys.executable,
                "-c",
                "import json, sys; json.dump(dict(logline='A test clip.'), open(sys.argv[1], 'w'))",
                "{output}",
            ],
            "output": "loglines/{stem}.logline.json",
        },
    ]
    root.configure(stages, **top)
    with (root.path / "vvflow.toml").open("a") as fh:
        for target in targets:
            fh.write("\n[[notify]]\n")
            fh.writelines(f"{k} = {json.dumps(v)}\n" for k, v in target.items())


def _webhook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url, "secret": SECRET, **extra}


def _outbox(root: Root) -> list[str]:
    folder = root.path / "outbox"
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if folder.exists() else []


def _delivering(root: Root) -> list[Path]:
    return list(root.folder("processing").glob("*/.notify/delivering/*.json"))


def _staged(root: Root) -> list[Path]:
    return list(root.folder("processing").glob("*/.notify/staged/*"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


class Run:
    """A `vvflow run` subprocess; its log in a file."""

    def __init__(self, root: Root, *args: str) -> None:
        self.log = root.path.parent / f"run-{time.monotonic_ns()}.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vvflow", "run", "--root", str(root.path), *args],
            stdout=subprocess.DEVNULL, stderr=self._fh, env=clean_env(), cwd=REPO,
        )  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        return events(self.log.read_text(errors="replace"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._fh.close()


def _check_payload(request: Any, video: str, root: Root) -> dict[str, Any]:
    body = request.json
    assert request.signed_by(SECRET), request.headers
    assert request.headers["x-vvflow-id"] == body["id"]
    assert request.headers["x-vvflow-event"] == body["event"] == "completed"
    assert request.headers["content-type"] == "application/json"
    assert body["video"] == video and body["state"] == "completed"
    assert body["stage"] is None and body["error"] is None
    stem = video.rsplit(".", 1)[0]
    assert body["outputs"] == {
        "scan": f"analytic/{stem}.analytic.json",
        "logline": f"loglines/{stem}.logline.json",
    }
    assert body["logline"] == "A test clip."
    assert isinstance(body["duration_s"], float) and body["duration_s"] >= 0
    assert body["root"] == str(root.path) and body["instance"]
    assert body["time"].endswith("Z") and "T" in body["time"]
    assert (root.folder("completed") / video).exists()
    return body


def test_receiver_failing_twice_then_accepting_gets_it_once_signed(
    root: Root, receiver: Receiver
) -> None:
    receiver.answers = [500, 500]
    receiver.start()
    _configure(root, [_webhook(receiver)])
    root.drop("clip one.mp4")
    proc = root.vvflow("once", check=0)
    assert [r.status for r in receiver.requests] == [500, 500, 200], proc.stderr[-2000:]
    ids = {r.headers["x-vvflow-id"] for r in receiver.requests}
    assert len(ids) == 1, "a re-delivery carries the same id"
    _check_payload(receiver.accepted()[0], "clip one.mp4", root)
    delivered = [e for e in events(proc.stderr) if e["event"] == "notify_delivered"]
    assert len(delivered) == 1 and delivered[0]["video"] == "clip one.mp4"
    assert "duration_s" in delivered[0]
    assert _outbox(root) == [] and not _staged(root)
    assert root.status()["outbox"] == {"ready": 0, "rejected": 0, "dropped": 0}


def _metric(port: int, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    raise AssertionError(f"no {line_start} in the metrics")


def test_receiver_down_while_ten_finish_gets_all_when_back(root: Root) -> None:
    """Two instances on the root: each entry is delivered by one of them, once."""
    receiver = Receiver()  # not started: its port refuses connections
    _configure(root, [_webhook(receiver)], workers=2)
    run, other = Run(root, "--metrics-port", "0"), Run(root)
    try:
        names = [f"v{i:02d}.mp4" for i in range(10)]
        for name in names:
            root.drop(name)
        wait_for(lambda: len(root.names("completed")) == 10, what="ten videos filed")
        wait_for(lambda: len(_outbox(root)) + len(_delivering(root)) == 10, what="ten waiting")
        assert not _staged(root)
        wait_for(lambda: any(e["event"] == "notify_failed" for e in run.events()),
                 what="a delivery that failed, to be tried again")  # fmt: skip
        failed = [e for e in run.events() if e["event"] == "notify_failed"]
        assert all(0 < e["retry_in_s"] <= 60 for e in failed)
        status = root.status()["outbox"]  # at most one entry per instance being tried
        assert 8 <= status["ready"] <= 10 and status["rejected"] == status["dropped"] == 0
        text = root.vvflow("status", check=0).stdout
        assert "NOTIFICATIONS" in text and "waiting in outbox/" in text
        serving = next(e for e in run.events() if e["event"] == "metrics_serving")
        port = int(serving["address"].rsplit(":", 1)[1].split("/")[0])
        assert _metric(port, 'vvflow_notify_outbox{kind="ready"}') >= 8
        assert _metric(port, 'vvflow_notifications_total{outcome="failed"}') >= 1
        came_back = time.monotonic()
        receiver.start()
        receiver.wait_for(lambda: len({r.json["video"] for r in receiver.accepted()}) == 10,
                          timeout=70, what="all ten delivered")  # fmt: skip
        took = time.monotonic() - came_back
        wait_for(lambda: not _outbox(root) and not _delivering(root), what="outbox emptied")
    finally:
        run.stop()
        other.stop()
        receiver.stop()
    accepted = receiver.accepted()
    assert len(accepted) == 10, "two instances never deliver one entry twice"
    senders = {
        e["video"] for r in (run, other) for e in r.events() if e["event"] == "notify_delivered"
    }
    assert len(senders) == 10
    by_video: dict[str, set[str]] = {}
    for request in accepted:
        body = _check_payload(request, request.json["video"], root)
        by_video.setdefault(body["video"], set()).add(body["id"])
    assert sorted(by_video) == names
    assert all(len(ids) == 1 for ids in by_video.values()), by_video
    assert len({next(iter(ids)) for ids in by_video.values()}) == 10, "ids unique per event"
    print(f"\nreceiver back: all ten delivered {took:.1f}s later")


@contextlib.contextmanager
def _hung(port: int) -> Iterator[None]:
    """A receiver that takes connections and never answers: a delivery to it hangs
    until its timeout, holding its entry."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield


def test_kill_9_between_filing_and_delivery_delivers_after_restart(root: Root) -> None:
    receiver = Receiver()
    _configure(root, [_webhook(receiver, timeout_seconds=60)], workers=2)
    names = [f"k{i}.mp4" for i in range(4)]
    with _hung(receiver.port):
        run = Run(root)
        for name in names:
            root.drop(name)
        try:
            wait_for(lambda: len(root.names("completed")) == 4, what="four videos filed")
            wait_for(lambda: bool(_delivering(root)), what="an entry being delivered")
        finally:
            run.stop(signal.SIGKILL)
    # One held by the hung delivery; the last one filed may still be staged (killed
    # between its filing and its publishing): recovery publishes it.
    staged = len(_staged(root))
    assert len(_delivering(root)) == 1 and len(_outbox(root)) + staged == 3
    receiver.start()
    try:
        proc = root.vvflow("once", check=0)
        receiver.wait_for(lambda: len({r.json["video"] for r in receiver.accepted()}) == 4,
                          what="all four delivered after the restart")  # fmt: skip
    finally:
        receiver.stop()
    recovered = [e for e in events(proc.stderr) if e["event"] == "recovered"]
    assert recovered and recovered[0].get("notifications_returned") == 1
    assert recovered[0].get("notifications_published", 0) == staged
    by_video: dict[str, set[str]] = {}
    for request in receiver.accepted():
        body = _check_payload(request, request.json["video"], root)
        by_video.setdefault(body["video"], set()).add(body["id"])
    assert sorted(by_video) == names
    assert all(len(ids) == 1 for ids in by_video.values()), "a repeat carries the same id"
    assert _outbox(root) == [] and not _delivering(root)


def test_a_hung_receiver_delays_neither_shutdown_past_the_grace_nor_once(root: Root) -> None:
    port = free_port()
    _configure(root, [{"url": f"http://127.0.0.1:{port}/hook", "timeout_seconds": 60}],
               shutdown_grace_seconds=1.0)  # fmt: skip
    with _hung(port):
        run = Run(root)
        root.drop("h.mp4")
        wait_for(lambda: bool(_delivering(root)), what="a delivery hanging")
        asked = time.monotonic()
        run.stop()
        took = time.monotonic() - asked
        assert run.proc.returncode == 0
        assert took < 1.0 + 3.0, f"stopped {took:.1f}s after SIGTERM with a 1s grace"
        assert len(_outbox(root)) == 1 and not _delivering(root), "back in outbox/ on the way out"
        started = time.monotonic()
        once = root.vvflow("once", check=0)
        once_took = time.monotonic() - started
    left = [e for e in events(once.stderr) if e["event"] == "notify_left"]
    assert left and left[0]["notifications"] == 1 and len(_outbox(root)) == 1
    assert once_took < ONCE_SECONDS + 4, f"once took {once_took:.1f}s with a hung receiver"
    print(f"\nreceiver hanging: run stopped {took:.2f}s after SIGTERM (grace 1s); "
          f"once exited after {once_took:.2f}s")  # fmt: skip


def _crash(root: Root, tmp_path: Path, when: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    # The link protocol (rename to a private name, link, unlink) files a video in steps
    # the hook sees; renameat2 is a ctypes call, which raises no audit event in 3.11.
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = clean_env({"PYTHONPATH": path, "VVFLOW_RENAME": "link"})
    return subprocess.run(
        [sys.executable, str(script), when, str(root.path), "once", "--root", str(root.path)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip


def test_crash_between_staging_and_filing_notifies_only_the_rerun(
    root: Root, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    _configure(root, [_webhook(receiver)])
    root.drop("a.mp4")
    crashed = _crash(root, tmp_path, "staged")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    staged = _staged(root)
    assert len(staged) == 1, "the crash fell after the staging"
    unfiled_id = json.loads(staged[0].read_bytes())["id"]
    assert root.names("processing") == ["a.mp4"] and root.names("completed") == []
    assert receiver.requests == []
    proc = root.vvflow("once", check=0)  # recovers the dead instance, reruns the video
    assert root.names("completed") == ["a.mp4"]
    recovered = next(e for e in events(proc.stderr) if e["event"] == "recovered")
    assert recovered["notifications_dropped"] == 1 and "notifications_published" not in recovered
    ids = [r.json["id"] for r in receiver.accepted()]
    assert len(ids) == 1 and ids[0] != unfiled_id, "only the rerun's notification arrives"
    _check_payload(receiver.accepted()[0], "a.mp4", root)


def test_crash_between_filing_and_publishing_delivers_after_recovery(
    root: Root, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    _configure(root, [_webhook(receiver)])
    root.drop("b.mp4")
    crashed = _crash(root, tmp_path, "filed")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert root.names("completed") == ["b.mp4"], "the crash fell after the filing"
    staged = _staged(root)
    assert len(staged) == 1 and _outbox(root) == [] and receiver.requests == []
    staged_id = json.loads(staged[0].read_bytes())["id"]
    proc = root.vvflow("once", check=0)
    recovered = next(e for e in events(proc.stderr) if e["event"] == "recovered")
    assert recovered["notifications_published"] == 1
    assert [r.json["id"] for r in receiver.accepted()] == [staged_id]
    _check_payload(receiver.accepted()[0], "b.mp4", root)


def test_command_target_gets_json_on_stdin_and_a_400_goes_to_rejected(
    root: Root, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.default = 400
    receiver.start()
    got = tmp_path / "got"
    got.mkdir()
    writer = (
        "import os, sys; open(os.path.join(sys.argv[1], os.environ['VVFLOW_NOTIFY_ID']), 'wb')"
        ".write(sys.stdin.buffer.read())"
    )
    _configure(root, [
        {"name": "archive", "command": [sys.executable, "-c", writer, str(got)], "secret": SECRET},
        {"name": "refuser", "url": receiver.url, "events": ["completed", "failed"]},
    ])  # fmt: skip
    root.drop("c.mp4")
    proc = root.vvflow("once", check=0)
    files = list(got.iterdir())
    assert len(files) == 1
    body = json.loads(files[0].read_bytes())
    assert body["id"] == files[0].name and body["video"] == "c.mp4"
    assert body["event"] == "completed" and body["logline"] == "A test clip."
    assert [r.status for r in receiver.requests] == [400], "a refusal is never retried"
    rejected = root.path / "outbox" / "rejected"
    entries = sorted(p.name for p in rejected.iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".answer"
    assert "_refuser.json" in entries[0]
    answer = json.loads((rejected / entries[1]).read_bytes())
    assert answer["status"] == 400 and "refused: bad payload" in answer["answer"]
    assert json.loads((rejected / entries[0]).read_bytes())["id"] == body["id"]
    logged = [e for e in events(proc.stderr) if e["event"] == "notify_rejected"]
    assert len(logged) == 1 and logged[0]["status"] == 400
    assert root.status()["outbox"] == {"ready": 0, "rejected": 1, "dropped": 0}
    assert "1 rejected" in root.vvflow("status", check=0).stdout


def test_pause_resume_events_and_slack_format(root: Root, receiver: Receiver) -> None:
    receiver.start()
    slack = receiver.url.replace("/hook", "/slack")
    _configure(root, [
        _webhook(receiver, events=["paused", "resumed"]),
        {"name": "chat", "url": slack, "format": "slack", "secret": SECRET,
         "events": ["completed", "paused"]},
    ])  # fmt: skip
    root.drop("<b>clip & co.mp4")
    root.vvflow("once", check=0)
    [text] = receiver.accepted("/slack")
    assert text.signed_by(SECRET) and text.headers["x-vvflow-event"] == "completed"
    assert len(text.headers["x-vvflow-id"]) == 32
    assert text.json == {
        "text": "vvflow: &lt;b&gt;clip &amp; co.mp4 completed \N{EM DASH} A test clip."
    }
    root.vvflow("pause", "--reason", "maintenance", check=0)
    root.vvflow("pause", check=0)  # already paused: no second notification
    root.vvflow("resume", check=0)
    root.vvflow("once", check=0)
    bodies = [r.json for r in receiver.accepted()]
    assert [b["event"] for b in bodies] == ["paused", "resumed"], "oldest first"
    assert bodies[0]["reason"] == "maintenance" and "@" in bodies[0]["by"]
    assert bodies[0]["video"] is None and bodies[0]["root"] == str(root.path)
    assert all(r.signed_by(SECRET) for r in receiver.accepted())
    chat = receiver.accepted("/slack")
    assert len(chat) == 2 and chat[1].json["text"].startswith(f"vvflow: {root.path} paused by ")


def test_outbox_bound_drops_the_oldest(root: Root) -> None:
    receiver = Receiver(free_port())  # down for the first run
    _configure(root, [_webhook(receiver)], workers=1, notify_outbox_max=3)
    for i in range(5):
        root.drop(f"d{i}.mp4")
    first = root.vvflow("once", check=0)
    dropped = [e for e in events(first.stderr) if e["event"] == "notify_dropped"]
    assert sum(e["dropped"] for e in dropped) == 2
    left = [e for e in events(first.stderr) if e["event"] == "notify_left"]
    assert left and left[-1]["notifications"] == 3
    order = [e["video"] for e in events(first.stderr) if e["event"] == "completed"]
    assert len(order) == 5
    assert root.status()["outbox"] == {"ready": 3, "rejected": 0, "dropped": 2}
    receiver.start()
    try:
        root.vvflow("once", check=0)
    finally:
        receiver.stop()
    assert sorted(r.json["video"] for r in receiver.accepted()) == sorted(order[2:])
    assert root.status()["outbox"] == {"ready": 0, "rejected": 0, "dropped": 2}


def test_storage_trouble_is_told(root: Root, receiver: Receiver) -> None:
    receiver.start()
    _configure(root, [_webhook(receiver, events=["storage_error", "completed"])])
    root.drop("e.mp4")
    root.vvflow("once", "--min-free-bytes", str(1 << 62), check=75)
    [request] = receiver.accepted()
    body = request.json
    assert request.signed_by(SECRET) and body["event"] == "storage_error"
    assert "less than min_free_bytes" in body["error"] and body["video"] is None
    assert isinstance(body["free_bytes"], int) and body["instance"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[[notify]]\nurl = "ftp://example.org/x"\n',
         "notify.0.url: must be an http:// or https:// URL with a host"),
        ('[[notify]]\nurl = "http://127.0.0.1:1/x"\nevents = ["done"]\n',
         "notify.0.events: unknown event 'done'; known: completed, failed, paused, resumed, "
         "storage_error, storage_recovered"),
        ('[[notify]]\nevents = ["failed"]\n', "needs a url or a command"),
        ('[[notify]]\nname = "a b"\nurl = "http://127.0.0.1:1/x"\n', "'a b': a notify name is"),
    ],
)  # fmt: skip
def test_invalid_notify_config_exits_2_with_one_line(root: Root, toml: str, expected: str) -> None:
    (root.path / "vvflow.toml").write_text(toml)
    proc = root.vvflow("once", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in lines[0]


def test_video_filed_under_another_name_is_told_by_that_name(root: Root) -> None:
    """A file of the video's name appeared in completed/ while it ran (an operator's
    copy): the video is filed under a free name, and its notification says that name,
    with the outputs that followed it."""
    inbox = root.path.parent / "told.jsonl"
    intrude = (
        "import os, sys, json; video, out = sys.argv[1], sys.argv[2]; "
        "done = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(video))), "
        "'completed', os.path.basename(video)); open(done, 'wb').write(b'a copy'); "
        "json.dump(dict(ok=True), open(out, 'w'))"
    )
    tell = "import sys; open(sys.argv[1], 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    root.configure(
        [{"name": "scan", "command": [sys.executable, "-c", intrude, "{video}", "{output}"],
          "output": "analytic/{stem}.analytic.json"}],
    )  # fmt: skip
    with (root.path / "vvflow.toml").open("a") as fh:
        fh.write(
            f"\n[[notify]]\ncommand = {json.dumps([sys.executable, '-c', tell, str(inbox)])}\n"
        )
    root.drop("clip.mp4")
    root.vvflow("once", check=0)
    filed = [n for n in root.names("completed") if n != "clip.mp4"]
    assert len(filed) == 1, root.names("completed")
    told = [json.loads(line) for line in inbox.read_text().splitlines()]
    assert [t["video"] for t in told] == filed
    stem = filed[0].rsplit(".", 1)[0]
    assert told[0]["outputs"] == {"scan": f"analytic/{stem}.analytic.json"}
    assert (root.path / told[0]["outputs"]["scan"]).is_file()
