"""The operator on a real kube-apiserver (v1.20, started by e2e/k8s/cluster.sh; test-all.sh
exports KUBECONFIG). Two real gateway processes on loopback stand in for pods: the test
creates their Pod objects and marks them Running and Ready with podIP 127.0.0.1, as kwok
would. Traffic goes through the official openai SDK.

What it shows: resources applied with the API become live on every gateway, with status a
person can act on; a missing Secret, a conflict and a resource a gateway refuses are
reported and never stop the rest; deleting a route removes its virtual model; budgets from
BudgetPolicy bind and report their spend; the operator being down changes nothing for
traffic, and a gateway that starts meanwhile serves what needs no key; two operators elect
one leader and the standby takes over; no secret reaches a ConfigMap, status, event, log or
metric. It also measures the time from an apply to every gateway serving the change.
"""

import json
import os
import signal
import statistics
import subprocess
import time
import uuid

import httpx
import openai
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from conftest import BIN_DIR, ROOT, free_port, kubeconfig, until, wait_until

GROUP, VERSION = "llmgateway.io", "v1alpha1"
ADMIN = "admin-" + uuid.uuid4().hex
OPENAI_KEY = "sk-openai-SECRET-" + uuid.uuid4().hex[:8]
ANTHROPIC_KEY = "sk-ant-SECRET-" + uuid.uuid4().hex[:8]
RESULTS = ROOT / "e2e" / ".work" / "operator-apply-to-live.json"




class Cluster:
    """The API, the operator's and an app team's namespaces, the gateways and operators."""

    def __init__(self, mock, tmp):
        k8s_config.load_kube_config(config_file=kubeconfig())
        self.core = k8s.CoreV1Api()
        self.custom = k8s.CustomObjectsApi()
        self.mock = mock
        self.tmp = tmp
        suffix = uuid.uuid4().hex[:6]
        self.ns = f"llm-gateway-{suffix}"
        self.team = f"team-{suffix}"
        self.procs = {}
        self.logs = {}
        for ns in (self.ns, self.team):
            self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
        self.core.create_namespaced_secret(self.ns, k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="llm-gateway-admin"), string_data={"token": ADMIN}))

    # --- processes -------------------------------------------------------------------------
    def start(self, name, args, env):
        log = self.tmp / f"{name}.log"
        out = open(log, "w")
        self.procs[name] = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.logs[name] = log
        return self.procs[name]

    def stop(self, name, sig=signal.SIGKILL):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            p.wait(15)

    def gateway(self, name, config_text="providers: []\n", pod=True):
        port = free_port()
        cfg = self.tmp / f"{name}.yaml"
        cfg.write_text(config_text)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "LLM_GATEWAY_DATA_DIR": str(self.tmp / name),
            "LLM_GATEWAY_ADMIN_TOKEN": ADMIN,
            "RUST_LOG": "info",
        }
        p = self.start(name, [str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{port}",
                              "--config", str(cfg), "--config-poll-secs", "0"], env)
        url = f"http://127.0.0.1:{port}"
        wait_until(f"{url}/healthz", p)
        if pod:
            self.pod(name, port)
        return url

    def pod(self, name, port):
        self.core.create_namespaced_pod(self.ns, k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name, labels={"llmgateway.io/gateway": "true"}),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(
                name="llm-gateway", image="llm-gateway:e2e",
                ports=[k8s.V1ContainerPort(name="http", container_port=port)])])))
        self.core.patch_namespaced_pod_status(name, self.ns, {"status": {
            "phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]}})

    def operator(self, name, lease=4):
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "KUBECONFIG": kubeconfig(),
            "POD_NAMESPACE": self.ns,
            "POD_NAME": name,
            "RUST_LOG": "info",
        }
        p = self.start(name, [str(BIN_DIR / "llm-gateway-operator"), "--metrics-listen",
                              f"127.0.0.1:{port}", "--lease-seconds", str(lease),
                              "--resync-seconds", "2"], env)
        url = f"http://127.0.0.1:{port}"
        wait_until(f"{url}/healthz", p)
        return url

    # --- resources -------------------------------------------------------------------------
    def apply(self, kind, plural, ns, name, spec, labels=None):
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec}
        # The operator writes status between our read and our replace: a 409 means read again
        # and retry, as kubectl and client-go's RetryOnConflict do.
        for attempt in range(10):
            try:
                cur = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
                body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
                return self.custom.replace_namespaced_custom_object(GROUP, VERSION, ns, plural, name, body)
            except ApiException as e:
                if e.status == 409 and attempt < 9:
                    continue
                if e.status != 404:
                    raise
                return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)

    def get(self, plural, ns, name):
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)

    def condition(self, plural, ns, name, type_="Ready"):
        obj = self.get(plural, ns, name)
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == type_:
                return c
        return None

    def delete(self, plural, ns, name):
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, plural, name)

    def close(self):
        for name in list(self.procs):
            self.stop(name)
        # This API server runs no controller-manager or kubelet: nothing finishes a namespace's
        # deletion or a pod's, so remove what the test made one by one, pods at once.
        for ns in (self.ns, self.team):
            for plural in ("providerpools", "llmroutes", "budgetpolicies"):
                for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
                    self.delete(plural, ns, item["metadata"]["name"])
            for pod in self.core.list_namespaced_pod(ns).items:
                self.core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)


