#!/usr/bin/env bash
# Smoke test of the vvflow container image, with no registry at all.
#
#  1. base   a Debian bookworm base made here with debootstrap and `docker import`ed
#            (reused when the image already exists: SMOKE_REBUILD_BASE=1 remakes it)
#  2. build  deploy/Dockerfile on that base (--build-arg BASE_IMAGE, --network host)
#  3. check  as --user PUID:PGID on a read-only root filesystem: `vvflow doctor` passes
#            and `vvflow health` says unhealthy (exit 1) when nothing runs
#  4. run    `vvflow run` started as root with PUID/PGID, --read-only, --tmpfs /tmp,
#            no network, all capabilities dropped but SETUID, SETGID and CHOWN,
#            no-new-privileges, on a temporary storage root; every process of the
#            container (tini as PID 1 too) runs as PUID:PGID
#  5. video  a generated H.264 video dropped into input/pending/ reaches
#            input/completed/ with its three outputs (valid JSON, mode 644), and
#            everything vvflow wrote belongs to PUID:PGID
#  6. health the container's health status becomes `healthy`
#  7. stop   `docker stop` ends it quickly with exit code 0 and a `stopped` log line;
#            the logs hold no traceback and no error line
#
# Needs: a running Docker engine, root (for debootstrap and to chown the temporary
# root), debootstrap (only while the base image is missing), and a Python with PyAV,
# OpenCV and NumPy to generate the video (.venv/bin/python when present, else python3;
# $PYTHON overrides). Exits 0 when every check passed, else 1 with "smoke: FAIL: ...".
#
# Settings (environment): SMOKE_BASE_IMAGE (vvflow-smoke-base:bookworm), SMOKE_IMAGE
# (vvflow:smoke), SMOKE_PUID/SMOKE_PGID (1234), SMOKE_TIMEOUT seconds per wait (240),
# DEBIAN_MIRROR (http://deb.debian.org/debian), SMOKE_REBUILD_BASE (0), SMOKE_KEEP (0:
# keep the container and the temporary root for a look after a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${SMOKE_BASE_IMAGE:-vvflow-smoke-base:bookworm}
IMAGE=${SMOKE_IMAGE:-vvflow:smoke}
PUID=${SMOKE_PUID:-1234}
PGID=${SMOKE_PGID:-1234}
TIMEOUT=${SMOKE_TIMEOUT:-240}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NAME=vvflow-smoke-$$
STEM=smoke-clip
START=$SECONDS

ROOT=""
BOOTSTRAP=""
RUNNING=""

say() { printf 'smoke: %s\n' "$*"; }
elapsed() { printf '%ss' "$((SECONDS - ${1:-$START}))"; }

fail() {
    printf 'smoke: FAIL: %s\n' "$*" >&2
    if [ -n "$RUNNING" ]; then
        printf 'smoke: last log lines of %s:\n' "$NAME" >&2
        docker logs --tail 40 "$NAME" 2>&1 | sed 's/^/    /' >&2 || true
    fi
    if [ -n "$ROOT" ] && [ -d "$ROOT/reports" ]; then
        for report in "$ROOT"/reports/*.json; do
            [ -e "$report" ] || continue
            printf 'smoke: report %s:\n' "${report##*/}" >&2
            sed 's/^/    /' "$report" | head -60 >&2 || true
        done
    fi
    exit 1
}

cleanup() {
    local code=$?
    if [ "${SMOKE_KEEP:-0}" = 1 ] && [ "$code" != 0 ]; then
        say "kept container $NAME and root $ROOT (SMOKE_KEEP=1)"
    else
        [ -n "$RUNNING" ] && docker rm -f "$NAME" >/dev/null 2>&1
        [ -n "$ROOT" ] && rm -rf "$ROOT"
    fi
    [ -n "$BOOTSTRAP" ] && rm -rf "$BOOTSTRAP"
    return "$code"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM
trap 'fail "unexpected exit status $? at line $LINENO of deploy/smoke.sh"' ERR

# -- prerequisites ------------------------------------------------------------------
command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (is dockerd running?)"
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chown of the temporary root need it)"

if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
"$PYTHON" -c 'import av, cv2, numpy' 2>/dev/null \
    || fail "$PYTHON cannot import av, cv2 and numpy (install vvflow with: pip install '.[test]')"

