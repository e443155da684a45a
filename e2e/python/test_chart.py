"""The Helm chart, rendered: `helm lint`; `helm template` over several values sets with every
object validated by `kubernetes-validate --strict` for 1.29 and 1.33 and every Prometheus
Operator object against the Prometheus Operator CRDs (../shared/k8s); the values schema
refusing bad values; `manifests/llm-gateway.yaml` being exactly the chart's default render;
and the webhook's native-sidecar form validated as a 1.29 Pod.

The install, upgrade and uninstall on a real API server, and the webhook called by it, are in
test_kubernetes.py."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import BIN_DIR, ROOT

CHART = ROOT / "charts" / "llm-gateway"
VALIDATE = pathlib.Path(sys.executable).with_name("kubernetes-validate")
MONITORING_API = "monitoring.coreos.com/v1"
RENDERED = ROOT / "manifests" / "llm-gateway.yaml"
# What `manifests/llm-gateway.yaml` is: the chart with default values, release llm-gateway in
# namespace llm-gateway (regenerate with: python e2e/python/test_chart.py --write).
RENDER_ARGS = ["template", "llm-gateway", str(CHART), "--namespace", "llm-gateway"]

VALUE_SETS = {
    "defaults": [],
    "sidecar-only": ["--set", "gateway.enabled=false"],
    "kube-prometheus": [
        "--set", "monitoring.labels.release=kube-prometheus-stack",
        "--set", "monitoring.serviceMonitor.enabled=true",
        "--set", "monitoring.podMonitor.enabled=true",
        "--set", "monitoring.prometheusRule.enabled=true",
        "--set", "monitoring.dashboards.enabled=true",
        "--api-versions", MONITORING_API,
    ],
    "external-databases": [
        "--set", "gateway.database.existingSecret=llm-gateway-postgres",
        "--set", "gateway.redis.existingSecret=llm-gateway-redis",
        "--set", "gateway.networkPolicy.enabled=true",
        "--set", "crds.templated=true",
        "--set", "operator.replicas=2",
    ],
}


def helm(*args, check=True):
    exe = os.environ.get("LLM_GATEWAY_HELM") or shutil.which("helm")
    assert exe, "helm not found: ./e2e/test-all.sh installs it (e2e/k8s/cluster.sh build)"
    out = subprocess.run([exe, *args], capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def shared_k8s():
    """The Prometheus Operator CRDs: ../shared/k8s beside the checkout (or LLM_GATEWAY_SHARED)."""
    for d in (os.environ.get("LLM_GATEWAY_SHARED"), ROOT.parent / "shared", "/work/shared"):
        if d and (pathlib.Path(d) / "k8s" / "servicemonitors.yaml").exists():
            return pathlib.Path(d) / "k8s"
    raise AssertionError("the Prometheus Operator CRDs are not found: set LLM_GATEWAY_SHARED "
                         "to the folder holding k8s/servicemonitors.yaml")


def render(extra, kube_version="1.33.0"):
    out = helm(*RENDER_ARGS, "--kube-version", kube_version, *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def plain(s):
    """An OpenAPI v3 schema as plain JSON Schema (`nullable` as a null type)."""
    if isinstance(s, dict):
        s = {k: plain(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
        if s.pop("nullable", False) and "type" in s:
            s["type"] = [s["type"], "null"]
        # Go's regexp takes `^(?i)...`; Python wants global flags first.
        if isinstance(s.get("pattern"), str) and "(?i)" in s["pattern"]:
            s["pattern"] = "(?i)" + s["pattern"].replace("(?i)", "")
        return s
    if isinstance(s, list):
        return [plain(x) for x in s]
    return s


def monitoring_schemas():
    out = {}
    for f in ("servicemonitors.yaml", "podmonitors.yaml", "prometheusrules.yaml"):
        for crd in yaml.safe_load_all((shared_k8s() / f).read_text()):
            if not crd:
                continue
            v = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            out[crd["spec"]["names"]["kind"]] = plain(v["schema"]["openAPIV3Schema"])
    return out


def test_helm_lint():
    out = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_every_rendered_object_validates(values, version, tmp_path):
    objs = render(VALUE_SETS[values], version)
    kinds = {o["kind"] for o in objs}
    core = [o for o in objs if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    files = []
    for i, o in enumerate(core):
        f = tmp_path / f"{i:02}-{o['kind']}.yaml"
        f.write_text(yaml.safe_dump(o))
        files.append(str(f))
    out = subprocess.run([str(VALIDATE), "--strict", "-k", version, *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every object was checked against a schema (the CRDs' own ones included).
    assert out.stdout.count("passed") == len(files), out.stdout
    monitoring = [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
    schemas = monitoring_schemas() if monitoring else {}
    for o in monitoring:
        jsonschema.validate(o, schemas[o["kind"]])
    if values == "kube-prometheus":
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds, kinds
        for o in monitoring:
            assert o["metadata"]["labels"]["release"] == "kube-prometheus-stack", o["metadata"]
        dashboards = [o for o in objs if o["kind"] == "ConfigMap"
                      and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        assert dashboards, "no dashboard ConfigMaps"
        for d in dashboards:
            for text in d["data"].values():
                assert json.loads(text)["panels"], d["metadata"]["name"]
    if values == "sidecar-only":
        assert not any(o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway") for o in objs)
        assert "MutatingWebhookConfiguration" in kinds
    if values == "external-databases":
        gw = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway"))
        env = {e["name"]: e for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "llm-gateway-postgres"
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "llm-gateway-redis"
        assert "CustomResourceDefinition" in kinds and "NetworkPolicy" in kinds


def test_every_container_is_hardened_and_probed():
    for o in render(VALUE_SETS["defaults"]):
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", c["name"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", c["name"]
            assert c["resources"]["requests"]["memory"], c["name"]
            # No secret value in the rendered chart: only references.
            for e in c.get("env", []):
                assert "value" not in e or not any(w in e["name"] for w in ("TOKEN", "KEY", "URL")), e


def test_the_gateways_thread_count_is_a_value():
    def gateway_env(extra):
        dep = next(o for o in render(extra) if o["kind"] == "Deployment"
                   and not o["metadata"]["name"].endswith("-operator"))
        return dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"] == "LLM_GATEWAY_WORKER_THREADS" for e in gateway_env([]))
    assert {"name": "LLM_GATEWAY_WORKER_THREADS", "value": "4"} in gateway_env(["--set", "gateway.workerThreads=4"])


def test_cert_manager_gives_the_webhook_its_certificate():
    objs = render(["--set", "webhook.certManager.enabled=true",
                   "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer",
                   "--set", "webhook.certManager.issuerRef.name=selfsigned"])
    cert = next(o for o in objs if o["kind"] == "Certificate")
    op = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-operator"))
    vols = {v["name"]: v for v in op["spec"]["template"]["spec"]["volumes"]}
    assert vols["webhook-tls"]["secret"]["secretName"] == cert["spec"]["secretName"]
    assert "llm-gateway-webhook.llm-gateway.svc" in cert["spec"]["dnsNames"]
    hook = next(o for o in objs if o["kind"] == "MutatingWebhookConfiguration")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "llm-gateway/llm-gateway-webhook"
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-cert-dir=/etc/llm-gateway-operator/tls" in args


@pytest.mark.parametrize("bad,field", [
    (["--set", "webhook.sidecarMode=sometimes"], "sidecarMode"),
    (["--set", "webhook.sidecarWorkerThreads=0"], "sidecarWorkerThreads"),
    (["--set", "gateway.workerThreads=0"], "workerThreads"),
    (["--set", "gateway.port=0"], "port"),
    (["--set", "gateway.replicas=two"], "replicas"),
    (["--set", "gateway.databse.existingSecret=x"], "databse"),
    (["--set", "monitoring.interval=often"], "interval"),
    (["--set", "operator.clusterKeysNamespaces="], "clusterKeysNamespaces"),
])
def test_the_values_schema_names_a_bad_value(bad, field):
    out = helm(*RENDER_ARGS, *bad, check=False)
    assert out.returncode != 0
    assert field in out.stderr, out.stderr


def test_manifests_are_the_chart_rendered_with_defaults():
    rendered = helm(*RENDER_ARGS).stdout
    assert RENDERED.read_text() == rendered, (
        f"{RENDERED} is out of date: run .venv/bin/python e2e/python/test_chart.py --write")


@pytest.mark.parametrize("mode,version", [("native", "1.29.0"), ("native", "1.33.0"), ("container", "1.29.0")])
def test_an_injected_pod_validates(mode, version, tmp_path):
    pod = ROOT / "manifests" / "examples" / "app-with-sidecar.yaml"
    app = next(d for d in yaml.safe_load_all(pod.read_text()) if d and d["kind"] == "Pod")
    src = tmp_path / "pod.yaml"
    src.write_text(yaml.safe_dump(app))
    out = subprocess.run([str(BIN_DIR / "llm-gateway-operator"), "--print-injected", str(src),
                          "--sidecar-mode", mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    injected = json.loads(out.stdout)
    spec = injected["spec"]
    if mode == "native":
        side = spec["initContainers"][0]
        assert side["name"] == "llm-gateway" and side["restartPolicy"] == "Always"
    else:
        side = spec["containers"][-1]
        assert side["name"] == "llm-gateway" and "restartPolicy" not in side
    # A sidecar serves one pod: a few threads, not one per CPU of the node.
    assert {"name": "LLM_GATEWAY_WORKER_THREADS", "value": "2"} in side["env"], side["env"]
    for c in spec["containers"]:
        if c["name"] != "llm-gateway":
            assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:18080/v1"} in c["env"], c
    f = tmp_path / "injected.yaml"
    f.write_text(yaml.safe_dump(injected))
    out = subprocess.run([str(VALIDATE), "--strict", "-k", version, str(f)], capture_output=True, text=True)
    assert out.returncode == 0 and "passed" in out.stdout, out.stdout + out.stderr



def test_the_dashboards_are_what_their_generator_writes():
    out = subprocess.run([sys.executable, str(CHART / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    RENDERED.write_text(helm(*RENDER_ARGS).stdout)
    print(f"wrote {RENDERED}")


def test_autoscaling_limits_are_checked_and_a_lone_gateway_gets_no_blocking_pdb():
    out = helm(*RENDER_ARGS, "--set", "gateway.autoscaling.maxReplicas=1", check=False)
    assert out.returncode != 0 and "minReplicas (2) is more than" in out.stderr, out.stderr
    kinds = lambda docs: {d["kind"] for d in docs}
    # One gateway, no autoscaling: a PDB with minAvailable 1 would block every drain.
    lone = render(["--set", "gateway.autoscaling.enabled=false", "--set", "gateway.replicas=1"])
    assert "PodDisruptionBudget" not in kinds(lone)
    assert "PodDisruptionBudget" in kinds(render([]))
    two = render(["--set", "gateway.autoscaling.enabled=false", "--set", "gateway.replicas=2"])
    assert "PodDisruptionBudget" in kinds(two)
