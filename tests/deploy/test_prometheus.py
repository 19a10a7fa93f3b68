"""The alert rules and the dashboard, checked by Prometheus' own tools and against a real server:

- promtool checks the rule file and the scrape configuration, and runs the rules' unit tests (alerts.test.yaml:
  series that must fire each alert and series that must not);
- every metric the rules and the dashboard name is one `maasctl serve` exports (a typo in a rule fails here);
- a real Prometheus scrapes a real `maasctl serve`, evaluates the rules on what arrives without an error, and
  answers queries for each of those names.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, free_port, http, infer, scrape, start_server, stop_server, system_tool, wait_until

from maasctl import drift

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "maasctl.json"
RULE_TESTS = Path(__file__).parent / "alerts.test.yaml"
FROM_PROMETHEUS = {"up"}  # made by Prometheus for each target, not by the server

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names
    (in `{...}`, `by (...)`, `on (...)`...) or parts of strings, ranges and Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr):
        following = expr[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]  # rows have none
    exprs += [
        v["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
        for v in doc["templating"]["list"]
        if "definition" in v
    ]
    return exprs


def referenced() -> set[str]:
    return set().union(*map(metric_names, rule_exprs() + dashboard_exprs())) - FROM_PROMETHEUS


def test_metric_name_extraction():
    expr = 'sum by (model, le) (rate(foo_bucket{job=~"$job", le="0.1"}[$__rate_interval])) / on(model) bar_total > 0.5'
    assert metric_names(expr) == {"foo_bucket", "bar_total"}
    assert metric_names("histogram_quantile(0.99, x) and y unless z offset 5m") == {"x", "y", "z"}


def test_rule_file_passes_promtool_check():
    promtool = system_tool("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_on_the_series_they_should_and_only_those():
    promtool = system_tool("promtool")
    done = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    """An alert added to the rules without unit tests fails here. promtool compares the exact list of firing
    alerts, so a series of the same test that is left out of `exp_alerts` is checked to stay quiet."""
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    fires, quiet = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        # Which model (or, for `up`, which target) each input series belongs to.
        sources = {re.search(r'(?:model|instance)="([^"]+)"', s["series"]).group(1) for s in test["input_series"]}
        for case in test["alert_rule_test"]:
            fired = {a["exp_labels"].get("model") or a["exp_labels"].get("instance") for a in case["exp_alerts"]}
            if fired:
                fires.add(case["alertname"])
            if sources - fired:
                quiet.add(case["alertname"])
    assert alerts <= fires, f"no series fires {sorted(alerts - fires)}"
    assert alerts <= quiet, f"no series stays quiet for {sorted(alerts - quiet)}"


def test_drift_alert_thresholds_are_the_ones_maasctl_monitor_uses():
    exprs = [e for e in rule_exprs() if "maasctl_drift" in e]
    assert len(exprs) == 2
    for expr in exprs:
        assert f"> {drift.PSI_THRESHOLD}" in expr and f">= {drift.MIN_SAMPLES}" in expr, expr


def test_dashboard_shows_traffic_latency_batching_queue_and_drift():
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "rate(nv_inference_request_success_total",
        "histogram_quantile(0.99, sum by (model, le) (rate(maasctl_inference_request_seconds_bucket",
        "nv_inference_count_total",  # over nv_inference_exec_count_total: the batch size
        "maasctl_inference_queue_seconds_bucket",
        "maasctl_drift_psi",
        "maasctl_drift_prediction_psi",
    ):
        assert needed in exprs, needed


@pytest.fixture(scope="module")
def live(model_repo):
    """A real `maasctl serve` that has answered successes and failures (so every failure series exists)."""
    server = start_server(model_repo, "--max-batch-size", "4")
    rng = np.random.default_rng(0)
    for rows in (1, 3, 2):
        assert infer(server.url, "digits", {"input": rng.random((rows, 1, 8, 8), dtype=np.float32)})[0] == 200
    bad = json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}]})
    assert http("POST", server.url + "/v2/models/digits/infer", bad.encode())[0] == 400
    yield server
    stop_server(server)


def test_every_metric_the_rules_and_dashboard_name_is_exported(live):
    exported = {name for name, _ in scrape(live.url)}
    missing = referenced() - exported
    assert not missing, (
        f"named in {RULES.name} or {DASHBOARD.name} but not exported by maasctl serve: {sorted(missing)}"
    )
    assert "not_a_maasctl_metric" in metric_names("rate(not_a_maasctl_metric[5m]) > 0") - exported  # it can fail


def test_a_real_prometheus_scrapes_the_server_and_evaluates_the_rules(live, tmp_path):
    prometheus = system_tool("prometheus")
    port = free_port()
    target = urllib.parse.urlsplit(live.url).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "maasctl", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:

        def query(expr: str) -> list[dict]:
            status, _, body = http("GET", f"{api}/query?query={urllib.parse.quote(expr)}")
            assert status == 200, body
            return json.loads(body)["data"]["result"]

        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                ready = http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200
            except OSError:  # not listening yet
                return False
            return ready and bool(query('up{job="maasctl"} == 1'))

        wait_until(up, "Prometheus to scrape maasctl", timeout=60)
        # Each name the rules and the dashboard use, under that name, with the server's labels.
        for name in sorted(referenced()):
            wait_until(lambda name=name: query(name), f"{name} in Prometheus", timeout=30)
        (success,) = query('nv_inference_request_success_total{job="maasctl", model="digits"}')
        assert float(success["value"][1]) == 3
        assert [float(r["value"][1]) for r in query('maasctl_model_ready{model="digits"}')] == [1]
        # Every dashboard query runs (Grafana's variables filled in as it would) and finds data.
        for expr in dashboard_exprs():
            filled = expr.replace("$__rate_interval", "30s").replace("$job", "maasctl").replace("$model", ".*")
            wait_until(lambda filled=filled: query(filled), f"dashboard query {filled}", timeout=30)
        # Every rule evaluates on real data without an error, and none fires on a healthy server.
        time.sleep(2)
        status, _, body = http("GET", f"{api}/rules")
        assert status == 200, body
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        assert len(rules) == len(rule_exprs())
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert [r["name"] for r in rules if r["state"] != "inactive"] == []
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
