"""What is where under a storage root, for `vvflow status`."""

from __future__ import annotations

from typing import Any

from vvflow import instance, report
from vvflow.dedupe import DigestIndex
from vvflow.layout import Layout, State


def collect(layout: Layout, lease_seconds: float) -> dict[str, Any]:
    """Counts per state, failures with stage and reason, ignored entries, instances."""
    candidates, ignored = layout.scan_pending()
    folders = layout.instance_folders()
    processing: list[str] = []
    instances: list[dict[str, object]] = []
    for folder in folders:
        claims = layout.claims_in(folder)
        processing.extend(p.name for p in claims)
        age = instance.heartbeat_age(folder)
        instances.append(
            {
                "name": folder.name,
                "claims": len(claims),
                "heartbeat_age_s": None if age is None else round(age, 1),
                "dead": instance.is_dead(folder, lease_seconds),
            }
        )
    failed = sorted(layout.files_in(State.FAILED))
    failures = []
    for name in failed:
        rep = report.load(layout.report_path(name))
        if rep is None:
            failures.append({"name": name, "stage": None, "error": "no report"})
        else:
            failures.append({"name": name, "stage": rep.failed_stage, "error": rep.error})
    return {
        "root": str(layout.root),
        State.PENDING.value: len(candidates),
        State.PROCESSING.value: len(processing),
        State.COMPLETED.value: sum(1 for _ in layout.files_in(State.COMPLETED)),
        State.FAILED.value: len(failed),
        "duplicates": DigestIndex(layout).duplicate_count(),
        "failures": failures,
        "ignored": [{"name": i.name, "reason": i.reason} for i in ignored],
        "processing_names": processing,
        "instances": instances,
    }


def render(data: dict[str, Any]) -> str:
    lines = [f"root        {data['root']}"]
    for state in State:
        lines.append(f"{state.value:<11} {data[state.value]}")
    lines.append(
        f"{'duplicates':<11} {data['duplicates']}  (completed from another video's outputs)"
    )
    if data["failures"]:
        lines.append("failures:")
        for f in data["failures"]:
            stage = f["stage"] or "-"
            lines.append(f"  {f['name']!r}  stage={stage}  {f['error']}")
    if data["ignored"]:
        lines.append("ignored in input/pending/:")
        for i in data["ignored"]:
            lines.append(f"  {i['name']!r}  {i['reason']}")
    for inst in data["instances"]:
        alive = "dead" if inst["dead"] else "alive"
        lines.append(
            f"instance    {inst['name']}  {alive}  claims={inst['claims']}  "
            f"heartbeat_age_s={inst['heartbeat_age_s']}"
        )
    return "\n".join(lines) + "\n"
