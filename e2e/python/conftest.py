"""Starts the mock providers and the gateway binaries for the SDK tests.

The gateway runs in its quick-start mode: no config file, providers from the standard
environment variables (pointed at the mocks), exactly as the README's run command.
"""

import os
import pathlib
import signal
import socket
import subprocess
import time

import httpx
import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("LLM_GATEWAY_BIN_DIR", ROOT / "target" / "debug"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def announced(proc: subprocess.Popen, log: pathlib.Path, timeout: float = 30.0) -> str:
    """The `http://ADDRESS` a process started with `--listen 127.0.0.1:0` announces in its log
    ("listening on http://…"). A port the child binds itself cannot be taken by something else
    between the test picking it and the child binding it, as a port from `free_port` can."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "listening on http://" in line:
                return line.split("listening on ", 1)[1].split()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} announced no address after {timeout}s: {log.read_text()}")


def wait_until(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def kubeconfig():
    """The e2e API server's kubeconfig (test-all.sh starts it and exports KUBECONFIG)."""
    path = os.environ.get("KUBECONFIG")
    assert path, "KUBECONFIG is not set: ./e2e/test-all.sh starts the test API server (e2e/k8s/cluster.sh start DIR)"
    return path


def until(what, check, timeout=30.0, every=0.1):
    """Polls `check` until it returns something true; the last value or error if it never does."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (ApiException, httpx.HTTPError, openai.APIError, KeyError, IndexError, TypeError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")


@pytest.fixture(scope="session")
def mock(tmp_path_factory):
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN_DIR / "mock-providers"), "--listen", "127.0.0.1:0"], stderr=out,
        )
    url = announced(proc, log)
    wait_until(f"{url}/_mock/requests", proc)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def gateway_env(mock, tmp_path_factory):
    """The gateway's environment (its data dir holds the embedded database)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "LLM_GATEWAY_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "OPENAI_API_KEY": "sk-test-openai",
        "OPENAI_BASE_URL": f"{mock}/openai/v1",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": f"{mock}/anthropic",
        "GROQ_API_KEY": "gsk-test",
        "GROQ_BASE_URL": f"{mock}/groq/openai/v1",
        "TOGETHER_API_KEY": "tg-test",
        "TOGETHER_BASE_URL": f"{mock}/together/v1",
        "OLLAMA_HOST": f"{mock}/ollama",
    }


def run_gateway(env, tmp_path_factory, name):
    """Runs the gateway binary with `env` until the session ends; yields its URL. It must stop
    cleanly on SIGTERM and never log an API key."""
    log = tmp_path_factory.mktemp(name) / "gateway.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN_DIR / "llm-gateway"), "--listen", "127.0.0.1:0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = announced(proc, log)
    wait_until(f"{url}/readyz", proc)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()
    text = log.read_text()
    for secret in env.values():
        if secret.startswith(("sk-", "gsk-", "tg-")):
            assert secret not in text, "an API key reached the gateway's log"


@pytest.fixture(scope="session")
def gateway(gateway_env, tmp_path_factory):
    yield from run_gateway(gateway_env, tmp_path_factory, "gateway")


@pytest.fixture(scope="session")
def cached_gateway(gateway_env, tmp_path_factory):
    """A second gateway with the response cache on (LLM_GATEWAY_CACHE=on), semantic matching
    with the embedding model test-all.sh installs."""
    model = os.environ.get("LLM_GATEWAY_EMBEDDING_MODEL")
    assert model, "set LLM_GATEWAY_EMBEDDING_MODEL (./e2e/test-all.sh does)"
    env = dict(gateway_env)
    env["LLM_GATEWAY_DATA_DIR"] = str(tmp_path_factory.mktemp("cached-data"))
    env["LLM_GATEWAY_CACHE"] = "on"
    env["LLM_GATEWAY_EMBEDDING_MODEL"] = model
    yield from run_gateway(env, tmp_path_factory, "cached")


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused-by-the-quick-start", max_retries=0)


@pytest.fixture(autouse=True)
def clear_faults(mock):
    httpx.delete(f"{mock}/_mock/faults")
    yield
    httpx.delete(f"{mock}/_mock/faults")


@pytest.fixture
def fault(mock):
    def set_fault(**kwargs):
        httpx.post(f"{mock}/_mock/faults", json=kwargs).raise_for_status()

    return set_fault