# -- 1. base image ------------------------------------------------------------------
if [ "${SMOKE_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base: reusing $BASE_IMAGE"
else
    command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
    t=$SECONDS
    BOOTSTRAP=$(mktemp -d "${TMPDIR:-/tmp}/vvflow-smoke-base.XXXXXX")
    say "base: debootstrap bookworm from $MIRROR into $BOOTSTRAP"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
        bookworm "$BOOTSTRAP" "$MIRROR" >"$BOOTSTRAP.log" 2>&1 \
        || { tail -20 "$BOOTSTRAP.log" >&2; rm -f "$BOOTSTRAP.log"; fail "debootstrap failed"; }
    rm -f "$BOOTSTRAP.log"
    # As the official python images have it.
    ln -sf /usr/bin/python3 "$BOOTSTRAP/usr/local/bin/python"
    # The base trusts what this host trusts, so a TLS-inspecting proxy between this host
    # and PyPI works during the build. (minbase has no ca-certificates of its own.)
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$BOOTSTRAP/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$BOOTSTRAP/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$BOOTSTRAP"/var/cache/apt/archives/*.deb "$BOOTSTRAP"/var/lib/apt/lists/*
    tar -C "$BOOTSTRAP" -c . | docker import - "$BASE_IMAGE" >/dev/null \
        || fail "docker import of the debootstrap base failed"
    rm -rf "$BOOTSTRAP"
    BOOTSTRAP=""
    say "base: $BASE_IMAGE made in $(elapsed "$t")"
fi

# -- 2. image -----------------------------------------------------------------------
t=$SECONDS
say "build: $IMAGE from deploy/Dockerfile on $BASE_IMAGE"
build_log=$(mktemp "${TMPDIR:-/tmp}/vvflow-smoke-build.XXXXXX")
if ! docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f deploy/Dockerfile -t "$IMAGE" . >"$build_log" 2>&1; then
    tail -40 "$build_log" >&2
    rm -f "$build_log"
    fail "docker build failed"
fi
rm -f "$build_log"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "build: done in $(elapsed "$t"), image $((size / 1024 / 1024)) MiB"

# -- 3. one-shot commands as a non-root --user ------------------------------------------
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vvflow-smoke-root.XXXXXX")
chown "$PUID:$PGID" "$ROOT"
chmod 0700 "$ROOT"  # private to its owner: vvflow and its health check run as that owner
oneshot=(docker run --rm --read-only --tmpfs /tmp --network none
         --user "$PUID:$PGID" -v "$ROOT:/data" "$IMAGE")

t=$SECONDS
if ! out=$("${oneshot[@]}" vvflow doctor 2>&1); then
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    fail "vvflow doctor failed in the image (as --user $PUID:$PGID, read-only)"
fi
say "doctor: ok as --user $PUID:$PGID on a read-only root filesystem"
code=0
out=$("${oneshot[@]}" vvflow health 2>&1) || code=$?
[ "$code" = 1 ] || fail "vvflow health with no daemon: exit $code, expected 1 ($out)"
say "health: exit 1 while nothing runs ($out) [$(elapsed "$t")]"

# -- 4. the daemon --------------------------------------------------------------------
t=$SECONDS
docker run -d --name "$NAME" --read-only --tmpfs /tmp --network none \
    --cap-drop ALL --cap-add SETUID --cap-add SETGID --cap-add CHOWN \
    --security-opt no-new-privileges \
    -e PUID="$PUID" -e PGID="$PGID" -e VVFLOW_STABLE_SECONDS=1 \
    -v "$ROOT:/data" --stop-timeout 30 \
    --health-interval 2s --health-timeout 20s --health-retries 3 --health-start-period 60s \
    "$IMAGE" >/dev/null || fail "docker run failed"
RUNNING=1

container_state() { docker inspect -f '{{.State.Status}}' "$NAME" 2>/dev/null || echo gone; }

deadline=$((SECONDS + TIMEOUT))
until [ -d "$ROOT/input/pending" ] \
        && grep -q '"event": "watching"' <<<"$(docker logs "$NAME" 2>&1)"; do
    [ "$(container_state)" = running ] || fail "the container stopped while starting"
    [ $SECONDS -lt $deadline ] || fail "vvflow did not start watching within ${TIMEOUT}s"
    sleep 0.5
done
say "run: watching after $(elapsed "$t")"

# Every process of the container runs as PUID:PGID, tini (PID 1) included.
ids=$(docker top "$NAME" -eo pid,uid,gid,args | tail -n +2)
printf '%s\n' "$ids" | sed 's/^/    /'
if awk -v u="$PUID" -v g="$PGID" '$2 != u || $3 != g {bad=1} END {exit !bad}' <<<"$ids"; then
    fail "a process of the container does not run as $PUID:$PGID"
fi
say "run: every process runs as $PUID:$PGID"

# -- 5. a video -----------------------------------------------------------------------
t=$SECONDS
hidden="$ROOT/input/pending/.$STEM.mp4"
"$PYTHON" - "$hidden" <<'EOF' || fail "could not generate the test video"
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from media import make_video

make_video(Path(sys.argv[1]), seconds=3.0, width=320, height=240, fps=10, cuts=2,
           text="SMOKE", audio=True)
EOF
chown "$PUID:$PGID" "$hidden"
# Written under a hidden name (ignored), then renamed in: it arrives whole.
mv "$hidden" "$ROOT/input/pending/$STEM.mp4"

outputs=("analytic/$STEM.analytic.json" "summaries/$STEM.summary.json" "loglines/$STEM.logline.json")
deadline=$((SECONDS + TIMEOUT))
until [ -f "$ROOT/input/completed/$STEM.mp4" ]; do
    [ -e "$ROOT/input/failed/$STEM.mp4" ] && fail "the video went to input/failed/"
    [ "$(container_state)" = running ] || fail "the container stopped while processing"
    [ $SECONDS -lt $deadline ] || fail "the video did not reach input/completed/ within ${TIMEOUT}s"
    sleep 0.5
done
for output in "${outputs[@]}"; do
    [ -s "$ROOT/$output" ] || fail "missing output $output"
    "$PYTHON" -m json.tool "$ROOT/$output" >/dev/null || fail "$output is not valid JSON"
done
say "video: completed with its 3 outputs in $(elapsed "$t")"

owners=$(stat -c '%u:%g %a %n' "${outputs[@]/#/$ROOT/}")
printf '%s\n' "$owners" | sed "s|$ROOT/||; s/^/    /"
foreign=$(find "$ROOT" \( ! -uid "$PUID" -o ! -gid "$PGID" \) -printf '%U:%G %P\n')
[ -z "$foreign" ] || fail "files not owned by $PUID:$PGID under the root: $foreign"
# Docker's umask is 022: outputs are readable by other users (a web server, a backup).
modes=$(stat -c '%a' "${outputs[@]/#/$ROOT/}" | sort -u)
[ "$modes" = 644 ] || fail "outputs have mode $modes, expected 644 (umask 022)"
say "video: the outputs (mode 644) and everything else under the root belong to $PUID:$PGID"

# -- 6. health ------------------------------------------------------------------------
t=$SECONDS
deadline=$((SECONDS + TIMEOUT))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ]; do
    [ "$(container_state)" = running ] || fail "the container stopped before it was healthy"
    [ $SECONDS -lt $deadline ] || fail "health status is not healthy after ${TIMEOUT}s: $(
        docker inspect -f '{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}{{end}}' "$NAME")"
    sleep 1
done
say "health: healthy ($(docker inspect -f '{{with (index .State.Health.Log 0)}}{{.Output}}{{end}}' "$NAME" | head -1))"

# Informational: what the libraries left in the tmpfs /tmp.
tmp_entries=$(docker exec -u "$PUID:$PGID" "$NAME" find /tmp -mindepth 1 -maxdepth 2 \
    2>/dev/null | tr '\n' ' ' || true)
say "run: /tmp holds: ${tmp_entries:-nothing}"

# -- 7. stop --------------------------------------------------------------------------
t=$SECONDS
docker stop "$NAME" >/dev/null || fail "docker stop failed"
stop_seconds=$((SECONDS - t))
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "vvflow exited with code $code after docker stop"
[ "$stop_seconds" -le 15 ] || fail "docker stop took ${stop_seconds}s"
logs=$(docker logs "$NAME" 2>&1)
grep -q '"event": "stopped"' <<<"$logs" || fail "no 'stopped' log line after docker stop"
if grep -E 'Traceback|"level": "(error|critical)"' <<<"$logs"; then
    fail "the logs hold an error or a traceback"
fi
say "stop: exit code 0 in ${stop_seconds}s, clean shutdown logged"

say "PASS in $(elapsed)"
