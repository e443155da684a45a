#!/usr/bin/env python3
"""The embedded ledger's cost as its table grows.

A gateway that has run for a day has millions of usage records in its SQLite file, and what
an insert costs depends on that: an index whose keys arrive in random order puts nearly every
new record on a page of its own. `overhead.py` always starts from an empty file, so this
script measures what it cannot: the release gateway in front of the Rust mock at a fixed rate
(oha, open loop), once per table size, with the table pre-filled with that many records (ids
random, as gateways before the time-ordered ids wrote them: an upgraded gateway's file).

Prints, per binary and size: the ledger thread's (`sqlite-ledger`) CPU µs per request, the
whole gateway's CPU µs per request (the ledger's included), p50 and p99 latency.

Run it with ./e2e/bench/ledger.sh (builds the release binaries). Knobs: BENCH_LEDGER_ROWS
(sizes, default "0,2000000"), BENCH_RATE (5000), BENCH_SECONDS (12), BENCH_ROUNDS (2: sizes
and binaries interleaved, medians shown), BENCH_BEFORE (another gateway binary measured in
the same run, e.g. one built from an earlier commit), BENCH_LEDGER_AGE_DAYS (how old the
newest pre-filled record is, default 1) and BENCH_GATEWAY_ENV ("KEY=VALUE …" for every
gateway started). With both, retention can be measured while it deletes:
BENCH_LEDGER_AGE_DAYS=40 BENCH_GATEWAY_ENV=LLM_GATEWAY_LEDGER_RETENTION_DAYS=32 runs the load
while the gateway deletes every pre-filled record.
"""

import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from overhead import BIN, free_port, oha, spawn, start_gateway, wait_ready  # noqa: E402

ROWS = [int(n) for n in os.environ.get("BENCH_LEDGER_ROWS", "0,2000000").split(",") if n]
RATE = int(os.environ.get("BENCH_RATE", "5000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "12"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
AGE_DAYS = float(os.environ.get("BENCH_LEDGER_AGE_DAYS", "1"))
GATEWAY_ENV = dict(a.split("=", 1) for a in os.environ.get("BENCH_GATEWAY_ENV", "").split() if "=" in a)
COLUMNS = ("id, at_ms, request_id, key_id, tenant, endpoint, virtual_model, provider, model, "
           "prompt_tokens, completion_tokens, cost_usd, usage_estimated, latency_ms, ttft_ms, "
           "cache, status, attempts")


def template(mock, work, rows):
    """A data directory whose ledger holds `rows` records: the gateway creates the schema,
    then the records are inserted directly (a day of traffic, in seconds)."""
    data = os.path.join(work, f"template-{rows}")
    os.makedirs(data)
    gw, _ = start_gateway(mock, data)
    gw.stop()
    db = sqlite3.connect(os.path.join(data, "gateway.db"))
    start = int(time.time() * 1000 - AGE_DAYS * 86_400_000) - rows * 40
    db.executemany(
        f"INSERT INTO usage_records ({COLUMNS}) VALUES ({', '.join('?' * 18)})",
        ((str(uuid.uuid4()), start + i * 40, str(uuid.uuid4()), None, None, "chat", None,
          "openai", "gpt-4o-mini", 24, 12, 0.00001, 0, 3, None, None, 200, 1) for i in range(rows)))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return data


def thread_cpu_secs(pid, name):
    """User + system CPU time of the process's threads called `name`."""
    ticks = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            ticks += int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(mock, work, binary, data):
    """One run: (ledger µs/request, gateway µs/request, p50 ms, p99 ms, records in the table
    at the end)."""
    copy = tempfile.mkdtemp(dir=work)
    shutil.copytree(data, copy, dirs_exist_ok=True)
    gw, _ = start_gateway(mock, copy, binary=binary, extra=GATEWAY_ENV)
    try:
        oha(gw, False, rate=1000, seconds=1)  # the ledger's thread starts with its first batch
        time.sleep(0.5)
        ledger0 = thread_cpu_secs(gw.proc.pid, "sqlite-ledger")
        p50, p99, ok_rate, _, _, cpu_us = oha(gw, False, rate=RATE, seconds=SECONDS)
        time.sleep(0.5)  # the last batch
        ledger_us = (thread_cpu_secs(gw.proc.pid, "sqlite-ledger") - ledger0) / (ok_rate * SECONDS) * 1e6
        gw.stop()
        db = sqlite3.connect(os.path.join(copy, "gateway.db"))
        left = db.execute("SELECT count(*) FROM usage_records").fetchone()[0]
        db.close()
        return ledger_us, cpu_us, p50, p99, left
    finally:
        gw.stop()
        shutil.rmtree(copy, ignore_errors=True)


def main():
    work = tempfile.mkdtemp(prefix="llm-gateway-ledger-bench-")
    port = free_port()
    mock = f"http://127.0.0.1:{port}"
    mock_proc = spawn([str(BIN / "mock-providers"), "--listen", f"127.0.0.1:{port}"], {"PATH": os.environ["PATH"]})
    binaries = [("llm-gateway", str(BIN / "llm-gateway"))]
    if os.environ.get("BENCH_BEFORE"):
        binaries.append(("before", os.environ["BENCH_BEFORE"]))
    try:
        wait_ready(mock_proc, f"{mock}/_mock/requests", "mock-providers")
        templates = {rows: template(mock, work, rows) for rows in ROWS}
        results = {}
        for _ in range(ROUNDS):
            for rows in ROWS:
                for name, binary in binaries:
                    results.setdefault((name, rows), []).append(measure(mock, work, binary, templates[rows]))
        extra = f", gateway env {GATEWAY_ENV}" if GATEWAY_ENV else ""
        print(f"Ledger cost by table size: {RATE} json requests/s for {SECONDS} s, median of {ROUNDS}, "
              f"pre-filled records {AGE_DAYS:g} days old and older{extra}\n")
        print("| gateway | records in the table | ledger CPU µs/req | gateway CPU µs/req | p50 | p99 | records at the end |")
        print("|---|---|---|---|---|---|---|")
        for (name, rows), runs in results.items():
            med = [statistics.median(r[i] for r in runs) for i in range(5)]
            print(f"| {name} | {rows:,} | {med[0]:.1f} | {med[1]:.0f} | {med[2]:.2f} ms | {med[3]:.2f} ms | {med[4]:,.0f} |")
    finally:
        mock_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
