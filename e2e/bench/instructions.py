#!/usr/bin/env python3
"""The gateway's CPU cost per request in instructions, where wall-clock benchmarks are noise.

Runs the release gateway under `valgrind --tool=callgrind` in front of the Rust mock upstream
twice, once with FEW and once with MANY sequential requests over one keep-alive connection,
and divides the difference of the two totals by MANY - FEW: start-up and shutdown cancel out,
what is left is one request's user-space instructions in every thread of the gateway (its
handler, hyper on both sides, the ledger's SQLite thread). A count is repeatable to a fraction
of a percent whatever else the machine is doing, so a change's effect shows even when it is
smaller than `overhead.sh`'s run-to-run spread. It does not count the kernel (socket
syscalls, scheduler wake-ups), which `overhead.sh`'s CPU-time figure includes.

Prints, for a non-streaming chat completion and a 16-event stream, the instructions per
request and their split by component (from callgrind's per-function costs), for the gateway
and for the bare proxy (`gateway/examples/bare_proxy.rs`: the gateway's listener and upstream
clients with only a copy between them), whose count is what serving and forwarding a request
costs before any of the gateway's logic.

Run it with ./e2e/bench/instructions.sh (builds the release binaries). Knobs: BENCH_FEW
(default 200), BENCH_MANY (1200), BENCH_GATEWAY (another gateway binary to count, an earlier
build say). BENCH_ALLOCS=1 also counts the heap allocations per request (and their bytes)
under `valgrind --tool=dhat`, the same difference of two runs (with the C library's allocator,
`LLM_GATEWAY_ALLOCATOR=system`: dhat sees only malloc's blocks).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from overhead import BIN, KEY, Target, bare_proxy_cmd, body, free_port, spawn, wait_ready  # noqa: E402

import http.client  # noqa: E402

# Another gateway binary to count (an earlier build, say), beside this checkout's mock.
GATEWAY = os.environ.get("BENCH_GATEWAY", str(BIN / "llm-gateway"))
FEW = int(os.environ.get("BENCH_FEW", "200"))
MANY = int(os.environ.get("BENCH_MANY", "1200"))

# Component of a function, from its source path or library (first match wins).
COMPONENTS = [
    ("SQLite (ledger)", r"libsqlite3-sys|sqlx"),
    ("allocator", r"/malloc/|malloc\.c|arena\.c|mimalloc"),
    ("memcpy/memmove", r"memmove|memcpy|memset"),
    ("JSON (serde_json)", r"serde_json|serde_core|serde_path_to_error"),
    ("HTTP (hyper, http, httparse, axum, tower)", r"/(hyper|hyper-util|http|http-body|http-body-util|httparse|axum|axum-core|tower|tower-http)-\d"),
    ("HTTP client (reqwest, url)", r"/(reqwest|url|idna|percent-encoding|form_urlencoded)-\d"),
    ("async runtime (tokio)", r"/tokio-\d|/futures-"),
    ("gateway's own code", r"(^|/)gateway/(src|examples)/"),
    ("tracing and metrics", r"/(tracing|tracing-core|tracing-subscriber|prometheus-client)-\d"),
]


def run(n, stream, work, bare=False, tool="callgrind"):
    """The callgrind (or dhat) file of a gateway (or bare proxy) process that served `n`
    requests."""
    mock_port, port = free_port(), free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    cmd = bare_proxy_cmd(port, mock) if bare else \
        [GATEWAY, "--listen", f"127.0.0.1:{port}"]
    mock_proc = spawn([str(BIN / "mock-providers"), "--listen", f"127.0.0.1:{mock_port}"], {"PATH": os.environ["PATH"]})
    out = os.path.join(work, f"{tool}-{n}-{stream}-{bare}.out")
    data = tempfile.mkdtemp(dir=work)
    env = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": KEY, "LLM_GATEWAY_DATA_DIR": data,
           "OPENAI_BASE_URL": f"{mock}/openai/v1", "OLLAMA_HOST": f"{mock}/ollama", "RUST_LOG": "warn"}
    if tool == "dhat":
        # dhat counts the C library's malloc; mimalloc's blocks would go uncounted.
        env["LLM_GATEWAY_ALLOCATOR"] = "system"
    path = "/openai/v1/chat/completions" if bare else "/v1/chat/completions"
    gw = spawn(["valgrind", f"--tool={tool}", f"--{tool}-out-file={out}", *cmd], env)
    try:
        wait_ready(mock_proc, f"{mock}/_mock/requests", "mock-providers")
        wait_ready(gw, f"http://127.0.0.1:{port}" + ("/_mock/requests" if bare else "/readyz"),
                   "the proxy under valgrind", timeout=300)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        payload = body(stream)
        for _ in range(n):
            conn.request("POST", path, payload, {"content-type": "application/json",
                                                 "authorization": f"Bearer {KEY}"})
            r = conn.getresponse()
            text = r.read()
            if r.status != 200:
                raise SystemExit(f"the gateway answered {r.status}: {text[:300]!r}")
        conn.close()
    finally:
        # SIGTERM: the gateway drains and exits, and callgrind writes its file at exit.
        Target("llm-gateway", "", {}, gw).stop()
        Target("mock", "", {}, mock_proc).stop()
    return out


def costs(path):
    """Total instructions, and per component, from callgrind_annotate's per-function list."""
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M).group(1).replace(",", ""))
    parts = dict.fromkeys([c for c, _ in COMPONENTS] + ["other (std, libc, the rest)"], 0)
    for m in re.finditer(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", text, re.M):
        name, cost = m.group(2), int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in name:
            continue
        # Matched on the file and function, not the object in brackets: that names the binary,
        # whose path every function compiled into it shares.
        source = name.split(" [")[0]
        comp = next((c for c, pat in COMPONENTS if re.search(pat, source)), "other (std, libc, the rest)")
        parts[comp] += cost
    return total, parts


def allocations(path):
    """Heap blocks and bytes allocated over a dhat run (its JSON output)."""
    with open(path) as f:
        pps = json.load(f)["pps"]
    return sum(p["tbk"] for p in pps), sum(p["tb"] for p in pps)


def main():
    for tool in ("valgrind", "callgrind_annotate"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            raise SystemExit(f"{tool} is missing: apt-get install valgrind")
    bare_proxy_cmd(0, "")  # a missing binary fails now, not after the gateway's runs
    with tempfile.TemporaryDirectory() as work:
        rows = {}
        for bare in (False, True):
            for stream in (False, True):
                (t0, p0), (t1, p1) = (costs(run(n, stream, work, bare)) for n in (FEW, MANY))
                per = {k: (p1[k] - p0[k]) / (MANY - FEW) for k in p1}
                name = "stream (16 events)" if stream else "json"
                rows[f"bare proxy {name}" if bare else name] = ((t1 - t0) / (MANY - FEW), per)
    comps = list(next(iter(rows.values()))[1])
    print(f"# Instructions per chat completion, the gateway and the bare proxy (callgrind, ({MANY} - {FEW} requests) difference, user space, all threads)\n")
    print("| component | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| **total** | " + " | ".join(f"**{t:,.0f}**" for t, _ in rows.values()) + " |")
    for c in comps:
        print(f"| {c} | " + " | ".join(f"{p[c]:,.0f} ({100 * p[c] / t:.0f} %)" for t, p in rows.values()) + " |")
    if os.environ.get("BENCH_ALLOCS") == "1":
        print(f"\n# Heap allocations per chat completion, the gateway (dhat, ({MANY} - {FEW} requests) difference)\n")
        print("| mode | allocations | bytes |")
        print("|---|---|---|")
        with tempfile.TemporaryDirectory() as work:
            for stream in (False, True):
                (b0, y0), (b1, y1) = (allocations(run(n, stream, work, tool="dhat")) for n in (FEW, MANY))
                name = "stream (16 events)" if stream else "json"
                print(f"| {name} | {(b1 - b0) / (MANY - FEW):,.1f} | {(y1 - y0) / (MANY - FEW):,.0f} |")
    print("\ncommand: ./e2e/bench/instructions.sh (BENCH_ALLOCS=1 for the allocations)")


if __name__ == "__main__":
    main()
