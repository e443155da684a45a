#!/usr/bin/env python3
"""Routing quality on RouteLLM's public data, through the gateway's own router.

Replays every prompt of RouteLLM's MMLU, GSM8K and MT-Bench evaluation sets (read in place
from the data folder, never copied) through `POST /v1/route` of a running gateway with
`model: auto`, takes the complexity score the router's classifier gives it, and sends the
highest-scored share of prompts to the strong model (GPT-4) and the rest to the weak one
(Mixtral-8x7B), using RouteLLM's recorded per-prompt correctness (MMLU, GSM8K) or judge
scores (MT-Bench). Prints, per benchmark, the quality at strong-call shares 0, 10, …, 100 %,
APGR, CPT(50 %) and CPT(80 %) (RouteLLM's definitions, in the data folder's README), next to
random routing and RouteLLM's published figures, and draws the curves.

Ties: the classifier's score is coarse (many prompts share one value), so RouteLLM's decile
thresholds would collapse; prompts are instead ranked by score with ties broken at random,
averaged over at least 10 orders, which is the same curve when scores are distinct.

Run it with ./e2e/routing/eval.sh, which builds and starts the gateway.
Usage: routellm_eval.py --gateway URL --data DIR [--plot FILE.png]
"""

import argparse
import concurrent.futures
import csv
import glob
import http.client
import json
import os
import sys
import threading
import urllib.parse

import numpy as np

SHARES = np.linspace(0, 1, 11)
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
# RouteLLM's best published routers (paper, via the data folder's README; MMLU and GSM8K
# there are marked unverified).
PUBLISHED = {
    "MT-Bench": "mf (Arena + GPT-4 judge): APGR 0.802, CPT(50%) 13.4%, CPT(80%) 31.3%",
    "MMLU": "sw_ranking (+ MMLU labels): APGR 0.603, CPT(50%) 35.4% (unverified transcription)",
    "GSM8K": "causal_llm (+ judge): APGR 0.622, CPT(50%) 33.6%, CPT(80%) 63.3% (unverified transcription)",
}


def contaminated(path):
    with open(path) as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def load_mmlu(data):
    bad = contaminated(os.path.join(data, "mmlu", "contaminated_prompts.jsonl"))
    rows = []
    for path in sorted(glob.glob(os.path.join(data, "mmlu", "responses", "mmlu_*.csv"))):
        with open(path, newline="") as f:
            rows += [(r["prompt"], float(r[WEAK] == "True"), float(r[STRONG] == "True"))
                     for r in csv.DictReader(f) if r["prompt"] not in bad]
    return rows


def load_gsm8k(data):
    bad = contaminated(os.path.join(data, "gsm8k", "contaminated_prompts.jsonl"))
    with open(os.path.join(data, "gsm8k", "gsm8k_responses.csv"), newline="") as f:
        return [(r["prompt"], float(r[WEAK] == "True"), float(r[STRONG] == "True"))
                for r in csv.DictReader(f) if r["prompt"] not in bad]


def load_mt_bench(data):
    bad = contaminated(os.path.join(data, "mt_bench", "contaminated_prompts.jsonl"))
    scores = {}
    with open(os.path.join(data, "mt_bench", "judgements.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            scores.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
    rows = []
    with open(os.path.join(data, "mt_bench", "question.jsonl")) as f:
        for line in f:
            q = json.loads(line)
            if any(t in bad for t in q["turns"]):
                continue
            w, s = scores[(q["question_id"], WEAK)], scores[(q["question_id"], STRONG)]
            rows.append((q["turns"][0], sum(w) / len(w), sum(s) / len(s)))
    return rows


_local = threading.local()


def route_score(gateway, prompt):
    """The router's complexity score for the prompt, exactly as `auto` computes it."""
    u = urllib.parse.urlparse(gateway)
    if not hasattr(_local, "conn"):
        _local.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}]})
    _local.conn.request("POST", "/v1/route", body, {"content-type": "application/json"})
    r = _local.conn.getresponse()
    out = json.loads(r.read())
    if r.status != 200:
        raise SystemExit(f"/v1/route answered {r.status}: {out}")
    c = out["decision"]["classification"]
    return c["score"], c["tier"]