def pool_spec(mock, anthropic=True, secret="llm-keys"):
    providers = [
        {"name": "openai", "type": "openai", "baseUrl": f"{mock}/openai/v1",
         "apiKeySecretRef": {"name": secret, "key": "openai"}},
        {"name": "local", "type": "ollama", "baseUrl": f"{mock}/ollama"},
    ]
    if anthropic:
        providers.append({"name": "anthropic", "type": "anthropic", "baseUrl": f"{mock}/anthropic",
                          "apiKeySecretRef": {"name": secret, "key": "anthropic"}})
    return {"providers": providers}


def route_spec(model, extra=None):
    vm = {"name": "smart", "strategy": "quality", "candidates": {"models": [model]}}
    vm.update(extra or {})
    return {"virtualModels": [vm]}


def ask(url, model, key="unused"):
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hi. [[words=3]]"}])
    return raw.headers, raw.parse()


@pytest.fixture(scope="module")
def cluster(mock, tmp_path_factory):
    subprocess.run([os.environ.get("LLM_GATEWAY_KUBECTL", "kubectl"), "apply", "--validate=false",
                    "-f", str(ROOT / "manifests" / "crds")], check=True, capture_output=True,
                   env={**os.environ, "KUBECONFIG": kubeconfig()})
    c = Cluster(mock, tmp_path_factory.mktemp("operator"))
    ext = k8s.ApiextensionsV1Api()
    for crd in ("providerpools", "llmroutes", "budgetpolicies"):
        until(f"CRD {crd} established", lambda crd=crd: any(
            cond.type == "Established" and cond.status == "True"
            for cond in ext.read_custom_resource_definition(f"{crd}.{GROUP}").status.conditions or []))
    c.core.create_namespaced_secret(c.ns, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="llm-keys"),
        string_data={"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}))
    c.gw = [c.gateway("gw-1"), c.gateway("gw-2")]
    c.op = c.operator("op-1")
    c.apply("ProviderPool", "providerpools", c.ns, "main", pool_spec(mock))
    c.apply("LLMRoute", "llmroutes", c.ns, "default", route_spec("gpt-4o-mini"))
    yield c
    c.close()


def served_by(url, model="smart"):
    headers, _ = ask(url, model)
    return headers["x-llm-gateway-provider"]


def test_a_route_goes_live_on_every_gateway_and_says_so(cluster):
    until("the route is Ready", lambda: (cluster.condition("llmroutes", cluster.ns, "default") or {}).get("status") == "True")
    route = cluster.get("llmroutes", cluster.ns, "default")
    assert route["status"]["gateways"] == "2/2 in sync", route["status"]
    assert route["status"]["virtualModels"] == "smart"
    assert route["status"]["observedGeneration"] == route["metadata"]["generation"]
    for url in cluster.gw:
        assert served_by(url) == "openai"
    pool = cluster.get("providerpools", cluster.ns, "main")
    assert pool["status"]["providers"] == 3
    assert pool["status"]["modelsEnabled"] > 3, "catalog and discovered models counted"
    # The route changes: every gateway serves the new candidate, through the SDK.
    timings = []
    for i in range(20):
        model, provider = (("claude-3-5-haiku-latest", "anthropic") if i % 2 == 0
                           else ("gpt-4o-mini", "openai"))
        started = time.monotonic()
        cluster.apply("LLMRoute", "llmroutes", cluster.ns, "default", route_spec(model))
        for url in cluster.gw:
            until(f"{url} serves {model}", lambda url=url, p=provider: served_by(url) == p, every=0.02)
        timings.append(time.monotonic() - started)
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[-1]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"changes": len(timings), "p50_s": p50, "p99_s": p99, "all_s": timings}))
    print(f"apply to every gateway serving it: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(timings)} changes")
    # The operator's metrics count the pushes and the gateways in sync.
    m = httpx.get(f"{cluster.op}/metrics").text
    assert 'llm_gateway_operator_gateways{state="in_sync"} 2' in m, m
    assert "llm_gateway_operator_pushes_total" in m
    assert 'llm_gateway_operator_reconciles_total{kind="LLMRoute"}' in m


