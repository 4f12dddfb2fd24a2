"""The `vvflow` commands: parsing, settings, and what each command does."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from vvflow import __version__, atomicfs, filesystem, logs, operations, status
from vvflow.config import Settings, builtin_stages, load_settings
from vvflow.daemon import Daemon, check_health
from vvflow.errors import ConfigError, LayoutError
from vvflow.events import Event
from vvflow.layout import DOCTOR_PREFIX, MOVES, Layout
from vvflow.progress import ProgressBar
from vvflow.stages import STAGES
from vvflow.worker import Worker

RET_OK = 0
RET_FAILED = 1
RET_USAGE = 2
RET_DATAERR = 65
#: EX_TEMPFAIL: `once` left videos in pending/ for storage trouble; run again later.
RET_TEMPFAIL = 75


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--root", help="storage root (else $VIDEO_STORAGE_ROOT, else ./storage)")
    common.add_argument(
        "--config", help="vvflow.toml (else $VVFLOW_CONFIG, else <root>/vvflow.toml)"
    )
    common.add_argument(
        "--log-level", dest="log_level", choices=["debug", "info", "warning", "error"]
    )
    return common


def _build_parser() -> _Parser:
    parser = _Parser(prog="vvflow", description="Watch-folder orchestrator for video pipelines.")
    parser.add_argument("--version", action="version", version=f"vvflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()

    run = sub.add_parser("run", parents=[common], help="watch and process until SIGTERM/SIGINT")
    once = sub.add_parser("once", parents=[common], help="process everything pending now, exit")
    for p in (run, once):
        p.add_argument("--workers", type=int)
        p.add_argument("--stable-seconds", dest="stable_seconds", type=float)
        p.add_argument("--lease-seconds", dest="lease_seconds", type=float)
        p.add_argument("--shutdown-grace-seconds", dest="shutdown_grace_seconds", type=float)
        p.add_argument("--min-free-bytes", dest="min_free_bytes", type=int)
    run.add_argument("--rescan-seconds", dest="rescan_seconds", type=float)
    run.add_argument("--observer", choices=["auto", "inotify", "polling"])
    run.add_argument("--metrics-port", dest="metrics_port", type=int)
    run.add_argument("--metrics-host", dest="metrics_host")
    web = sub.add_parser("web", parents=[common], help="serve the web page, process nothing")
    for p in (run, web):
        p.add_argument("--web-port", dest="web_port", type=int)
        p.add_argument("--web-host", dest="web_host")

    sub.add_parser("health", parents=[common], help="exit 0 when a healthy `run` is here")

    pause = sub.add_parser(
        "pause", parents=[common], help="every instance finishes what runs, claims nothing new"
    )
    pause.add_argument("--reason", help="said by status, health and the log")
    sub.add_parser("resume", parents=[common], help="end a pause")

    st = sub.add_parser("status", parents=[common], help="counts per state, failures")
    st.add_argument("--json", action="store_true")

    retry = sub.add_parser("retry", parents=[common], help="move failed videos back to pending")
    retry.add_argument("names", nargs="*", metavar="NAME")
    retry.add_argument("--all", action="store_true")
    retry.add_argument("--from-start", dest="from_start", action="store_true")

    sub.add_parser("doctor", parents=[common], help="preflight checks")

    stage = sub.add_parser("stage", help="run one built-in stage by hand")
    stage.add_argument("stage", choices=sorted(STAGES))
    stage.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _fail(message: str, code: int = RET_USAGE) -> int:
    sys.stderr.write(f"vvflow: {message}\n")
    return code


def _settings(args: argparse.Namespace, **flags: object) -> Settings:
    return load_settings(root_flag=args.root, config_flag=args.config, **flags)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return RET_USAGE
    if args.command == "stage":
        return _cmd_stage(args)
    if args.command == "doctor":
        return _cmd_doctor(args)
    try:
        if args.command in ("run", "once"):
            flags = {
                key: getattr(args, key, None)
                for key in ("workers", "stable_seconds", "lease_seconds",
                            "shutdown_grace_seconds", "rescan_seconds", "observer", "log_level",
                            "metrics_port", "metrics_host", "min_free_bytes", "web_port",
                            "web_host")
            }  # fmt: skip
            settings = _settings(args, **flags)
            return _cmd_run(settings) if args.command == "run" else _cmd_once(settings)
        if args.command == "web":
            return _cmd_web(
                _settings(
                    args, log_level=args.log_level, web_port=args.web_port, web_host=args.web_host
                )
            )
        settings = _settings(args, log_level=args.log_level)
        if args.command == "health":
            return _cmd_health(settings)
        if args.command == "status":
            return _cmd_status(settings, as_json=args.json)
        if args.command == "retry":
            return _cmd_retry(settings, args.names, every=args.all, from_start=args.from_start)
        if args.command == "pause":
            return _cmd_pause(settings, args.reason)
        if args.command == "resume":
            return _cmd_resume(settings)
    except (ConfigError, LayoutError) as exc:
        if args.command == "health":  # a health check answers healthy (0) or not (1)
            sys.stdout.write(f"unhealthy: {exc}\n")
            return RET_FAILED
        return _fail(str(exc))
    except OSError as exc:
        # The storage itself refused (permissions, a vanished mount): one clear line.
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", RET_FAILED)
    raise AssertionError(args.command)


def _install_stop_flags() -> Callable[[], bool]:
    """SIGTERM/SIGINT set a flag (the loop does the rest); a second one exits at once."""
    requested = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if requested.is_set():
            os._exit(128 + signum)
        requested.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return requested.is_set


def _cmd_once(settings: Settings) -> int:
    logs.setup(settings.log_level)
    if sys.stderr.isatty():
        ProgressBar(sys.stderr)
    daemon = Daemon(Worker(settings), burst=True)
    code = daemon.run(_install_stop_flags())
    summary = daemon.summary
    if summary.storage_returned:
        _fail(
            f"{summary.storage_returned} video(s) left in input/pending/ for storage trouble, "
            f"not for themselves ({summary.storage_error}); free space under the root "
            f"(claiming needs min_free_bytes = {settings.min_free_bytes}) and run again",
        )
        return RET_TEMPFAIL
    return RET_FAILED if summary.failed or code != RET_OK else RET_OK


def _cmd_run(settings: Settings) -> int:
    logs.setup(settings.log_level)
    if settings.web_port is None:
        return Daemon(Worker(settings)).run(_install_stop_flags())
    from vvflow.web.server import WebServer  # noqa: PLC0415 (only with the page on)

    page = WebServer(settings)
    daemon = Daemon(Worker(settings))
    page.start()
    try:
        return daemon.run(_install_stop_flags())
    finally:
        page.stop()


def _cmd_web(settings: Settings) -> int:
    """Serve the page for a root and process nothing; writes nothing under the root."""
    from vvflow.web.server import WebServer  # noqa: PLC0415 (the daemon never needs it)

    logs.setup(settings.log_level)
    operations.existing_layout(settings)
    page = WebServer(settings)
    stop_requested = _install_stop_flags()
    page.start()
    try:
        while not stop_requested():
            if not page.alive():
                return _fail("web: the page stopped serving (see the log)", RET_FAILED)
            page.wait(0.2)
    finally:
        page.stop()
    logs.event(Event.STOPPED, address=page.address)
    return RET_OK


def _cmd_health(settings: Settings) -> int:
    if not settings.root.is_dir() or not Layout(settings.root, ()).pending.is_dir():
        sys.stdout.write(f"unhealthy: no storage root at {settings.root}\n")
        return RET_FAILED
    ok, detail = check_health(Layout(settings.root, ()).processing, settings.lease_seconds)
    sys.stdout.write(f"{'healthy' if ok else 'unhealthy'}: {detail}\n")
    return RET_OK if ok else RET_FAILED


def _cmd_status(settings: Settings, *, as_json: bool) -> int:
    layout = operations.existing_layout(settings)
    data = status.collect(layout, settings.lease_seconds)
    data["storage"] = status.storage(layout, settings.min_free_bytes, settings.lease_seconds)
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if as_json else status.render(data))
    return RET_OK


def _cmd_retry(settings: Settings, names: list[str], *, every: bool, from_start: bool) -> int:
    try:
        done = operations.retry(settings, names, every=every, from_start=from_start)
    except operations.NotFailed as exc:
        return _fail(str(exc))
    for item in done:
        sys.stdout.write(item.line() + "\n")
    return RET_OK


def _cmd_pause(settings: Settings, reason: str | None) -> int:
    layout = operations.existing_layout(settings)
    record, already = operations.pause(layout, reason, targets=settings.notify)
    what = "already paused" if already else "paused"
    sys.stdout.write(
        f"{what} since {record.get('since')}: every instance on {settings.root} finishes what "
        "runs and claims nothing new (instances started later too); `vvflow resume` ends it\n"
    )
    return RET_OK


def _cmd_resume(settings: Settings) -> int:
    if operations.resume(operations.existing_layout(settings), settings.notify):
        sys.stdout.write(f"resumed: instances on {settings.root} claim videos again\n")
    else:
        sys.stdout.write(f"not paused: nothing to resume on {settings.root}\n")
    return RET_OK


def _cmd_stage(args: argparse.Namespace) -> int:
    return STAGES[args.stage](list(args.args))


# -- doctor ---------------------------------------------------------------------------


def _cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0

    def line(ok: bool, name: str, detail: str) -> None:
        nonlocal problems
        problems += not ok
        sys.stdout.write(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}\n")

    try:
        settings = _settings(args, log_level=args.log_level)
    except ConfigError as exc:
        line(False, "config", str(exc))
        return RET_FAILED
    names = ", ".join(s.name for s in settings.stages)
    line(True, "config", f"{len(settings.stages)} stages ({names})")
    layout = Layout(settings.root, settings.extensions)
    try:
        pipeline_dirs = {
            (settings.root / s.output).parent for s in settings.stages if "{" not in
            str(Path(s.output).parent)
        }  # fmt: skip
        layout.ensure(pipeline_dirs)
        line(True, "root", f"{settings.root}: folders present, all on one filesystem")
    except LayoutError as exc:
        line(False, "root", str(exc))
        return RET_FAILED
    caps = filesystem.probe(layout.processing)
    atomicfs.use_renameat2(caps.noreplace is True)
    line(True, "filesystem", caps.describe())
    for problem in caps.problems:
        line(False, "unsafe", problem)
    if not caps.problems:
        line(True, "moves", _protocol_line(caps))
    line(*_check_writable_and_rename(layout))
    line(*_check_inotify())
    usage = shutil.disk_usage(settings.root)
    line(usage.free > 1 << 30, "disk", f"{usage.free / (1 << 30):.1f} GiB free under the root")
    for stage in settings.stages:
        exe = stage.command[0]
        if "{" in exe:
            line(True, f"stage {stage.name}", f"command starts with a placeholder: {exe}")
        elif shutil.which(exe) is None:
            line(False, f"stage {stage.name}", f"command not found: {exe}")
        else:
            line(True, f"stage {stage.name}", f"{shutil.which(exe)}")
    if [s.command for s in settings.stages] == [s.command for s in builtin_stages()]:
        line(*_check_decoders())
    return RET_FAILED if problems else RET_OK


def _check_writable_and_rename(layout: Layout) -> tuple[bool, str, str]:
    try:
        with tempfile.TemporaryDirectory(dir=layout.processing, prefix=DOCTOR_PREFIX) as tmp:
            a, b = Path(tmp, "a"), Path(tmp, "b")
            a.write_bytes(b"a")
            b.write_bytes(b"b")
            try:
                atomicfs.rename_noreplace(a, b, journal=Path(tmp, MOVES))
            except FileExistsError:
                pass
            else:
                return False, "rename", "a rename overwrote an existing file"
            return True, "rename", "writable; a move onto an existing name refused"
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return False, "rename", f"{layout.root} is not writable: {exc.strerror}"
        return False, "rename", f"{exc.strerror}: {exc.filename}"


def _protocol_line(caps: filesystem.Capabilities) -> str:
    if caps.protocol == filesystem.RENAMEAT2:
        return "renameat2(RENAME_NOREPLACE) for every move: one call, exclusive, never overwrites"
    shared = (
        "; instances on several hosts are safe" if caps.shared else "; safe for several instances"
    )
    return (
        "claims: a plain rename into the instance's own folder (exclusive); filings: "
        "a rename to a private name, then link (never overwrites), then unlink" + shared
    )


def _check_inotify() -> tuple[bool, str, str]:
    values = {}
    for key in ("max_user_watches", "max_user_instances", "max_queued_events"):
        try:
            values[key] = int(Path(f"/proc/sys/fs/inotify/{key}").read_text())
        except (OSError, ValueError):
            return True, "inotify", "not available here; the polling observer will be used"
    ok = values["max_user_instances"] >= 8 and values["max_user_watches"] >= 64
    detail = ", ".join(f"{k}={v}" for k, v in values.items())
    return ok, "inotify", detail


def _check_decoders() -> tuple[bool, str, str]:
    try:
        import av  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        return False, "decoders", "PyAV (av) is not installed: the built-in stages cannot run"
    missing = []
    for codec in ("h264", "hevc", "vp9", "mpeg4", "aac"):
        try:
            av.codec.Codec(codec, "r")
        except Exception:  # any failure here means the decoder is missing
            missing.append(codec)
    if missing:
        return False, "decoders", f"missing decoders: {', '.join(missing)}"
    return True, "decoders", f"PyAV {av.__version__}: h264, hevc, vp9, mpeg4, aac"