def curve(order_scores, weak, strong, rng):
    """Mean quality at each strong share, ranking by score with random tie-breaks (more
    orders for small sets, whose random curve is otherwise noisy)."""
    n = len(weak)
    orders = max(10, 20000 // n)
    acc = np.zeros(len(SHARES))
    for _ in range(orders):
        order = np.lexsort((rng.random(n), -order_scores))  # highest score first
        for i, share in enumerate(SHARES):
            k = int(round(share * n))
            chosen = weak.copy()
            chosen[order[:k]] = strong[order[:k]]
            acc[i] += chosen.mean()
    return acc / orders


def metrics(acc, weak_acc, strong_acc, n):
    """APGR, CPT(50%), CPT(80%) as RouteLLM defines them, at the shares actually routed
    (k/n of n prompts). CPT reads the curve's running maximum, so that a dip does not make
    `np.interp` (which needs increasing points) answer nonsense: the first share at which the
    quality was reached."""
    x = np.round(SHARES * n) / n
    auc = np.trapezoid(acc, x) if hasattr(np, "trapezoid") else np.trapz(acc, x)
    apgr = (auc - weak_acc) / (strong_acc - weak_acc)
    gap = strong_acc - weak_acc
    cpt = lambda p: float(np.interp(p * gap + weak_acc, np.maximum.accumulate(acc), x * 100))
    return apgr, cpt(0.5), cpt(0.8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    sets = {"MMLU": load_mmlu(args.data), "GSM8K": load_gsm8k(args.data), "MT-Bench": load_mt_bench(args.data)}
    results = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for name, rows in sets.items():
            scored = list(pool.map(lambda r: route_score(args.gateway, r[0]), rows))
            score = np.array([s for s, _ in scored])
            tiers = {}
            for _, t in scored:
                tiers[t] = tiers.get(t, 0) + 1
            weak = np.array([r[1] for r in rows])
            strong = np.array([r[2] for r in rows])
            wa, sa = weak.mean(), strong.mean()
            router = curve(score, weak, strong, rng)
            rand = curve(np.zeros(len(rows)), weak, strong, rng)
            results[name] = (len(rows), wa, sa, router, rand, tiers)

    print("\n# Routing quality on RouteLLM's data: strong = GPT-4, weak = Mixtral-8x7B; "
          "the gateway's classifier score decides who goes to the strong model\n")
    print("| benchmark | prompts | weak | strong | router APGR | CPT(50%) | CPT(80%) | random APGR | "
          "random CPT(50%) | random CPT(80%) | classifier tiers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (n, wa, sa, router, rand, tiers) in results.items():
        a, c50, c80 = metrics(router, wa, sa, n)
        ra, r50, r80 = metrics(rand, wa, sa, n)
        t = ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in sorted(tiers.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {n:,} | {wa:.3f} | {sa:.3f} | {a:.3f} | {c50:.1f}% | {c80:.1f}% | "
              f"{ra:.3f} | {r50:.1f}% | {r80:.1f}% | {t} |")
    print("\nQuality at strong-call shares 0, 10, …, 100 % (router / random):")
    for name, (_, _, _, router, rand, _) in results.items():
        print(f"  {name:9} router " + " ".join(f"{x:.3f}" for x in router))
        print(f"  {'':9} random " + " ".join(f"{x:.3f}" for x in rand))
        beats = [f"{int(s * 100)}%" for s, r, q in zip(SHARES[1:-1], router[1:-1], rand[1:-1]) if r <= q]
        print(f"  {'':9} at or below random at: {', '.join(beats) or 'none'}")
    print("\nRouteLLM's published best (for comparison):")
    for name, text in PUBLISHED.items():
        print(f"  {name}: {text}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, (name, (_, wa, sa, router, rand, _)) in zip(axes, results.items()):
            ax.plot(SHARES * 100, router, marker="o", label="gateway classifier")
            ax.plot(SHARES * 100, rand, linestyle="--", label="random")
            ax.set_title(name)
            ax.set_xlabel("strong-model calls (%)")
            ax.set_ylabel("quality")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"curve: {args.plot}")
    print("command: ./e2e/routing/eval.sh")


if __name__ == "__main__":
    sys.exit(main())
