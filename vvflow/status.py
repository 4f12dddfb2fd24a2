"""What is where under a storage root, for `vvflow status`."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vvflow import atomicfs, instance, notify, report
from vvflow.daemon import read_health
from vvflow.dedupe import ContentIndex
from vvflow.layout import PROGRESS, Layout, State
from vvflow.storage import free_bytes

NEWEST_FAILURES = 10
#: The narrowest a reason column gets on a narrow terminal (lines then wrap).
MIN_REASON_WIDTH = 24


def _age(iso: str | None, fallback: float) -> float:
    if iso:
        try:
            return time.time() - calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            pass
    return time.time() - fallback


def _liveness(liveness: instance.Liveness, folder: Path) -> str:
    """`alive` or `dead` where this host can tell (the instance's process runs here, or
    is gone), `stopped` for a stopped process here, else `unknown`: one look cannot
    judge another host's instance, and its heartbeat's age compares two clocks. Only a
    running instance that watched its heartbeat not change for a lease calls it dead."""
    verdict = liveness.verdict(folder)
    if verdict is not instance.Verdict.WATCHING:
        return str(verdict)
    ident = instance.InstanceId.parse(folder.name)
    return "stopped" if ident is not None and ident.is_stopped_here() else "unknown"


def collect(layout: Layout, lease_seconds: float, *, filed: bool = True) -> dict[str, Any]:
    """Counts per state, what runs now, failures (newest first), ignored and blocked
    entries, instances. `filed=False` leaves out what costs a look at every filed video
    (the keys completed, failed, duplicates and failures): the web page has its catalog."""
    candidates, ignored = layout.scan_pending()
    processing: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    # Whether an instance may move a file depends on who it runs as, which only it knows
    # (status may run as another user): each live instance lists what it found blocked.
    inodes = {c.name: c.identity.inode for c in candidates}
    blocked: dict[str, dict[str, Any]] = {}
    liveness = instance.Liveness(lease_seconds)
    for folder in layout.instance_folders():
        state = _liveness(liveness, folder)
        dead = state == instance.Verdict.DEAD.value
        for name, reason, inode in [] if dead else layout.blocked_in(folder):
            if inodes.get(name) == inode:
                blocked.setdefault(name, {"name": name, "reason": reason, "instance": folder.name})
        claims = layout.claims_in(folder)
        activity = {} if dead else _activity(folder)
        for path in claims:
            rep = report.load(layout.report_path(path.name))
            running = None
            if rep is not None:
                running = next(
                    (n for n, s in rep.stages.items() if s.status == report.StageStatus.RUNNING),
                    None,
                )
            try:
                mtime = path.lstat().st_ctime
            except FileNotFoundError:
                continue
            entry: dict[str, Any] = {
                "name": path.name,
                "instance": folder.name,
                "stage": running,
                "for_s": round(_age(rep.claimed_at if rep else None, mtime), 1),
            }
            now = activity.get(path.name)
            if isinstance(now, dict) and now.get("stage"):
                # What the instance itself says (it may wait for a slot, and knows the
                # stage's progress), rather than the report's last write.
                entry["stage"] = now["stage"]
                entry["activity"] = now.get("state")
                for key in ("waiting_for", "attempt", "progress", "message"):
                    if now.get(key) is not None:
                        entry[key] = now[key]
                if isinstance(now.get("since"), int | float):
                    entry["stage_for_s"] = round(max(0.0, time.time() - now["since"]), 1)
            processing.append(entry)
        age = instance.heartbeat_age(folder)
        instances.append(
            {
                "name": folder.name,
                "claims": len(claims),
                "heartbeat_age_s": None if age is None else round(age, 1),
                "state": state,
                "dead": dead,
            }
        )
    failed = list(layout.files_in(State.FAILED)) if filed else []
    failures = []
    for name in failed:
        rep = report.load(layout.report_path(name))
        try:
            when = os.lstat(layout.failed / name).st_mtime
        except FileNotFoundError:
            continue
        failures.append(
            {
                "name": name,
                "stage": rep.failed_stage if rep else None,
                "error": rep.error if rep else "no report",
                "finished_at": rep.finished_at if rep else None,
                "_when": when,
            }
        )
    failures.sort(key=lambda f: (f["finished_at"] or "", f["_when"]), reverse=True)
    for failure in failures:
        del failure["_when"]
    counted = {
        State.COMPLETED.value: sum(1 for _ in layout.files_in(State.COMPLETED)),
        State.FAILED.value: len(failures),
        "duplicates": ContentIndex(layout).duplicate_count(),
        "failures": failures,
    } if filed else {}  # fmt: skip
    return {
        "root": str(layout.root),
        "paused": layout.paused(),
        State.PENDING.value: len(candidates),
        State.PROCESSING.value: len(processing),
        **counted,
        "processing_now": processing,
        "ignored": [{"name": i.name, "reason": i.reason} for i in ignored],
        "blocked": sorted(blocked.values(), key=lambda b: str(b["name"])),
        "instances": instances,
        # Notifications waiting in outbox/, refused (outbox/rejected/), dropped by the
        # bound (notify_outbox_max).
        "outbox": notify.sizes(layout),
    }


def _activity(folder: Path) -> dict[str, Any]:
    """What an instance says its videos do now (its activity file), by video name."""
    data = atomicfs.read_regular(folder / PROGRESS)
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return {}
    videos = record.get("videos") if isinstance(record, dict) else None
    return videos if isinstance(videos, dict) else {}


def storage(layout: Layout, min_free_bytes: int, lease_seconds: float) -> dict[str, Any]:
    """The storage root's free bytes against `min_free_bytes`, and the storage trouble
    live instances report (`trouble` and `since` of the earliest; None when fine)."""
    free = free_bytes(layout.root)
    troubled = []
    liveness = instance.Liveness(lease_seconds)
    for folder in layout.instance_folders():
        record = read_health(folder)
        state = record.get("storage") if record is not None else None
        if isinstance(state, dict) and state.get("trouble") and not liveness.is_dead(folder):
            troubled.append(
                {"instance": folder.name, "trouble": state["trouble"], "since": state.get("since")}
            )
    troubled.sort(key=lambda t: t["since"] or "")
    trouble = troubled[0]["trouble"] if troubled else None
    if trouble is None and free is not None and free < min_free_bytes:
        trouble = f"{free} bytes free under the root, less than min_free_bytes ({min_free_bytes})"
    return {
        "trouble": trouble,
        "since": troubled[0]["since"] if troubled else None,
        "free_bytes": free,
        "min_free_bytes": min_free_bytes,
        "instances": troubled,
    }


def size(count: object) -> str:
    """Bytes for a person (`12.3 MiB`); `?` when unknown."""
    if not isinstance(count, int):
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _render_storage(data: dict[str, Any] | None) -> list[str]:
    if data is None:
        return []
    free = f"{size(data['free_bytes'])} free, claiming needs {size(data['min_free_bytes'])}"
    if not data["trouble"]:
        return ["", f"storage: {free}"]
    since = f" since {data['since']}" if data["since"] else ""
    return ["", f"STORAGE TROUBLE{since}: {_show(data['trouble'], 120)}",
            f"  claiming paused ({free}); videos hit by it went back to pending/"]  # fmt: skip


def duration(seconds: object) -> str:
    """`42s`, `3m07s`, `2h05m`; `-` when unknown."""
    if not isinstance(seconds, int | float):
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _show(name: str, width: int = 40) -> str:
    """A name as a person can read it: control characters escaped, long ones cut."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _squeeze(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut in the middle: a reason starts with what
    went wrong and ends with why, so both ends are kept, the end before the start."""
    if len(text) <= width:
        return text
    head, sep, _ = text.partition(": ")
    keep = head + sep if sep and len(head + sep) <= width // 3 else ""
    return keep + "…" + text[len(text) - max(0, width - len(keep) - 1) :]


def _table(headers: list[str], rows: list[list[str]], width: int = 0) -> list[str]:
    """Columns as wide as their widest cell; with `width`, the last column (a reason) is
    squeezed so that each line fits it."""
    if width > 0 and rows:
        fixed = sum(max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers[:-1]))
        room = max(width - fixed, MIN_REASON_WIDTH)
        rows = [[*row[:-1], _squeeze(row[-1], room)] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*row).rstrip() for row in rows]


def _reason(failure: dict[str, Any]) -> str:
    """A failure's reason without the stage name the STAGE column shows."""
    text = _show(failure["error"] or "", 10_000)
    prefix = f"{failure['stage']}: "
    return text[len(prefix) :] if failure["stage"] and text.startswith(prefix) else text


