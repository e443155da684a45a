"""The chart, the sidecar webhook and service-account auth on the real API server (v1.20,
started by e2e/k8s/cluster.sh; test-all.sh exports KUBECONFIG and LLM_GATEWAY_HELM).

- `helm install`, `helm upgrade` and `helm uninstall`: every object is accepted and stored
  (nothing runs: there is no kubelet), with the API versions a 1.20 cluster has.
- The webhook for real: the operator serves it over TLS with a certificate it made, wrote
  into the caBundle itself; the API server calls it when the test creates a Pod, and the
  stored Pod has the sidecar (the regular-container form on 1.20) and the env. Opt-outs, the
  operator's own namespace and re-injection leave pods alone. A gateway standing in for the
  injected sidecar gets the operator's configuration pushed with its namespace's token, and
  calls from localhost are the pod's namespace/serviceaccount.
- TokenReview: a pod's service-account token is a credential for the shared gateway (the
  tenant is namespace/serviceaccount), a forged one is refused, virtual keys keep working.
"""

import base64
import json
import os
import re
import signal
import subprocess
import uuid

import httpx
import openai
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from conftest import BIN_DIR, ROOT, free_port, kubeconfig, until, wait_until
from test_chart import CHART, helm, shared_k8s

ADMIN = "admin-" + uuid.uuid4().hex




@pytest.fixture(scope="module")
def api():
    k8s_config.load_kube_config(config_file=kubeconfig())
    # The CRDs (1.20 takes them without validating the newer schema fields).
    out = kubectl("apply", "--validate=false", "-f", str(ROOT / "manifests" / "crds"))
    assert out.returncode == 0, out.stderr
    return k8s.ApiClient()


def namespace(api, prefix, labels=None):
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
    return name


def kubectl(*args):
    exe = os.environ.get("LLM_GATEWAY_KUBECTL", "kubectl")
    return subprocess.run([exe, *args], capture_output=True, text=True)


def cluster_ca_and_server():
    cfg = yaml.safe_load(open(kubeconfig()))
    cluster = cfg["clusters"][0]["cluster"]
    return cluster["certificate-authority"], cluster["server"]


# --- Helm ------------------------------------------------------------------------------------

