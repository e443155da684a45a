#!/usr/bin/env python3
"""Routing quality on RouteLLM's public data, through the gateway's own router.

Replays every prompt of RouteLLM's MMLU, GSM8K and MT-Bench evaluation sets (read in place
from the data folder, never copied) through `POST /v1/route` of a running gateway with
`model: auto`, and sends the share of prompts the router rates hardest to the strong model
(GPT-4) and the rest to the weak one (Mixtral-8x7B), using RouteLLM's recorded per-prompt
correctness (MMLU, GSM8K) or judge scores (MT-Bench). Prints, per benchmark, the quality at
strong-call shares 0, 10, …, 100 %, APGR, CPT(50 %) and CPT(80 %) (RouteLLM's definitions, in
the data folder's README), next to random routing and RouteLLM's published figures, and draws
the curves.

What "rates hardest" means: the quality weight `auto` ends up with (`decision.weights.quality`:
the rules' tier sets it, the learned strong-need estimate scales it), which is what moves a
balanced route from a cheaper model to a better one. The rules' score alone and the learned
estimate alone are shown beside it.

Held-out split: the learned estimate was trained (`e2e/routing/train.sh`, `--export-train`)
on the prompts whose CRC-32 is even; every figure here is on the odd half, which training
never saw.

Ties: scores can be coarse (many prompts share one value), so RouteLLM's decile thresholds
would collapse; prompts are instead ranked by score with ties broken at random, averaged over
at least 10 orders, which is the same curve when scores are distinct.

Run it with ./e2e/routing/eval.sh, which builds and starts the gateway.
Usage: routellm_eval.py --data DIR (--gateway URL [--plot FILE.png] | --export-train FILE)
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
import zlib

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


def route_scores(gateway, prompt):
    """What `auto` makes of the prompt: its quality weight, the rules' score and tier, and
    the learned strong-need estimate."""
    conns = _local.__dict__.setdefault("conns", {})  # one connection per thread and gateway
    if gateway not in conns:
        u = urllib.parse.urlparse(gateway)
        conns[gateway] = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}]})
    conns[gateway].request("POST", "/v1/route", body, {"content-type": "application/json"})
    r = conns[gateway].getresponse()
    out = json.loads(r.read())
    if r.status != 200:
        raise SystemExit(f"/v1/route answered {r.status}: {out}")
    d = out["decision"]
    c = d["classification"]
    return d["weights"]["quality"], c["score"], c["strong_need"], c["tier"]


def held_out(prompt, split="test"):
    """Whether the prompt is in the evaluation part. `test`: the odd-CRC half, which training
    never sees. `validation`: a quarter of the even-CRC (training) half, for choosing settings
    without looking at the test half; training then uses the other quarter. `cross`: every
    prompt, each scored by a model trained on the other half (see `other_half`)."""
    crc = zlib.crc32(prompt.encode())
    if split == "cross":
        return True
    if split == "test":
        return crc % 2 == 1
    return crc % 2 == 0 and (crc >> 1) % 2 == 1


def other_half(prompt):
    """In the cross-fitted evaluation, whether the prompt is in the even (shipped model's
    training) half, and so is scored by the gateway running the model trained on the odd half."""
    return zlib.crc32(prompt.encode()) % 2 == 0


def trained_on(prompt, split="test"):
    crc = zlib.crc32(prompt.encode())
    if split == "odd":
        return crc % 2 == 1
    return crc % 2 == 0 and (split == "test" or (crc >> 1) % 2 == 0)


def target(name, weak, strong):
    """What the learned estimate predicts: the strong model right where the weak one was
    wrong (MMLU, GSM8K), or by how much the judge preferred it (MT-Bench, 0.5 = a tie)."""
    if name == "MT-Bench":
        return min(1.0, max(0.0, (strong - weak) / 3 + 0.5))
    return 1.0 if strong > weak else 0.0


def export_train(sets, path, split="test"):
    """The training part as JSON Lines for train_strong_need, each benchmark weighted by
    sqrt(largest / its size) so that GSM8K and MT-Bench are not drowned by MMLU."""
    halves = {name: [r for r in rows if trained_on(r[0], split)] for name, rows in sets.items()}
    largest = max(len(rows) for rows in halves.values())
    with open(path, "w") as f:
        for name, rows in halves.items():
            w = (largest / len(rows)) ** 0.5
            for prompt, weak, strong in rows:
                f.write(json.dumps({"text": prompt, "target": target(name, weak, strong),
                                    "weight": w}) + "\n")
    print(f"training half: " + ", ".join(f"{n} {len(r):,}" for n, r in halves.items()) + f" -> {path}")


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
    ap.add_argument("--gateway")
    ap.add_argument("--data", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--export-train")
    ap.add_argument("--split", choices=("test", "validation", "cross", "odd"), default="test")
    ap.add_argument("--gateway-other", help="with --split cross: the gateway whose strong-need "
                    "model was trained on the odd half (it scores the even half)")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    sets = {"MMLU": load_mmlu(args.data), "GSM8K": load_gsm8k(args.data), "MT-Bench": load_mt_bench(args.data)}
    if args.export_train:
        return export_train(sets, args.export_train, args.split)
    if not args.gateway:
        ap.error("--gateway is required unless --export-train is given")
    if args.split == "odd":
        ap.error("--split odd only exports the odd half's training data (--export-train)")
    if (args.split == "cross") != bool(args.gateway_other):
        ap.error("--split cross and --gateway-other go together")
    if args.split == "cross":
        probe = "What is the integral of x squared from 0 to 3? Show each step."
        if route_scores(args.gateway, probe)[2] == route_scores(args.gateway_other, probe)[2]:
            raise SystemExit("--gateway and --gateway-other give the same strong-need estimate: "
                             "they do not run the two halves' models")
    scorer = lambda prompt: route_scores(
        args.gateway_other if args.split == "cross" and other_half(prompt) else args.gateway, prompt)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for name, rows in sets.items():
            rows = [r for r in rows if held_out(r[0], args.split)]
            scored = list(pool.map(lambda r: scorer(r[0]), rows))
            tiers = {}
            for *_, t in scored:
                tiers[t] = tiers.get(t, 0) + 1
            weak = np.array([r[1] for r in rows])
            strong = np.array([r[2] for r in rows])
            curves = {label: curve(np.array([s[i] for s in scored]), weak, strong, rng)
                      for i, label in enumerate(("auto", "rules", "learned"))}
            curves["random"] = curve(np.zeros(len(rows)), weak, strong, rng)
            results[name] = (len(rows), weak.mean(), strong.mean(), curves, tiers)

    part = {"test": "held-out half", "validation": "validation quarter of the training half",
            "cross": "every prompt, cross-fitted: each half scored by a model trained on the other"}[args.split]
    print(f"\n# Routing quality on RouteLLM's data ({part}): strong = GPT-4, weak = Mixtral-8x7B; "
          "the share `auto` weighs most towards quality goes to the strong model\n")
    print("| benchmark | prompts | weak | strong | auto APGR | CPT(50%) | CPT(80%) | rules only APGR | "
          "learned only APGR | random APGR | random CPT(50%) | random CPT(80%) | rules' tiers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (n, wa, sa, c, tiers) in results.items():
        a, c50, c80 = metrics(c["auto"], wa, sa, n)
        ra, r50, r80 = metrics(c["random"], wa, sa, n)
        t = ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in sorted(tiers.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {n:,} | {wa:.3f} | {sa:.3f} | {a:.3f} | {c50:.1f}% | {c80:.1f}% | "
              f"{metrics(c['rules'], wa, sa, n)[0]:.3f} | {metrics(c['learned'], wa, sa, n)[0]:.3f} | "
              f"{ra:.3f} | {r50:.1f}% | {r80:.1f}% | {t} |")
    print("\nQuality at strong-call shares 0, 10, …, 100 %:")
    for name, (_, _, _, c, _) in results.items():
        for label in ("auto", "rules", "learned", "random"):
            print(f"  {name if label == 'auto' else '':9} {label:8} " + " ".join(f"{x:.3f}" for x in c[label]))
        below = [f"{int(s * 100)}%" for s, r, q in zip(SHARES[1:-1], c["auto"][1:-1], c["random"][1:-1]) if r <= q]
        print(f"  {'':9} auto at or below random at: {', '.join(below) or 'none'}")
    print("\nRouteLLM's published best (for comparison; trained on other data, tested on all of it):")
    for name, text in PUBLISHED.items():
        print(f"  {name}: {text}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, (name, (_, wa, sa, c, _)) in zip(axes, results.items()):
            ax.plot(SHARES * 100, c["auto"], marker="o", label="auto (rules + learned)")
            ax.plot(SHARES * 100, c["rules"], marker=".", alpha=0.6, label="rules only")
            ax.plot(SHARES * 100, c["random"], linestyle="--", label="random")
            ax.set_title(f"{name} ({ {'test': 'held-out half', 'validation': 'validation quarter', 'cross': 'cross-fitted'}[args.split]})")
            ax.set_xlabel("strong-model calls (%)")
            ax.set_ylabel("quality")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"curve: {args.plot}")
    model = os.environ.get("LLM_GATEWAY_STRONG_NEED_MODEL")
    print("command: " + (f"LLM_GATEWAY_STRONG_NEED_MODEL={model} " if model else "")
          + "./e2e/routing/eval.sh" + (f" --split {args.split}" if args.split != "test" else "")
          + (f" --plot {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    sys.exit(main())
