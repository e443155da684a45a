#!/usr/bin/env python3
"""Gateway overhead benchmark.

Measures, in one run on one machine, the latency of a chat completion sent directly to the
mock OpenAI provider and the same request sent through the gateway, at fixed request rates
with `oha`; prints p50/p99 of both and the difference. Also the gateway's idle and
after-load RSS, and its time from process start to /readyz.

Run it with ./e2e/bench/overhead.sh (builds release binaries, installs oha if missing).
Knobs: BENCH_RATES (default "200,1000"), BENCH_SECONDS (default 10), BENCH_ROUNDS (default 2).
"""

import json
import os
import pathlib
import signal
import socket
import statistics
import tempfile
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "200,1000").split(",")]
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
DATA_DIR = tempfile.mkdtemp(prefix="llm-gateway-bench-")
BODY = json.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are terse."},
                 {"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}],
    "temperature": 0.2,
})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def rss_kib(pid, field="VmRSS"):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start_gateway(mock, port):
    env = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk-bench", "LLM_GATEWAY_DATA_DIR": DATA_DIR,
           "OPENAI_BASE_URL": f"{mock}/openai/v1", "OLLAMA_HOST": f"{mock}/ollama",
           "RUST_LOG": "warn"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "llm-gateway"), "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready(f"http://127.0.0.1:{port}/readyz"):
        if proc.poll() is not None:
            raise SystemExit("gateway exited during start")
        time.sleep(0.002)
    return proc, time.perf_counter() - t0


def oha(url, rate, auth):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{SECONDS}s", "-q", str(rate),
           "-c", "64", "--latency-correction", "-m", "POST",
           "-H", "content-type: application/json", "-H", f"authorization: Bearer {auth}",
           "-d", BODY, url]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    codes = out.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    total = sum(codes.values())
    if total == 0 or ok != total:
        raise SystemExit(f"non-200 answers from {url}: {codes}")
    p = out["latencyPercentiles"]
    return p["p50"] * 1000, p["p99"] * 1000, out["summary"]["requestsPerSec"]


def main():
    mock_port, gw_port = free_port(), free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    mock_proc = subprocess.Popen([str(BIN / "mock-providers"), "--listen", f"127.0.0.1:{mock_port}"],
                                 stderr=subprocess.DEVNULL)
    while not ready(f"{mock}/_mock/requests"):
        time.sleep(0.01)
    try:
        starts = []
        for _ in range(5):
            proc, t = start_gateway(mock, free_port())
            starts.append(t)
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        gw, _ = start_gateway(mock, gw_port)
        time.sleep(0.5)
        idle_rss = rss_kib(gw.pid)
        # Warm both paths (connection pools, page cache) before measuring.
        oha(f"{mock}/openai/v1/chat/completions", 200, "sk-bench")
        oha(f"http://127.0.0.1:{gw_port}/v1/chat/completions", 200, "unused")

        rows = []
        for rate in RATES:
            d50, d99, g50, g99, grps = [], [], [], [], []
            for _ in range(ROUNDS):
                a, b, _ = oha(f"{mock}/openai/v1/chat/completions", rate, "sk-bench")
                d50.append(a)
                d99.append(b)
                a, b, r = oha(f"http://127.0.0.1:{gw_port}/v1/chat/completions", rate, "unused")
                g50.append(a)
                g99.append(b)
                grps.append(r)
            m = statistics.median
            rows.append((rate, m(d50), m(d99), m(g50), m(g99), m(grps)))
        peak_rss = rss_kib(gw.pid, "VmHWM")
        gw.send_signal(signal.SIGTERM)
        gw.wait(10)
    finally:
        mock_proc.terminate()

    print(f"\nGateway overhead, non-streaming chat completion, {SECONDS}s per run, "
          f"median of {ROUNDS} interleaved runs, `oha -q RATE -c 64 --latency-correction`")
    print(f"{'rate/s':>7} {'direct p50':>11} {'direct p99':>11} {'gateway p50':>12} {'gateway p99':>12} "
          f"{'added p50':>10} {'added p99':>10} {'achieved/s':>10}")
    for rate, a50, a99, b50, b99, rps in rows:
        print(f"{rate:>7} {a50:>9.3f}ms {a99:>9.3f}ms {b50:>10.3f}ms {b99:>10.3f}ms "
              f"{b50 - a50:>8.3f}ms {b99 - a99:>8.3f}ms {rps:>10.1f}")
    print(f"gateway RSS: idle {idle_rss / 1024:.1f} MiB, peak after load {peak_rss / 1024:.1f} MiB")
    print(f"gateway start to ready (incl. Ollama discovery): median {statistics.median(starts) * 1000:.1f} ms "
          f"over {len(starts)} starts (min {min(starts) * 1000:.1f}, max {max(starts) * 1000:.1f})")
    print("command: ./e2e/bench/overhead.sh")


if __name__ == "__main__":
    main()