def test_helm_install_upgrade_uninstall(api):
    # The Prometheus Operator CRDs a 1.20 cluster takes (kube-prometheus-stack would bring them).
    for f in ("servicemonitors-1.20.yaml", "podmonitors-1.20.yaml", "prometheusrules.yaml"):
        out = kubectl("create", "--validate=false", "-f", str(shared_k8s() / f))
        assert out.returncode == 0 or "AlreadyExists" in out.stderr, out.stderr
    until("Prometheus Operator CRDs established", lambda: all(
        any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))
        for crd in k8s.ApiextensionsV1Api(api).list_custom_resource_definition().items
        if crd.spec.group == "monitoring.coreos.com"))
    ns = namespace(api, "lgw-helm")
    release = f"lgw-{uuid.uuid4().hex[:4]}"
    values = ["--set", "monitoring.labels.release=kube-prometheus-stack",
              "--set", "monitoring.serviceMonitor.enabled=true",
              "--set", "monitoring.podMonitor.enabled=true",
              "--set", "monitoring.prometheusRule.enabled=true",
              "--set", "monitoring.dashboards.enabled=true",
              "--set", "gateway.networkPolicy.enabled=true"]
    helm("install", release, str(CHART), "--namespace", ns, *values)
    try:
        full = f"{release}-llm-gateway"
        apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        gw = apps.read_namespaced_deployment(f"{full}-gateway", ns)
        op = apps.read_namespaced_deployment(f"{full}-operator", ns)
        assert gw.spec.template.metadata.labels["llmgateway.io/gateway"] == "true"
        assert op.spec.template.spec.service_account_name == f"{full}-operator"
        assert core.read_namespaced_service(full, ns).spec.ports[0].port == 80
        # The API versions this cluster has (1.20: no autoscaling/v2, no policy/v1).
        def raw(path):
            out = kubectl("get", "--raw", path)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)
        hpa = raw(f"/apis/autoscaling/v2beta2/namespaces/{ns}/horizontalpodautoscalers/{full}-gateway")
        assert hpa["spec"]["maxReplicas"] == 10
        pdb = raw(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/{full}-gateway")
        assert pdb["spec"]["minAvailable"] == 1
        hook = k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(full)
        assert [w.failure_policy for w in hook.webhooks] == ["Fail", "Ignore"]
        custom = k8s.CustomObjectsApi(api)
        for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
            items = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", ns, plural)["items"]
            assert items and all(i["metadata"]["labels"]["release"] == "kube-prometheus-stack" for i in items), plural
        dashboards = core.list_namespaced_config_map(ns, label_selector="grafana_dashboard=1").items
        assert dashboards, "no dashboard ConfigMaps"
        # The CRDs came with the chart.
        k8s.ApiextensionsV1Api(api).read_custom_resource_definition("llmroutes.llmgateway.io")

        # Upgrade: a changed value reaches the stored object; history has both revisions.
        helm("upgrade", release, str(CHART), "--namespace", ns, *values,
             "--set", "gateway.autoscaling.enabled=false", "--set", "gateway.replicas=3")
        assert apps.read_namespaced_deployment(f"{full}-gateway", ns).spec.replicas == 3
        history = json.loads(helm("history", release, "--namespace", ns, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"
    finally:
        # Its webhooks cover every namespace: never leave them behind for other tests.
        out = helm("uninstall", release, "--namespace", ns, check=False)
    assert out.returncode == 0, out.stderr
    assert helm("status", release, "--namespace", ns, check=False).returncode != 0
    with pytest.raises(ApiException) as e:
        apps.read_namespaced_deployment(f"{full}-gateway", ns)
    assert e.value.status == 404
    with pytest.raises(ApiException):
        k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(full)
    with pytest.raises(ApiException):
        k8s.RbacAuthorizationV1Api(api).read_cluster_role(f"{full}-operator")


# --- The webhook -----------------------------------------------------------------------------

class Processes:
    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, args, env):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, env={"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info", **env},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def log(self, name):
        return (self.tmp / f"{name}.log").read_text()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop()


def pod(name, annotations=None, containers=None, sa="app"):
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=annotations),
        spec=k8s.V1PodSpec(service_account_name=sa, containers=containers or [
            k8s.V1Container(name="app", image="python:3.12-slim"),
            k8s.V1Container(name="pinned", image="busybox",
                            env=[k8s.V1EnvVar(name="OPENAI_BASE_URL", value="http://elsewhere/v1")]),
        ]))