def test_a_missing_secret_is_reported_and_the_rest_keeps_serving(cluster):
    cluster.apply("ProviderPool", "providerpools", cluster.ns, "extra",
                  {"providers": [{"name": "groq", "type": "groq", "baseUrl": f"{cluster.mock}/groq/openai/v1",
                                  "apiKeySecretRef": {"name": "groq-key", "key": "api-key"}}]})
    cond = until("the pool reports the missing Secret",
                 lambda: (c := cluster.condition("providerpools", cluster.ns, "extra")) and c["reason"] == "SecretNotFound" and c)
    assert cond["status"] == "False"
    assert f"secret {cluster.ns}/groq-key not found" in cond["message"], cond
    pool = cluster.get("providerpools", cluster.ns, "extra")
    assert pool["status"]["missingSecrets"] == ["groq: groq-key/api-key"]
    for url in cluster.gw:
        assert served_by(url) in ("openai", "anthropic")
        # The pending provider is skipped, not failed.
        with pytest.raises(openai.APIStatusError) as e:
            ask(url, "groq/llama-3.1-8b-instant")
        assert e.value.status_code == 503 and e.value.body["code"] == "credentials_pending"
    # The Secret appears: the pool becomes Ready and groq answers.
    cluster.core.create_namespaced_secret(cluster.ns, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="groq-key"), string_data={"api-key": "gsk-SECRET-groq"}))
    until("the pool is Ready", lambda: (cluster.condition("providerpools", cluster.ns, "extra") or {}).get("status") == "True")
    for url in cluster.gw:
        until("groq answers", lambda url=url: served_by(url, "groq/llama-3.1-8b-instant") == "groq")
    cluster.delete("providerpools", cluster.ns, "extra")


def test_conflicts_and_gateway_refusals_are_reported_on_the_resources(cluster):
    dup = {"virtualModels": [{"name": "twice", "strategy": "cost"}]}
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "dup-a", dup)
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "dup-b", dup)
    for name, other in (("dup-a", "dup-b"), ("dup-b", "dup-a")):
        c = until(f"{name} is refused", lambda name=name: (x := cluster.condition("llmroutes", cluster.ns, name, "Accepted")) and x["status"] == "False" and x)
        assert c["reason"] == "Conflict" and f"LLMRoute {cluster.ns}/{other}" in c["message"], c
    # A route that clashes in one virtual model only: the other is live, and Ready says so.
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "dup-c", {"virtualModels": [
        {"name": "twice", "strategy": "cost"}, {"name": "solo", "strategy": "cost"}]})
    c = until("dup-c is partly live", lambda: (x := cluster.condition("llmroutes", cluster.ns, "dup-c")) and "partly" in x.get("message", "") and x)
    assert c["status"] == "False" and "solo live" in c["message"], c
    for url in cluster.gw:
        assert served_by(url, "solo")
    cluster.delete("llmroutes", cluster.ns, "dup-c")
    # Zero weights pass the schema but not the gateway: refused there, reported here.
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "bad", {"virtualModels": [
        {"name": "weightless", "strategy": "cost", "weights": {"cost": 0, "quality": 0, "latency": 0}}]})
    c = until("the gateway's refusal reaches the status",
              lambda: (x := cluster.condition("llmroutes", cluster.ns, "bad", "Accepted")) and x["status"] == "False" and x)
    assert c["reason"] == "RejectedByGateway" and "weight" in c["message"], c
    for url in cluster.gw:
        assert served_by(url) in ("openai", "anthropic"), "the rest is still live"
    # A spec the schema rules out never gets stored.
    with pytest.raises(ApiException) as e:
        cluster.apply("LLMRoute", "llmroutes", cluster.ns, "invalid",
                      {"virtualModels": [{"name": "x", "strategy": "fastest"}]})
    assert e.value.status == 422
    for name in ("dup-a", "dup-b", "bad"):
        cluster.delete("llmroutes", cluster.ns, name)


