"""The alerting rules in docker/prometheus/: valid (promtool check rules), behaving as intended (promtool test
rules), and written against metrics the code exports. promtool comes with Debian's `prometheus` (make installs
it like flite)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics

RULES = Path(__file__).resolve().parents[2] / "docker" / "prometheus"


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def exported_names() -> set[str]:
    """Every series name the registry exposes, with the suffixes Prometheus adds (_total, _bucket, ...)."""
    for metric in vars(metrics).values():  # a labelled family exposes samples only once a child exists
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["test"] * len(metric._labelnames))
    return {s.name for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}


def test_every_metric_a_rule_uses_is_exported() -> None:
    text = (RULES / "alerts.yml").read_text()
    used = set(re.findall(r"\b(streamsense_[a-z_]+)", text))
    assert used and used <= exported_names(), used - exported_names()


def test_the_exposition_passes_promtool_check_metrics() -> None:
    exported_names()
    done = subprocess.run(["promtool", "check", "metrics"], input=metrics.exposition(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_every_grafana_panel_queries_metrics_the_code_exports() -> None:
    import json

    dashboard = json.loads((RULES.parent / "grafana" / "dashboards" / "streamsense.json").read_text())
    exported = exported_names() | {"up"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\b(streamsense_[a-z_]+|up)\b(?=[{\[(\s)]|$)", target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)