def test_the_api_server_calls_the_webhook_and_stores_the_sidecar(api, procs, mock, tmp_path):
    core = k8s.CoreV1Api(api)
    op_ns = namespace(api, "lgw-op")
    team = namespace(api, "team")
    enabled = namespace(api, "enabled", labels={"llmgateway.io/inject": "enabled"})
    dry = namespace(api, "dry")
    # The chart's webhook configuration, pointed at the operator on loopback instead of a
    # Service (no kube-proxy here).
    hook_port, sidecar_port = free_port(), free_port()
    name = f"lgw-hook-{uuid.uuid4().hex[:4]}"
    rendered = helm("template", "llm-gateway", str(CHART), "--namespace", op_ns,
                    "--show-only", "templates/webhook.yaml").stdout
    hook = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "MutatingWebhookConfiguration")
    hook["metadata"]["name"] = name
    for w in hook["webhooks"]:
        w["clientConfig"] = {"url": f"https://127.0.0.1:{hook_port}/mutate"}
        # Only this test's namespaces: other tests' pods must not meet this webhook.
        w["namespaceSelector"]["matchExpressions"].append(
            {"key": "lgw-test", "operator": "In", "values": [name]})
    for ns in (op_ns, team, enabled, dry):
        core.patch_namespace(ns, {"metadata": {"labels": {"lgw-test": name}}})
    admission = k8s.AdmissionregistrationV1Api(api)
    admission.create_mutating_webhook_configuration(hook)
    # What the sidecars will serve: a pool with a keyed provider (the key is pushed).
    core.create_namespaced_secret(op_ns, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="keys"),
                                                      string_data={"openai": "sk-test-openai"}))
    k8s.CustomObjectsApi(api).create_namespaced_custom_object("llmgateway.io", "v1alpha1", op_ns, "providerpools", {
        "apiVersion": "llmgateway.io/v1alpha1", "kind": "ProviderPool", "metadata": {"name": "main"},
        "spec": {"providers": [{"name": "openai", "type": "openai", "baseUrl": f"{mock}/openai/v1",
                                "apiKeySecretRef": {"name": "keys", "key": "openai"}}]}})
    try:
        metrics = free_port()
        procs.start("operator", [str(BIN_DIR / "llm-gateway-operator"),
                                 "--metrics-listen", f"127.0.0.1:{metrics}",
                                 "--lease-seconds", "4", "--resync-seconds", "2",
                                 "--webhook-listen", f"127.0.0.1:{hook_port}", "--webhook-host", "127.0.0.1",
                                 "--webhook-config", name, "--webhook-secret", f"{name}-tls",
                                 "--sidecar-port", str(sidecar_port),
                                 "--gateway-image", "ghcr.io/llm-gateway/llm-gateway:e2e"],
                    {"KUBECONFIG": kubeconfig(), "POD_NAMESPACE": op_ns, "POD_NAME": "operator-0"})
        # The operator made a CA and wrote it into the caBundle of both webhooks.
        until("caBundle written", lambda: all(
            w.client_config.ca_bundle for w in admission.read_mutating_webhook_configuration(name).webhooks))
        tls = core.read_namespaced_secret(f"{name}-tls", op_ns)
        assert {"ca.crt", "tls.crt", "tls.key"} <= set(tls.data), set(tls.data)

        # An annotated pod: the API server calls the webhook over TLS; the stored pod has the
        # sidecar (a regular container: this API server is 1.20) and the env.
        stored = core.create_namespaced_pod(team, pod("app", {"llmgateway.io/inject": "true"}))
        names = [c.name for c in stored.spec.containers]
        assert names == ["app", "pinned", "llm-gateway"], names
        assert not stored.spec.init_containers
        env = {c.name: {e.name: e.value for e in c.env or []} for c in stored.spec.containers}
        assert env["app"]["OPENAI_BASE_URL"] == f"http://127.0.0.1:{sidecar_port}/v1"
        assert env["pinned"]["OPENAI_BASE_URL"] == "http://elsewhere/v1", "an app's own choice stays"
        side = stored.spec.containers[2]
        assert side.image == "ghcr.io/llm-gateway/llm-gateway:e2e"
        assert {p.name for p in side.ports} == {"http", "llm-metrics"}
        assert side.security_context.read_only_root_filesystem and side.security_context.run_as_non_root
        workload = next(e for e in side.env if e.name == "LLM_GATEWAY_WORKLOAD")
        assert workload.value == "$(POD_NAMESPACE)/$(POD_SERVICE_ACCOUNT)"
        assert stored.metadata.labels["llmgateway.io/gateway"] == "true"
        assert stored.metadata.annotations["llmgateway.io/injected"] == "true"
        # The namespace got what the sidecar mounts: its own admin token.
        token = base64.b64decode(core.read_namespaced_secret("llm-gateway-admin", team).data["token"]).decode()
        assert token and token != base64.b64decode(
            core.read_namespaced_secret("llm-gateway-admin", op_ns).data["token"]).decode()

        # Left alone: no annotation; opted out in an enabled namespace; the operator's own
        # namespace; a pod that has the sidecar already (unchanged).
        plain = core.create_namespaced_pod(team, pod("plain"))
        assert [c.name for c in plain.spec.containers] == ["app", "pinned"]
        out = core.create_namespaced_pod(enabled, pod("out", {"llmgateway.io/inject": "false"}))
        assert [c.name for c in out.spec.containers] == ["app", "pinned"]
        own = core.create_namespaced_pod(op_ns, pod("own", {"llmgateway.io/inject": "true"}))
        assert [c.name for c in own.spec.containers] == ["app", "pinned"]
        again = core.create_namespaced_pod(team, k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="again", annotations={"llmgateway.io/inject": "true"}),
            spec=stored.spec))
        assert [c.name for c in again.spec.containers] == names
        assert again.spec.volumes == stored.spec.volumes or len(again.spec.volumes) == len(stored.spec.volumes)
        # A dry run gets the patch and leaves nothing behind (sideEffects: NoneOnDryRun).
        preview = core.create_namespaced_pod(dry, pod("preview", {"llmgateway.io/inject": "true"}), dry_run="All")
        assert [c.name for c in preview.spec.containers][-1] == "llm-gateway"
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_secret("llm-gateway-admin", dry)
        assert gone.value.status == 404
        # A namespace labelled for injection: pods get it without annotation.
        auto = core.create_namespaced_pod(enabled, pod("auto"))
        assert [c.name for c in auto.spec.containers][-1] == "llm-gateway"

        # The sidecar registers with the operator: a gateway standing in for the injected
        # container (its port, its namespace's token, its workload identity from the
        # downward API) gets the configuration pushed, and calls from localhost are the pod's.
        # It runs with the stored sidecar's thread count (a few, not one per CPU of the node).
        threads = next(e.value for e in side.env if e.name == "LLM_GATEWAY_WORKER_THREADS")
        assert threads == "2", side.env
        gw = procs.start("sidecar", [str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{sidecar_port}",
                                     "--config-poll-secs", "0"],
                         {"LLM_GATEWAY_WORKER_THREADS": threads, "LLM_GATEWAY_ADMIN_TOKEN": token, "LLM_GATEWAY_WORKLOAD": f"{team}/app",
                          "LLM_GATEWAY_DATA_DIR": str(tmp_path / "sidecar")})
        url = f"http://127.0.0.1:{sidecar_port}"
        wait_until(f"{url}/healthz", gw)
        core.patch_namespaced_pod_status("app", team, {"status": {
            "phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]}})
        admin = {"authorization": f"Bearer {token}"}
        version = until("the operator pushes to the sidecar", lambda: httpx.get(
            f"{url}/admin/config", headers=admin).json().get("version"), timeout=30)
        assert version, version

        # The namespace is not given the cluster pools' keys (no label): the provider is
        # there, keyless, and refuses with the reason; its models are not listed.
        def refusal():
            r = httpx.post(f"{url}/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            return r.status_code == 403 and r.json()["error"]

        def listed():
            return any(m["id"].endswith("gpt-4o-mini") for m in httpx.get(f"{url}/v1/models").json()["data"])

        err = until("the cluster pool's key is withheld", refusal, timeout=30)
        assert err["code"] == "provider_withheld", err
        assert "llmgateway.io/cluster-keys=allowed" in err["message"] and team in err["message"], err
        assert not listed()

        # The cluster pool's status says whose gateways go without its keys.
        def pool_ready_message():
            pool = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                "llmgateway.io", "v1alpha1", op_ns, "providerpools", "main")
            return next((c["message"] for c in (pool.get("status") or {}).get("conditions", [])
                         if c["type"] == "Ready"), "")

        def withheld_from():
            m = re.search(r"its keys are withheld from the gateways in (.*) \(namespaces not matching",
                          pool_ready_message())
            return m and m.group(1).split(", ")

        until("the pool names the namespace its keys are withheld from",
              lambda: team in (withheld_from() or []), timeout=30)
        # A cluster admin gives the namespace the keys: the next push carries them.
        core.patch_namespace(team, {"metadata": {"labels": {"llmgateway.io/cluster-keys": "allowed"}}})
        until("the pushed provider serves", listed, timeout=30)
        until("the pool no longer says its keys are withheld",
              lambda: "withheld" not in pool_ready_message(), timeout=30)
        r = openai.OpenAI(base_url=f"{url}/v1", api_key="llm-gateway-sidecar").chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.http_response.status_code == 200
        usage = until("the call in the ledger", lambda: [
            row for row in httpx.get(f"{url}/admin/usage", headers=admin).json()["rows"]
            if row.get("tenant") == f"{team}/app"], timeout=10)
        assert usage[0]["requests"] >= 1, usage
        # The label taken away, so is the key.
        core.patch_namespace(team, {"metadata": {"labels": {"llmgateway.io/cluster-keys": None}}})
        assert until("the key is taken back", refusal, timeout=30)["code"] == "provider_withheld"
        # Nothing secret in the operator's log.
        assert token not in procs.log("operator")
    finally:
        admission.delete_mutating_webhook_configuration(name)
        for ns in (op_ns, team, enabled, dry):
            for p in core.list_namespaced_pod(ns).items:
                core.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)


# --- Service-account tokens ------------------------------------------------------------------

def sa_token(api, ns, name, seconds=600, audience="llm-gateway"):
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespaced_service_account(ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as e:
        if e.status != 409:
            raise
    req = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
        audiences=[audience], expiration_seconds=seconds))
    return core.create_namespaced_service_account_token(name, ns, req).status.token


def test_service_account_tokens_are_credentials_for_the_shared_gateway(api, procs, gateway_env, tmp_path):
    ns = namespace(api, "lgw-sa")
    # The gateway's own identity may create TokenReviews (the chart binds system:auth-delegator).
    k8s.RbacAuthorizationV1Api(api).create_cluster_role_binding(k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(name=f"{ns}-tokenreview"),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                               name="system:auth-delegator"),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="gateway", namespace=ns)]))
    own = tmp_path / "token"
    own.write_text(sa_token(api, ns, "gateway", audience="https://kubernetes.default.svc.cluster.local"))
    ca, server = cluster_ca_and_server()
    port = free_port()
    env = {**gateway_env, "LLM_GATEWAY_DATA_DIR": str(tmp_path / "data"), "LLM_GATEWAY_ADMIN_TOKEN": ADMIN}
    gw = procs.start("gateway", [str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{port}",
                                 "--kubernetes-auth", "--kube-api", server, "--kube-ca", ca,
                                 "--kube-token-file", str(own)], env)
    url = f"http://127.0.0.1:{port}"
    wait_until(f"{url}/healthz", gw)
    caller = sa_token(api, ns, "reporter")

    r = openai.OpenAI(base_url=f"{url}/v1", api_key=caller).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    admin = {"authorization": f"Bearer {ADMIN}"}
    rows = until("the call in the ledger under namespace/serviceaccount", lambda: [
        row for row in httpx.get(f"{url}/admin/usage", headers=admin).json()["rows"]
        if row.get("tenant") == f"{ns}/reporter"], timeout=10)
    assert rows[0]["requests"] == 1, rows

    # A token the API server did not sign (the caller's, with another signature) is refused
    # with OpenAI's error shape.
    head, body, _ = caller.split(".")
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(b'not the signature').decode().rstrip('=')}"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{url}/v1", api_key=forged, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "invalid_api_key", e.value.body

    # A real token, but for the API server's audience: a credential the gateway must not
    # take (it would work against the cluster).
    cluster_token = sa_token(api, ns, "reporter", audience="https://kubernetes.default.svc.cluster.local")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key=cluster_token, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    # Virtual keys keep working beside tokens.
    key = httpx.post(f"{url}/admin/keys", headers=admin, json={"name": "ci", "tenant": "ci-team"}).json()
    r = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"]).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    # Made-up tokens from one address (here every client's, as behind a shared ingress):
    # after 20 failed reviews they are refused without asking the API server, while the
    # token and the key already found valid keep working.
    # (More guesses than the allowance, in case a slow API server lets a window pass.)
    statuses = []
    for i in range(100):
        made_up = f"{head}.{body}.{base64.urlsafe_b64encode(f'guess {i}'.encode()).decode().rstrip('=')}"
        r = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {made_up}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        statuses.append((r.status_code, r.json()["error"]["code"]))
        if r.status_code != 401:
            break
    assert statuses[-1] == (429, "too_many_invalid_keys"), statuses
    for credential in (caller, key["key"]):
        r = openai.OpenAI(base_url=f"{url}/v1", api_key=credential, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
    # Neither token nor key reaches the log.
    log = procs.log("gateway")
    assert caller not in log and forged not in log and key["key"] not in log