def groq_pool(cluster, headers=None):
    provider = {"name": "groq", "type": "openai", "baseUrl": f"{cluster.mock}/groq/openai/v1",
                "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                "models": [{"name": "llama-3.1-8b-instant"}]}
    if headers:
        provider["headers"] = headers
    return {"providers": [provider]}


def condition_is(cluster, plural, name, type_, status, reason=None):
    c = cluster.condition(plural, cluster.ns, name, type_) or {}
    return c.get("status") == status and (reason is None or c.get("reason") == reason) and c


def test_a_route_refused_for_a_pools_fault_returns_when_the_pool_is_fixed(cluster):
    route = {"virtualModels": [{"name": "quick", "strategy": "cost",
                                "candidates": {"models": ["groq/llama-3.1-8b-instant"]}}]}
    # A new pool with a credential in its headers: the gateways refuse it, and then the
    # route that needs its model.
    cluster.apply("ProviderPool", "providerpools", cluster.ns, "extra", groq_pool(cluster, {"X-Api-Key": "abc"}))
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "blamed", route)
    until("the pool is refused", lambda: condition_is(cluster, "providerpools", "extra", "Accepted", "False"))
    until("the route is refused", lambda: condition_is(cluster, "llmroutes", "blamed", "Accepted", "False"))
    # The route itself never changed: fixing the pool must bring it back.
    cluster.apply("ProviderPool", "providerpools", cluster.ns, "extra", groq_pool(cluster))
    until("the route is live", lambda: condition_is(cluster, "llmroutes", "blamed", "Ready", "True"), timeout=30)
    for url in cluster.gw:
        assert served_by(url, "quick") == "groq"

    # Now a bad edit to the working pool: the gateways refuse it, and its last accepted
    # generation keeps serving (and says so) instead of the pool vanishing.
    cluster.apply("ProviderPool", "providerpools", cluster.ns, "extra", groq_pool(cluster, {"X-Api-Key": "abc"}))
    c = until("the edit is refused, the old pool serving",
              lambda: condition_is(cluster, "providerpools", "extra", "Ready", "False", "ServingPreviousGeneration"))
    assert "keeps serving" in c["message"], c
    assert condition_is(cluster, "providerpools", "extra", "Accepted", "False", "RejectedByGateway")
    assert condition_is(cluster, "llmroutes", "blamed", "Ready", "True"), "the route is not blamed"
    for url in cluster.gw:
        assert served_by(url, "quick") == "groq"
    cluster.delete("llmroutes", cluster.ns, "blamed")
    cluster.delete("providerpools", cluster.ns, "extra")


