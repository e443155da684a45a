"""Observability proven on a real Prometheus (Debian's package; test-all.sh installs it):
Prometheus scrapes a gateway and the operator while mixed traffic flows — all five mock
providers, streams, cache hits, a failing provider, failovers, hedges, a cut stream, a
budget at its limit — then every query of every dashboard panel and every template
variable runs through Prometheus's HTTP API and must parse and return data (panels of
features that do not exist yet say `PENDING:` in their description and are listed, not
required). The alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`). Each page's panels are rendered from the run's data into PNGs under
e2e/.work/dashboards/ so a person can see what Grafana will show.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import httpx
import openai
import pytest
import yaml

from conftest import BIN_DIR, ROOT, free_port, wait_until

DASHBOARDS = ROOT / "charts" / "llm-gateway" / "dashboards"
ALERTS = ROOT / "charts" / "llm-gateway" / "files" / "alerts.yaml"
OUT = ROOT / "e2e" / ".work" / "dashboards"
ADMIN = "admin-" + uuid.uuid4().hex
SCRAPE = "1s"


def tool(name):
    exe = shutil.which(name)
    assert exe, f"{name} not found: ./e2e/test-all.sh installs Debian's prometheus package"
    return exe


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    out = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    tests = ROOT / "e2e" / "observability" / "alerts_test.yaml"
    out = subprocess.run([tool("promtool"), "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    # Every alert has a unit test that makes it fire.
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    fired = {a["alertname"] for t in yaml.safe_load(tests.read_text())["tests"]
             for a in t["alert_rule_test"] if a.get("exp_alerts")}
    assert alerts == fired, alerts ^ fired


class Stack:
    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, args, env=None):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, env={"PATH": os.environ.get("PATH", ""), **(env or {})},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def gateway_config(mock):
    return f"""
server:
  admin_token: {{env: LLM_GATEWAY_ADMIN_TOKEN}}
routing:
  failover: {{max_attempts: 3}}
  virtual_models:
    - name: mixed
      strategy: quality
      candidates: {{providers: [groq, together]}}
    - name: hedged
      strategy: latency
      candidates: {{providers: [groq, together]}}
      hedge: {{after_secs: 0.05}}
providers:
  - {{name: openai, api_key: {{env: OPENAI_API_KEY}}, base_url: "{mock}/openai/v1"}}
  - {{name: anthropic, api_key: {{env: ANTHROPIC_API_KEY}}, base_url: "{mock}/anthropic"}}
  - {{name: groq, api_key: {{env: GROQ_API_KEY}}, base_url: "{mock}/groq/openai/v1"}}
  - {{name: together, api_key: {{env: TOGETHER_API_KEY}}, base_url: "{mock}/together/v1"}}
  - {{name: ollama, base_url: "{mock}/ollama"}}
cache:
  enabled: true
  max_entries: 6
