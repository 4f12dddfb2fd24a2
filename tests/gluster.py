"""A real GlusterFS volume for the tests, mounted twice: two independent FUSE clients.

`gluster_volume(workdir)` builds, in about five seconds, everything a shared-storage
test needs and nothing on the machine's own network or state:

- a network namespace of its own, held by one `unshare --net --mount` process, with a
  dummy interface (a veth pair where the kernel has no dummy driver) carrying
  ADDRESS/24 and `lo` up: glusterd refuses loopback addresses for bricks, and the
  machine's real interface is never used;
- glusterd in that network namespace and in a private mount namespace, where folders
  under `workdir` are bind-mounted over /run, /var/lib/glusterd and /var/log/glusterfs:
  the host's glusterd state is neither read nor written, and parallel runs (each with
  its own namespace and port 24007) never meet;
- a two-brick distributed volume, started; the bricks are on a tmpfs mounted in that
  private mount namespace (it vanishes with it: no brick's 65,536-folder .glusterfs
  tree to delete), `force` since they are not on a partition of their own;
- the volume mounted twice with the `glusterfs` FUSE client, each client a process
  of its own with its own caches; the clients run in the network namespace (to reach
  ADDRESS) but in the host's mount namespace, so the mounts are visible to the test
  and to every process it starts.

Leaving the context unmounts both mounts, stops the volume, ends every process in the
namespace (glusterd, bricks, clients) and so the namespace itself, and removes
`workdir`, also when setup failed half way. `skip_reason()` says why a volume cannot be
had here (not root, no /dev/fuse, no gluster binaries, no namespaces); anything else
that fails is an error, with the logs that say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ADDRESS = "10.213.7.1"
VOLUME = "vvtest"
#: Binaries the volume needs and the Debian package that has them.
BINARIES = {
    "glusterd": "glusterfs-server",
    "gluster": "glusterfs-server",
    "glusterfs": "glusterfs-client",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "umount": "mount",
}
#: glusterd's own configuration, so that the host's /etc/glusterfs/glusterd.vol (say,
#: inet6 only) cannot change the test.
_GLUSTERD_VOL = """volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option transport-type socket
    option transport.address-family inet
    option transport.socket.listen-port 24007
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
end-volume
"""


#: Run in glusterd's mount namespace (the bricks are on its private tmpfs).
_BRICK_LISTING = """
import os, stat, sys
for folder in sys.argv[1:]:
    print(folder)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        st = os.lstat(path)
        def attr(key):
            try:
                return os.getxattr(path, key, follow_symlinks=False)
            except OSError:
                return b""
        linkto = attr("trusted.glusterfs.dht.linkto").rstrip(b"\\0").decode()
        print(f"  {name} {stat.filemode(st.st_mode)} {st.st_size} nlink {st.st_nlink} "
              f"gfid {attr('trusted.gfid').hex()[:12]}" + (f" linkto {linkto}" if linkto else ""))
