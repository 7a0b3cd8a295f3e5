"""The Helm chart, rendered and linted by the real Helm SDK, its manifests validated against the
Kubernetes schemas, and the things that matter asserted; the Dockerfile checked statically."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from kvferry.server.cli import build_parser
from kvferry.server.config import from_namespace

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/kvferry"
K8S_VERSION = "1.37.0"
VALUE_SETS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
CRD_SCHEMAS = {kind: json.loads((ROOT / f"tests/support/schemas/{kind.lower()}.json").read_text())
               for kind in ("ServiceMonitor", "PrometheusRule")}


def values_of(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="kvferry", namespace="serving", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    workload = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))
    return workload["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_render_lint_and_validate(value_set: str) -> None:
    values = values_of(value_set)
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{K8S_VERSION}", namespace="serving")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_value_sets_cover_what_ci_promises() -> None:
    assert set(VALUE_SETS) >= {"default", "gpu-daemonset", "monitoring", "auth-tls"}


def parsed_args(c: dict[str, Any]):  # type: ignore[no-untyped-def]
    assert c["command"] == ["kvferry"]
    return from_namespace(build_parser().parse_args(c["args"]))


def test_default_values_map_one_to_one_onto_serve_flags() -> None:
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    c = container(render({}))
    cfg = parsed_args(c)  # the real CLI parser accepts every arg the chart renders
    s = chart_values["server"]
    assert (cfg.num_blocks, cfg.block_tokens, cfg.row_bytes) == (s["numBlocks"], s["blockTokens"], s["rowBytes"])
    assert (cfg.default_window_tokens, cfg.device) == (s["defaultWindowTokens"], s["device"])
    assert (cfg.bootstrap_timeout, cfg.stall_timeout, cfg.retention, cfg.shutdown_grace) == (
        s["bootstrapTimeout"], s["stallTimeout"], s["retention"], s["shutdownGrace"])
    assert (cfg.port, cfg.metrics_port, cfg.host) == (s["grpcPort"], s["metricsPort"], "0.0.0.0")
    assert cfg.max_message_bytes == s["maxMessageBytes"]
    assert (cfg.lease_timeout, cfg.max_transfers, cfg.max_streams) == (
        s["leaseTimeout"], s["maxTransfers"], s["maxStreams"])
    assert cfg.fence_timeout == s["fenceTimeout"]
    assert (cfg.keepalive, cfg.keepalive_timeout, cfg.keepalive_min_ping) == (
        s["keepalive"], s["keepaliveTimeout"], s["keepaliveMinPing"])
    assert not cfg.auth_token_file and not cfg.tls_cert
    # Transfers need their secrets by default (see "Security" in docs/protocol.md).
    assert cfg.require_transfer_secrets is True and cfg.max_metadata_bytes == 64 * 1024
    off = parsed_args(container(render({"server": {"requireTransferSecrets": False}})))
    assert off.require_transfer_secrets is False
    # The chart's defaults are the server's defaults, but for the bind address and secrets.
    from kvferry.server.config import ServerConfig
    assert cfg == ServerConfig(host="0.0.0.0", require_transfer_secrets=True)


def test_probes_are_grpc_health_probes_on_the_grpc_port() -> None:
    docs = render({})
    c = container(docs)
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    assert c["readinessProbe"]["grpc"]["service"] == ""
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"  # stays SERVING while draining
    svc = one(docs, "Service")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 50051, "metrics": 9400}


def test_termination_grace_outlasts_the_drain() -> None:
    pod = next(d for d in render({}) if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 10
    pod = next(d for d in render({"server": {"shutdownGrace": 45}})
               if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    with pytest.raises(helm.HelmError, match=re.escape("must exceed server.shutdownGrace")):
        render({"terminationGracePeriodSeconds": 5})


def test_security_context() -> None:
    docs = render({})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_gpu_daemonset() -> None:
    docs = render(values_of("gpu-daemonset"))
    ds = one(docs, "DaemonSet")
    assert not [d for d in docs if d["kind"] == "Deployment"] and "replicas" not in ds["spec"]
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["memory"] == "4Gi"  # merged, not replaced
    assert parsed_args(c).device == "cuda:0"
    assert ds["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert one(docs, "Service")["spec"]["clusterIP"] == "None"
    # A CPU pool asks for no GPU.
    assert "nvidia.com/gpu" not in container(render({}))["resources"].get("limits", {})


def test_auth_and_tls() -> None:
    docs = render(values_of("auth-tls"))
    c = container(docs)
    cfg = parsed_args(c)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert cfg.auth_token_file == f"{mounts['auth']}/token"
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) == (
        f"{mounts['tls']}/tls.crt", f"{mounts['tls']}/tls.key", f"{mounts['tls']}/ca.crt")
    secret = one(docs, "Secret")
    assert len(secret["data"]["token"]) > 40 and len(secret["data"]["admin"]) > 40
    assert secret["data"]["admin"] != secret["data"]["token"]
    assert cfg.admin_token_file == f"{mounts['auth']}/admin"
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["tls"]["secret"]["secretName"] == "kvferry-tls"
    # The kubelet's gRPC probe cannot speak TLS: the same health states over HTTP instead.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    policy = one(docs, "NetworkPolicy")
    grpc_rule = policy["spec"]["ingress"][0]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"][0] == {"podSelector": {"matchLabels": {"kvferry-client": "true"}}}
    # An existing Secret: the chart makes none and mounts that one.
    docs = render({"auth": {"enabled": True, "existingSecret": "mine"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    with pytest.raises(helm.HelmError, match=re.escape("tls.existingSecret")):
        render({"tls": {"enabled": True}})


def test_monitoring_objects_only_when_enabled(tmp_path: Path) -> None:
    assert not [d for d in render({}) if d["kind"] in ("ServiceMonitor", "PrometheusRule", "ConfigMap")]
    docs = render(values_of("monitoring"))
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kvferry.json"])["uid"] == "kvferry-overview"
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test-deps` installs Debian's prometheus"
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0 and "6 rules found" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("bad", [
    {"server": {"numBlock": 5}},            # a typo'd key
    {"sever": {"numBlocks": 5}},            # a typo'd section
    {"server": {"numBlocks": "many"}},      # a wrong type
    {"server": {"device": "gpu0"}},         # not cpu or cuda:N
    {"kind": "StatefulSet"},
    {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
])
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        helm.Chart.load(CHART).validate_schema(bad)
    with pytest.raises(helm.HelmError):
        render(bad)


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version and chart["version"] == version
    assert chart["apiVersion"] == "v2"


def test_every_top_level_value_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[A-Za-z]", line):
            j = i - 1  # keys on consecutive lines share the comment above the first of them
            while j >= 0 and re.match(r"[A-Za-z]\w*: \S", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"values.yaml: {line.split(':')[0]} has no comment"


def test_dockerfile_matches_the_chart() -> None:
    text = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert 'ENTRYPOINT ["kvferry"]' in text  # the chart runs command: ["kvferry"]
    exposed = re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()
    assert exposed == [str(values["server"]["grpcPort"]), str(values["server"]["metricsPort"])]
    user = re.findall(r"^USER (\d+)", text, re.M)
    assert user == [str(values["podSecurityContext"]["runAsUser"])]
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "kvferry" in scripts


def test_a_cpu_pool_gets_a_shared_memory_volume_that_holds_it() -> None:
    docs = render({"server": {"numBlocks": 64, "blockTokens": 128, "rowBytes": 4096}})
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert int(shm["emptyDir"]["sizeLimit"]) == 64 * 128 * 4096 + 64 * 2**20  # the pool, and room
    assert {"name": "shm", "mountPath": "/dev/shm"} in container(docs)["volumeMounts"]
    assert parsed_args(container(docs)).shm_dir == "/dev/shm"
    gpu = render({"server": {"device": "cuda:0"}})
    gpu_pod = next(d for d in gpu if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "shm" not in [v["name"] for v in gpu_pod["volumes"]]


def test_mooncake_values_become_serve_flags() -> None:
    c = container(render({"server": {"mooncake": "rdma", "mooncakeHost": "10.0.0.7",
                                     "mooncakeDevice": "mlx5_0"}}))
    cfg = parsed_args(c)
    assert (cfg.mooncake, cfg.mooncake_host, cfg.mooncake_device) == ("rdma", "10.0.0.7", "mlx5_0")
    assert not parsed_args(container(render({}))).mooncake  # off by default