"""


def traffic(gw, mock, fault_url):
    """Mixed traffic: every provider streamed and not, routing, cache hits and evictions,
    failures, failovers, hedges, a cut stream, a budget driven to its limit."""
    def fault(**kw):
        httpx.post(f"{fault_url}/_mock/faults", json=kw).raise_for_status()

    def clear():
        httpx.delete(f"{fault_url}/_mock/faults")

    sdk = openai.OpenAI(base_url=f"{gw}/v1", api_key="x", max_retries=0)
    models = httpx.get(f"{gw}/v1/models").json()["data"]
    per_provider = {}
    for m in models:
        if m["owned_by"] in ("openai", "anthropic", "groq", "together", "ollama") and "embed" not in m["id"]:
            per_provider.setdefault(m["owned_by"], m["id"])
    assert set(per_provider) == {"openai", "anthropic", "groq", "together", "ollama"}, per_provider
    outcomes = {"ok": 0, "error": 0}

    def call(**kw):
        try:
            r = sdk.chat.completions.create(**kw)
            if kw.get("stream"):
                for _ in r:
                    pass
            outcomes["ok"] += 1
        except openai.APIError:
            outcomes["error"] += 1

    for rnd in range(3):
        for provider, model in per_provider.items():
            name = model if "/" in model else f"{provider}/{model}"
            call(model=name, messages=[{"role": "user", "content": f"round {rnd}: say hi to {provider}"}],
                 temperature=0)
            call(model=name, messages=[{"role": "user", "content": f"round {rnd}: stream for {provider}"}],
                 stream=True, stream_options={"include_usage": True}, temperature=0)
    # Routing: the built-in virtual models over prompts of several kinds.
    for i, prompt in enumerate(["hi", "Prove that there are infinitely many primes, step by step.",
                                "Write a Rust function that parses RFC 3339 dates with tests.",
                                "Translate 'good morning' to French."]):
        for vm in ("auto", "fast", "quality"):
            call(model=vm, messages=[{"role": "user", "content": f"{prompt} ({i})"}], temperature=0)
    # Cache: repeats and rephrasings hit; more distinct prompts than entries evict. Events
    # are spread over scrapes: a counter's first sample is its first value, so increments
    # within the first scrape of a new series would not show as a rate.
    for _ in range(4):
        time.sleep(1.1)
        call(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0)
    call(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "What's the capital of France?"}], temperature=0)
    for i in range(10):
        call(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": f"Distinct question number {i} about rivers"}], temperature=0)
    # Hedges (before the failures below open these providers' breakers): both slow to
    # start, so the second is asked too.
    fault(vendor="groq", latency_ms=300)
    fault(vendor="together", latency_ms=300)
    for i in range(4):
        time.sleep(0.5)
        call(model="hedged", messages=[{"role": "user", "content": f"hedge {i}"}], temperature=0.5)
    clear()
    # A failing provider: errors, breaker opening, failovers (whichever of the two the
    # route ranks first, one phase fails it over).
    for vendor in ("groq", "together"):
        clear()
        fault(vendor=vendor, status=500)
        for i in range(8):
            call(model="mixed", messages=[{"role": "user", "content": f"failover {vendor} {i}"}], temperature=0.5)
        for i in range(3):
            time.sleep(1.1)
            call(model=f"{per_provider[vendor] if '/' in per_provider[vendor] else vendor + '/' + per_provider[vendor]}",
                 messages=[{"role": "user", "content": f"straight to the failing one {i}"}], temperature=0.5)
    clear()
    # A stream cut mid-way: its usage is estimated.
    fault(vendor="openai", cut_after=3, times=1)
    call(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "cut me"}], stream=True, temperature=0.5)
    clear()
    # A budget driven to its limit.
    admin = {"authorization": f"Bearer {ADMIN}"}
    key = httpx.post(f"{gw}/admin/keys", headers=admin, json={"tenant": "team-obs", "name": "obs"}).json()["key"]
    r = httpx.put(f"{gw}/admin/budgets", headers=admin,
                  json={"scope": "tenant", "subject": "team-obs", "limit_usd": 0.00005, "limit_tokens": 2000})
    assert r.status_code in (200, 201), r.text
    keyed = openai.OpenAI(base_url=f"{gw}/v1", api_key=key, max_retries=0)
    refused = 0
    for i in range(30):
        time.sleep(0.2)
        try:
            keyed.chat.completions.create(model="openai/gpt-4o-mini", temperature=0.5, max_tokens=50,
                                          messages=[{"role": "user", "content": f"spend {i}"}])
        except openai.RateLimitError:
            refused += 1
    assert refused, "the budget never bound"
    assert outcomes["ok"] > 40 and outcomes["error"] > 0, outcomes


def substitute(expr):
    expr = expr.replace("$__rate_interval", "30s")
    return re.sub(r"\$(namespace|pod|provider|model|route)\b", ".*", expr)


def panels():
    for f in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(f.read_text())
        for p in d["panels"]:
            yield f.stem, d, p


@pytest.fixture(scope="module")
def prometheus(mock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    stack = Stack(tmp)
    try:
        # The gateway: five providers, the cache, a database for keys and budgets.
        cfg = tmp / "gateway.yaml"
        cfg.write_text(gateway_config(mock))
        port, metrics = free_port(), free_port()
        env = {
            "LLM_GATEWAY_DATA_DIR": str(tmp / "data"), "LLM_GATEWAY_ADMIN_TOKEN": ADMIN,
            "LLM_GATEWAY_EMBEDDING_MODEL": os.environ.get("LLM_GATEWAY_EMBEDDING_MODEL", ""),
            "OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test",
            "GROQ_API_KEY": "gsk-test", "TOGETHER_API_KEY": "tg-test", "RUST_LOG": "warn",
        }
        gw = stack.start("gateway", [str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{port}",
                                     "--metrics-listen", f"127.0.0.1:{metrics}", "--config", str(cfg)], env)
        gw_url = f"http://127.0.0.1:{port}"
        wait_until(f"{gw_url}/healthz", gw)
        # The operator, for its metrics (against the e2e API server).
        targets = [(f"127.0.0.1:{metrics}", "e2e", "gateway-0")]
        if os.environ.get("KUBECONFIG"):
            from kubernetes import client as k8s
            from kubernetes import config as k8s_config
            k8s_config.load_kube_config(config_file=os.environ["KUBECONFIG"])
            subprocess.run([os.environ.get("LLM_GATEWAY_KUBECTL", "kubectl"), "apply", "--validate=false",
                            "-f", str(ROOT / "manifests" / "crds")], check=True, capture_output=True)
            op_ns = f"lgw-obs-{uuid.uuid4().hex[:6]}"
            k8s.CoreV1Api().create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=op_ns)))
            # Something to reconcile (and so to trace).
            k8s.CustomObjectsApi().create_namespaced_custom_object(
                "llmgateway.io", "v1alpha1", op_ns, "providerpools",
                {"apiVersion": "llmgateway.io/v1alpha1", "kind": "ProviderPool", "metadata": {"name": "local"},
                 "spec": {"providers": [{"name": "local", "type": "ollama", "baseUrl": f"{mock}/ollama"}]}})
            op_port = free_port()
            op = stack.start("operator", [str(BIN_DIR / "llm-gateway-operator"), "--metrics-listen",
                                          f"127.0.0.1:{op_port}", "--lease-seconds", "4", "--resync-seconds", "2"],
                             {"KUBECONFIG": os.environ["KUBECONFIG"], "POD_NAMESPACE": op_ns,
                              "POD_NAME": "operator-0", "RUST_LOG": "warn",
                              # Its reconciles traced to the mock's OTLP collector.
                              "OTEL_EXPORTER_OTLP_ENDPOINT": mock, "OTEL_BSP_SCHEDULE_DELAY": "100"})
            wait_until(f"http://127.0.0.1:{op_port}/healthz", op)
            targets.append((f"127.0.0.1:{op_port}", op_ns, "operator-0"))
        # Prometheus scraping both every second, with the labels the Prometheus Operator adds.
        prom_port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": pod, "static_configs": [
                {"targets": [t], "labels": {"namespace": ns, "pod": pod}}]} for t, ns, pod in targets],
        }))
        prom = stack.start("prometheus", [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={tmp / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{prom_port}"])
        url = f"http://127.0.0.1:{prom_port}"
        wait_until(f"{url}/-/ready", prom, timeout=60)
        start = time.time()
        traffic(gw_url, mock, mock)
        # SIGHUP: a reload of the same file (counted as unchanged).
        gw.send_signal(signal.SIGHUP)
        # Scrapes after the traffic: every counter has two samples in the window.
        time.sleep(4)
        yield url, start
    finally:
        stack.stop()


def test_the_operator_traces_its_reconciles(prometheus, mock):
    assert os.environ.get("KUBECONFIG"), "KUBECONFIG is not set: ./e2e/test-all.sh starts the test API server"
    spans = [s for s in httpx.get(f"{mock}/_mock/spans").json() if s["service"] == "llm-gateway-operator"]
    reconciles = [s for s in spans if s["name"].startswith("reconcile ")]
    assert reconciles, spans[:5]
    kinds = {s["attributes"]["k8s.resource.kind"] for s in reconciles}
    assert "ProviderPool" in kinds, kinds


def query(url, expr):
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_panel_query_returns_data(prometheus):
    url, _ = prometheus
    empty, pending = [], []
    for page, _, p in panels():
        for t in p["targets"]:
            result = query(url, substitute(t["expr"]))
            if p.get("description", "").startswith("PENDING:"):
                pending.append(f"{page}: {p['title']}")
            elif not result:
                empty.append(f"{page}: {p['title']}: {t['expr']}")
    print("\npanels for features that do not exist yet:", *sorted(set(pending)), sep="\n  ")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert len({page for page, _, _ in panels()}) == 7


def test_every_template_variable_has_values(prometheus):
    url, _ = prometheus
    for page, d, _ in {(pg, d["uid"], 0): (pg, d, 0) for pg, d, _ in panels()}.values():
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
            assert m, v["query"]
            match, label = substitute(m.group(1)), m.group(2)
            r = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": match}).json()
            assert r["status"] == "success" and r["data"], f"{page}: ${v['name']}: {r}"


def test_the_rules_load_in_prometheus(prometheus):
    url, _ = prometheus
    groups = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])
    assert all(r["health"] == "ok" for r in rules), rules


def test_pages_render_to_pictures(prometheus):
    """Each page's panels drawn from the run's data (what Grafana will show)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    url, start = prometheus
    end = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    pages = {}
    for page, d, p in panels():
        pages.setdefault(page, (d, []))[1].append(p)
    for page, (d, ps) in pages.items():
        cols = 3
        rows = (len(ps) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(15, 3.2 * rows), squeeze=False)
        drawn = 0
        for ax, p in zip(axes.flat, ps):
            ax.set_title(p["title"], fontsize=9)
            for t in p["targets"]:
                expr = substitute(t["expr"]).replace("[30s]", "[5s]")
                r = httpx.get(f"{url}/api/v1/query_range", params={
                    "query": expr, "start": start, "end": end, "step": "1s"}).json()
                for s in r["data"]["result"][:8]:
                    xs = [float(v[0]) - start for v in s["values"]]
                    ys = [float(v[1]) for v in s["values"]]
                    legend = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: s["metric"].get(m.group(1), ""),
                                    t.get("legendFormat") or "")
                    ax.plot(xs, ys, label=legend[:40] or None)
                    drawn += 1
            if p.get("description", "").startswith("PENDING:"):
                ax.text(0.5, 0.5, "pending: feature not built yet", ha="center", transform=ax.transAxes)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper left")
        for ax in list(axes.flat)[len(ps):]:
            ax.axis("off")
        fig.suptitle(d["title"] + " (e2e run, seconds since start)")
        fig.tight_layout()
        fig.savefig(OUT / f"{page}.png", dpi=70)
        plt.close(fig)
        assert drawn, page
    assert len(list(OUT.glob("*.png"))) == 7


def test_every_command_a_runbook_names_exists():
    """An alert's advice is followed at the worst moment: each `llm-gateway <subcommand>` it
    names must be one the binary has."""
    text = ALERTS.read_text()
    named = set(re.findall(r"`llm-gateway ([a-z][a-z-]*)", text))
    assert named, "the runbooks name no command"
    help_text = subprocess.run([str(BIN_DIR / "llm-gateway"), "--help"], capture_output=True, text=True, check=True).stdout
    commands = set(re.findall(r"^  ([a-z][a-z-]*)  ", help_text, re.M))
    assert named <= commands, f"runbooks name {named - commands}; the binary has {commands}"