"""


@dataclass
class GlusterVolume:
    """A started volume and its two FUSE mounts (two clients)."""

    mounts: tuple[Path, Path]
    workdir: Path
    holder: int  # pid of the process that holds the network namespace
    setup_seconds: float
    _profiling: bool = False

    def in_netns(self, argv: list[str]) -> list[str]:
        """`argv` run in the volume's network namespace (and the host's mounts)."""
        return ["nsenter", f"--net=/proc/{self.holder}/ns/net", *argv]

    def in_server(self, argv: list[str]) -> list[str]:
        """`argv` run where glusterd runs: its network and its private mounts."""
        return ["nsenter", "-t", str(self.holder), "--net", "--mount", *argv]

    def gluster(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The `gluster` CLI (`--mode=script`) talking to this volume's glusterd."""
        return _run(self.in_server(["gluster", "--mode=script", *args]), timeout=timeout)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the live processes of the volume (glusterd, bricks,
        FUSE clients): what the storage costs this machine."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _in_namespace(_netns(self.holder)):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/stat").read_bytes()
                fields = raw[raw.rfind(b")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def profile(self) -> Counter[str]:
        """Calls per file operation (LOOKUP, RENAME, ...) summed over the bricks since the
        last call, from `gluster volume profile` (started at the first call)."""
        if not self._profiling:
            _check(self.gluster("volume", "profile", VOLUME, "start"), "volume profile start")
            self._profiling = True
        out = self.gluster("volume", "profile", VOLUME, "info", "incremental")
        _check(out, "volume profile info")
        calls: Counter[str] = Counter()
        for line in out.stdout.splitlines():
            words = line.split()
            # %-latency, avg, min, max latency (each with its unit), calls, fop
            if len(words) >= 6 and words[-1].isupper() and words[-2].isdigit():
                calls[words[-1]] += int(words[-2])
        return calls

    def on_bricks(self, relative: str) -> str:
        """What the bricks hold in the folder `relative` (to the volume's root): each
        entry's mode, size and trusted.* attributes (a DHT link pointer is mode
        ---------T with trusted.glusterfs.dht.linkto), for a failure's message."""
        folders = [str(self.workdir / "bricks" / b / relative) for b in ("brick1", "brick2")]
        listing = _run(self.in_server([sys.executable, "-S", "-c", _BRICK_LISTING, *folders]))
        return listing.stdout + listing.stderr

    def logs(self) -> str:
        """The tails of glusterd's, the bricks' and the clients' logs, for a failure."""
        out = []
        for log in sorted(self.workdir.glob("log/**/*.log")) + sorted(
            self.workdir.glob("client-*.log")
        ):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"== {log.relative_to(self.workdir)}\n" + "\n".join(lines))
        return "\n".join(out)


def skip_reason() -> str | None:
    """Why a GlusterFS volume cannot be set up on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces, glusterd and FUSE mounts"
    missing = sorted({f"{b} ({p})" for b, p in BINARIES.items() if shutil.which(b) is None})
    if missing:
        return "needs " + ", ".join(missing) + ": install glusterfs-server glusterfs-client"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"needs FUSE for the glusterfs client: /dev/fuse: {exc.strerror}"
    probe = _run(["unshare", "--net", "--mount", "true"])
    if probe.returncode != 0:
        return f"cannot create network and mount namespaces: {probe.stderr.strip()}"
    return None


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] != b"Z"


def _in_namespace(netns: str) -> list[int]:
    """Live processes in the network namespace `netns` (a readlink of /proc/N/ns/net)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/net") == netns and _alive(int(entry)):
                    pids.append(int(entry))
    return pids


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1] == str(path) for line in fh)


