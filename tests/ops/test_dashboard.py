"""``contrib/grafana/bridge.json``: importable as is, and every expression names only
metrics the bridge exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bridge.ops.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "bridge.json"
# PromQL's functions, aggregations and keywords the dashboard may use.
PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count",
    "by", "without", "time", "label_values", "and", "or", "unless", "on", "ignoring",
    "group_left", "group_right", "topk", "bottomk", "abs", "clamp_min", "clamp_max",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
# Grafana's label_values(metric, label): the second argument is a label.
_LABEL_VALUES = re.compile(r"label_values\(([^,()]+),[^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def exported() -> set[str]:
    """Every sample name the bridge's metrics expose."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        names |= {family.name + suffix for suffix in suffixes}
    return names


def expressions(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict):
                found.append(value["query"])
            else:
                found += expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += expressions(item)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, groupings, ranges, strings,
    functions and numbers taken out first)."""
    expr = _LABEL_VALUES.sub(r"\1", expr)
    for pattern in (_STRING, _MATCHERS, _GROUPING, _RANGE):
        expr = pattern.sub(" ", expr)
    expr = expr.replace("$__rate_interval", " ")
    return {w for w in _IDENTIFIER.findall(expr) if w not in PROMQL_WORDS}


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # Importable without editing: no export-time placeholders, its own data-source variable.
    assert "__inputs" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8")
    assert dashboard["uid"] == "matrix-oidc-bridge"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


def test_every_expression_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = expressions(dashboard)
    assert len(found) >= 20
    known = exported()
    used: set[str] = set()
    for expr in found:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, (expr, names - known)
        used |= names
    # The dashboard covers traffic, latency, errors, the cache, the issuer, the homeserver.
    for family in (
        "requests_total",
        "request_duration_seconds_bucket",
        "token_cache_lookups_total",
        "issuer_requests_total",
        "homeserver_errors_total",
        "homeserver_request_duration_seconds_bucket",
    ):
        assert "matrix_oidc_bridge_" + family in used


def test_the_check_itself_catches_an_unknown_metric() -> None:
    assert metric_names('sum by (route) (rate(matrix_oidc_bridge_nope_total{a="b"}[5m]))') == {
        "matrix_oidc_bridge_nope_total"
    }
    assert "matrix_oidc_bridge_nope_total" not in exported()
