#!/usr/bin/env python3
"""Gateway overhead and throughput, side by side with the peers a user would pick instead.

In one run on one machine, against the same mock OpenAI upstream (this repository's Rust
`mock-providers`), it measures:

- `direct`: the mock itself (the floor every gateway adds to);
- `bare proxy`: `gateway/examples/bare_proxy.rs`, the gateway's own listener and upstream
  clients with nothing in between but a copy (no parsing, routing, keys, ledger or metrics):
  what a proxy built this way costs on this machine, so that the gateway's overhead beyond it
  is its own logic's (BENCH_BARE=0 leaves it out);
- `llm-gateway`: the release binary with its defaults (embedded SQLite ledger and metrics on);
- `portkey`: Portkey's AI gateway from npm (`@portkey-ai/gateway`), if `portkey` is in BENCH_PEERS;
- `litellm`: LiteLLM's proxy from PyPI (`litellm[proxy]`), if `litellm` is in BENCH_PEERS.

For a non-streaming chat completion and a short stream (same prompt, `stream: true`): p50 and
p99 at fixed request rates (`oha -q RATE -c 64 --latency-correction`, open loop), the maximum
rate (`oha -c 64`, closed loop), each gateway's peak RSS, and its CPU time per request at each
fixed rate (user + system time of its processes, from /proc, over the requests answered: the
cost of a request including the kernel's socket work, which varies less from run to run than
the maximum rate; marked `*` where the rate is past the target's maximum). For streams also
the time to first byte, to first content and the cost per chunk after it, from 200 sequential
200-word streams per target, the targets taking turns. Targets
are measured
interleaved, round by round, and the median of the rounds is printed: the machine is shared,
so compare ratios within one run, not absolute figures across runs.

Run it with ./e2e/bench/overhead.sh (builds release binaries, installs oha and the peers into
~/.cache/llm-gateway/bench). Knobs: BENCH_RATES (default "1000,5000"), BENCH_SECONDS (10),
BENCH_ROUNDS (2), BENCH_PEERS (default "portkey,litellm"; empty for none), BENCH_VARIANTS:
more gateways to measure beside the default one, as `name:KEY=VALUE KEY=VALUE;name2:…` (each
KEY=VALUE is an environment variable for that gateway; `BIN=path` runs another binary), e.g.
`BENCH_VARIANTS="1-worker:TOKIO_WORKER_THREADS=1"`. BENCH_ONLY=long-streams measures only
the sequential long streams, BENCH_LONG_STREAMS (200) of them per target, each after a pause
of BENCH_LONG_PAUSE_MS (0).
"""

import datetime
import http.client
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "llm-gateway" / "bench"
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "1000,5000").split(",") if r]
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
# Only the sequential long streams (time to first content, cost per chunk): no oha runs.
LONG_ONLY = os.environ.get("BENCH_ONLY") == "long-streams"
LONG_STREAMS = int(os.environ.get("BENCH_LONG_STREAMS", "200"))
# A pause before each long stream: 0 sends them back to back; a few ms lets every process go
# idle first, as a user's request usually finds a gateway (wake-up latency then counts).
LONG_PAUSE = float(os.environ.get("BENCH_LONG_PAUSE_MS", "0")) / 1000
BARE = os.environ.get("BENCH_BARE", "1") != "0"
PEERS = [p for p in os.environ.get("BENCH_PEERS", "portkey,litellm").split(",") if p]
KEY = "sk-bench"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


def body(stream, words=None):
    msgs = MESSAGES if words is None else MESSAGES[:1] + [
        {"role": "user", "content": f"Tell me a story. [[words={words}]]"}]
    return json.dumps({"model": "gpt-4o-mini", "messages": msgs, "temperature": 0.2, "stream": stream})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=1) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except OSError:
        return False


def wait_ready(proc, url, what, timeout=120):
    end = time.monotonic() + timeout
    while not ready(url):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited during start")
        if time.monotonic() > end:
            Target(what, url, {}, proc).stop()
            raise SystemExit(f"{what} not ready after {timeout}s")
        time.sleep(0.002)


