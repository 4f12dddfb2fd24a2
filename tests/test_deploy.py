"""The deployment files say what deploy/README.md promises (fast: no Docker here).

deploy/smoke.sh is what builds and runs the image for real; these tests keep the
manifests, the Compose file, the Dockerfile and the systemd units honest between runs:
they parse, name the image, the volume, the probes and the security context, and the
vvflow.toml they carry is one vvflow itself accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vvflow.config import load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = "/usr/local/bin/vvflow-entrypoint"
HEALTH = ["vvflow", "health"]


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _kube_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in _yaml_documents(path):
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                objects[doc["kind"]] = doc
    return objects


def _compose() -> dict[str, Any]:
    (doc,) = _yaml_documents(DEPLOY / "compose.yaml")
    return doc


def _interpolate(text: str) -> str:
    """Compose's interpolation with every variable unset: ${NAME:-default} -> default."""
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)
    assert not re.search(r"(?<!\$)\$\{", text), "a ${VAR} without a default"
    return text.replace("$$", "$")


def _accepted_by_vvflow(toml_text: str, tmp_path: Path) -> Any:
    config = tmp_path / "vvflow.toml"
    config.write_text(toml_text)
    return load_settings(root_flag=str(tmp_path / "root"), config_flag=str(config))


def _container_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _kube_objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


# -- Kubernetes --------------------------------------------------------------------------


def test_kubernetes_manifests_parse_and_kustomization_lists_them_all() -> None:
    objects = _kube_objects()
    assert {"Deployment", "PersistentVolumeClaim", "ConfigMap"} <= objects.keys()
    (kustomization,) = _yaml_documents(KUBE / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}


def test_kubernetes_replicas_share_one_read_write_many_volume_at_data() -> None:
    objects = _kube_objects()
    deployment, pvc = objects["Deployment"], objects["PersistentVolumeClaim"]
    assert deployment["spec"]["replicas"] >= 2
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod, container = _container_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data = volumes[mounts["/data"]]
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VIDEO_STORAGE_ROOT"] == "/data"
    assert "vvflow" in container["image"]
    assert container["args"] == ["vvflow", "run"]


def test_kubernetes_config_polls_and_is_valid_for_vvflow(tmp_path: Path) -> None:
    config_map = _kube_objects()["ConfigMap"]
    pod, container = _container_spec()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[config_volume]["configMap"]["name"] == config_map["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VVFLOW_CONFIG"] == f"{mounts[config_volume]}/vvflow.toml"

    settings = _accepted_by_vvflow(config_map["data"]["vvflow.toml"], tmp_path)
    assert settings.observer == "polling"
    # The kubelet's SIGKILL must come after vvflow's own shutdown grace, with room.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_seconds + 10


def test_kubernetes_probes_run_vvflow_health() -> None:
    _, container = _container_spec()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == HEALTH, probe
        assert container[probe]["timeoutSeconds"] >= 5, probe


def test_kubernetes_security_context_and_resources() -> None:
    pod, container = _container_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert "fsGroup" in pod["securityContext"]
    assert pod["enableServiceLinks"] is False
    assert pod.get("hostNetwork", False) is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= container["resources"].keys()
    assert "memory" in container["resources"]["limits"]


# -- Compose -----------------------------------------------------------------------------


def test_compose_runs_vvflow_read_only_as_puid_with_health_and_init() -> None:
    service = _compose()["services"]["vvflow"]
    assert "vvflow" in service["image"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"]).resolve() == REPO
    assert any(str(v).endswith(":/data") for v in service["volumes"])
    assert {"PUID", "PGID"} <= service["environment"].keys()
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert service["cap_drop"] == ["ALL"]
    assert set(service["cap_add"]) <= {"SETUID", "SETGID", "CHOWN"}
    assert service["healthcheck"]["test"] == ["CMD", ENTRYPOINT, *HEALTH]
    # docker stop waits longer than vvflow's default shutdown grace (20 s).
    assert int(service["stop_grace_period"].rstrip("s")) > 20


def test_compose_web_page_is_read_only_loopback_published_and_needs_a_token() -> None:
    """The page's service: `vvflow web` (a command the CLI knows) on the root mounted
    read-only, published on the host's loopback only, refusing to start without a
    token (it listens on 0.0.0.0 inside the container)."""
    service = _compose()["services"]["vvflow-web"]
    assert service["profiles"] == ["web"]
    command = service["command"]
    assert command[:2] == ["vvflow", "web"]
    assert command[command.index("--web-host") + 1] == "0.0.0.0"
    assert all(str(v).endswith(":/data:ro") for v in service["volumes"])
    assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])
    assert ":?" in service["environment"]["VVFLOW_WEB_TOKEN"]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert service["healthcheck"] == {"disable": True}


