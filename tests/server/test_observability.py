"""Metrics as an operator sees them: a real Prometheus scraping a real server, promtool on the
exposition and on the alert rules, and a dashboard whose every query names exported metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.kvserver import ServerProcess, start_server
from support.scenarios import run_scenario

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm/kvferry/rules/kvferry.rules.yaml"
DASHBOARD = ROOT / "helm/kvferry/dashboards/kvferry.json"
METRIC = re.compile(r"\b(?:kvferry|grpc_server)_[a-z_]+\b")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test-deps` installs Debian's prometheus package")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def busy_server() -> Iterator[ServerProcess]:
    """A fresh server that has run the seed scenario once (so every histogram has samples)."""
    srv = start_server()
    asyncio.run(run_scenario(srv, "observed", lambda st: st.sent_tokens, max_polls=5000))
    yield srv
    assert srv.stop() == 0


def exported_names(srv: ServerProcess) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in srv.metrics_text().splitlines()
            if line and not line.startswith("#")}


def test_promtool_accepts_the_live_exposition(busy_server: ServerProcess) -> None:
    r = subprocess.run([tool("promtool"), "check", "metrics"], input=busy_server.metrics_text(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_series_family_exists_from_start() -> None:
    srv = start_server()
    try:
        text = srv.metrics_text()
    finally:
        assert srv.stop() == 0
    for state in ("bootstrapping", "transferring", "resuming", "success", "failed"):
        assert f'kvferry_transfers{{state="{state}"}} 0.0' in text
    for outcome in ("success", "aborted", "bootstrap_timeout", "stall_timeout", "lease_expired",
                    "sender_gone", "receiver_gone", "shutdown", "error"):
        assert f'kvferry_transfers_finished_total{{outcome="{outcome}"}} 0.0' in text
    assert 'kvferry_resume_duplicates_skipped_total{reason="stale"} 0.0' in text
    assert ('grpc_server_handled_total{grpc_code="FailedPrecondition",grpc_method="Resume",'
            'grpc_service="kvferry.v1.TransferService",grpc_type="unary"} 0.0') in text
    assert "_created" not in text


def test_alert_rules_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "kvferry.rules.test.yaml"],
                          cwd=ROOT / "tests/support/prometheus", capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_and_rules_name_only_exported_metrics(busy_server: ServerProcess, tmp_path: Path) -> None:
    exported = exported_names(busy_server)
    exprs = dashboard_exprs()
    rule_exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rule_exprs) == 6 and len(exprs) > 15
    exprs += rule_exprs
    for expr in exprs:
        named = set(METRIC.findall(expr))
        assert named, f"no kvferry or gRPC metric in {expr!r}"
        assert named <= exported, f"{sorted(named - exported)} are not exported (in {expr!r})"
    # Every panel query is valid PromQL: promtool parses them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*")}
        for i, e in enumerate(dashboard_exprs()) if not e.startswith("label_values")]}]}
    path = tmp_path / "dashboard.rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    r = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


class Prometheus:
    def __init__(self, scrape_port: int, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "kvferry",
                                "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}],
        }))
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._get("/-/ready", wait=30)

    def _get(self, path: str, wait: float = 10) -> bytes:
        deadline = time.monotonic() + wait
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                    return r.read()
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def query(self, promql: str) -> list[dict]:
        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for_value(self, promql: str, expected: float, within: float = 30) -> list[dict]:
        deadline = time.monotonic() + within
        while True:
            result = self.query(promql)
            if result and float(result[0]["value"][1]) == expected:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} = {result}, expected {expected}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_real_prometheus_scrapes_the_seed_scenario(tmp_path: Path) -> None:
    srv = start_server()
    prom = Prometheus(srv.metrics_port, tmp_path)
    try:
        prom.wait_for_value('up{job="kvferry"}', 1)
        _, _, _, _dups, state, final = asyncio.run(
            run_scenario(srv, "scraped", lambda st: st.sent_tokens, max_polls=5000))
        assert state == "TRANSFER_STATE_SUCCESS" and final.resume_count == 3
        # 3 window boundaries x 3 ranks: 3 applied, 6 answered as duplicates of the same sent_tokens.
        dup = prom.wait_for_value('kvferry_resume_duplicates_skipped_total{reason="repeat"}', 6)
        print("PromQL kvferry_resume_duplicates_skipped_total{reason=\"repeat\"} ->", dup)
        prom.wait_for_value('kvferry_resume_duplicates_skipped_total{reason="stale"}', 0)
        prom.wait_for_value("kvferry_resumes_total", 3)
        handled = prom.wait_for_value(
            'grpc_server_handled_total{grpc_service="kvferry.v1.TransferService",'
            'grpc_method="Resume",grpc_code="OK"}', 9)
        print("PromQL grpc_server_handled_total{grpc_method=\"Resume\",grpc_code=\"OK\"} ->", handled)
        prom.wait_for_value('sum(grpc_server_handled_total{grpc_method="Open"})', 1)
        prom.wait_for_value('grpc_server_handled_total{grpc_method="Attach",grpc_code="OK"}', 1)  # shm: one-sided
        prom.wait_for_value('kvferry_transfers_finished_total{outcome="success"}', 1)
        prom.wait_for_value('kvferry_transfers_released_total{by="client"}', 1)
        prom.wait_for_value('kvferry_pool_blocks{state="used"}', 0)
        # The alert rules loaded into the real Prometheus, and none fires on a healthy run.
        rules = json.loads(prom._get("/api/v1/rules"))["data"]["groups"]
        assert [r["name"] for g in rules for r in g["rules"]] == [
            "KvferryTransfersTimingOut", "KvferryDuplicateResumeStorm",
            "KvferryResumesWaitingForBlocks", "KvferryPoolNearlyFull", "KvferryHighFailureRatio",
            "KvferryBlocksQuarantined"]
        assert prom.query("ALERTS") == []
    finally:
        prom.stop()
        assert srv.stop() == 0