def test_a_bad_edit_to_a_live_route_keeps_its_last_accepted_generation_serving(cluster):
    def steady(model):
        return {"virtualModels": [{"name": "steady", "strategy": "cost", "candidates": {"models": [model]}}]}
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "edited", steady("gpt-4o-mini"))
    until("the route is live", lambda: condition_is(cluster, "llmroutes", "edited", "Ready", "True"))
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "edited", steady("claude-3-5-haiku-latset"))
    until("the typo is refused", lambda: condition_is(cluster, "llmroutes", "edited", "Ready", "False", "ServingPreviousGeneration"))
    route = cluster.get("llmroutes", cluster.ns, "edited")
    assert route["status"]["observedGeneration"] == route["metadata"]["generation"]
    assert "latset" in condition_is(cluster, "llmroutes", "edited", "Accepted", "False", "RejectedByGateway")["message"]
    for url in cluster.gw:
        assert served_by(url, "steady") == "openai", "the last good generation serves"
    # A restarted operator remembers it (kept in a ConfigMap): the route stays served, never
    # dropped for the refused generation.
    stored = cluster.core.read_namespaced_config_map("llm-gateway-config-last-good", cluster.ns)
    assert '"name":"edited"' in stored.data["resources.json"]
    cluster.stop("op-1")
    cluster.op = cluster.operator("op-1")
    until("the restarted operator reads what was accepted",
          lambda: "continuing with the resources the gateways last accepted" in cluster.logs["op-1"].read_text())
    deadline = time.monotonic() + 6  # three resyncs
    while time.monotonic() < deadline:
        for url in cluster.gw:
            assert served_by(url, "steady") == "openai", "dropped after the restart"
        time.sleep(0.3)
    assert condition_is(cluster, "llmroutes", "edited", "Ready", "False", "ServingPreviousGeneration")
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "edited", steady("claude-3-5-haiku-latest"))
    until("the fix goes live", lambda: condition_is(cluster, "llmroutes", "edited", "Ready", "True"))
    until("the fix serves", lambda: all(served_by(url, "steady") == "anthropic" for url in cluster.gw))
    cluster.delete("llmroutes", cluster.ns, "edited")


def test_a_namespaces_route_serves_its_own_callers_only(cluster):
    cluster.apply("LLMRoute", "llmroutes", cluster.team, "own", route_spec("gpt-4o-mini", {"name": "team-only"}))
    until("the team's route is live", lambda: (cluster.condition("llmroutes", cluster.team, "own") or {}).get("status") == "True")
    # The quick-start gateways see no tenant: the team's virtual model is not theirs.
    with pytest.raises(openai.NotFoundError):
        ask(cluster.gw[0], "team-only")
    cfg = yaml.safe_load(cluster.core.read_namespaced_config_map("llm-gateway-config", cluster.ns).data["gateway.yaml"])
    mine = [v for v in cfg["routing"]["virtual_models"] if v["name"] == "team-only"]
    assert mine and mine[0]["clients"] == [cluster.team]
    cluster.delete("llmroutes", cluster.team, "own")


def test_budget_policies_bind_and_report_their_spend(cluster):
    cluster.apply("BudgetPolicy", "budgetpolicies", cluster.ns, "everyone",
                  {"subjects": [{"kind": "namespace", "name": cluster.team}], "limitUsd": 5, "period": "month"})
    until("the policy is Ready", lambda: (cluster.condition("budgetpolicies", cluster.ns, "everyone") or {}).get("status") == "True")
    # A namespaced policy may not cover another namespace.
    cluster.apply("BudgetPolicy", "budgetpolicies", cluster.team, "reach",
                  {"subjects": [{"kind": "namespace", "name": "kube-system"}], "limitUsd": 1})
    c = until("refused", lambda: (x := cluster.condition("budgetpolicies", cluster.team, "reach", "Accepted")) and x["status"] == "False" and x)
    assert c["reason"] == "SubjectOutsideNamespace", c
    cfg = httpx.get(f"{cluster.gw[0]}/admin/budgets", headers={"authorization": f"Bearer {ADMIN}"}).json()
    declared = [b for b in cfg["budgets"] if b.get("declared_by") == f"BudgetPolicy {cluster.ns}/everyone"]
    assert declared and declared[0]["scope"] == "namespace", cfg
    # The admin API refuses to edit it.
    r = httpx.put(f"{cluster.gw[0]}/admin/budgets", headers={"authorization": f"Bearer {ADMIN}"},
                  json={"scope": "namespace", "subject": cluster.team, "limit_usd": 100})
    assert r.status_code == 403 and r.json()["error"]["code"] == "declared_budget"
    status = cluster.get("budgetpolicies", cluster.ns, "everyone")["status"]
    assert status["subjects"][0]["subject"] == f"namespace/{cluster.team}", status
    assert status["subjects"][0]["remainingUsd"] == 5.0, status
    cluster.delete("budgetpolicies", cluster.team, "reach")
    cluster.delete("budgetpolicies", cluster.ns, "everyone")


