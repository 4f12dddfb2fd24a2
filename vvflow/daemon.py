"""The loop: watch pending/, claim each video once it is whole, file it.

The loop reads as one sentence: take the names events and rescans point at, check
which are stable, hand those to the workers, keep the lease and the observer alive.
`step(now)` is one iteration with the clock as a parameter, so tests drive it.

`vvflow run` runs it until a signal. `vvflow once` runs the same loop in burst mode
(arq's `burst`): no observer and no health record, one rescan, each file gets one
stability window, and it returns when nothing is tracked or running any more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.observers.api import BaseObserver

from vvflow import atomicfs, filesystem, instance, logs, notify
from vvflow.errors import ConfigError, LayoutError
from vvflow.events import Event
from vvflow.layout import HEALTH, PROGRESS, Candidate, State
from vvflow.metrics import Metrics
from vvflow.watcher import OpenWrites, PendingEvents, Stability, make_observer
from vvflow.worker import Outcome, Worker

#: The health record is padded to this size, so that on a full disk it can still be
#: overwritten in place (the blocks it needs are already its own).
HEALTH_BYTES = 2048
#: How often the loop refreshes the health record, checks the observer and recovers.
HEALTH_SECONDS = 2.0
#: The loop's longest sleep; events wake it sooner.
TICK_SECONDS = 0.05
#: How often the loop looks for the pause file (one stat; a round trip on a network
#: filesystem) and, when what runs changed, rewrites this instance's activity file.
PAUSE_CHECK_SECONDS = 1.0
ACTIVITY_SECONDS = 1.0
RET_OK = 0
RET_LEASE_LOST = 1


@dataclass
class Counters:
    by_event: int = 0
    by_rescan: int = 0
    rescans: int = 0
    observer_restarts: int = 0


@dataclass
class Summary:
    """What the loop did with the videos it took (`once` turns this into its exit code)."""

    completed: int = 0
    failed: int = 0
    released: int = 0
    recovered: int = 0
    #: Videos left in or returned to pending/ for storage trouble, not for themselves.
    storage_returned: int = 0
    storage_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            if outcome.state == State.COMPLETED:
                self.completed += 1
            elif outcome.state == State.FAILED:
                self.failed += 1
            else:
                self.released += 1
            if outcome.storage:
                self.storage_returned += 1
                self.storage_error = self.storage_error or outcome.error


class Turns:
    """Claims in the order the loop handed the videos out (oldest first): the worker
    thread of turn n claims once every earlier turn claimed or let its video go. Only
    the claim waits; the videos then run side by side."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0
        self._next = 0
        self._done: set[int] = set()

    def issue(self) -> int:
        with self._cond:
            self._issued += 1
            return self._issued - 1

    def wait(self, turn: int) -> None:
        with self._cond:
            while self._next < turn:
                self._cond.wait()

    def done(self, turn: int) -> None:
        with self._cond:
            self._done.add(turn)
            while self._next in self._done:
                self._done.remove(self._next)
                self._next += 1
            self._cond.notify_all()


