"""The life of one video: claim it, run it through the pipeline, file it.

The loop (vvflow/daemon.py, for `vvflow run` and, in burst mode, `vvflow once`) finds
stable videos and hands each to `Worker.claim_and_run` on a worker thread.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vvflow import atomicfs, dedupe, instance, logs, notify, report, storage
from vvflow.config import Settings
from vvflow.errors import (
    Blocked,
    Cancelled,
    ClaimChanged,
    LayoutError,
    LeaseLost,
    StageError,
    StorageFailed,
    is_storage_error,
)
from vvflow.events import Event
from vvflow.layout import MOVES, WORK, Candidate, Claim, Layout, State
from vvflow.pipeline import Activity, Job, Pipeline
from vvflow.watcher import container_signature, describe_writers, open_writers, read_head

#: A video that changes under its stages this many times in a row is filed as failed.
MAX_CHANGES = 3
#: How long after a claim a new file under the same name may be judged the rest of it
#: (an upload that paused past `stable_seconds`, then appended to the name).
TAIL_WINDOW_SECONDS = 3600.0
#: A file this instance may not move is tried again when its permissions change, and
#: anyway (silently) this often.
BLOCKED_RETRY_SECONDS = 300.0


@dataclass
class BlockedFile:
    """A file in pending/ this instance may not move: why, the state of the file and of
    pending/ that verdict was reached on (`Layout.permission_key`), and when."""

    reason: str
    key: tuple[int, ...]
    tried: float


@dataclass(frozen=True)
class Outcome:
    name: str
    state: State
    error: str | None = None
    #: Back in pending/ (or never claimed) for storage trouble, not for the video.
    storage: bool = False


class Worker:
    """The life of a video in one vvflow instance: claim it, run its stages, file it,
    and everything that can go wrong in between. What the instance holds for that (its
    lease, pipeline, content index, claims) is here; the loop (daemon.Daemon) takes and
    gives back the lease, recovers dead instances and decides what to claim."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = storage.Monitor(settings.root, settings.min_free_bytes)
        self.pipeline = Pipeline(
            settings.stages,
            settings.root,
            extra_env=settings.stage_environment(),
            storage_check=self.storage.check,
            resources=settings.resources,
        )
        self.layout = Layout(settings.root, settings.extensions, self.pipeline.all_outputs)
        self.id = instance.InstanceId.current()
        self.lease = instance.Lease(self.layout.processing / self.id.name, settings.lease_seconds)
        #: Where completed and failed videos are told (`[[notify]]`).
        self.notifier = notify.Notifier(
            settings.notify, self.layout, self.lease.folder, self.id.name,
            settings.notify_outbox_max,
        )  # fmt: skip
        #: What this instance has seen of the others' heartbeats (see instance.Liveness).
        self.liveness = instance.Liveness(settings.lease_seconds)
        self.index = dedupe.ContentIndex(self.layout, self.liveness)
        #: How often each claimed file changed under its stages since it was last filed,
        #: by inode (a file replaced under its claim hands its count on): the changes of
        #: one upload, never those of every upload that reused its name.
        self._changes: dict[int, int] = {}
        self._changes_lock = threading.Lock()
        #: Videos this instance runs now, with warnings to add to their reports.
        self._running: dict[str, list[str]] = {}
        #: Claims given another name (`x.mp4` as `x-2.mp4`) within TAIL_WINDOW_SECONDS:
        #: original name -> (claimed name, monotonic time). A claim under its own name is
        #: found by its report.
        self._renamed: dict[str, tuple[str, float]] = {}
        self._notes_lock = threading.Lock()
        #: Set when no new video may be claimed (shutdown requested).
        self.stopping = threading.Event()
        #: Set when running stages must be stopped and their videos returned.
        self.cancel = threading.Event()
        #: Files in pending/ this instance may not move, by name (see `status`).
        self.blocked: dict[str, BlockedFile] = {}
        self._blocked_lock = threading.Lock()
        #: Claims a worker runs now, and claims whose move failed with where they go:
        #: any other file in this instance's folder is a claim an error left behind.
        self._held: set[str] = set()
        self._unfiled: dict[str, tuple[Claim, State]] = {}
        self._claims_lock = threading.Lock()
        #: What each video in flight does now (waits for a slot, runs a stage, how far).
        self._activity: dict[str, Activity] = {}
        self._activity_lock = threading.Lock()
        #: Bumped at every change of `_activity`, so that its file is written only then.
        self.activity_version = 0

    def activity(self) -> dict[str, dict[str, object]]:
        """What each video in flight does now, by name (for `status` and the metrics)."""
        with self._activity_lock:
            return {name: a.fields() for name, a in self._activity.items()}

    def _watcher(self, name: str) -> Callable[[Activity | None], None]:
        def watch(activity: Activity | None) -> None:
            with self._activity_lock:
                if activity is None:
                    self._activity.pop(name, None)
                else:
                    self._activity[name] = activity
                self.activity_version += 1

        return watch

    def running(self) -> list[dict[str, object]]:
        """The videos this instance holds now and what each one does: the stage it runs
        or waits for (None between stages, or before its first)."""
        activity = self.activity()
        found: list[dict[str, object]] = []
        for path in self.layout.claims_in(self.lease.folder):
            now = activity.get(path.name, {})
            entry: dict[str, object] = {"video": path.name, "stage": now.get("stage")}
            if now.get("state") == "waiting":
                entry["waiting_for"] = now.get("waiting_for")
            elif now.get("progress") is not None:
                entry["progress"] = now["progress"]
            found.append(entry)
        return found

    @property
    def journal(self) -> Path:
        return self.lease.folder / MOVES

    # -- one video -----------------------------------------------------------------

    def claim_and_run(
        self, candidate: Candidate, claimed: Callable[[], None] | None = None
    ) -> Outcome | None:
        """Claim one stable candidate and run it; None when it was not ours to run.
        `claimed()` is called once the name in pending/ is free again (claimed)."""
        if self.stopping.is_set() or not self.lease.held():
            return None
        if not self.storage.may_claim():
            return Outcome(candidate.name, State.PENDING, self.storage.trouble(), storage=True)
        writers = open_writers(self.layout.pending / candidate.name)
        if writers:
            # Stable by size and mtime, but a writer paused with it open: not whole yet.
            reason = f"open for writing by {describe_writers(writers)}"
            logs.event(Event.UNSTABLE, video=candidate.name, reason=reason)
            return None
        with self._claims_lock:
            try:
                claim = self.layout.claim(candidate, self.lease.folder)
            except Blocked as exc:
                self._block(candidate.name, exc)
                return None
            except OSError as exc:
                if not is_storage_error(exc):
                    raise
                reason = f"cannot claim {candidate.name!r}: {exc.strerror}"
                self.storage.failed(reason)
                return Outcome(candidate.name, State.PENDING, reason, storage=True)
            if claim is not None:
                self._held.add(claim.name)
        self.unblock(candidate.name)
        if claim is None:
            logs.event(Event.CLAIM_LOST, video=candidate.name)
            return None
        # Its place in line for the first stage's slots, before the next video's claim.
        self.pipeline.slots.expect(claim.name, claim.order, self.pipeline.first_needs())
        if claimed is not None:
            claimed()
        try:
            earlier = self._earlier_part(claim)
            if earlier is not None:
                return self._file_split(claim, *earlier)
            if claim.name != claim.original_name:
                self._remember_renamed(claim)
            return self.run_claim(claim)
        finally:
            self.pipeline.slots.forget(claim.name)
            with self._claims_lock:
                self._held.discard(claim.name)

    def refile(self) -> None:
        """After a storage pause: file the claims whose move failed, and return to
        pending/ any claim no worker holds (a move that failed half-way), so that no
        error leaves a claim behind in a live instance."""
        if not self.storage.pause_over() or not self.lease.held():
            return
        with self._claims_lock:
            unfiled = dict(self._unfiled)
            orphans = [
                p
                for p in self.layout.claims_in(self.lease.folder)
                if p.name not in self._held and p.name not in unfiled
            ]
        for claim, state in unfiled.values():
            if self._file_leftover(claim.path, state):
                with self._claims_lock:
                    self._unfiled.pop(claim.name, None)
        for path in orphans:
            self._file_leftover(path, State.PENDING)

    def _file_leftover(self, path: Path, state: State) -> bool:
        try:
            dest = self.layout.file_claim(path, state, self.lease.folder)
        except FileNotFoundError:
            return True
        except (OSError, LayoutError) as exc:
            self.storage.failed(f"cannot move {path.name!r} to {state}/: {exc}")
            return False
        if state in (State.COMPLETED, State.FAILED):
            self.notifier.publish(path.name)  # staged before its filing failed, if at all
        else:
            self.notifier.drop(path.name)
        event = {State.COMPLETED: Event.COMPLETED, State.FAILED: Event.FAILED}.get(
            state, Event.RELEASED
        )
        logs.event(event, video=path.name, path=str(dest.relative_to(self.layout.root)),
                   reason="filed after a storage pause")  # fmt: skip
        return True

    def return_leftovers(self) -> None:
        """On the way out, every claim still here is filed where it was going or goes
        back to pending/; one that cannot move is said loudly and left for recovery by
        the next start (its folder loses its heartbeat, so it reads as dead)."""
        if not self.lease.held():
            return  # taken over: those claims are another instance's now
        with self._claims_lock:
            unfiled = {name: state for name, (_, state) in self._unfiled.items()}
            self._unfiled.clear()
        left = []
        for path in self.layout.claims_in(self.lease.folder):
            target = unfiled.get(path.name, State.PENDING)
            if not any(
                self._file_leftover(path, s) for s in dict.fromkeys((target, State.PENDING))
            ):
                left.append(path.name)
        if left:
            logs.event(
                Event.CLAIMS_LEFT,
                level=logging.ERROR,
                videos=left,
                folder=str(self.lease.folder),
                error=f"cannot move them back to pending/: {self.storage.trouble()}",
                hint="the next start of vvflow on this root returns them to pending/",
            )

    # -- files this instance may not move ---------------------------------------------

    def _block(self, name: str, exc: Blocked) -> None:
        """Remember a file this instance may not move; say so once, not at every try."""
        with self._blocked_lock:
            before = self.blocked.get(name)
            self.blocked[name] = BlockedFile(exc.reason, exc.key, time.monotonic())
            count = len(self.blocked)
            # Tried again after a change that did not help: nothing new to say. Another
            # file under that name (inode, key[0]) or another reason is news.
            news = before is None or (before.reason, before.key[0]) != (exc.reason, exc.key[0])
            if news:
                self._record_blocked()
        if news:
            logs.event(Event.BLOCKED, level=logging.WARNING, video=name, reason=exc.reason,
                       blocked=count)  # fmt: skip

    def unblock(self, name: str) -> None:
        """Forget that `name` was blocked: it was claimed, changed or is gone."""
        with self._blocked_lock:
            if self.blocked.pop(name, None) is None:
                return
            count = len(self.blocked)
            self._record_blocked()
        logs.event(Event.UNBLOCKED, video=name, blocked=count)

    def still_blocked(self, name: str) -> bool:
        """Whether `name` is blocked and nothing changed since (owner, mode, ACL of the
        file or of pending/) that could let this instance move it now."""
        entry = self.blocked.get(name)
        if entry is None:
            return False
        return (
            time.monotonic() - entry.tried < BLOCKED_RETRY_SECONDS
            and self.layout.permission_key(name) == entry.key
        )

    def _record_blocked(self) -> None:
        if not self.lease.held():
            return  # never recreate the folder of a lease that was taken over
        with contextlib.suppress(OSError):  # only `status` reads it
            self.layout.record_blocked(
                self.lease.folder, {n: (b.reason, b.key[0]) for n, b in self.blocked.items()}
            )

    # -- split uploads -------------------------------------------------------------

    def _remember_renamed(self, claim: Claim) -> None:
        now = time.monotonic()
        with self._notes_lock:
            self._renamed[claim.original_name] = (claim.name, now)
            for name, (_, when) in list(self._renamed.items()):
                if now - when > TAIL_WINDOW_SECONDS:
                    del self._renamed[name]

    def _earlier_part(self, claim: Claim) -> tuple[str, Path, float] | None:
        """The video claimed under `claim`'s original name less than TAIL_WINDOW_SECONDS
        ago, when `claim` looks like the rest of it: that one begins with a container
        header and `claim` does not begin with the same one. A camera that reuses its
        name sends whole files, each with the same header, so it is never judged so.
        Returns the earlier video's name, its path now and its age in seconds."""
        with self._notes_lock:
            renamed = self._renamed.get(claim.original_name)
        owner: str | None
        if renamed is not None:
            name, age, owner = renamed[0], time.monotonic() - renamed[1], self.id.name
        else:
            rep = report.load(self.layout.report_path(claim.original_name))
            if rep is None or rep.original_name != claim.original_name or not rep.claimed_at:
                return None
            if rep.state == State.PENDING:
                return None
            try:
                claimed = calendar.timegm(time.strptime(rep.claimed_at, "%Y-%m-%dT%H:%M:%SZ"))
            except ValueError:
                return None
            name, age, owner = rep.name, max(0.0, time.time() - claimed), rep.instance
        if age > TAIL_WINDOW_SECONDS:
            return None
        folders = [self.layout.completed, self.layout.failed]
        if owner:
            folders.insert(0, self.layout.processing / owner)
        for folder in folders:
            path = folder / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_ino == claim.identity.inode:
                return None
            first = container_signature(read_head(path))
            if first is None or container_signature(read_head(claim.path)) == first:
                return None
            return name, path, age
        return None

    def _file_split(self, claim: Claim, earlier: str, path: Path, age: float) -> Outcome | None:
        """File a headerless rest of an upload in failed/, never run as a video of its
        own, and mark the earlier part's report."""
        where = os.path.relpath(path, self.layout.root)
        shown = f"{claim.original_name!r}" + (
            f" (claimed as {claim.name!r})" if claim.name != claim.original_name else ""
        )
        reason = (
            f"not run: this file appeared in pending/ as {shown} {age:.0f} s after "
            f"{earlier!r} ({where}) was claimed under that name, and unlike it, it does not "
            "begin with a video header. It is most likely the rest of that upload: the "
            "writer paused longer than stable_seconds, then reopened the name and appended "
            f"(cat >>, curl -C -, a resumable upload), so {earlier!r} is probably "
            "incomplete too. The producer must write under a temporary name (*.part, *.tmp "
            "or a hidden .name) and rename the file into pending/ only once it is whole. "
            "To process this upload, join both parts and put the whole file into pending/."
        )
        logs.event(
            Event.SPLIT_UPLOAD,
            level=logging.WARNING,
            video=claim.name,
            original_name=claim.original_name,
            earlier=earlier,
            earlier_path=where,
            seconds_after=round(age, 1),
        )
        self._note(
            earlier,
            f"probably incomplete: {claim.name!r} (filed in failed/) appeared under the same "
            f"name {age:.0f} s after this video was claimed and looks like its rest, appended "
            f"after a pause; see reports/{claim.name}.json",
        )
        return self.run_claim(claim, refuse=reason)

    def _note(self, name: str, warning: str) -> None:
        """Add a warning to a video's report: through its run when this instance runs it
        now (the run writes its report), else into the report file."""
        with self._notes_lock:
            notes = self._running.get(name)
            if notes is not None:
                notes.append(warning)
                return
        self._add_warnings(name, [warning])

    def _add_warnings(self, name: str, warnings: list[str]) -> None:
        if not warnings or not self.lease.held():
            return  # nothing to add, or nothing more this instance may write
        rpath = self.layout.report_path(name)
        rep = report.load(rpath)
        if rep is None:
            return
        rep.warnings.extend(w for w in warnings if w not in rep.warnings)
        try:
            report.save(rpath, rep, tmp_dir=self.lease.folder)
        except OSError as exc:
            logs.event(Event.REPORT_UNWRITABLE, level=logging.ERROR, video=name,
                       error=f"cannot write report {rpath}: {exc.strerror}")  # fmt: skip

    def _check_writers(self, claim: Claim) -> None:
        """Raise ClaimChanged when a process holds the claimed file open for writing: its
        stages may have read a part of it, and filed, it would go on changing."""
        writers = open_writers(claim.path)
        if writers:
            raise ClaimChanged(
                f"still open for writing by {describe_writers(writers)} when its stages were done"
            )

    def _guard(self, claim: Claim) -> None:
        """Raise LeaseLost unless this instance still holds `claim`, and ClaimChanged
        when the file itself was deleted, replaced or modified meanwhile."""
        if not self.lease.held():
            raise LeaseLost(f"the lease of {self.id.name} was taken over")
        try:
            st = os.lstat(claim.path)
        except FileNotFoundError:
            st = None
        if st is not None and report.Identity.of(st) == claim.identity:
            return
        # Recovery deletes the heartbeat before it moves a claim away: if the heartbeat
        # is still here now, the change was not a takeover.
        if not self.lease.held():
            raise LeaseLost(f"the lease of {self.id.name} was taken over")
        if st is None:
            raise ClaimChanged("deleted while being processed")
        if st.st_ino != claim.identity.inode:
            raise ClaimChanged("replaced by another file while being processed")
        raise ClaimChanged("modified while being processed")

    def _abandon(
        self, claim: Claim, rep: report.Report, rpath: Path, workspace: Path, why: str
    ) -> None:
        """Forget a run whose video changed under it: its outputs and report describe
        content that is gone. A file still there goes back to pending/ to start afresh."""
        self.notifier.drop(claim.name)
        with contextlib.suppress(OSError):
            self.layout.discard(claim.name, rep)  # its outputs, folders too, and report
        shutil.rmtree(workspace, ignore_errors=True)
        returned = failed = None
        try:
            inode: int | None = os.lstat(claim.path).st_ino
        except FileNotFoundError:
            inode = None
        with self._changes_lock:
            # Counted for this upload only: the file claimed, or the one that replaced it.
            times = self._changes.pop(claim.identity.inode, 0) + 1
            if inode is not None:
                self._changes[inode] = times
        if inode is not None:
            if times < MAX_CHANGES:
                returned = self.layout.finish(claim, State.PENDING, self.lease.folder).name
            else:
                # The same video changed under its stages again and again: most likely a
                # stage writes to {video}. File it with the reason instead of looping.
                fresh = report.Report(
                    name=claim.name,
                    original_name=claim.original_name,
                    state=State.FAILED,
                    identity=report.Identity.of(os.lstat(claim.path)),
                    instance=self.id.name,
                    finished_at=report.now_iso(),
                    error=f"the video {why} {times} times in a row; does a stage write "
                    "to {video}? Stages must treat their input as read-only",
                )
                state = State.FAILED
                try:
                    report.save(rpath, fresh)
                except OSError as exc:
                    if is_storage_error(exc):
                        # Filed only with a report that says why: back to pending/.
                        self.storage.failed(f"cannot write report {rpath.name}: {exc.strerror}")
                        state = State.PENDING
                dest = self.layout.finish(claim, state, self.lease.folder).name
                failed, returned = (dest, None) if state == State.FAILED else (None, dest)
                if state == State.FAILED:
                    self._forget_changes(inode)
        logs.event(
            Event.CLAIM_CHANGED,
            level=logging.WARNING,
            video=claim.name,
            error=why,
            returned_to_pending=returned,
            failed=failed,
        )

    def _stage_notice(
        self, claim: Claim, rep: report.Report, state: State, duration: float
    ) -> bool:
        """Stage the notifications of a video about to be filed under `state` (none for
        pending/). Raise StorageFailed when they cannot be written for the storage: the
        video is then not filed, and its next run notifies. False when they could not be
        written for another reason (said in the log; the video is filed all the same)."""
        if state not in (State.COMPLETED, State.FAILED):
            self.notifier.drop(claim.name)
            return True
        if not self.notifier.wants(state.value):
            return True
        outputs: dict[str, str] = {}
        logline: str | None = None
        for stage, path in self.pipeline.all_outputs(claim.name, claim.stem).items():
            if not os.path.lexists(path):
                continue
            outputs[stage] = path.relative_to(self.layout.root).as_posix()
            if stage == "logline":
                text = (atomicfs.json_object(path) or {}).get("logline")
                logline = text if isinstance(text, str) else None
        record = notify.payload(
            state.value,
            root=self.layout.root,
            instance=self.id.name,
            video=claim.name,
            state=state.value,
            stage=rep.failed_stage,
            error=rep.error,
            outputs=outputs,
            logline=logline,
            duration_s=round(duration, 3),
        )
        try:
            self.notifier.stage(claim.name, record)
        except OSError as exc:
            self.notifier.drop(claim.name)
            message = f"cannot stage the notifications of {claim.name!r}: {exc.strerror}"
            if is_storage_error(exc):
                raise StorageFailed(message) from None
            logs.event(Event.NOTIFY_UNWRITABLE, level=logging.ERROR, video=claim.name,
                       error=message)  # fmt: skip
            return False
        return True

    def _publish_notice(
        self, claim: Claim, dest: Path, rep: report.Report, state: State, duration: float
    ) -> None:
        """The video was filed as `dest`: its notifications go to outbox/. Filed under
        another name (one like it appeared meanwhile), they are staged again to say that
        name and the outputs that followed it, before the first ones are dropped: a
        crash in between publishes both (two ids for one filing), never none."""
        if dest.name != claim.name:
            filed = replace(claim, path=dest, name=dest.name)
            try:
                staged = self._stage_notice(filed, rep, state, duration)
            except StorageFailed:
                staged = False
            if staged:  # else the first ones, with the name it was claimed as, go out
                self.notifier.drop(claim.name)
                claim = filed
        self.notifier.publish(claim.name)

    def _forget_changes(self, inode: int) -> None:
        """A video was filed: the next upload of that name starts counting afresh."""
        with self._changes_lock:
            self._changes.pop(inode, None)

    def run_claim(self, claim: Claim, *, refuse: str | None = None) -> Outcome | None:
        """Run a claimed video through the pipeline and file it; with `refuse`, file it
        in failed/ with that reason without running a stage."""
        with self._notes_lock:
            self._running[claim.name] = []
        try:
            return self._run_claim(claim, refuse)
        finally:
            with self._notes_lock:
                warnings = self._running.pop(claim.name, [])
            # Noted after the run's last report write (or the run filed nothing).
            self._add_warnings(claim.name, warnings)

    def _run_claim(self, claim: Claim, refuse: str | None) -> Outcome | None:
        started = time.monotonic()
        workspace = self.lease.folder / WORK / claim.name
        rpath = self.layout.report_path(claim.name)
        lookup_failed: StorageFailed | None = None
        try:
            # This very file's history, though it had another name (renamed by hand,
            # moved to a free name); stale reports of gone videos under this stem dropped.
            rep = self.layout.history(claim, self.journal, self.lease.folder)
        except OSError as exc:
            error = f"cannot look up the history of {claim.name!r}: {exc.strerror}"
            if not self.lease.held():
                # Taken over meanwhile (the lookup writes into our folder, gone with it).
                logs.event(Event.LEASE_LOST, level=logging.WARNING, video=claim.name,
                           error=f"the lease of {self.id.name} was taken over")  # fmt: skip
                return None
            if is_storage_error(exc):
                lookup_failed = StorageFailed(error)  # back to pending/, history kept
            else:
                logs.event(Event.REPORT_UNWRITABLE, level=logging.ERROR, video=claim.name,
                           error=error)  # fmt: skip
            rep = report.load(rpath)
            rep = rep if rep is not None and rep.identity == claim.identity else None
        if rep is None:
            rep = report.Report(
                name=claim.name,
                original_name=claim.original_name,
                state=State.PROCESSING,
                identity=claim.identity,
            )
        rep.name = claim.name
        rep.state = State.PROCESSING
        rep.instance = self.id.name
        rep.claimed_at = report.now_iso()
        rep.finished_at = None
        rep.runs += 1
        rep.failed_stage = None
        rep.error = None

        def save(durable: bool = False) -> None:
            self._guard(claim)
            with self._notes_lock:
                notes = self._running.get(claim.name, [])
                rep.warnings.extend(notes)
                notes.clear()
            try:
                report.save(rpath, rep, tmp_dir=workspace, durable=durable)
            except OSError as exc:
                where = os.path.relpath(rpath, self.layout.root)
                message = f"cannot write report {where}: {exc.strerror}"
                if not self.lease.held():
                    # Taken over between the check and the write (its workspace, where
                    # the report is written first, went with the claims): not an error.
                    raise LeaseLost(f"the lease of {self.id.name} was taken over") from None
                if is_storage_error(exc):
                    # Never go on without a report on a full disk: a video is filed only
                    # with a report that says so, and the disk will have room again.
                    raise StorageFailed(message) from None
                # Something planted at the report's path (a folder, a FIFO) is no
                # reason to stop this video, and would be the same on every retry.
                logs.event(Event.REPORT_UNWRITABLE, level=logging.ERROR, video=claim.name,
                           error=message)  # fmt: skip

        logs.event(
            Event.CLAIMED,
            video=claim.name,
            original_name=claim.original_name,
            size=claim.identity.size,
            instance=self.id.name,
        )
        state = State.FAILED
        content = dedupe.ClaimContent(
            self.index,
            claim,
            rep,
            save,
            lease_folder=self.lease.folder,
            output_paths=self.pipeline.output_paths,
            output_dirs=self.pipeline.output_dirs,
            cancel=self.cancel,
            guard=lambda: self._guard(claim),
        )
        #: Why the video goes back to pending/ for the storage, not for itself.
        returned_for: str | None = None
        try:
            if lookup_failed is not None:
                raise lookup_failed
            workspace.mkdir(parents=True, exist_ok=True)
            # No report write here: the first stage's `running` write follows at once
            # (each write is a rename on the file server of a network filesystem), and
            # the claim itself is the record that this video runs.
            if refuse is not None:
                rep.error = refuse
            else:
                original = None
                if self.settings.dedupe and rep.dedupe:
                    original = content.find_original()
                if original is None or not content.reuse(original, workspace):
                    job = Job(
                        claim.path,
                        claim.name,
                        claim.stem,
                        self.layout.root,
                        workspace,
                        order=claim.order,
                    )
                    self.pipeline.run(
                        job,
                        rep,
                        save=save,
                        guard=lambda: self._guard(claim),
                        cancel=self.cancel,
                        watch=self._watcher(claim.name),
                    )
                state = State.COMPLETED
        except StageError:
            state = State.FAILED
        except Cancelled:
            state = State.PENDING
        except StorageFailed as exc:
            state, returned_for = State.PENDING, str(exc)
        except LeaseLost as exc:
            logs.event(Event.LEASE_LOST, level=logging.WARNING, video=claim.name, error=str(exc))
            shutil.rmtree(workspace, ignore_errors=True)
            content.release()
            return None
        except ClaimChanged as exc:
            self._abandon(claim, rep, rpath, workspace, str(exc))
            content.release()
            return None
        except OSError as exc:
            reason = f"storage error: {exc.strerror or exc}: {exc.filename or ''}".strip()
            if is_storage_error(exc):
                state, returned_for = State.PENDING, reason
            else:
                # Not the storage refusing writes (a file it may not read): file the
                # video as failed with the reason rather than loop on it.
                rep.error = reason
                state = State.FAILED
        except Exception as exc:
            # A bug of ours must not take the other videos down, nor lose this one.
            logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True, video=claim.name)
            rep.error = f"internal error: {exc!r}"
            state = State.FAILED
        if returned_for is not None:
            self.storage.failed(returned_for)
        duration = time.monotonic() - started
        rep.state = state
        rep.finished_at = report.now_iso() if state != State.PENDING else None
        rep.duration_s = round(duration, 3)
        try:
            if state != State.PENDING:
                self._check_writers(claim)
            # The report first, then the move: a crash between them leaves the video in
            # processing/, where recovery returns it and the report lets it resume.
            try:
                save(True)
                if state == State.COMPLETED and self.settings.dedupe:
                    content.record(workspace)
                # Its notifications before the video is filed: a crash after the move
                # still delivers them (recovery publishes them), one before it does not.
                self._stage_notice(claim, rep, state, duration)
            except StorageFailed as exc:
                # Its report cannot say where it goes, so it is not filed: back to
                # pending/, where its report as last written lets it resume.
                if returned_for is None:
                    self.storage.failed(str(exc))
                state, returned_for = State.PENDING, returned_for or str(exc)
            self._guard(claim)
            dest = self.layout.finish(claim, state, self.lease.folder)
            if state != State.PENDING:
                self._publish_notice(claim, dest, rep, state, duration)
                self._forget_changes(claim.identity.inode)
        except LeaseLost as exc:
            self.notifier.drop(claim.name)
            logs.event(Event.LEASE_LOST, level=logging.WARNING, video=claim.name, error=str(exc))
            return None
        except ClaimChanged as exc:
            self._abandon(claim, rep, rpath, workspace, str(exc))
            return None
        except LayoutError as exc:
            # The root's folders changed under us (a folder swapped for a symlink): file
            # the video as failed with the reason if that folder is still sound, else
            # leave it where it is; never move it anywhere else.
            logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, video=claim.name, error=str(exc))
            if state == State.FAILED:
                return None
            rep.state, rep.error = State.FAILED, str(exc)
            try:
                save(True)
                self._stage_notice(claim, rep, State.FAILED, duration)
                dest = self.layout.finish(claim, State.FAILED, self.lease.folder)
            except (LayoutError, LeaseLost, ClaimChanged, OSError, StorageFailed):
                self.notifier.drop(claim.name)
                return None
            self._publish_notice(claim, dest, rep, State.FAILED, duration)
            state = State.FAILED
        except OSError as exc:
            # The move itself failed (the link fallback's intent on a full disk): the
            # claim stays, is filed after the pause (`refile`) or returned at shutdown.
            reason = f"cannot move {claim.name!r} to {state}/: {exc.strerror}"
            self.storage.failed(reason)
            with self._claims_lock:
                self._unfiled[claim.name] = (claim, state)
            logs.event(Event.FILING_DEFERRED, level=logging.WARNING, video=claim.name,
                       state=state.value, error=reason)  # fmt: skip
            return Outcome(claim.name, State.PENDING, reason, storage=True)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
            content.release()
        event = {
            State.COMPLETED: Event.COMPLETED,
            State.FAILED: Event.FAILED,
            State.PENDING: Event.RELEASED,
        }[state]
        fields: dict[str, Any] = {
            "video": claim.name,
            "path": str(dest.relative_to(self.layout.root)),
            "duration_s": duration,
        }
        if state == State.FAILED:
            fields.update(stage=rep.failed_stage, error=rep.error)
        if returned_for is not None:
            fields.update(reason=returned_for)
        level = logging.WARNING if state == State.FAILED else logging.INFO
        logs.event(event, level=level, **fields)
        return Outcome(
            claim.name, state, returned_for or rep.error, storage=returned_for is not None
        )