def test_deleting_a_route_removes_its_virtual_model(cluster):
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "temporary", {"virtualModels": [{"name": "fleeting", "strategy": "cost"}]})
    for url in cluster.gw:
        until("fleeting is live", lambda url=url: ask(url, "fleeting")[0]["x-llm-gateway-provider"])
    cluster.delete("llmroutes", cluster.ns, "temporary")
    for url in cluster.gw:
        def gone(url=url):
            try:
                ask(url, "fleeting")
                return False
            except openai.NotFoundError:
                return True
        until("fleeting is gone", gone)


def test_no_secret_reaches_a_configmap_status_event_log_or_metric(cluster):
    texts = {
        "ConfigMap": json.dumps(cluster.core.read_namespaced_config_map("llm-gateway-config", cluster.ns).data),
        "events": json.dumps([e.message for e in cluster.core.list_namespaced_event(cluster.ns).items]),
        "operator log": cluster.logs["op-1"].read_text(),
        "operator metrics": httpx.get(f"{cluster.op}/metrics").text,
        "gateway log": cluster.logs["gw-1"].read_text(),
        "gateway metrics": httpx.get(f"{cluster.gw[0]}/metrics").text,
    }
    for plural in ("providerpools", "llmroutes", "budgetpolicies"):
        for ns in (cluster.ns, cluster.team):
            items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            texts[f"{plural} status"] = json.dumps([i.get("status") for i in items])
    assert "pushed: " in texts["ConfigMap"], "keys are referenced, not stored"
    for what, text in texts.items():
        for secret in (OPENAI_KEY, ANTHROPIC_KEY, ADMIN, "gsk-SECRET-groq"):
            assert secret not in text, f"a secret in the {what}"


