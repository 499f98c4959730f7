"""The Grafana dashboard only queries metrics (and labels) the service exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "smedit-dashboard.json"


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_dashboard_queries_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "smedit"
    samples: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        labels = set()
        for s in family.samples:
            labels |= set(s.labels)
        for suffix in ("", "_total", "_bucket", "_sum", "_count"):
            samples[family.name + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    # families with labels have no samples until used: take their label names from the collectors
    m = Metrics()
    for attr in vars(m).values():
        names = getattr(attr, "_labelnames", None)
        if names:
            base = attr._name
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                samples.setdefault(base + suffix, set()).update(names)
    exprs = _exprs(dashboard)
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bsmedit_[a-z_]+", expr):
            assert name in samples, (name, expr)
            used.add(name.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count"))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert any(label in samples[n] for n in re.findall(r"\bsmedit_[a-z_]+", expr)) or label in {"le", "instance"}, (label, expr)
    wanted = {"smedit_edits", "smedit_queue_depth", "smedit_edit_latency_seconds", "smedit_gate_rejections",
              "smedit_versions_created", "smedit_live_version", "smedit_inference_seconds"}
    assert wanted <= used, wanted - used
