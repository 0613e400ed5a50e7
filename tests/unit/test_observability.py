"""The Grafana dashboard and the Prometheus alerting rules in deploy/: valid, and querying only metrics
that a worker's /metrics really serves."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream.board import Board

from .test_web import fed_board, get

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "vigil-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "vigil-rules.yaml"
METRIC = re.compile(r"\bvigil_[a-z_]+")


def served_metrics(board: Board) -> set[str]:
    text = get(board, "/metrics")[1].decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vigil_")}


def queried(exprs) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)}


def test_every_metric_the_dashboard_and_the_rules_query_is_served():
    board, _ = fed_board()
    served = served_metrics(board)
    dash = json.loads(DASHBOARD.read_text())
    dash_exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rule_exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for expr_set in (dash_exprs, rule_exprs):
        missing = queried(expr_set) - served
        assert not missing, f"queried but not on /metrics: {sorted(missing)}"
    wanted = {"vigil_readings_total", "vigil_consumer_lag", "vigil_dlq_total", "vigil_open_alerts",
              "vigil_entity_drifting", "vigil_model_info", "vigil_inference_seconds_total",
              "vigil_entity_last_reading_seconds"}
    assert wanted <= queried(dash_exprs), "throughput, lag, DLQ, incidents, drift, models, latency, silence"
    assert {p["id"] for p in dash["panels"]} == set(range(1, len(dash["panels"]) + 1))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_rules_cover_lag_dead_letters_a_dead_worker_and_a_silent_entity():
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"VigilWorkerDown", "VigilConsumerLagGrowing", "VigilDeadLetters", "VigilEntitySilent"} <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_the_lag_rule_fires_on_a_growing_backlog_and_not_on_one_that_drains():
    out = subprocess.run(["promtool", "test", "rules", str(RULES.with_suffix(".test.yaml"))], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_lag_in_seconds_and_the_time_to_catch_up_are_served():
    board = Board()
    board.lag_samples.clear()
    board.lag_samples.extend([(100.0, 9000), (110.0, 6000)])  # 300 messages a second less
    board.lag, board.lag_seconds = {0: 6000}, {0: 42.0}
    assert board.catch_up_seconds() == pytest.approx(20.0)
    assert board.health()["consumer_lag_seconds"] == {"0": 42.0} and board.health()["catch_up_s"] == 20.0
    text = get(board, "/metrics")[1].decode()
    assert 'vigil_consumer_lag_seconds{partition="0"} 42.0' in text and "vigil_catch_up_seconds 20.0" in text
    board.lag_samples.append((120.0, 7000))  # growing again over the horizon's last 10 s
    board.lag_samples.popleft()
    assert board.catch_up_seconds() == float("inf") and board.health()["catch_up_s"] is None
    assert "vigil_catch_up_seconds +Inf" in get(board, "/metrics")[1].decode()
    board.lag_samples.append((121.0, 0))
    assert board.catch_up_seconds() == 0.0