def test_keys_are_pushed_only_to_sidecars_the_webhook_made(cluster):
    """Anyone who can create a pod can label it a gateway: outside the operator's namespace a
    push (which carries the cluster pools' keys) goes only to a `llm-gateway` container of the
    sidecar image with the webhook's environment, never to a look-alike."""
    import http.server
    import threading

    hits = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            hits.append((self.server.server_address[1], self.path))
            self.send_response(401)
            self.end_headers()

        do_GET = do_PUT

        def log_message(self, *args):
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    impostor_port, sidecar_port = (srv.server_address[1] for srv in servers)
    pods = {
        "impostor": (impostor_port, "attacker/anything", []),
        "impostor-env": (impostor_port, "ghcr.io/llm-gateway/llm-gateway:0.1.0",
                         [k8s.V1EnvVar(name="HTTPS_PROXY", value="http://attacker:3128")]),
        "sidecar": (sidecar_port, "ghcr.io/llm-gateway/llm-gateway:e2e",
                    [k8s.V1EnvVar(name="LLM_GATEWAY_DATA_DIR", value="/var/lib/llm-gateway")]),
    }
    try:
        for name, (port, image, env) in pods.items():
            cluster.core.create_namespaced_pod(cluster.team, k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name=name, labels={"llmgateway.io/gateway": "true"}),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(
                    name="llm-gateway", image=image, env=env,
                    ports=[k8s.V1ContainerPort(name="http", container_port=port)])])))
            cluster.core.patch_namespaced_pod_status(name, cluster.team, {"status": {
                "phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]}})
        # The real sidecar is pushed to (and refuses: this recorder holds no admin token)...
        until("the operator pushes to the sidecar", lambda: any(p == sidecar_port for p, _ in hits), timeout=30)
        # ...and, by then and a resync later, never the look-alikes.
        time.sleep(3)
        assert not [h for h in hits if h[0] == impostor_port], hits
        log = cluster.logs["op-1"].read_text()
        assert "not a sidecar the webhook made" in log, "the operator says why it skips them"
        # The sidecar refuses every push (no admin token here): the status names it, and
        # only it, as the gateway behind.
        c = until("the status names the lagging pod", lambda: (
            x := cluster.condition("llmroutes", cluster.ns, "default")) and x["reason"] == "Syncing"
            and f"{cluster.team}/sidecar" in x["message"] and x)
        assert "impostor" not in c["message"], c
    finally:
        for name in pods:
            cluster.core.delete_namespaced_pod(name, cluster.team, grace_period_seconds=0)
        for srv in servers:
            srv.shutdown()
    # Its sidecar gone, the namespace still gets each new version of the ConfigMap, for the
    # next sidecar that starts there to read.
    def version_in(ns):
        return cluster.core.read_namespaced_config_map("llm-gateway-config", ns).metadata.annotations["llmgateway.io/version"]
    before = version_in(cluster.ns)
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "cm-probe", {"virtualModels": [{"name": "cm-probe", "strategy": "cost"}]})
    until("the sidecar namespace's copy follows", lambda: version_in(cluster.ns) != before
          and version_in(cluster.team) == version_in(cluster.ns))
    cluster.delete("llmroutes", cluster.ns, "cm-probe")


def test_with_the_operator_down_traffic_goes_on_and_a_new_gateway_serves_what_needs_no_key(cluster):
    cluster.stop("op-1")
    for url in cluster.gw:
        assert served_by(url) in ("openai", "anthropic")
    # A gateway starting now reads the ConfigMap, as its mounted volume would.
    text = cluster.core.read_namespaced_config_map("llm-gateway-config", cluster.ns).data["gateway.yaml"]
    cold = cluster.gateway("gw-3", text, pod=False)
    headers, _ = ask(cold, "local/llama3.2:latest")
    assert headers["x-llm-gateway-provider"] == "local"
    with pytest.raises(openai.APIStatusError) as e:
        ask(cold, "openai/gpt-4o-mini")
    assert e.value.status_code == 503 and e.value.body["code"] == "credentials_pending"
    # The operator comes back and finds the new pod: it gets the keys.
    port = int(cold.rsplit(":", 1)[1])
    cluster.pod("gw-3", port)
    cluster.op = cluster.operator("op-1")
    until("the new gateway gets its keys", lambda: served_by(cold, "openai/gpt-4o-mini") == "openai")
    until("3/3 in sync", lambda: cluster.get("llmroutes", cluster.ns, "default")["status"]["gateways"] == "3/3 in sync")


@pytest.mark.parametrize("selector", ["a b", " "])
def test_a_bad_cluster_keys_selector_stops_the_operator_before_it_is_ready(cluster, selector):
    env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": kubeconfig(),
           "POD_NAMESPACE": cluster.ns, "POD_NAME": "op-bad"}
    # Another replica leads: this one must stop on its own flag, not once it wins the lease.
    out = subprocess.run([str(BIN_DIR / "llm-gateway-operator"), "--metrics-listen", "127.0.0.1:0",
                          "--cluster-keys-namespaces", selector],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--cluster-keys-namespaces" in out.stdout + out.stderr, out.stdout + out.stderr


def test_two_operators_elect_one_leader_and_the_standby_takes_over(cluster):
    standby = cluster.operator("op-2")
    leader_of = lambda url: "llm_gateway_operator_leader 1" in httpx.get(f"{url}/metrics").text.splitlines()
    time.sleep(1)
    assert leader_of(cluster.op) and not leader_of(standby)
    cluster.stop("op-1")
    started = time.monotonic()
    until("the standby leads", lambda: leader_of(standby), timeout=20)
    took = time.monotonic() - started
    print(f"standby took over after {took:.1f}s (lease 4s)")
    assert took < 4 + 5, took
    cluster.apply("LLMRoute", "llmroutes", cluster.ns, "default", route_spec("claude-3-5-haiku-latest"))
    for url in cluster.gw:
        until("the new leader pushes", lambda url=url: served_by(url) == "anthropic")
    cluster.procs["op-1"] = cluster.procs.pop("op-2")
    cluster.logs["op-1"] = cluster.logs["op-2"]
    cluster.op = standby