class Daemon:
    """The watcher, the queue and the worker threads of one vvflow instance.

    With `burst`, the loop of `vvflow once`: it starts no observer and writes no health
    record, rescans pending/ once, gives each file one stability window (a file still
    changing is left for the next run), and `run` returns once nothing is tracked or
    running and every instance it could not judge at a glance was judged."""

    def __init__(
        self, worker: Worker, *, clock: Callable[[], float] = time.monotonic, burst: bool = False
    ) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.layout = worker.layout
        self.clock = clock
        self.burst = burst
        self.open_writes = OpenWrites()
        self.stability = Stability(
            self.layout, self.settings.stable_seconds, self.open_writes, retrack=not burst
        )
        self.counters = Counters()
        self.summary = Summary()
        #: Burst mode: the instances this run could not judge at a glance when it first
        #: had nothing left to do (None until then).
        self._undecided: set[str] | None = None
        self._judged = False
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._work: queue.Queue[tuple[int, Candidate] | None] = queue.Queue()
        self._turns = Turns()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._observer: BaseObserver | None = None
        self.observer_kind = ""
        self._next_rescan = 0.0
        self._next_health = 0.0
        self._next_recover = 0.0
        self._next_pause_check = 0.0
        self._settle_rescan: float | None = None
        self._next_activity = 0.0
        self._activity_written = -1
        #: The pause record while the root is paused (`vvflow pause`), else None.
        self.paused: dict[str, Any] | None = None
        self.metrics: Metrics | None = None
        self._watched: tuple[int, int] | None = None
        self.metrics_port: int | None = None
        self._storage_paused = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self.take_lease()
        if not self.burst:
            if self.settings.metrics_port is not None:
                self._serve_metrics(self.settings.metrics_host, self.settings.metrics_port)
            # Watch first, so that health checks pass while the index is rebuilt and dead
            # instances are recovered (both can take a while on a large root).
            self._start_observer()
            self._write_health()
        self.prepare()
        self._check_pause(self.clock())
        self._recover(self.clock())
        self.worker.notifier.listen()
        if not self.burst:
            self.worker.notifier.start()  # `once` delivers at its end (`drain`)
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work_loop, name=f"vvflow-worker-{i}")
            thread.start()
            self._threads.append(thread)

    # -- this instance's lease and the others' -------------------------------------

    def take_lease(self) -> None:
        """Check the root and take this instance's lease (its folder under processing/)."""
        worker, layout = self.worker, self.layout
        output_dirs = {p.parent for p in worker.pipeline.all_outputs("x", "x").values()}
        layout.ensure(output_dirs)
        worker.lease.acquire()
        # Probed in our own folder: a probe cut short by a crash is cleaned with it.
        caps = filesystem.probe(worker.lease.folder)
        if caps.problems:
            worker.lease.release()
            layout.remove_instance_folder(worker.lease.folder)
            raise LayoutError(
                f"refusing to run on {layout.root}: {caps.describe()}: " + "; ".join(caps.problems)
            )
        atomicfs.use_renameat2(caps.noreplace is True)
        try:
            # One intent slot per move that may run at once (each worker, a claim, a
            # recovery), so that filing never needs free space.
            atomicfs.reserve_intents(worker.journal, self.settings.workers + 2)
        except OSError as exc:
            worker.storage.failed(
                f"cannot reserve the move journal {worker.journal}: {exc.strerror}"
            )
        logs.event(Event.STARTED, instance=worker.id.name, root=str(layout.root), **caps.fields())

    def prepare(self) -> None:
        """Rebuild the names index and the content index from the reports if missing
        (after the observer started: health checks pass while a large index is rebuilt)."""
        started = time.monotonic()
        if self.layout.ensure_names(self.worker.lease.folder):
            logs.event(
                Event.INDEX_REBUILT,
                folder=str(self.layout.names),
                duration_s=time.monotonic() - started,
            )
            started = time.monotonic()
        if self.settings.dedupe and self.worker.index.ensure():
            logs.event(
                Event.INDEX_REBUILT,
                folder=str(self.worker.index.folder),
                duration_s=time.monotonic() - started,
            )

    def release(self) -> None:
        """File or return what this instance still holds, give up the lease and remove
        its folder."""
        self.worker.return_leftovers()
        with contextlib.suppress(OSError):  # else the next start's recovery does it
            notify.recover_folder(self.layout, self.worker.lease.folder)
        self.worker.lease.release()
        self.layout.remove_instance_folder(self.worker.lease.folder)

    def recover(self) -> list[str]:
        """Return the claims of every dead instance to pending/. Returns their names
        there.

        Each call is also a look at the others' heartbeats: an instance that this one
        cannot see run or die (another host's, a stopped one) is dead only after calls
        a lease apart found its heartbeat unchanged."""
        worker, layout = self.worker, self.layout
        total: list[str] = []
        finished = atomicfs.retry_stranded()
        if finished:
            logs.event(Event.MOVES_FINISHED, moves=finished)
        folders = [f for f in layout.instance_folders() if f != worker.lease.folder]
        worker.liveness.keep_only(folders)
        dead = [folder for folder in folders if worker.liveness.is_dead(folder)]
        early = {folder: layout.take_over(folder) for folder in dead}
        for folder in dead:
            repaired = early[folder] + layout.take_over(folder)
            instance.kill_orphan_stages(folder)  # before its videos can be claimed again
            # After the journal's repair, before its claims go: a staged notification
            # is published if its video was filed, dropped if it is still a claim.
            notices: dict[str, Any] = notify.recover_folder(layout, folder)
            returned = layout.return_claims(folder, worker.journal)
            total += [p.name for p in returned]
            logs.event(
                Event.RECOVERED,
                instance=folder.name,
                videos=[p.name for p in returned],
                moves_repaired=repaired,
                **{f"notifications_{k}": v for k, v in notices.items() if v},
            )
        return total

    def request_stop(self, grace_seconds: float) -> float:
        """Claim nothing new and say so at once, with the deadline of the grace period
        and what runs; returns that deadline on the monotonic clock."""
        self.worker.stopping.set()
        deadline = time.time() + grace_seconds
        logs.event(
            Event.STOPPING,
            instance=self.worker.id.name,
            grace_s=grace_seconds,
            deadline=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(deadline))
            + f".{int(deadline * 1000) % 1000:03d}Z",
            running=self.worker.running(),
        )
        return time.monotonic() + grace_seconds

    def end_grace(self) -> None:
        """Stop the stages still running after the grace period; their videos go back to
        pending/."""
        if not self.worker.cancel.is_set():
            logs.event(Event.GRACE_OVER, level=logging.WARNING, instance=self.worker.id.name,
                       running=self.worker.running())  # fmt: skip
        self.worker.cancel.set()

    def _serve_metrics(self, host: str, port: int) -> None:
        self.metrics = Metrics(
            self.layout,
            self.queue_length,
            self.worker.lease.heartbeat,
            storage=self.worker.storage.snapshot,
            live=self.live,
        )
        try:
            self.metrics_port = self.metrics.serve(host, port)
        except OSError as exc:
            self.metrics.close()
            self.release()
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror}") from None
        logs.event(Event.METRICS_SERVING, address=f"http://{host}:{self.metrics_port}/metrics")

    def live(self) -> dict[str, Any]:
        """What the metrics read at scrape time: the pause, each video's activity, and
        the stages' slots."""
        return {
            "paused": self.paused is not None,
            "activity": self.worker.activity(),
            "slots": self.worker.pipeline.slots.snapshot(),
        }

    def queue_length(self) -> dict[str, int]:
        with self._lock:
            inflight = len(self._inflight)
        return {
            "inflight": inflight,
            "ready": self.stability.ready_count,
            "tracked": len(self.stability),
        }

    def _start_observer(self) -> None:
        poll = min(self.settings.rescan_seconds, 1.0)
        kind, observer = make_observer(self.settings.observer, self.layout.pending, poll)
        # A new watch has not seen the writes of files already open: only the /proc look
        # before each claim knows of those. Polling gives no close events to clear marks.
        self.open_writes.clear()
        handler = PendingEvents(
            self.layout.pending, self._notify, self.open_writes if kind == "inotify" else None
        )
        try:
            observer.schedule(handler, str(self.layout.pending), recursive=False)
            observer.start()
        except OSError as exc:
            # inotify limits exhausted (max_user_instances/watches): rescans still work.
            logs.event(Event.OBSERVER_FAILED, level=logging.ERROR, error=str(exc), kind=kind)
            handler.open_writes = None
            kind, observer = make_observer("polling", self.layout.pending, poll)
            observer.schedule(handler, str(self.layout.pending), recursive=False)
            observer.start()
        self._observer, self.observer_kind = observer, kind
        self._watched = self._pending_identity()
        # The observer sets up its watch (inotify) or its first snapshot (polling) in its
        # own thread, a moment after this: a file that arrives between the rescan that
        # follows and that moment gives no event. Look once more when the watch is surely
        # up, instead of at the next rescan (rescan_seconds away).
        self._settle_rescan = self.clock() + (2.5 * poll if kind == "polling" else 1.0)
        logs.event(Event.WATCHING, observer=kind, folder=str(self.layout.pending))

    def _notify(self, name: str) -> None:
        self._inbox.put(name)
        self._wake.set()

    def observer_alive(self) -> bool:
        """The observer runs and still watches the folder that is pending/ now (one
        removed and made anew, or renamed away and back, gives no events to a watch on
        the old one).

        The folder's (device, inode) alone cannot tell: a folder made right after the
        old one was removed often gets the old inode number back. watchdog's inotify
        emitter stops itself when its watched folder is deleted (IN_DELETE_SELF), so a
        stopped emitter says it too."""
        observer = self._observer
        return (
            observer is not None
            and observer.is_alive()
            and all(e.is_alive() and e.should_keep_running() for e in observer.emitters)
            and self._watched == self._pending_identity()
        )

    def _pending_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.layout.pending)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def run(self, stop_requested: Callable[[], bool]) -> int:
        """Process until `stop_requested()` (in burst mode: or until nothing is left to
        do), then shut down cleanly; the exit code."""
        self.start()
        code = RET_OK
        try:
            while not stop_requested():
                if not self.step():
                    code = RET_LEASE_LOST
                    break
                if self.burst and self._burst_done():
                    break
                self._wake.wait(TICK_SECONDS)
                self._wake.clear()
        finally:
            self.shutdown()
        return code

    def _burst_done(self) -> bool:
        """Burst mode: nothing tracked, queued or running, and no instance left that this
        run could not judge at a glance (another host's, a stopped one's): those are
        watched until each beat or stayed unchanged for a lease since this run first saw
        it, and the claims of the dead are run too. No wall clock can shorten that; it
        costs at most a lease (a live instance beats every lease / 4)."""
        if self.paused is not None:
            self.stability.clear()  # claims nothing new; ends once what runs is done
        with self._lock:
            busy = bool(self._inflight)
        if busy or len(self.stability):
            return False
        undecided = set(self.worker.liveness.undecided())
        if self._undecided is None:
            self._undecided = undecided
            if undecided:
                logs.event(Event.WATCHING_INSTANCES, instances=sorted(undecided),
                           lease_seconds=self.settings.lease_seconds)  # fmt: skip
        if self._undecided & undecided:
            return False
        if self._undecided and not self._judged:
            # Watched long enough: one more look judges them (a dead one's videos come
            # back to pending/ and are run before this run ends).
            self._judged = True
            self._recover(self.clock())
            return False
        return True

    def shutdown(self) -> None:
        """Stop claiming; give running stages the grace period; then stop them (their
        videos go back to pending/); stop the observer and release the lease."""
        deadline = self.request_stop(self.settings.shutdown_grace_seconds)
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._turns.done(item[0])
                with self._lock:
                    self._inflight.discard(item[1].name)
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self.end_grace()
            for thread in self._threads:
                thread.join()
        if self.burst:
            self.worker.notifier.drain()
        self.worker.notifier.stop(deadline)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self.release()
        if self.metrics is not None:
            self.metrics.close()
        summary = self.summary
        logs.event(
            Event.STOPPED,
            instance=self.worker.id.name,
            completed=summary.completed,
            failed=summary.failed,
            released=summary.released,
            recovered=summary.recovered,
            blocked=len(self.worker.blocked),
            found_by_event=self.counters.by_event,
            found_by_rescan=self.counters.by_rescan,
            rescans=self.counters.rescans,
            observer_restarts=self.counters.observer_restarts,
        )

    # -- one iteration ---------------------------------------------------------------

    def step(self, now: float | None = None) -> bool:
        """One pass of the loop; False when this instance lost its lease and must stop."""
        now = self.clock() if now is None else now
        if not self.worker.lease.held():
            logs.event(
                Event.LEASE_LOST,
                level=logging.ERROR,
                instance=self.worker.id.name,
                error="another instance took over this instance's claims; stopping",
            )
            self.worker.cancel.set()
            return False
        if now >= self._next_pause_check:
            self._check_pause(now)
        self._drain_inbox(now)
        if self._settle_rescan is not None and now >= self._settle_rescan:
            self._settle_rescan = None
            self._next_rescan = min(self._next_rescan, now)
            self._next_health = min(self._next_health, now)
        if now >= self._next_rescan:
            self.rescan(now)
            # Burst mode looks at pending/ once: what arrives later is the next run's.
            self._next_rescan = float("inf") if self.burst else now + self.settings.rescan_seconds
        self.stability.check(now)
        self._dispatch(now)
        if now >= self._next_health:
            self._next_health = now + HEALTH_SECONDS
            if not self.burst:
                self._keep_observer()
            # Look at the free space even when nothing waits to be claimed (or every
            # worker is busy): the trouble is said in the log, health and metrics at
            # once, not only when the next claim would be refused.
            self.worker.storage.may_claim()
            self._write_health()
            self.worker.refile()
        if now >= self._next_activity:
            self._write_activity(now)
        if now >= self._next_recover:
            # Burst mode ends by watching the instances it could not judge: look often.
            lease = self.settings.lease_seconds
            self._next_recover = now + (min(1.0, lease / 8) if self.burst else min(5.0, lease / 3))
            try:
                self._recover(now)
            except OSError as exc:
                # What was not returned stays in the dead folder for the next pass.
                self.worker.storage.failed(f"cannot recover a dead instance: {exc}")
        return True

    def _check_pause(self, now: float) -> None:
        """Follow the root's pause file: while it exists nothing new is claimed (what
        runs finishes). Said once per change, in the log, the health record and the
        metrics. Burst mode lets go of what it tracks, so that it ends."""
        self._next_pause_check = now + PAUSE_CHECK_SECONDS
        try:
            record = self.layout.paused()
        except OSError as exc:
            self.worker.storage.failed(f"cannot look for the pause file: {exc}")
            return
        if (record is None) == (self.paused is None):
            self.paused = record
        elif record is not None:
            self.paused = record
            logs.event(Event.PAUSED, instance=self.worker.id.name, **record,
                       running=self.worker.running())  # fmt: skip
            self._next_health = 0.0
        else:
            self.paused = None
            logs.event(Event.RESUMED, instance=self.worker.id.name)
            self._next_health = 0.0
            self._next_rescan = 0.0  # what was dropped or came meanwhile
        if self.paused is not None and self.burst:
            self.stability.clear()

    def _write_activity(self, now: float) -> None:
        """This instance's activity file (what each video in flight does, for `status`
        on any host), rewritten only when that changed."""
        self._next_activity = now + ACTIVITY_SECONDS
        version = self.worker.activity_version
        if version == self._activity_written or not self.worker.lease.held():
            return
        record = {"updated": time.time(), "videos": self.worker.activity()}
        try:
            atomicfs.write_atomic(
                self.worker.lease.folder / PROGRESS,
                json.dumps(record).encode(),
                tmp_dir=self.worker.lease.folder,
                durable=False,
            )
        except OSError:
            return  # only `status` reads it; the next change writes it again
        self._activity_written = version

    def _recover(self, now: float) -> None:
        """Return dead instances' claims to pending/, at the front of the queue: they
        waited once already, and were whole when claimed (no stability wait again)."""
        returned = self.recover()
        self.summary.recovered += len(returned)
        for name in reversed(returned):
            if not self._busy(name):
                self.stability.first(name, now)

    def _busy(self, name: str) -> bool:
        with self._lock:
            return name in self._inflight

    def _drain_inbox(self, now: float) -> None:
        while True:
            try:
                name = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not self._busy(name) and self.stability.see(name, now):
                self.counters.by_event += 1
                logs.event(Event.SEEN, level=logging.DEBUG, video=name, source="event")

    def rescan(self, now: float) -> None:
        """Look at every entry of pending/: the backstop for lost or absent events."""
        self.counters.rescans += 1
        found: list[str] = []
        blocked, seen = set(self.worker.blocked), set()
        for name in self.layout.pending_names():
            if name in blocked:
                seen.add(name)
                if self.worker.still_blocked(name):
                    continue  # it was said once; say nothing until something changes
            if name in self.stability or self._busy(name):
                continue
            if self.stability.see(name, now) and name not in blocked:
                found.append(name)
        for name in blocked - seen:
            self.worker.unblock(name)  # gone from pending/
        if self.burst:
            logs.event(Event.BATCH, videos=len(self.stability))
        elif found:
            # Something events missed (or the daemon was down when it arrived). The
            # close-after-write events of files being written may be lost as well.
            self.open_writes.clear()
            self.counters.by_rescan += len(found)
            logs.event(Event.RESCAN_FOUND, count=len(found), videos=found[:20])

    def _dispatch(self, now: float) -> None:
        """Hand stable candidates to the workers, keeping the queue short: memory stays
        bounded however many files are pending, and the queue never holds a name twice."""
        with self._lock:
            room = 2 * self.settings.workers - len(self._inflight)
        if room <= 0 or self.worker.stopping.is_set() or self.paused is not None:
            return
        # Burst mode hands them on anyway: each is refused (left in pending/ for the
        # storage) and counted, and the run ends instead of waiting for space.
        if not self.burst and not self.worker.storage.may_claim():
            self._storage_paused = True
            return
        if self._storage_paused:
            # Candidates dropped while paused are found again by a rescan.
            self._storage_paused = False
            self._next_rescan = 0.0
        for candidate in self.stability.take(room, now):
            with self._lock:
                if candidate.name in self._inflight:
                    continue
                self._inflight.add(candidate.name)
            self._work.put((self._turns.issue(), candidate))

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            turn, candidate = item
            requeue = False
            claimed_turn = False

            def claimed(name: str = candidate.name, turn: int = turn) -> None:
                nonlocal claimed_turn
                claimed_turn = True
                self._turns.done(turn)  # the next video may claim now
                if not self.burst:
                    # Burst mode looks at pending/ once: a file that comes under a name
                    # its claim freed is the next run's.
                    self._claimed(name)

            try:
                self._turns.wait(turn)
                if self._pause_seen():
                    requeue = True  # handed out before the pause: not claimed
                elif not self.worker.stopping.is_set():
                    outcome = self.worker.claim_and_run(candidate, claimed)
                    if outcome is not None:
                        self.summary.add(outcome)
            except Exception:
                logs.event(
                    Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True, video=candidate.name
                )
            finally:
                if not claimed_turn:
                    self._turns.done(turn)
                with self._lock:
                    self._inflight.discard(candidate.name)
                if requeue:
                    self._notify(candidate.name)  # tracked again, claimed after `resume`
                self._wake.set()

    def _pause_seen(self) -> bool:
        """Paused, as the loop last saw it or as the root says now: a pause takes effect
        at once for every claim not yet made (one lstat per claim), not only at the
        loop's next look."""
        return self.paused is not None or os.path.lexists(self.layout.pause_file)

    def _claimed(self, name: str) -> None:
        """The name is free in pending/ again: a file that arrived under it while it was
        being claimed (the rest of an upload, the next one of a camera) was passed over
        as busy, so look at it now rather than at the next rescan."""
        with self._lock:
            self._inflight.discard(name)
        self._notify(name)

    def _keep_observer(self) -> None:
        if self.observer_alive():
            return
        self.counters.observer_restarts += 1
        logs.event(Event.OBSERVER_RESTARTED, level=logging.WARNING, observer=self.observer_kind)
        if self._observer is not None:
            self._observer.stop()
        if self._pending_identity() is None and self.layout.input.is_dir():
            self.layout.pending.mkdir(exist_ok=True)
        self._start_observer()
        self._next_rescan = 0.0  # events were lost while it was down

    def _write_health(self) -> None:
        if not self.worker.lease.held():
            return  # never recreate the folder of a lease that was taken over
        record = {
            "instance": self.worker.id.name,
            "pid": os.getpid(),
            "observer": self.observer_kind,
            "observer_alive": self.observer_alive(),
            "updated": time.time(),
            # For `vvflow health` on this host: ages by this host's monotonic clock, not
            # the heartbeat's mtime (a file server may set it, anyone may backdate it).
            "monotonic": time.monotonic(),
            "heartbeat_s": round(time.monotonic() - self.worker.lease.beat_at, 3),
            "tracked": len(self.stability),
            "inflight": len(self._inflight),
            "rescans": self.counters.rescans,
            "storage": self.worker.storage.snapshot(),
            "paused": self.paused,
        }
        data = json.dumps(record).encode().ljust(HEALTH_BYTES)
        path = self.worker.lease.folder / HEALTH
        try:
            atomicfs.write_atomic(path, data, tmp_dir=self.worker.lease.folder, durable=False)
        except OSError as exc:
            # A full disk must not stop the daemon, nor make it look dead to `health`:
            # overwrite the record in place, in blocks it already has.
            logs.event(Event.REPORT_UNWRITABLE, level=logging.WARNING, error=str(exc))
            if len(data) == HEALTH_BYTES:
                with contextlib.suppress(OSError):
                    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                    try:
                        os.pwrite(fd, data, 0)
                    finally:
                        os.close(fd)