def _stage_cell(entry: dict[str, Any]) -> str:
    """`scan 42% (12s)`, `summarize waiting for gpu`, or the stage and its time."""
    stage = entry.get("stage")
    if not stage:
        return "-"
    if entry.get("activity") == "waiting":
        return f"{stage} waiting for {', '.join(entry.get('waiting_for') or ['a slot'])}"
    cell = str(stage)
    if entry.get("progress") is not None:
        cell += f" {100 * float(entry['progress']):.0f}%"
    if entry.get("stage_for_s") is not None:
        cell += f" ({duration(float(entry['stage_for_s']))})"
    return cell


def render(data: dict[str, Any], width: int | None = None) -> str:
    """The status as tables for a person; reasons fit `width` (default: the terminal's
    width; unlimited when the output is not a terminal)."""
    if width is None:
        width = shutil.get_terminal_size((0, 0)).columns
    lines = [f"vvflow storage root {data['root']}", ""]
    paused = data.get("paused")
    if paused:
        by = f" by {_show(str(paused['by']))}" if paused.get("by") else ""
        why = f": {_show(str(paused['reason']), 200)}" if paused.get("reason") else ""
        lines += [
            f"PAUSED since {paused.get('since') or '?'}{by}{why}",
            "  running videos finish; nothing new is claimed; `vvflow resume` ends it",
            "",
        ]
    notes = {
        State.PENDING.value: ", ".join(
            [f"{len(data['blocked'])} blocked"] * bool(data["blocked"])
            + [f"{len(data['ignored'])} other entries ignored"] * bool(data["ignored"])
        ),
        State.COMPLETED.value: f"{data['duplicates']} of them duplicates"
        if data["duplicates"]
        else "",
    }
    lines += _table(
        ["STATE", "VIDEOS", ""],
        [[s.value, str(data[s.value]), notes.get(s.value, "")] for s in State],
    )
    lines += _render_storage(data.get("storage"))
    outbox = data.get("outbox") or {}
    if any(outbox.values()):
        lines += [
            "",
            f"NOTIFICATIONS {outbox.get('ready', 0)} waiting in outbox/, "
            f"{outbox.get('rejected', 0)} rejected (outbox/rejected/), "
            f"{outbox.get('dropped', 0)} dropped (over notify_outbox_max)",
        ]
    if data["processing_now"]:
        lines.append("")
        rows = [
            [_show(p["name"]), _stage_cell(p), duration(p["for_s"]), p["instance"]]
            for p in sorted(data["processing_now"], key=lambda p: -p["for_s"])
        ]
        lines += _table(["PROCESSING NOW", "STAGE", "FOR", "INSTANCE"], rows)
    if data["failures"]:
        lines.append("")
        shown = data["failures"][:NEWEST_FAILURES]
        rows = [
            [_show(f["name"]), f["stage"] or "-",
             f"{duration(_age(f['finished_at'], 0))} ago" if f["finished_at"] else "-",
             _reason(f)]
            for f in shown
        ]  # fmt: skip
        title = "NEWEST FAILURES" if len(data["failures"]) > len(shown) else "FAILURES"
        lines += _table([title, "STAGE", "FINISHED", "REASON"], rows, width)
        if len(data["failures"]) > len(shown):
            lines.append(f"... and {len(data['failures']) - len(shown)} more (status --json)")
    if data["blocked"]:
        lines.append("")
        rows = [[_show(b["name"]), _show(b["reason"], 10_000)] for b in data["blocked"]]
        lines += _table(["BLOCKED IN input/pending/", "REASON"], rows, width)
    if data["ignored"]:
        lines.append("")
        rows = [[_show(i["name"]), i["reason"]] for i in data["ignored"]]
        lines += _table(["IGNORED IN input/pending/", "REASON"], rows, width)
    dead = [i for i in data["instances"] if i["dead"]]
    if data["instances"]:
        lines.append("")
        rows = [
            [i["name"], i["state"], str(i["claims"]),
             "-" if i["heartbeat_age_s"] is None else duration(i["heartbeat_age_s"])]
            for i in data["instances"]
        ]  # fmt: skip
        lines += _table(["INSTANCE", "STATE", "CLAIMS", "HEARTBEAT AGE"], rows)
        if dead:
            lines.append("dead instances' claims go back to pending/ at the next start")
        if any(i["state"] in ("unknown", "stopped") for i in data["instances"]):
            lines.append(
                "unknown/stopped: a running instance takes their claims once it has seen "
                "their heartbeat unchanged for lease_seconds (ages are by this host's clock)"
            )
    return "\n".join(lines) + "\n"