def test_compose_docker_stages_example_is_a_valid_vvflow_config(tmp_path: Path) -> None:
    compose = _compose()
    service = compose["services"]["vvflow-docker-stages"]
    assert service["profiles"] == ["docker-stages"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    (config,) = service["configs"]
    assert service["environment"]["VVFLOW_CONFIG"] == config["target"]
    # The root is mounted at the same absolute path inside as on the host, because
    # the host's engine reads the stages' `-v {root}:{root}`.
    root_mount = _interpolate(str(service["volumes"][0]))
    inside, outside = root_mount.split(":")
    assert inside == outside == _interpolate(service["environment"]["VIDEO_STORAGE_ROOT"])

    toml_text = _interpolate(compose["configs"][config["source"]]["content"])
    settings = _accepted_by_vvflow(toml_text, tmp_path)
    assert [s.name for s in settings.stages] == ["scan", "summarize", "logline"]
    for stage in settings.stages:
        assert stage.command[:3] == ["docker", "run", "--rm"], stage.name
        assert "{root}:{root}" in stage.command, stage.name


def test_compose_says_the_socket_is_root_on_the_host() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert "root-equivalent" in text
    assert "root on the host" in text


# -- Dockerfile --------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    """Instructions, one per entry, continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [ins.strip() for ins in "\n".join(lines).replace("\\\n", " ").split("\n") if ins.strip()]


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for instruction in _dockerfile():
        if instruction.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_base_image_arg_and_two_stages() -> None:
    instructions = _dockerfile()
    assert instructions[0] == "ARG BASE_IMAGE=python:3.12-slim"
    builder, final = _stages()
    assert builder[0] == "FROM ${BASE_IMAGE} AS builder"
    assert final[0] == "FROM ${BASE_IMAGE}"
    final_text = "\n".join(final)
    # The dependencies and vvflow itself in two layers: a code change ships a small one.
    assert "COPY --from=builder /opt/vvflow /opt/vvflow" in final
    assert "COPY --from=builder /opt/vvflow-app /opt/vvflow-app" in final
    # No compilers and no package manager run in the final stage.
    for word in ("apt-get", "gcc", "build-essential", "pip install"):
        assert word not in final_text, word


def test_dockerfile_data_volume_health_init_and_command() -> None:
    final = _stages()[-1]
    env = " ".join(i for i in final if i.startswith("ENV "))
    for setting in ("VIDEO_STORAGE_ROOT=/data", "PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp"):
        assert setting in env, setting
    assert "VOLUME /data" in final
    (health,) = [i for i in final if i.startswith("HEALTHCHECK ")]
    assert health.endswith(f'CMD ["{ENTRYPOINT}", "vvflow", "health"]')
    assert f'ENTRYPOINT ["{ENTRYPOINT}"]' in final
    assert final[-1] == 'CMD ["vvflow", "run"]'
    assert "STOPSIGNAL SIGTERM" in final
    assert "COPY --from=builder /usr/bin/tini-static /usr/bin/tini" in final


def _entrypoint_script() -> str:
    """The entrypoint the Dockerfile writes with printf, one quoted argument a line."""
    text = DOCKERFILE.read_text()
    block = text.split("printf '%s\\n' \\\n", 1)[1].split(f"> {ENTRYPOINT}", 1)[0]
    return "\n".join(shlex.split(block.replace("\\\n", " "))) + "\n"


def test_entrypoint_drops_to_puid_pgid_and_execs_as_non_root() -> None:
    script = _entrypoint_script()
    assert script.startswith("#!/bin/sh\n")
    lines = script.splitlines()
    # Started as another user: straight to the command (under tini when PID 1).
    assert 'if [ "$(id -u)" != 0 ]; then exec "$@"; fi' in lines
    assert 'uid="${PUID:-1000}"; gid="${PGID:-1000}"' in lines
    (drop,) = [ln for ln in lines if ln.startswith("exec setpriv ")]
    assert '--reuid="$uid" --regid="$gid"' in drop
    assert "--no-new-privs" in drop
    assert drop.endswith('-- "$@"')
    assert "set -- /usr/bin/tini -s --" in script


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_entrypoint_is_valid_sh(tmp_path: Path) -> None:
    path = tmp_path / "vvflow-entrypoint"
    path.write_text(_entrypoint_script())
    subprocess.run(["sh", "-n", str(path)], check=True)


def _run_entrypoint(
    tmp_path: Path, *argv: str, user: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint script (fed on stdin, so that any user can read it)."""
    environ = {"PATH": os.environ["PATH"], "VIDEO_STORAGE_ROOT": str(tmp_path), **env}
    return subprocess.run(
        [*(user or []), "sh", "-s", "--", *argv],
        input=_entrypoint_script(),
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )


ID = ["sh", "-c", 'echo "$(id -u):$(id -g):$(id -G)"']
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_entrypoint_as_non_root_just_runs_the_command(tmp_path: Path) -> None:
    user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to become another user")
        user = NOBODY
    proc = _run_entrypoint(tmp_path, "echo", "hello", user=user, PUID="4321")
    assert (proc.returncode, proc.stdout) == (0, "hello\n"), proc.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_entrypoint_as_root_runs_the_command_as_puid_pgid(tmp_path: Path) -> None:
    proc = _run_entrypoint(tmp_path, *ID, PUID="4321", PGID="4322")
    assert (proc.returncode, proc.stdout) == (0, "4321:4322:4322\n"), proc.stderr
    proc = _run_entrypoint(tmp_path, *ID, PUID="4321", PGID="4322", EXTRA_GIDS="5,6")
    assert (proc.returncode, proc.stdout) == (0, "4321:4322:4322 5 6\n"), proc.stderr
    proc = _run_entrypoint(tmp_path, *ID)
    assert (proc.returncode, proc.stdout) == (0, "1000:1000:1000\n"), proc.stderr
    for bad in ({"PUID": "0"}, {"PUID": "abc"}, {"PGID": "1;2"}, {"EXTRA_GIDS": "x"}):
        proc = _run_entrypoint(tmp_path, *ID, **bad)
        assert proc.returncode == 2, bad
        assert proc.stderr.startswith("vvflow-entrypoint: "), bad
        assert not proc.stdout


def test_dockerignore_sends_only_what_the_image_is_built_from() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*"
    copied = {
        part.removeprefix("/src/")
        for ins in _stages()[0]
        if ins.startswith("COPY ") and "--from" not in ins
        for part in ins.split()[1:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "vvflow"}
    assert {f"!{name}" for name in copied} <= set(patterns)


# -- systemd -----------------------------------------------------------------------------


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_is_hardened() -> None:
    service = _unit("vvflow.service")["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
    }.items():
        assert one(key) == value, key
    assert one("User") not in ("", "root", "0")
    assert one("ExecStart").endswith("vvflow run")
    env = " ".join(service["Environment"])
    root = re.search(r"VIDEO_STORAGE_ROOT=(\S+)", env)
    assert root is not None
    assert one("ReadWritePaths") == root.group(1)
    assert int(one("TimeoutStopSec").rstrip("s")) > 20  # vvflow's default grace
    # No WatchdogSec: vvflow does not speak sd_notify; a health timer instead.
    assert "WatchdogSec" not in service
    assert "vvflow-health.timer" in " ".join(_unit("vvflow.service")["Unit"]["Wants"])


def test_systemd_health_timer_runs_vvflow_health_and_restarts() -> None:
    health = _unit("vvflow-health.service")["Service"]
    assert health["Type"] == ["oneshot"]
    assert health["ExecStart"][0].endswith("vvflow health")
    assert health["User"] == _unit("vvflow.service")["Service"]["User"]
    assert "restart vvflow.service" in health["ExecStopPost"][0]
    timer = _unit("vvflow-health.timer")
    assert "OnUnitActiveSec" in timer["Timer"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: point the units at this vvflow.
    beside = Path(sys.executable).with_name("vvflow")
    vvflow = str(beside) if beside.exists() else shutil.which("vvflow")
    if vvflow is None:
        pytest.skip("no vvflow command here")
    names = ("vvflow.service", "vvflow-health.service", "vvflow-health.timer")
    for name in names:
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/vvflow/bin/vvflow", vvflow))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


# -- smoke.sh ----------------------------------------------------------------------------


def test_smoke_script_is_executable_and_parses() -> None:
    smoke = DEPLOY / "smoke.sh"
    assert os.access(smoke, os.X_OK)
    subprocess.run(["bash", "-n", str(smoke)], check=True)
    text = smoke.read_text()
    for piece in (
        "debootstrap --variant=minbase --include=python3,python3-venv,python3-pip",
        "docker import",
        "--build-arg BASE_IMAGE=",
        "--read-only --tmpfs /tmp",
        'PUID="$PUID" -e PGID="$PGID"',
        "docker stop",
        ".State.Health.Status",
    ):
        assert piece in text, piece