def _end_namespace(netns: str, holder: int) -> None:
    """Every process in the namespace (bricks, glusterd, clients), then its holder:
    SIGTERM, then SIGKILL for what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        pids = [p for p in _in_namespace(netns) if p != holder]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def _add_interface(volume: GlusterVolume) -> None:
    """A dummy interface (or a veth pair, both ends inside) with ADDRESS, and lo, up."""
    ip = volume.in_netns(["ip"])
    dummy = _run([*ip, "link", "add", "vvt0", "type", "dummy"])
    if dummy.returncode != 0:
        veth = _run([*ip, "link", "add", "vvt0", "type", "veth", "peer", "name", "vvt1"])
        if veth.returncode != 0:
            raise Unavailable(
                "cannot create a dummy or veth interface in a network namespace: "
                f"{dummy.stderr.strip()}; {veth.stderr.strip()}"
            )
        _check(_run([*ip, "link", "set", "vvt1", "up"]), "ip link set vvt1 up")
    _check(_run([*ip, "addr", "add", f"{ADDRESS}/24", "dev", "vvt0"]), "ip addr add")
    _check(_run([*ip, "link", "set", "vvt0", "up"]), "ip link set vvt0 up")
    _check(_run([*ip, "link", "set", "lo", "up"]), "ip link set lo up")


class Unavailable(Exception):
    """The machine cannot give what the volume needs (the caller skips, saying why)."""


@contextlib.contextmanager
def gluster_volume(
    workdir: Path, *, client_options: tuple[str, ...] = ()
) -> Iterator[GlusterVolume]:
    """A started two-brick volume mounted twice (see the module's docstring); raises
    `Unavailable` where the kernel refuses the namespace's interface, RuntimeError
    (with the logs) where glusterd or a client fails."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("run/gluster", "lib", "log", "bricks", "mnt1", "mnt2"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "glusterd.vol").write_text(_GLUSTERD_VOL)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        children: list[subprocess.Popen[bytes]] = []
        stack.callback(_reap, children)
        # The holder: the namespace lives as long as it does; it ends when its stdin
        # closes, so it does not outlive a test process that was killed.
        holder_err = stack.enter_context((workdir / "holder.err").open("wb"))
        holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private",
             sys.executable, "-S", "-c", "import sys; sys.stdin.buffer.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=holder_err,
        )  # fmt: skip
        children.append(holder)
        assert holder.stdin is not None
        stack.callback(holder.stdin.close)
        own = os.readlink("/proc/self/ns/net")
        _wait(lambda: holder.poll() is not None or _netns(holder.pid) != own,
              "the namespace holder")  # fmt: skip
        if holder.poll() is not None:
            err = (workdir / "holder.err").read_text(errors="replace").strip()
            raise Unavailable(f"cannot create network and mount namespaces: {err}")
        netns = _netns(holder.pid)
        stack.callback(_end_namespace, netns, holder.pid)
        mounts = (workdir / "mnt1", workdir / "mnt2")
        volume = GlusterVolume(mounts, workdir, holder.pid, 0.0)
        _add_interface(volume)
        for host_dir, private in (("run", "/run"), ("lib", "/var/lib/glusterd"),
                                  ("log", "/var/log/glusterfs")):  # fmt: skip
            _check(_run(volume.in_server(["mkdir", "-p", private])), f"mkdir {private}")
            _check(
                _run(volume.in_server(["mount", "--bind", str(workdir / host_dir), private])),
                f"bind-mount over {private}",
            )
        bricks = [workdir / "bricks" / name for name in ("brick1", "brick2")]
        _check(
            _run(volume.in_server(["mount", "-t", "tmpfs", "-o", "size=1g", "vvtest-bricks",
                                   str(workdir / "bricks")])),
            "mount a tmpfs for the bricks",
        )  # fmt: skip
        _check(_run(volume.in_server(["mkdir", *map(str, bricks)])), "mkdir the bricks")
        # The address must exist before glusterd starts: it takes its own addresses
        # once, and a brick on an address it did not see is "not in 'Peer in Cluster'".
        glusterd_out = stack.enter_context((workdir / "glusterd.out").open("wb"))
        glusterd = subprocess.Popen(
            volume.in_server(["glusterd", "--no-daemon", f"--volfile={workdir / 'glusterd.vol'}"]),
            stdin=subprocess.DEVNULL, stdout=glusterd_out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        children.append(glusterd)
        try:
            _wait(
                lambda: (
                    glusterd.poll() is not None
                    or volume.gluster("pool", "list", timeout=30).returncode == 0
                ),
                "glusterd to answer",
            )
            if glusterd.poll() is not None:
                raise RuntimeError(f"glusterd exited with {glusterd.returncode}")
            spec = [f"{ADDRESS}:{brick}" for brick in bricks]
            _check(volume.gluster("volume", "create", VOLUME, *spec, "force"), "volume create")
            _check(volume.gluster("volume", "start", VOLUME), "volume start")
            stack.callback(volume.gluster, "volume", "stop", VOLUME, "force")
            for number, mountpoint in enumerate(mounts, 1):
                log = workdir / f"client-{number}.log"
                client = subprocess.Popen(
                    volume.in_netns(["glusterfs", "--no-daemon", f"--volfile-server={ADDRESS}",
                                     f"--volfile-id={VOLUME}", *client_options,
                                     f"--log-file={log}", str(mountpoint)]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                children.append(client)
                stack.callback(_unmount, mountpoint)
                _wait_mounted(mountpoint, client)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{volume.logs()}") from exc
        volume.setup_seconds = time.monotonic() - started
        yield volume


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _wait_mounted(mountpoint: Path, client: subprocess.Popen[bytes]) -> None:
    _wait(lambda: _mounted(mountpoint) or client.poll() is not None, f"the mount {mountpoint}")
    if client.poll() is not None:
        raise RuntimeError(f"the glusterfs client for {mountpoint} exited ({client.returncode})")
    os.statvfs(mountpoint)  # the client answers


def _reap(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(30)


def _unmount(mountpoint: Path) -> None:
    if not _mounted(mountpoint):
        return
    if _run(["umount", str(mountpoint)]).returncode != 0:
        _run(["umount", "-l", str(mountpoint)])  # busy: a process still has a file open