def read_health(folder: Path) -> dict[str, Any] | None:
    """The health record of a `vvflow run` instance's folder; None when there is none
    (not a daemon, or not started yet)."""
    for _ in range(3):
        try:
            record = json.loads((folder / HEALTH).read_bytes())
        except OSError:
            return None
        except ValueError:
            time.sleep(0.01)  # read while overwritten in place: read again
            continue
        return record if isinstance(record, dict) else None
    return None


def check_health(processing: Path, lease_seconds: float) -> tuple[bool, str]:
    """For `vvflow health`: a live `vvflow run` on this host with a live observer and a
    fresh heartbeat (its last successful beat, as the instance itself timed it)."""
    problems = []
    try:
        folders = sorted(p for p in processing.iterdir() if p.is_dir())
    except FileNotFoundError:
        return False, f"no storage root: {processing} is missing"
    for folder in folders:
        ident = instance.InstanceId.parse(folder.name)
        if ident is None or not ident.is_running_here():
            continue
        record = read_health(folder)
        if record is None:
            continue  # not a daemon (a `once` or a `retry`), or not started yet
        if "monotonic" in record:
            stale = time.monotonic() - float(record["monotonic"])
        else:  # written by an older vvflow
            stale = time.time() - float(record.get("updated", 0))
        age = float(record.get("heartbeat_s", lease_seconds)) + stale
        if not record.get("observer_alive"):
            problems.append(f"{folder.name}: observer not running")
        elif age > lease_seconds:
            problems.append(f"{folder.name}: heartbeat stale ({age:.0f}s)")
        elif stale > max(10 * HEALTH_SECONDS, lease_seconds):
            problems.append(f"{folder.name}: health record {stale:.0f}s old")
        else:
            detail = f"{folder.name}: {record['observer']} observer alive, heartbeat {age:.1f}s"
            storage = record.get("storage") or {}
            if storage.get("trouble"):
                # Healthy, but degraded: a restart frees no space, and restarting would
                # only add recovery churn; claiming resumes by itself when space returns.
                detail += (
                    f"; degraded: storage trouble since {storage.get('since')}: "
                    f"{storage['trouble']} ({storage.get('free_bytes')} bytes free, "
                    f"min_free_bytes {storage.get('min_free_bytes')}); claiming paused"
                )
            paused = record.get("paused")
            if isinstance(paused, dict):
                # Healthy: paused on purpose, by `vvflow pause`; a restart would not help.
                detail += f"; paused since {paused.get('since')} (vvflow resume ends it)"
                if paused.get("reason"):
                    detail += f": {paused['reason']}"
            return True, detail
    return False, "; ".join(problems) or "no vvflow run instance is running on this host"