def tree_pids(pid):
    """The process and its descendants (LiteLLM and Node fork workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for t in pathlib.Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return pids


def tree_cpu_secs(pid):
    """User + system CPU time of the process and its descendants, in seconds."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            # Fields after the command name (which may hold spaces): utime, stime, then
            # cutime, cstime (children that exited, e.g. a restarted worker) are the 12th-15th.
            rest = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in rest[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid, field="VmHWM"):
    """The process's peak (or current) RSS plus its children's (LiteLLM and Node fork)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Target:
    """One thing under test: how to start it and where to send a chat completion."""

    def __init__(self, name, url, headers, proc=None):
        self.name, self.url, self.headers, self.proc = name, url, headers, proc

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def spawn(cmd, env, cwd=None):
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def variants():
    """BENCH_VARIANTS parsed: [(name, binary, extra environment)]."""
    out = []
    for spec in filter(None, (v.strip() for v in os.environ.get("BENCH_VARIANTS", "").split(";"))):
        name, _, assigns = spec.partition(":")
        env = dict(a.split("=", 1) for a in assigns.split() if "=" in a)
        if not name or len(env) != len(assigns.split()):
            raise SystemExit(f"BENCH_VARIANTS: {spec!r} is not name:KEY=VALUE …")
        out.append((f"llm-gateway {name}", env.pop("BIN", str(BIN / "llm-gateway")), env))
    return out


def start_gateway(mock, data_dir, name="llm-gateway", binary=None, extra=None):
    port = free_port()
    env = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": KEY, "LLM_GATEWAY_DATA_DIR": data_dir,
           "OPENAI_BASE_URL": f"{mock}/openai/v1", "OLLAMA_HOST": f"{mock}/ollama", "RUST_LOG": "warn",
           **(extra or {})}
    t0 = time.perf_counter()
    proc = spawn([binary or str(BIN / "llm-gateway"), "--listen", f"127.0.0.1:{port}"], env)
    wait_ready(proc, f"http://127.0.0.1:{port}/readyz", name)
    return Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", {}, proc), time.perf_counter() - t0


def bare_proxy_cmd(port, mock):
    """The command that runs the bare proxy on `port` in front of `mock`."""
    binary = BIN / "examples" / "bare_proxy"
    if not binary.exists():
        raise SystemExit("no bare proxy binary: run `cargo build --release --example bare_proxy` "
                         "(the scripts in e2e/bench do), or set BENCH_BARE=0")
    return [str(binary), f"127.0.0.1:{port}", mock]


def start_bare_proxy(mock):
    port = free_port()
    proc = spawn(bare_proxy_cmd(port, mock), {"PATH": os.environ["PATH"]})
    wait_ready(proc, f"http://127.0.0.1:{port}/_mock/requests", "bare proxy")
    return Target("bare proxy", f"http://127.0.0.1:{port}/openai/v1/chat/completions", {}, proc)


def start_portkey(mock):
    port = free_port()
    entry = CACHE / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    proc = spawn(["node", str(entry), f"--port={port}", "--headless"], {"PATH": os.environ["PATH"]})
    wait_ready(proc, f"http://127.0.0.1:{port}/", "portkey")
    return Target("portkey", f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{mock}/openai/v1"}, proc)


def start_litellm(mock, work):
    port = free_port()
    cfg = pathlib.Path(work) / "litellm.yaml"
    cfg.write_text(json.dumps({"model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": f"{mock}/openai/v1", "api_key": KEY}}]}))
    master = "sk-" + os.urandom(32).hex()  # LiteLLM refuses to start with no or a weak key
    env = {"PATH": os.environ["PATH"], "HOME": work, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "LITELLM_MASTER_KEY": master,
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = spawn([str(CACHE / "litellm-venv" / "bin" / "litellm"), "--config", str(cfg),
                  "--host", "127.0.0.1", "--port", str(port)], env, cwd=work)
    wait_ready(proc, f"http://127.0.0.1:{port}/health/liveliness", "litellm", timeout=180)
    return Target("litellm", f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"authorization": f"Bearer {master}"}, proc)


def peer_versions():
    """The peers' names with the versions installed, for the table."""
    out = {}
    try:
        pkg = CACHE / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
        out["portkey"] = f"portkey {json.loads(pkg.read_text())['version']}"
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        out["portkey"] += f" (node {node})"
    except (OSError, ValueError, KeyError):
        pass
    try:
        v = subprocess.run([str(CACHE / "litellm-venv" / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True).stdout.strip()
        if v:
            out["litellm"] = f"litellm {v}"
    except OSError:
        pass
    return out


def oha(t, stream, rate=None, seconds=SECONDS):
    """One oha run: (p50 ms, p99 ms, achieved req/s, share of 200 answers, answers by status,
    the target's CPU µs per request answered)."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", "64",
           "-m", "POST", "-H", "content-type: application/json"]
    for k, v in {"authorization": f"Bearer {KEY}", **t.headers}.items():
        cmd += ["-H", f"{k}: {v}"]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    cmd += ["-d", body(stream), t.url]
    cpu0 = tree_cpu_secs(t.proc.pid)
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    cpu = tree_cpu_secs(t.proc.pid) - cpu0
    codes = out.get("statusCodeDistribution", {})
    # Requests still in flight when the run's time is up are cut by oha, not failed by the target.
    errors = {k: v for k, v in out.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(errors.values())
    ok = codes.get("200", 0)
    p = out.get("latencyPercentiles") or {}
    ms = lambda k: (p.get(k) or float("nan")) * 1000
    return (ms("p50"), ms("p99"), ok / seconds, (ok / total if total else 0.0), {**codes, **errors},
            cpu / ok * 1e6 if ok else float("nan"))


CONTENT = re.compile(rb'"content":\s*"(?!")')


def stream_timing(targets, n=200, words=200):
    """Sequential long streams, one per target in turn (so that a slow moment of the machine
    falls on every target alike): per target, (median time to first byte ms, median time to
    first content ms, median total ms, chunks), and why a target failed, if one did. First
    content: the first event whose delta carries text, which is what a user waits for."""
    conns, out, failed = {}, {t.name: ([], [], [], 0) for t in targets}, {}
    for t in targets:
        host, port = t.url.split("//")[1].split("/")[0].split(":")
        conns[t.name] = http.client.HTTPConnection(host, int(port), timeout=30)
    payload = body(True, words)
    for _ in range(n):
        for t in targets:
            if t.name in failed:
                continue
            path = "/" + t.url.split("//")[1].split("/", 1)[1]
            hdrs = {"content-type": "application/json", "authorization": f"Bearer {KEY}", **t.headers}
            firsts, contents, totals, _ = out[t.name]
            time.sleep(LONG_PAUSE)
            try:
                t0 = time.perf_counter()
                conns[t.name].request("POST", path, payload, hdrs)
                r = conns[t.name].getresponse()
                if r.status != 200:
                    raise OSError(f"stream answered {r.status}: {r.read()[:200]!r}")
                data, content = b"", None
                while chunk := r.read1(65536):
                    if not data:
                        firsts.append(time.perf_counter() - t0)
                    data += chunk
                    if content is None and CONTENT.search(data):
                        content = time.perf_counter() - t0
            except (OSError, http.client.HTTPException) as e:
                failed[t.name] = str(e)
                continue
            totals.append(time.perf_counter() - t0)
            contents.append(content if content is not None else float("nan"))
            out[t.name] = (firsts, contents, totals, data.count(b"data:"))
    for c in conns.values():
        c.close()
    ms = lambda xs: statistics.median(xs) * 1000
    return {name: (ms(f), ms(c), ms(tt), k) for name, (f, c, tt, k) in out.items() if name not in failed}, failed


def main():
    work = tempfile.mkdtemp(prefix="llm-gateway-bench-")
    mock_port = free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    mock_proc = spawn([str(BIN / "mock-providers"), "--listen", f"127.0.0.1:{mock_port}"], {"PATH": os.environ["PATH"]})
    wait_ready(mock_proc, f"{mock}/_mock/requests", "mock-providers")
    targets = [Target("direct", f"{mock}/openai/v1/chat/completions", {}, mock_proc)]
    failed = {}
    try:
        if BARE:
            targets.append(start_bare_proxy(mock))
        starts = []
        for _ in range(5):
            t, secs = start_gateway(mock, tempfile.mkdtemp(dir=work))
            starts.append(secs)
            t.stop()
        gw, _ = start_gateway(mock, tempfile.mkdtemp(dir=work))
        targets.append(gw)
        for name, binary, extra in variants():
            targets.append(start_gateway(mock, tempfile.mkdtemp(dir=work), name, binary, extra)[0])
        starters = {"portkey": lambda: start_portkey(mock), "litellm": lambda: start_litellm(mock, work)}
        for peer in PEERS:
            if peer not in starters:
                raise SystemExit(f"BENCH_PEERS: unknown peer {peer!r} (known: {', '.join(starters)})")
            try:
                targets.append(starters[peer]())
            except SystemExit as e:
                failed[peer] = str(e)
        time.sleep(0.5)
        idle = {t.name: tree_rss_kib(t.proc.pid, "VmRSS") for t in targets}

        modes = {}
        for t in targets if not LONG_ONLY else []:
            for stream in (False, True):
                try:
                    warm = oha(t, stream, 200, 3)  # warm: connection pools, JIT, page cache
                    # Mostly failing answers would be timed as if they were answers.
                    modes[(t.name, stream)] = warm[3] >= 0.5
                    if warm[3] < 0.5:
                        failed[f"{t.name} {'stream' if stream else 'json'}"] = f"answers: {warm[4]}"
                except (subprocess.CalledProcessError, json.JSONDecodeError) as e:
                    modes[(t.name, stream)] = False
                    failed[f"{t.name} {'stream' if stream else 'json'}"] = str(e)

        res = {}
        for _ in range(ROUNDS if not LONG_ONLY else 0):
            for stream in (False, True):
                for t in targets:
                    if not modes[(t.name, stream)]:
                        continue
                    for rate in RATES + [None]:
                        res.setdefault((t.name, stream, rate), []).append(oha(t, stream, rate))
        timing, broken = stream_timing([t for t in targets if LONG_ONLY or modes[(t.name, True)]], LONG_STREAMS)
        failed.update({f"{name} long streams": why for name, why in broken.items()})
        peak = {t.name: tree_rss_kib(t.proc.pid) for t in targets}
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = lambda xs, i: statistics.median(x[i] for x in xs)
    versions = peer_versions()
    print(f"\n# Gateway overhead and throughput — {datetime.date.today()}, {os.cpu_count()} cores, "
          f"{platform.machine()}, {SECONDS}s per run, median of {ROUNDS} interleaved rounds")
    print("# fixed rates: `oha -q RATE -c 64 --latency-correction`; max: `oha -c 64`; "
          "added = the target minus direct in the same round set; [n% ok] = share of the requests "
          "finished within a run that were answered 200 (those cut at its end not counted)")
    print("# each peer as installed, with its defaults (LiteLLM: one worker process)\n")
    head = "| target | mode |" + "".join(f" p50 @{r}/s | p99 @{r}/s |" for r in RATES) + \
        " max req/s | % of direct | RSS idle / peak |" + "".join(f" CPU µs/req @{r}/s |" for r in RATES)
    if not LONG_ONLY:
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
    for stream in (False, True) if not LONG_ONLY else ():
        base = {r: res.get(("direct", stream, r)) for r in RATES + [None]}
        for t in targets:
            key = (t.name, stream)
            if not modes.get(key):
                print(f"| {versions.get(t.name, t.name)} | {'stream' if stream else 'json'} | failed: see below |")
                continue
            cells = []
            for r in RATES:
                xs = res[(t.name, stream, r)]
                ok = min(x[3] for x in xs)
                for i in (0, 1):
                    v = med(xs, i)
                    cell = f"{v:,.2f} ms"
                    if t.name != "direct" and base[r]:
                        cell += f" (+{v - med(base[r], i):,.2f})"
                    if ok < 0.999:
                        cell += f" [{ok:.0%} ok]"
                    cells.append(cell)
            mx = med(res[(t.name, stream, None)], 2)
            pct = 100 * mx / med(base[None], 2) if base[None] else float("nan")
            rss = f"{idle[t.name] / 1024:.0f} / {peak[t.name] / 1024:.0f} MiB" if t.name != "direct" else "—"
            # Past the target's capacity the figure includes queueing work: marked with `*`.
            cpu = [med(res[(t.name, stream, r)], 5) for r in RATES]
            rss += "".join(" | —" if math.isnan(c) else f" | {c:,.0f}" + ("*" if mx < r else "") for c, r in zip(cpu, RATES))
            share = f"{pct:.0f} %" if pct >= 1 else f"{pct:.1f} %"
            print(f"| {versions.get(t.name, t.name)} | {'stream' if stream else 'json'} | " + " | ".join(cells) +
                  f" | {mx:,.0f} | {share} | {rss} |")
    if timing:
        print("\n| target | 200-word stream: first byte (p50) | first content (p50) | total (p50) | added first byte "
              "| added first content | added per chunk |")
        print("|---|---|---|---|---|---|---|")
        d = timing.get("direct")
        for name, (ttfb, ttfc, total, chunks) in timing.items():
            cells = f"| {name} | {ttfb:.3f} ms | {ttfc:.3f} ms | {total:.3f} ms ({chunks} chunks) |"
            if name == "direct" or not d:
                print(cells + " — | — | — |")
            else:
                per_chunk = ((total - ttfc) - (d[2] - d[1])) / max(chunks, 1) * 1000
                print(cells + f" {ttfb - d[0]:+.3f} ms | {ttfc - d[1]:+.3f} ms | {per_chunk:+.1f} µs |")
    print(f"\nllm-gateway start to ready: median {statistics.median(starts) * 1000:.1f} ms over {len(starts)} starts")
    for what, why in failed.items():
        print(f"failed: {what}: {why}")
    print("command: ./e2e/bench/overhead.sh")


if __name__ == "__main__":
    main()
