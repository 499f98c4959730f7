"""What /metrics tells a dashboard: every series from the start, edit quality per edit, the
accounting of reverts and restores, process CPU and memory, and a queue depth from one process."""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics
from app.status import EditStatus, VersionKind
from tests.app.conftest import RunningServer, wait_edit, wait_job


def samples(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_series_exist_from_the_start_and_follow_edits_reverts_and_restores(server: RunningServer) -> None:
    start = samples(server)
    for status in EditStatus:
        assert value(start, "smedit_edits_total", status=status) == 0.0, status
    for kind in VersionKind:
        if kind != VersionKind.BASE:
            assert value(start, "smedit_versions_created_total", kind=kind) == 0.0, kind
    for check in ("es", "gs", "canary", "capacity", "breaks"):
        assert value(start, "smedit_gate_rejections_total", check=check) == 0.0
    assert value(start, "smedit_edit_success_ratio_count") == 0.0
    assert value(start, "process_resident_memory_bytes") > 0 and value(start, "process_cpu_seconds_total") > 0
    assert value(start, "smedit_queue_depth") == 0.0  # embedded: this process is the editing worker

    c = server.client()
    edit_id = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green",
                                        "paraphrases": ["On a clear day the sky is"]}).json()["edit_ids"][0]
    edit = wait_edit(c, edit_id)
    assert edit["status"] == "applied"
    after = samples(server)
    assert value(after, "smedit_edits_total", status="applied") == 1.0
    assert value(after, "smedit_edit_success_ratio_count") == 1.0
    assert math.isclose(value(after, "smedit_edit_success_ratio_sum"), edit["metrics"]["es"], abs_tol=1e-9)
    assert math.isclose(value(after, "smedit_edit_generalisation_ratio_sum"), edit["metrics"]["gs"], abs_tol=1e-9)
    assert value(after, "smedit_edit_side_effects_ratio_count") == 1.0

    assert wait_job(c, c.post(f"/v1/edits/{edit_id}/revert").json()["job_id"])["status"] == "done"
    assert wait_job(c, c.post(f"/v1/versions/{edit['applied_version']}/restore").json()["job_id"])["status"] == "done"
    assert c.get(f"/v1/edits/{edit_id}").json()["status"] == "applied"
    end = samples(server)
    assert value(end, "smedit_edits_total", status="reverted") == 1.0
    assert value(end, "smedit_edits_total", status="applied") == 2.0  # the restore applied it again
    assert value(end, "smedit_versions_created_total", kind="restore") == 1.0


def test_queue_depth_is_reported_only_by_its_owner() -> None:
    metrics = Metrics()
    leading = {"now": False}
    metrics.track_queue(lambda: 7, lambda: leading["now"])
    text = metrics.render().decode()
    assert "# TYPE smedit_queue_depth gauge" in text and "\nsmedit_queue_depth " not in text
    leading["now"] = True
    assert "\nsmedit_queue_depth 7.0" in metrics.render().decode()

    def down() -> int:
        raise ConnectionError("redis is down")

    metrics.track_queue(down, lambda: True)
    assert "\nsmedit_queue_depth NaN" in metrics.render().decode()  # a value-less scrape, not a 500
