"""What an operator does to a root: retry failed videos, pause, resume.

One implementation for every front end (the command line and the web page), so that
they change the same folder state the same way and can never disagree.
"""

from __future__ import annotations

import getpass
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vvflow import instance, notify, report
from vvflow.config import NotifyConfig, Settings
from vvflow.errors import ConfigError, LayoutError
from vvflow.layout import MOVES, Layout, State
from vvflow.pipeline import Pipeline


class NotFailed(ConfigError):
    """A video asked to be retried is not in input/failed/ (nothing was moved)."""

    def __init__(self, names: list[str]) -> None:
        listed = ", ".join(repr(n) for n in names)
        super().__init__(f"retry: not in input/failed/: {listed}; nothing was moved")
        self.names = names


@dataclass(frozen=True)
class Retried:
    name: str
    #: Its name in input/pending/ (another one when that name was taken since).
    pending_name: str
    #: Replaced since it failed: it starts from scratch.
    replaced: bool

    def line(self) -> str:
        """What the retry did, in one line (the command line's output, the page's)."""
        note = " (replaced since it failed: starts from scratch)" if self.replaced else ""
        return f"retry {self.name!r} -> input/pending/{self.pending_name}{note}"


def operator() -> str:
    """`user@host` of whoever runs this process (a uid where it has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        user = f"uid {os.getuid()}"
    return f"{user}@{instance.this_host()}"


def existing_layout(settings: Settings) -> Layout:
    """The root's layout; LayoutError when `settings.root` is no storage root."""
    layout = Layout(settings.root, settings.extensions)
    if not layout.input.is_dir():
        raise LayoutError(f"no storage root at {settings.root} (no input/ folder)")
    return layout


def retry(
    settings: Settings, names: list[str], *, every: bool = False, from_start: bool = False
) -> list[Retried]:
    """Move failed videos (`names`, or all with `every`) back to input/pending/, their
    reports reset (`from_start`: every stage runs again). Checks every name first:
    NotFailed moves nothing."""
    if every == bool(names):
        raise ConfigError("retry: give failed video names or --all (not both)")
    pipeline = Pipeline(settings.stages, settings.root)
    layout = Layout(settings.root, settings.extensions, pipeline.all_outputs)
    failed = set(layout.files_in(State.FAILED))
    chosen = sorted(failed) if every else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in failed]
    if unknown:
        raise NotFailed(unknown)
    if not chosen:
        return []
    layout.ensure()
    # A folder of its own (removed below), never this process's instance folder: in
    # `vvflow run --web-port` that one is the daemon's, with the videos it runs. Named
    # after this thread (its id and start time, which /proc tells like a process's; the
    # process's own in the command line's main thread), so that a retry cut short is
    # judged dead the moment its thread is gone, like any instance of this host.
    ident = instance.InstanceId.local(threading.get_native_id())
    lease = instance.Lease(layout.processing / ident.name, settings.lease_seconds)

    def reset(rep: report.Report) -> None:
        if from_start:
            rep.stages.clear()
            rep.dedupe = False
            rep.duplicate_of = None
        rep.state = State.PENDING
        rep.failed_stage = None
        rep.error = None

    lease.acquire()
    done: list[Retried] = []
    try:
        for name in chosen:
            dest, replaced = layout.retry(name, lease.folder / MOVES, reset)
            done.append(Retried(name, dest.name, replaced))
    finally:
        lease.release()
        shutil.rmtree(lease.folder, ignore_errors=True)
    return done


def pause(
    layout: Layout,
    reason: str | None,
    by: str | None = None,
    targets: Iterable[NotifyConfig] = (),
) -> tuple[dict[str, Any], bool]:
    """Pause every instance on the root; returns the pause record and whether the root
    was paused already (then the record is the earlier pause's). A new pause is told to
    the `targets` that want `paused` (the settings' `notify`)."""
    before = layout.paused()
    record = layout.pause(by or operator(), reason)
    if before is None:
        notify.notify_root(layout, targets, "paused", by=record.get("by"),
                           reason=record.get("reason"), since=record.get("since"))  # fmt: skip
    return record, before is not None


def resume(layout: Layout, targets: Iterable[NotifyConfig] = (), by: str | None = None) -> bool:
    """Lift the pause; False when the root was not paused. Told to the `targets` that
    want `resumed`."""
    resumed = layout.resume()
    if resumed:
        notify.notify_root(layout, targets, "resumed", by=by or operator())
    return resumed
