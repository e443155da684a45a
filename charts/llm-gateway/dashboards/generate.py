#!/usr/bin/env python3
"""Writes the Grafana dashboards (one JSON file per page) from the page definitions below.

    python3 dashboards/generate.py          # rewrite dashboards/*.json
    python3 dashboards/generate.py --check  # exit 1 if a file differs (CI runs this)

Every panel's queries run on a real Prometheus in e2e/python/test_observability.py; a panel
for a feature that does not exist yet says so in its description, starting with `PENDING:`,
and that test lists it instead of requiring data.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SEL = 'namespace=~"$namespace", pod=~"$pod"'
PROV = f'{SEL}, provider=~"$provider"'
MODEL = f'{PROV}, model=~"$model"'


def q(expr, legend=""):
    return {"expr": expr, "legendFormat": legend}


def ts(title, targets, unit="short", desc="", stack=False):
    return {"type": "timeseries", "title": title, "description": desc, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}}},
                            "overrides": []}}


def stat(title, targets, unit="short", desc=""):
    return {"type": "stat", "title": title, "description": desc, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}}


def quantiles(metric, by, sel, legend):
    return [q(f'histogram_quantile({p}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[$__rate_interval])))',
              f"p{int(p * 100)} {legend}") for p in (0.5, 0.95, 0.99)]


PAGES = {
    "overview": ("LLM Gateway / Overview", [
        stat("Requests per second", [q(f"sum(rate(llm_gateway_requests_total{{{SEL}}}[$__rate_interval]))")], "reqps"),
        stat("Error ratio (5xx)", [q(f'sum(rate(llm_gateway_requests_total{{{SEL}, status=~"5.."}}[$__rate_interval])) / sum(rate(llm_gateway_requests_total{{{SEL}}}[$__rate_interval]))')], "percentunit"),
        stat("Spend per hour", [q(f"sum(rate(llm_gateway_cost_usd_total{{{SEL}}}[$__rate_interval])) * 3600")], "currencyUSD"),
        stat("Cache hit ratio", [q(f'sum(rate(llm_gateway_cache_requests_total{{{SEL}, outcome=~"hit_.*"}}[$__rate_interval])) / sum(rate(llm_gateway_cache_requests_total{{{SEL}}}[$__rate_interval]))')], "percentunit"),
        stat("Open breakers", [q(f"count(llm_gateway_breaker_state{{{SEL}}} == 2) or vector(0)")]),
        stat("Gateways in sync", [q('sum(llm_gateway_operator_gateways{state="in_sync"})', "in sync"),
                                  q('sum(llm_gateway_operator_gateways{state="out_of_sync"})', "out of sync")]),
        ts("Requests by status", [q(f"sum by (status) (rate(llm_gateway_requests_total{{{SEL}}}[$__rate_interval]))", "{{status}}")], "reqps", stack=True),
        ts("Request time", quantiles("llm_gateway_request_duration_seconds", "endpoint", SEL, "{{endpoint}}"), "s"),
        ts("Tokens per second", [q(f"sum by (kind) (rate(llm_gateway_tokens_total{{{SEL}}}[$__rate_interval]))", "{{kind}}")], "short"),
        ts("Configuration version per pod", [q(f"max by (pod, version) (llm_gateway_config_info{{{SEL}}})", "{{pod}} {{version}}")]),
    ]),
    "latency": ("LLM Gateway / Latency", [
        ts("Request time by provider", quantiles("llm_gateway_request_duration_seconds", "provider", PROV, "{{provider}}"), "s"),
        ts("Time to first token by model", quantiles("llm_gateway_time_to_first_token_seconds", "provider, model", MODEL, "{{provider}}/{{model}}"), "s"),
        ts("Gateway overhead (excluding upstream)", quantiles("llm_gateway_overhead_seconds", "endpoint", SEL, "{{endpoint}}"), "s"),
        ts("Waiting for a provider slot (p99)", [q(f"histogram_quantile(0.99, sum by (le, scope) (rate(llm_gateway_queue_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))", "{{scope}}")], "s"),
        ts("Routing decision time (p99)", [q(f"histogram_quantile(0.99, sum by (le) (rate(llm_gateway_routing_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "routing"),
                                          q(f"histogram_quantile(0.99, sum by (le) (rate(llm_gateway_classifier_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "classifier")], "s"),
        ts("Learned first-content deadline by model", [q(f"max by (provider, model) (llm_gateway_first_content_deadline_seconds{{{MODEL}}})", "{{provider}}/{{model}}")], "s"),
    ]),
    "providers": ("LLM Gateway / Providers and health", [
        ts("Requests by provider", [q(f"sum by (provider) (rate(llm_gateway_requests_total{{{PROV}}}[$__rate_interval]))", "{{provider}}")], "reqps", stack=True),
        ts("Error ratio by provider", [q(f'sum by (provider) (rate(llm_gateway_requests_total{{{PROV}, status=~"5.."}}[$__rate_interval])) / sum by (provider) (rate(llm_gateway_requests_total{{{PROV}}}[$__rate_interval]))', "{{provider}}")], "percentunit"),
        ts("Upstream failures by reason", [q(f"sum by (provider, reason) (rate(llm_gateway_upstream_failures_total{{{PROV}}}[$__rate_interval]))", "{{provider}} {{reason}}")], "short"),
        ts("Breaker state (0 closed, 1 half-open, 2 open)", [q(f"max by (provider, model) (llm_gateway_breaker_state{{{PROV}}})", "{{provider}}/{{model}}")]),
        ts("Failovers", [q(f'sum by (from, to, reason) (rate(llm_gateway_failovers_total{{{SEL}}}[$__rate_interval]))', "{{from}} → {{to}} ({{reason}})")]),
        ts("Concurrency: adaptive limit and in flight", [q(f"sum by (provider) (llm_gateway_provider_concurrency_limit{{{PROV}}})", "limit {{provider}}"),
                                                          q(f"sum by (provider) (llm_gateway_provider_in_flight{{{PROV}}})", "in flight {{provider}}"),
                                                          q(f"sum by (provider) (llm_gateway_provider_queued{{{PROV}}})", "queued {{provider}}")]),
        ts("Hedges by outcome", [q(f"sum by (provider, outcome) (rate(llm_gateway_hedges_total{{{PROV}}}[$__rate_interval]))", "{{provider}} {{outcome}}")]),
    ]),
    "routing": ("LLM Gateway / Routing", [
        ts("Decisions by virtual model and tier", [q(f'sum by (virtual_model, tier) (rate(llm_gateway_routing_decisions_total{{{SEL}, virtual_model=~"$route"}}[$__rate_interval]))', "{{virtual_model}} {{tier}}")], "short", stack=True),
        ts("Chosen model share", [q(f'sum by (provider, model) (rate(llm_gateway_routing_decisions_total{{{SEL}, virtual_model=~"$route"}}[$__rate_interval])) / scalar(sum(rate(llm_gateway_routing_decisions_total{{{SEL}, virtual_model=~"$route"}}[$__rate_interval])))', "{{provider}}/{{model}}")], "percentunit", stack=True),
        ts("Spend by model", [q(f"sum by (provider, model) (rate(llm_gateway_cost_usd_total{{{MODEL}}}[$__rate_interval])) * 3600", "{{provider}}/{{model}}")], "currencyUSD"),
        ts("Configurations received", [q(f"sum by (source, result) (increase(llm_gateway_config_reloads_total{{{SEL}}}[$__rate_interval]))", "{{source}} {{result}}")]),
    ]),
    "cache": ("LLM Gateway / Cache", [
        stat("Hit ratio", [q(f'sum(rate(llm_gateway_cache_requests_total{{{SEL}, outcome=~"hit_.*"}}[$__rate_interval])) / sum(rate(llm_gateway_cache_requests_total{{{SEL}}}[$__rate_interval]))')], "percentunit"),
        stat("Saved per hour (estimated)", [q(f'sum(rate(llm_gateway_cache_requests_total{{{SEL}, outcome=~"hit_.*"}}[$__rate_interval])) * 3600 * sum(rate(llm_gateway_cost_usd_total{{{SEL}}}[$__rate_interval])) / sum(rate(llm_gateway_requests_total{{{SEL}, provider!="none", provider!="cache"}}[$__rate_interval]))')], "currencyUSD",
             desc="Hits per hour times the average cost of a request that reached a provider."),
        ts("Outcomes", [q(f"sum by (outcome) (rate(llm_gateway_cache_requests_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")], "short", stack=True),
        ts("Lookup and embedding time (p99)", [q(f"histogram_quantile(0.99, sum by (le) (rate(llm_gateway_cache_lookup_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "lookup"),
                                              q(f"histogram_quantile(0.99, sum by (le) (rate(llm_gateway_cache_embedding_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "embedding")], "s"),
        ts("Entries and evictions", [q(f"sum by (pod) (llm_gateway_cache_entries{{{SEL}}})", "entries {{pod}}"),
                                     q(f"sum(rate(llm_gateway_cache_evictions_total{{{SEL}}}[$__rate_interval]))", "evictions/s")]),
    ]),
    "budgets": ("LLM Gateway / Budgets and cost", [
        ts("Spend vs limit (USD)", [q(f"max by (scope, subject, period) (llm_gateway_budget_used_usd{{{SEL}}}) / max by (scope, subject, period) (llm_gateway_budget_limit_usd{{{SEL}}})", "{{scope}} {{subject}} ({{period}})")], "percentunit"),
        ts("Tokens vs limit", [q(f"max by (scope, subject, period) (llm_gateway_budget_used_tokens{{{SEL}}}) / max by (scope, subject, period) (llm_gateway_budget_limit_tokens{{{SEL}}})", "{{scope}} {{subject}} ({{period}})")], "percentunit"),
        ts("Spend this period (USD)", [q(f"max by (scope, subject) (llm_gateway_budget_used_usd{{{SEL}}})", "{{scope}} {{subject}}")], "currencyUSD"),
        ts("Refused or downgraded by budgets", [q(f"sum by (scope, limit, outcome) (rate(llm_gateway_budget_limited_total{{{SEL}}}[$__rate_interval]))", "{{scope}} {{limit}} {{outcome}}")]),
        ts("Cost by provider (USD per hour)", [q(f"sum by (provider) (rate(llm_gateway_cost_usd_total{{{PROV}}}[$__rate_interval])) * 3600", "{{provider}}")], "currencyUSD", stack=True),
        ts("Usage estimated (no usage reported)", [q(f"sum(rate(llm_gateway_usage_estimated_total{{{SEL}}}[$__rate_interval]))", "estimated")]),
    ]),
    "benchmark": ("LLM Gateway / Benchmark", [
        ts("Time to first token by model (p50)", [q(f"histogram_quantile(0.5, sum by (le, provider, model) (rate(llm_gateway_time_to_first_token_seconds_bucket{{{MODEL}}}[$__rate_interval])))", "{{provider}}/{{model}}")], "s"),
        ts("Request time by model (p50)", [q(f"histogram_quantile(0.5, sum by (le, provider, model) (rate(llm_gateway_request_duration_seconds_bucket{{{MODEL}}}[$__rate_interval])))", "{{provider}}/{{model}}")], "s"),
        ts("Output tokens per second by model", [q(f'sum by (provider, model) (rate(llm_gateway_tokens_total{{{MODEL}, kind="completion"}}[$__rate_interval]))', "{{provider}}/{{model}}")]),
        ts("Benchmark quality by model", [q(f"max by (provider, model, task) (llm_gateway_benchmark_quality{{{MODEL}}})", "{{provider}}/{{model}} {{task}}")], "percentunit",
           desc="PENDING: the 14-task benchmark (issue 20) does not exist yet; this panel fills when it exports llm_gateway_benchmark_quality."),
    ]),
}


def variables():
    def var(name, query, label):
        return {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
                "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}}
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        var("namespace", "label_values(llm_gateway_requests_total, namespace)", "Namespace"),
        var("pod", 'label_values(llm_gateway_requests_total{namespace=~"$namespace"}, pod)', "Pod"),
        var("provider", 'label_values(llm_gateway_requests_total{namespace=~"$namespace"}, provider)', "Provider"),
        var("model", 'label_values(llm_gateway_requests_total{namespace=~"$namespace", provider=~"$provider"}, model)', "Model"),
        var("route", 'label_values(llm_gateway_routing_decisions_total{namespace=~"$namespace"}, virtual_model)', "Route (virtual model)"),
    ]


def dashboard(uid, title, panels):
    out, x, y = [], 0, 0
    for i, p in enumerate(panels):
        w, h = (4, 4) if p["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y = 0, y + (4 if w == 4 and out and out[-1]["gridPos"]["h"] == 4 else 8)
        p = {"id": i + 1, "datasource": {"type": "prometheus", "uid": "${datasource}"}, "gridPos": {"h": h, "w": w, "x": x, "y": y},
             **p, "targets": [{"refId": chr(65 + j), "datasource": {"type": "prometheus", "uid": "${datasource}"}, **t}
                              for j, t in enumerate(p["targets"])]}
        out.append(p)
        x += w
    links = [{"type": "dashboards", "tags": ["llm-gateway"], "asDropdown": True, "title": "LLM Gateway"}]
    return {"uid": f"llm-gateway-{uid}", "title": title, "tags": ["llm-gateway"], "timezone": "utc",
            "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"}, "links": links,
            "templating": {"list": variables()}, "annotations": {"list": []}, "panels": out}


def render():
    return {f"{name}.json": json.dumps(dashboard(name, title, panels), indent=2, ensure_ascii=False) + "\n"
            for name, (title, panels) in PAGES.items()}


if __name__ == "__main__":
    files = render()
    if sys.argv[1:] == ["--check"]:
        stale = [n for n, text in files.items() if not (HERE / n).exists() or (HERE / n).read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)}: run python3 dashboards/generate.py", file=sys.stderr)
            sys.exit(1)
    else:
        for n, text in files.items():
            (HERE / n).write_text(text)
        print(f"wrote {len(files)} dashboards")
