"""deploy/grafana and deploy/prometheus: the dashboard and the alert rules are well formed, and every query in them
parses as PromQL (with `promql-parser`, the parser of the Prometheus-compatible Rust ecosystem)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

promql = pytest.importorskip("promql_parser", reason="`pip install promql-parser` (it is in the dev extra)")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "batchery-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PANEL_TYPES = {"row", "stat", "timeseries", "gauge", "bargauge", "table", "text"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables with values Prometheus would receive."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def parse(expr: str) -> Any:
    try:
        return promql.parse(expr)
    except ValueError as exc:
        pytest.fail(f"not valid PromQL ({exc}): {expr}")


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", "panels follow the data source variable"
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, f"{panel['title']} uses undefined variables {used - variables}"
            parse(grafana_to_promql(target["expr"]))
            # Picking a job (one deployment among several in one Prometheus) must narrow every panel.
            assert 'job=~"$job"' in target["expr"], f"{panel['title']} ignores the job variable"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    (group,) = rules["groups"]
    names = [r["alert"] for r in group["rules"]]
    assert len(names) == len(set(names))
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"], "an alert says what to check next"
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert isinstance(parse(rule["expr"]), promql.BinaryExpr), f"{rule['alert']} compares against a threshold"


def test_alerts_cover_what_operators_page_on() -> None:
    exprs = {r["alert"]: r["expr"] for r in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]}
    text = " ".join(exprs.values())
    assert "histogram_quantile(0.99" in text, "p99 latency"
    assert 'status=~"5.."' in text, "error rate"
    assert "batchery_queue_depth" in text, "queue depth"
    assert "kube_deployment_status_replicas_ready" in text, "replicas not ready"
