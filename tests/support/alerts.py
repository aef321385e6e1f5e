"""The alerting rules (deploy/prometheus/alerts.yml) as tests read them: each rule's PromQL
parsed (promql-parser), the series it selects, and which samples of a process's /metrics
a selector picks - its metric name and label matchers. The rest of an expression (rates,
aggregation, comparison, `for`) is Prometheus's to evaluate: promtool on synthetic series
(tests/contract/test_alert_rules.py), a real server on the processes' series
(tests/e2e/test_monitoring.py)."""

from __future__ import annotations

import re
from pathlib import Path

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
CONFIG_FILE = RULES_FILE.with_name("prometheus.yml")  # the Prometheus configuration that loads it
MADE_BY_PROMETHEUS = "up"  # the scrape's own series, not a process's metric

_MATCH = {  # by the name of promql_parser.MatchOp's member (its members are not hashable)
    "Equal": lambda pattern, value: value == pattern,
    "NotEqual": lambda pattern, value: value != pattern,
    "Re": lambda pattern, value: re.fullmatch(pattern, value) is not None,
    "NotRe": lambda pattern, value: re.fullmatch(pattern, value) is None,
}


def rule_list() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def deployed_config() -> dict:
    """The deployed Prometheus configuration, its rule file named by this checkout's path
    (the container's path there)."""
    config = yaml.safe_load(CONFIG_FILE.read_text())
    assert len(config["rule_files"]) == 1, config["rule_files"]
    return {**config, "rule_files": [str(RULES_FILE)]}


def rule(alert: str) -> dict:
    return next(r for r in rule_list() if r["alert"] == alert)


def nodes(expr: str, kind: type) -> list:
    """Every node of `kind` in the parsed expression (ValueError when it is not PromQL)."""
    found = []
    promql_parser.walk(promql_parser.parse(expr), pre_visit=lambda n: found.append(n) if isinstance(n, kind) else None)
    return found


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    return nodes(expr, promql_parser.VectorSelector)


def matches(selector: promql_parser.VectorSelector, name: str, labels: dict[str, str]) -> bool:
    """Prometheus's rule: a label the series lacks counts as the empty string."""
    return name == selector.name and all(
        _MATCH[str(m.op).rpartition(".")[2]](m.value, labels.get(m.name, "")) for m in selector.matchers.matchers)


def selected(alert: str, exposition: str) -> list:
    """The samples of one process's /metrics text that the alert's selectors pick."""
    chosen = [s for s in selectors(rule(alert)["expr"]) if s.name != MADE_BY_PROMETHEUS]
    return [sample for family in text_string_to_metric_families(exposition) for sample in family.samples
            if any(matches(s, sample.name, sample.labels) for s in chosen)]
