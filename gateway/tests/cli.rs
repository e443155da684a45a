//! The `llm-gateway` binary itself: flags, config errors, the environment quick start,
//! secrets kept out of logs, SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};

const BIN: &str = env!("CARGO_BIN_EXE_llm-gateway");

#[test]
fn help_documents_every_flag_and_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--listen",
        "--config",
        "--log-format",
        "serve",
        "check-config",
        "catalog",
        "keys",
        "budgets",
        "--database-url",
        "--redis-url",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GROQ_API_KEY",
        "TOGETHER_API_KEY",
        "OLLAMA_HOST",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("--listen"));
}

#[test]
fn invalid_config_exits_2_naming_file_field_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let cases = [
        (
            "providers:\n  - name: openai\n    api_key: {env: NOT_SET_ANYWHERE_X}\n",
            "providers[0].api_key.env",
            "NOT_SET_ANYWHERE_X` is not set",
        ),
        (
            "providers:\n  - name: x\n    protocl: openai\n",
            "providers[0].protocl",
            "unknown field",
        ),
        ("server: {listen: nowhere}\n", "server.listen", "IP:PORT"),
    ];
    for (yaml, field, problem) in cases {
        std::fs::write(&path, yaml).unwrap();
        for sub in [&["--config"][..], &["check-config", "--config"][..]] {
            let out = Command::new(BIN)
                .args(sub)
                .arg(&path)
                .env_remove("LLM_GATEWAY_CONFIG")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{yaml}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            assert!(err.contains(field), "{err}");
            assert!(err.contains(problem), "{err}");
        }
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/gw.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("/nonexistent/gw.yaml"));
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gateway.yaml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env("OPENAI_API_KEY", "sk-x")
        .env("ANTHROPIC_API_KEY", "sk-y")
        .env("GROQ_API_KEY", "gk")
        .env("TOGETHER_API_KEY", "tk")
        .env("OLLAMA_HOST", "127.0.0.1:9")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("configuration is valid"), "{all}");
    assert!(all.contains("virtual model auto ->"), "{all}");
}

/// Runs the mock in a background runtime; returns its base URL.
fn start_mock() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            mock_providers::serve(
                l,
                Mock::new(DEFAULT_OLLAMA_MODELS.map(String::from).to_vec()),
            )
            .await
            .unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

#[test]
fn quick_start_from_environment_serves_and_stops_cleanly_on_sigterm() {
    let mock = start_mock();
    let secret = "sk-super-secret-value-123";
    let data = tempfile::tempdir().unwrap();
    let mut gw = common::spawn_listening(
        Command::new(BIN)
            .env_clear()
            .env("LLM_GATEWAY_DATA_DIR", data.path())
            .env("OPENAI_API_KEY", secret)
            .env("OPENAI_BASE_URL", format!("{mock}/openai/v1"))
            .env("ANTHROPIC_API_KEY", secret)
            .env("ANTHROPIC_BASE_URL", format!("{mock}/anthropic"))
            .env("OLLAMA_HOST", format!("{mock}/ollama"))
            .env("RUST_LOG", "debug"),
    );
    let base = gw.base.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::blocking_client();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")) {
            if r == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "gateway not ready: {:?}",
            gw.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http
        .post_json(
            &format!("{base}/v1/chat/completions"),
            r#"{"model":"claude-3-5-haiku-latest","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http.get(format!("{base}/admin/breakers")).unwrap(),
        403,
        "no admin token: admin API off"
    );

    // SIGTERM: readiness is withdrawn, the process drains and exits 0.
    assert_eq!(stop_with_sigterm(&mut gw.child), Some(0));

    let log = gw.full_log();
    assert!(
        log.contains("provider enabled")
            && log.contains("provider=openai")
            && log.contains("provider=anthropic"),
        "{log}"
    );
    assert!(
        log.contains("provider=ollama"),
        "Ollama answered, so it is enabled: {log}"
    );
    assert!(
        !log.contains("provider=groq"),
        "no GROQ_API_KEY, no groq: {log}"
    );
    assert!(log.contains(&format!("OPENAI_BASE_URL={base}/v1")), "{log}");
    assert!(log.contains("request finished"), "{log}");
    assert!(!log.contains(secret), "a secret reached the log: {log}");
}

/// Each heap allocator serves requests, streams included, and stops cleanly.
#[test]
fn both_allocators_serve_and_stop_cleanly() {
    let mock = start_mock();
    let http = reqwest::blocking_client();
    for (env, expect) in [(None, "mimalloc"), (Some("system"), "system")] {
        let envs: Vec<(&str, &str)> = env
            .map(|v| ("LLM_GATEWAY_ALLOCATOR", v))
            .into_iter()
            .collect();
        let data = tempfile::tempdir().unwrap();
        let mut gw = common::spawn_listening(
            gateway_command(&mock, data.path())
                .env("RUST_LOG", "info")
                .envs(envs),
        );
        let base = gw.base.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{base}/readyz"))
            .map(|s| s != 200)
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "{expect}: the gateway did not get ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for stream in [false, true] {
            let (status, body) = http
                .post_json(
                    &format!("{base}/v1/chat/completions"),
                    &format!(r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#),
                )
                .unwrap();
            assert_eq!(status, 200, "{expect}, stream {stream}: {body}");
            assert!(body.contains("chat.completion"), "{expect}: {body}");
        }
        assert_eq!(stop_with_sigterm(&mut gw.child), Some(0), "{expect}");
        let log = gw.full_log();
        assert!(
            log.contains(&format!("allocator=\"{expect}\"")),
            "{expect}: {log}"
        );
    }
}

/// The gateway binary, OpenAI at the mock, Ollama absent, its data (the ledger) in `data`
/// rather than in a `gateway.db` of the working directory shared with other tests, and nothing
/// else from this environment. [`common::spawn_listening`] gives it its port.
fn gateway_command(mock: &str, data: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("LLM_GATEWAY_DATA_DIR", data)
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", format!("{mock}/openai/v1"))
        .env("OLLAMA_HOST", "127.0.0.1:9");
    c
}

/// Starts the gateway binary ([`gateway_command`]) with `args`; returns it, its base URL once
/// `/healthz` answers, and its data folder (removed when dropped).
fn spawn_gateway(mock: &str, args: &[&str]) -> (std::process::Child, String, tempfile::TempDir) {
    spawn_gateway_in(mock, args, &[], tempfile::tempdir().unwrap())
}

/// As [`spawn_gateway`], with more environment variables and a data folder prepared
/// beforehand.
fn spawn_gateway_in(
    mock: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    data: tempfile::TempDir,
) -> (std::process::Child, String, tempfile::TempDir) {
    let common::Listening { child, base, .. } = common::spawn_listening(
        gateway_command(mock, data.path())
            .args(args)
            .envs(envs.iter().copied()),
    );
    let http = reqwest::blocking_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{base}/healthz"))
        .map(|s| s != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base, data)
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &std::process::Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// SIGTERM, then the exit code within 15 s (`None`: still running, then killed).
fn stop_with_sigterm(child: &mut std::process::Child) -> Option<i32> {
    sigterm(child);
    wait_with_timeout(child, Duration::from_secs(15))
}

fn wait_with_timeout(child: &mut std::process::Child, t: Duration) -> Option<i32> {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// A tiny blocking HTTP client over a current-thread runtime (reqwest's blocking feature
/// would add a second copy of its runtime glue for two test calls).
mod reqwest {
    pub struct Client(tokio::runtime::Runtime, ::reqwest::Client);

    pub fn blocking_client() -> Client {
        llm_gateway::install_crypto();
        Client(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            ::reqwest::Client::new(),
        )
    }

    impl Client {
        pub fn get(&self, url: String) -> Result<u16, ::reqwest::Error> {
            self.0
                .block_on(async { Ok(self.1.get(url).send().await?.status().as_u16()) })
        }

        pub fn post_json_auth(
            &self,
            url: &str,
            body: &str,
            key: Option<&str>,
        ) -> Result<(u16, String), ::reqwest::Error> {
            self.0.block_on(async {
                let mut rb = self
                    .1
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_owned());
                if let Some(k) = key {
                    rb = rb.bearer_auth(k);
                }
                let r = rb.send().await?;
                Ok((r.status().as_u16(), r.text().await?))
            })
        }

        pub fn post_json(&self, url: &str, body: &str) -> Result<(u16, String), ::reqwest::Error> {
            self.0.block_on(async {
                let r = self
                    .1
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .send()
                    .await?;
                Ok((r.status().as_u16(), r.text().await?))
            })
        }
    }
}

/// In both threading modes: streams in flight at SIGTERM finish.
#[test]
fn sigterm_during_streams_loses_none_of_them() {
    for threading in ["per-thread", "shared"] {
        sigterm_during_streams(threading);
    }
}

fn sigterm_during_streams(threading: &str) {
    let mock = start_mock();
    let data = tempfile::tempdir().unwrap();
    let common::Listening {
        mut child, base, ..
    } = common::spawn_listening(
        gateway_command(&mock, data.path()).args(["--threading", threading]),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        llm_gateway::install_crypto();
        let http = ::reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Each stream takes about 2 s: 20 words, 100 ms apart.
        http.post(format!("{mock}/_mock/faults"))
            .json(&serde_json::json!({"vendor": "openai", "chunk_delay_ms": 100}))
            .send()
            .await
            .unwrap();
        let streams: Vec<_> = (0..8)
            .map(|_| {
                let http = http.clone();
                let url = format!("{base}/v1/chat/completions");
                tokio::spawn(async move {
                    let r = http
                        .post(url)
                        .json(&serde_json::json!({"model": "gpt-4o-mini", "stream": true,
                            "messages": [{"role": "user", "content": "[[words=20]]"}]}))
                        .send()
                        .await
                        .unwrap();
                    r.text().await.unwrap()
                })
            })
            .collect();
        // All eight under way at the upstream before the signal.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let load = common::fetch_json(&http, format!("{mock}/_mock/load?vendor=openai")).await;
            if load["in_flight"] == 8 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the streams never started: {load}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sigterm(&child);
        let not_ready = || async {
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .map(|r| r.status() != 200)
                .unwrap_or(true)
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while !not_ready().await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            not_ready().await,
            "after SIGTERM the gateway must not report ready (the streams run for 2 s more)"
        );
        for s in streams {
            let body = s.await.unwrap();
            assert!(
                body.trim_end().ends_with("data: [DONE]"),
                "{threading}: a stream was cut by shutdown: {body}"
            );
            let words = body.matches("\"content\":\"").count();
            assert!(words >= 20, "{words} content chunks: {body}");
        }
    });
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(15)),
        Some(0)
    );
}

/// One call through the gateway binary (with a database, and `drain_timeout_secs` if
/// given), waiting at the mock, whose `fault` slows it: what the shutdown tests signal into.
struct InFlight {
    gw: common::Listening,
    rt: tokio::runtime::Runtime,
    store: llm_gateway::store::Store,
    /// The call's status and body, once it ends.
    call: tokio::task::JoinHandle<(u16, String)>,
    _data: tempfile::TempDir,
}

impl InFlight {
    fn start(drain_secs: Option<u32>, fault: serde_json::Value, body: serde_json::Value) -> Self {
        let mock = start_mock();
        let data = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/gw.db", data.path().display());
        let mut cmd = gateway_command(&mock, data.path());
        cmd.args(["--database-url", &db]);
        if let Some(secs) = drain_secs {
            let config = data.path().join("gw.yaml");
            std::fs::write(
                &config,
                format!("server: {{drain_timeout_secs: {secs}}}\nproviders:\n  - name: openai\n    base_url: {mock}/openai/v1\n    api_key: {{env: OPENAI_API_KEY}}\n"),
            )
            .unwrap();
            cmd.args(["--config", config.to_str().unwrap()]);
        }
        let gw = common::spawn_listening(&mut cmd);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("{}/v1/chat/completions", gw.base);
        let (store, call) = rt.block_on(async {
            llm_gateway::install_crypto();
            let store = llm_gateway::store::Store::open(&db).await.unwrap();
            let (_, key) = store.create_key("team-d", "ci").await.unwrap();
            let http = ::reqwest::Client::new();
            let mut fault = fault;
            fault["vendor"] = serde_json::json!("openai");
            http.post(format!("{mock}/_mock/faults"))
                .json(&fault)
                .send()
                .await
                .unwrap();
            let call = tokio::spawn({
                let http = http.clone();
                async move {
                    let r = http
                        .post(url)
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let load =
                    common::fetch_json(&http, format!("{mock}/_mock/load?vendor=openai")).await;
                if load["in_flight"] == 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the call never reached the provider: {load}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (store, call)
        });
        Self {
            gw,
            rt,
            store,
            call,
            _data: data,
        }
    }

    /// The call's outcome, the gateway's exit code (within 15 s) and the ledger's rows.
    fn finish(
        mut self,
    ) -> (
        (u16, String),
        Option<i32>,
        Vec<llm_gateway::store::usage::UsageRecord>,
    ) {
        let out = self.rt.block_on(self.call).unwrap();
        let code = wait_with_timeout(&mut self.gw.child, Duration::from_secs(15));
        let rows = self.rt.block_on(self.store.usage_records()).unwrap();
        (out, code, rows)
    }
}

/// The last `data:` event of an SSE body.
fn last_event(body: &str) -> &str {
    body.split("\n\n")
        .filter(|f| f.starts_with("data: "))
        .last()
        .unwrap()
}

/// A stream that outlasts the drain timeout ends with an error event saying why, and its
/// record says 503 with what it produced estimated, not 499 (the client did not leave).
#[test]
fn a_stream_cut_by_the_drain_timeout_ends_with_an_error_event() {
    // 50 words, 100 ms apart: 5 s, far past the 1 s drain.
    let f = InFlight::start(
        Some(1),
        serde_json::json!({"chunk_delay_ms": 100}),
        serde_json::json!({"model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "[[words=50]]"}]}),
    );
    sigterm(&f.gw.child);
    let ((_, body), code, rows) = f.finish();
    assert_eq!(code, Some(0));
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(last_event(&body).contains("\"shutting_down\""), "{body}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, 503, "{rows:?}");
    assert!(
        rows[0].usage_estimated && rows[0].completion_tokens > 0,
        "{rows:?}"
    );
}

/// A JSON request still waiting for its provider when the drain timeout ends gets a 503 the
/// client can retry elsewhere, not a cut connection, and its record says 503 with the prompt
/// the provider read estimated and charged, not 499 (the client did not leave).
#[test]
fn a_request_cut_by_the_drain_timeout_gets_a_503_it_can_retry() {
    // The provider answers in 5 s, far past the 1 s drain.
    let f = InFlight::start(
        Some(1),
        serde_json::json!({"latency_ms": 5000}),
        serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello there"}]}),
    );
    sigterm(&f.gw.child);
    let ((status, body), code, rows) = f.finish();
    assert_eq!(code, Some(0));
    assert_eq!(status, 503, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "shutting_down", "{body}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, 503, "{rows:?}");
    assert!(
        rows[0].usage_estimated && rows[0].prompt_tokens > 0 && rows[0].completion_tokens == 0,
        "the provider read the prompt: {rows:?}"
    );
}

/// A second SIGTERM (or Ctrl-C) during the drain ends what is still in flight at once, the
/// way the drain timeout would: the stream gets its error event and the process exits 0 in
/// seconds, not after the 30 s drain timeout.
#[test]
fn a_second_signal_ends_the_drain_at_once() {
    // 600 words, 100 ms apart: a minute, far past the default 30 s drain.
    let f = InFlight::start(
        None,
        serde_json::json!({"chunk_delay_ms": 100}),
        serde_json::json!({"model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "[[words=600]]"}]}),
    );
    let start = Instant::now();
    sigterm(&f.gw.child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !f.call.is_finished(),
        "one signal waits for the stream (up to the drain timeout)"
    );
    sigterm(&f.gw.child);
    let ((_, body), code, rows) = f.finish();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(code, Some(0));
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(last_event(&body).contains("\"shutting_down\""), "{body}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, 503, "{rows:?}");
}

#[test]
fn keys_cli_creates_lists_and_revokes_and_an_explicit_database_requires_keys() {
    let data = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/keys.db", data.path().display());
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database-url", &db])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, key, err) = run(&["keys", "create", "--tenant", "team-a", "--name", "ci"]);
    assert_eq!(code, Some(0), "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("sk-lgw-"), "{key}");
    assert!(err.contains("shown only once"), "{err}");
    let (_, list, _) = run(&["keys", "list"]);
    assert!(
        list.contains("team-a") && list.contains("active") && !list.contains(&key),
        "{list}"
    );
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (code, _, _) = run(&["keys", "create", "--tenant", " "]);
    assert_eq!(code, Some(2));

    // A gateway with that database requires keys.
    let mock = start_mock();
    let (mut child, base, _data) = spawn_gateway(&mock, &["--database-url", &db]);
    let http = reqwest::blocking_client();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _) = http
        .post_json_auth(&format!("{base}/v1/chat/completions"), body, None)
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = http
        .post_json_auth(&format!("{base}/v1/chat/completions"), body, Some(&key))
        .unwrap();
    assert_eq!(status, 200);
    let (code, _, err) = run(&["keys", "revoke", &id]);
    assert_eq!(code, Some(0), "{err}");
    std::thread::sleep(Duration::from_millis(5200));
    let (status, body) = http
        .post_json_auth(&format!("{base}/v1/chat/completions"), body, Some(&key))
        .unwrap();
    assert_eq!(
        status, 401,
        "revoked in another process: refused within the 5 s cache: {body}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_database_url_is_a_clear_startup_error() {
    let out = Command::new(BIN)
        .args([
            "--database-url",
            "postgres://postgres:pw@127.0.0.1:9/test",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot use the database at postgres://postgres:***@127.0.0.1:9/test"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--database-url", "redis://x", "keys", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A URL that is not Redis's: exit 2 naming it, password hidden.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--redis-url",
            "http://:secret@127.0.0.1:6379",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("LLM_GATEWAY_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot use Redis at"), "{err}");
    assert!(!err.contains("secret"), "{err}");

    // Redis that does not answer at start: the gateway starts and serves on local counters
    // (a pod restarting during a Redis outage must not crash-loop), says so, password hidden.
    let mock = start_mock();
    let mut gw = common::spawn_listening(
        gateway_command(&mock, data.path())
            .args(["--redis-url", "redis://:secret@127.0.0.1:9/0"])
            .env("LLM_GATEWAY_CACHE", "on"),
    );
    let http = reqwest::blocking_client();
    let (status, text) = http
        .post_json(
            &format!("{}/v1/chat/completions", gw.base),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(stop_with_sigterm(&mut gw.child), Some(0));
    let log = gw.full_log();
    assert!(log.contains("Redis does not answer at start"), "{log}");
    assert!(!log.contains("secret"), "{log}");
}

#[test]
fn budgets_cli_sets_lists_and_deletes_naming_bad_fields() {
    let data = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/b.db", data.path().display());
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database-url", &db])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, _, err) = run(&[
        "budgets",
        "set",
        "--tenant",
        "team-a",
        "--usd",
        "25",
        "--tokens",
        "1000000",
        "--rpm",
        "60",
        "--on-limit",
        "downgrade",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&[
        "budgets", "set", "--global", "--usd", "100", "--period", "week",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, list, _) = run(&["budgets", "list"]);
    let tenant = list.lines().find(|l| l.contains("team-a")).unwrap();
    for want in ["tenant", "month", "25.00", "1000000", "60", "downgrade"] {
        assert!(tenant.contains(want), "{want} missing: {list}");
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("global") && l.contains("week")),
        "{list}"
    );
    let (code, _, err) = run(&["budgets", "set", "--tenant", "t", "--usd=-3"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("limit_usd"), "{err}");
    let (code, _, err) = run(&["budgets", "set", "--tenant", "t"]);
    assert_eq!(code, Some(2), "no limit at all: {err}");
    let (code, _, _) = run(&["budgets", "set", "--usd", "1"]);
    assert_eq!(code, Some(2), "a scope is required");
    let (code, _, _) = run(&["budgets", "delete", "--tenant", "team-a"]);
    assert_eq!(code, Some(0));
    let (code, _, _) = run(&["budgets", "delete", "--tenant", "team-a"]);
    assert_eq!(code, Some(1), "already gone");
}

/// In both threading modes, with SQLite and with PostgreSQL (whose connections a serving
/// thread may have opened): every request's record, from connections served in parallel, is
/// in the database after SIGTERM.
#[test]
fn the_binary_records_usage_and_flushes_it_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/usage.db", data.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = format!("cli_{}", uuid::Uuid::new_v4().simple());
    rt.block_on(async {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
    });
    let postgres =
        format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}");
    records_usage_and_flushes_it("per-thread", &postgres);
    rt.block_on(async {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    });
    records_usage_and_flushes_it("per-thread", &sqlite);
    // Not the same database twice: the counts below are per run.
    let sqlite2 = format!("sqlite://{}/usage2.db", data.path().display());
    records_usage_and_flushes_it("shared", &sqlite2);
}

fn records_usage_and_flushes_it(threading: &str, db: &str) {
    let mock = start_mock();
    let (mut child, base, _data) =
        spawn_gateway(&mock, &["--database-url", db, "--threading", threading]);
    let out = Command::new(BIN)
        .args(["keys", "create", "--tenant", "t", "--database-url", db])
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    // Four clients at once: their connections go to different serving threads.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, key) = (base.clone(), key.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking_client();
                for _ in 0..3 {
                    let (status, text) = http
                        .post_json_auth(&format!("{base}/v1/chat/completions"), body, Some(&key))
                        .unwrap();
                    assert_eq!(status, 200, "{text}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // SIGTERM right away: the ledger flushes before the process exits.
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async {
        llm_gateway::store::Store::open(db)
            .await
            .unwrap()
            .usage_records()
            .await
            .unwrap()
    });
    assert_eq!(rows.len(), 12, "{threading} {db}");
    assert!(rows
        .iter()
        .all(|r| r.tenant.as_deref() == Some("t") && r.cost_usd.is_some()));
}

/// `--worker-threads` sets how many threads serve requests (an injected sidecar runs 2), and
/// the start log says how many there are; with per-thread serving (the default) each is a
/// thread of its own, named `serve-N`. A count or mode out of range is refused naming the
/// flag.
#[test]
fn worker_threads_are_set_by_flag_and_a_bad_count_is_refused() {
    for (flag, bad) in [
        ("--worker-threads", "0"),
        ("--worker-threads", "many"),
        ("--threading", "fibers"),
    ] {
        refused(&[flag, bad], &[flag]);
    }
    // tokio's own variable is held to the same range, with a message instead of a panic.
    for bad in ["0", "2000", "two"] {
        let out = Command::new(BIN)
            .args(["check-config"])
            .env_clear()
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "TOKIO_WORKER_THREADS={bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("TOKIO_WORKER_THREADS"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let mock = start_mock();
    for (threading, serving_threads) in [("per-thread", 3), ("shared", 0)] {
        let data = tempfile::tempdir().unwrap();
        let mut gw = common::spawn_listening(
            gateway_command(&mock, data.path())
                .env("LLM_GATEWAY_WORKER_THREADS", "3")
                .env("LLM_GATEWAY_THREADING", threading),
        );
        // Serving (the threads are started by then).
        let http = reqwest::blocking_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{}/healthz", gw.base))
            .map(|s| s != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "{threading}: not serving");
            std::thread::sleep(Duration::from_millis(50));
        }
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .filter(|n| n.starts_with("serve-"))
            .collect();
        let _ = gw.child.kill();
        let _ = gw.child.wait();
        let log = gw.full_log();
        let line = log
            .lines()
            .find(|l| l.contains("listening on"))
            .expect("announced, or spawn_listening would have failed");
        assert!(line.contains("worker_threads=3"), "{threading}: {line}");
        assert_eq!(names.len(), serving_threads, "{threading}: {names:?}");
    }
}

/// Security review, low 12: with `--metrics-listen`, `/metrics` is served only there; the API
/// port exposes only the API.
#[test]
fn metrics_can_have_a_listener_of_their_own() {
    let mock = start_mock();
    let data = tempfile::tempdir().unwrap();
    let mut gw = common::spawn_listening(
        gateway_command(&mock, data.path()).args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let base = gw.base.clone();
    // Announced by the same start-up, just after the API's address.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics_base = loop {
        let found =
            (gw.log.lock().unwrap().iter()).find_map(|l| common::announced(l, "metrics on "));
        if let Some(metrics_base) = found {
            break metrics_base;
        }
        assert!(Instant::now() < deadline, "no metrics address announced");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(metrics_base, base, "a listener of its own");
    let http = reqwest::blocking_client();
    let metrics = format!("{metrics_base}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(metrics.clone()).map(|s| s != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "no metrics listener");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        http.get(format!("{base}/metrics")).unwrap(),
        404,
        "not on the API port"
    );
    assert_eq!(http.get(format!("{metrics_base}/healthz")).unwrap(), 200);
    assert_eq!(
        http.get(format!("{metrics_base}/v1/models")).unwrap(),
        404,
        "and no API on the metrics port"
    );
    let _ = gw.child.kill();
    let _ = gw.child.wait();
}

/// The nice value of each thread of process `pid` named `name` (`/proc/PID/task/*/stat`).
fn thread_nice(pid: u32, name: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the name's closing parenthesis start at the third; nice is the 19th.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
        .collect()
}

/// The binary with `args` exits 2 at once, its error naming each of `words`.
fn refused(args: &[&str], words: &[&str]) {
    let out = Command::new(BIN).args(args).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for w in words {
        assert!(err.contains(w), "{args:?}: {err}");
    }
}

/// The usage ledger's SQLite inserts run on a thread of their own, 10 nice levels below the
/// serving threads, so that a batch yields the core to requests; its records are written.
#[test]
fn the_ledgers_sqlite_thread_runs_below_the_serving_threads() {
    refused(&["--ledger-nice", "20"], &["--ledger-nice"]);
    let mock = start_mock();
    let (mut child, base, data) = spawn_gateway(&mock, &[]);
    let http = reqwest::blocking_client();
    for _ in 0..3 {
        let (status, body) = http
            .post_json(
                &format!("{base}/v1/chat/completions"),
                r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            )
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let pid = child.id();
    let serving = thread_nice(pid, "serve-0");
    assert_eq!(serving.len(), 1, "one serving thread named serve-0");
    let lowered = (serving[0] + 10).min(19);
    // The ledger's connection opens with its first batch, a tick after the first record; its
    // thread exists (and is named) a moment before the connection's set-up lowers it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ledger = loop {
        let found = thread_nice(pid, "sqlite-ledger");
        if found == [lowered] || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ledger.len(), 1, "one ledger thread: {ledger:?}");
    assert_eq!(ledger[0], lowered, "{ledger:?} {serving:?}");
    // SIGTERM flushes the ledger: every answered request has its record.
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
    let records = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = format!("sqlite://{}/gateway.db", data.path().display());
        let store = llm_gateway::store::Store::open(&url).await.unwrap();
        store.usage_records().await.unwrap()
    });
    assert_eq!(records.len(), 3, "{records:?}");
}

/// By default every usage record is kept. With `--ledger-retention-days`
/// (`LLM_GATEWAY_LEDGER_RETENTION_DAYS`), records past the period are deleted as the gateway
/// starts (and every minute after); the rest stay. A period shorter than a month is refused, naming
/// the flag: budgets seed a month's spend from the ledger.
#[test]
fn ledger_retention_deletes_records_past_the_period() {
    refused(
        &["--ledger-retention-days", "7"],
        &["--ledger-retention-days", "at least 32"],
    );
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", data.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(llm_gateway::store::Store::open(&url)).unwrap();
    // Ages relative to this machine's clock, which is the gateway's: passes on any date.
    let now = llm_gateway::clock::unix_ms();
    let day = 86_400_000;
    let aged = [("older", 400), ("old", 40), ("month", 31), ("recent", 1)];
    let records: Vec<_> = aged
        .iter()
        .map(|(id, days)| common::usage_record(id, now - days * day))
        .collect();
    rt.block_on(store.insert_usage(&records)).unwrap();
    let ids = || rt.block_on(common::usage_ids(&store));
    let mock = start_mock();

    // The default: a gateway that served a request and flushed its ledger deleted nothing.
    let (mut child, base, data) = spawn_gateway_in(&mock, &[], &[], data);
    let (status, body) = reqwest::blocking_client()
        .post_json(
            &format!("{base}/v1/chat/completions"),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
    let kept = ids();
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert_eq!(kept[..4], aged.map(|(id, _)| id));

    // 32 days, from the environment: the two older records go, the request's stays.
    let (mut child, _base, data) = spawn_gateway_in(
        &mock,
        &[],
        &[("LLM_GATEWAY_LEDGER_RETENTION_DAYS", "32")],
        data,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut kept = ids();
    while kept.len() > 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        kept = ids();
    }
    assert_eq!(kept[..2], ["month", "recent"], "{kept:?}");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
    drop(data);
}

/// A forward HTTP proxy: records each connection's request line, then relays the connection
/// to `target` unchanged (the mock reads an absolute-form request line as its path), or, for
/// a `CONNECT host:port` (how clients reach `https://` upstreams through a proxy), answers 200
/// and relays the tunnel to that address.
fn recording_proxy(target: String) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = lines.clone();
    let target = target.trim_start_matches("http://").to_owned();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(mut client) = client else { return };
            let (seen, target) = (seen.clone(), target.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head).trim().to_owned();
                seen.lock().unwrap().push(line.clone());
                let tunnel = line
                    .strip_prefix("CONNECT ")
                    .map(|rest| rest.split(' ').next().unwrap_or_default().to_owned());
                let server = match &tunnel {
                    Some(authority) => {
                        // The rest of the CONNECT request's head, then the tunnel.
                        while !head.ends_with(b"\r\n\r\n")
                            && client.read(&mut byte).unwrap_or(0) == 1
                        {
                            head.push(byte[0]);
                        }
                        let server = std::net::TcpStream::connect(authority.as_str());
                        let reply: &[u8] = if server.is_ok() {
                            b"HTTP/1.1 200 Connection established\r\n\r\n"
                        } else {
                            b"HTTP/1.1 502 Bad Gateway\r\n\r\n"
                        };
                        if client.write_all(reply).is_err() {
                            return;
                        }
                        server
                    }
                    None => std::net::TcpStream::connect(&target).and_then(|mut server| {
                        server.write_all(&head)?;
                        Ok(server)
                    }),
                };
                let Ok(mut server) = server else { return };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
                let _ = std::io::copy(&mut client, &mut server);
            });
        }
    });
    (format!("http://{addr}"), lines)
}

/// A TLS front for the mock at `mock` on `localhost` (a certificate of its own, written to
/// `ca_file` for the client to trust): decrypts each connection and relays it to the mock.
fn tls_front(mock: &str, ca_file: &std::path::Path) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(ca_file, cert.cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.cert.der().to_vec())],
        PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let mock = mock.trim_start_matches("http://").to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let (acceptor, mock) = (acceptor.clone(), mock.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&mock).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// An `https://` provider behind `HTTPS_PROXY` is reached through a `CONNECT` tunnel, and
/// the upstream's certificate is still verified inside it: trusted through `SSL_CERT_FILE`
/// the request succeeds, without that it fails.
#[test]
fn https_providers_are_reached_through_the_proxys_connect_tunnel_and_still_verified() {
    let mock = start_mock();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let port = tls_front(&mock, &ca);
    let upstream = format!("https://localhost:{port}");
    let (proxy, lines) = recording_proxy(mock.clone());
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let http = reqwest::blocking_client();
    let ca = ca.to_str().unwrap();
    let answer = |envs: &[(&str, &str)]| {
        lines.lock().unwrap().clear();
        let (mut gw, base, _data) =
            spawn_gateway_in(&upstream, &[], envs, tempfile::tempdir().unwrap());
        let reply = http
            .post_json(&format!("{base}/v1/chat/completions"), body)
            .unwrap();
        assert_eq!(stop_with_sigterm(&mut gw), Some(0));
        (reply, lines.lock().unwrap().clone())
    };

    let ((status, text), seen) = answer(&[("HTTPS_PROXY", &proxy), ("SSL_CERT_FILE", ca)]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Mock openai reply"), "{text}");
    assert!(
        seen.contains(&format!("CONNECT localhost:{port} HTTP/1.1")),
        "{seen:?}"
    );

    // The tunnel does not loosen verification: the same upstream, untrusted, is refused.
    let ((status, text), seen) = answer(&[("HTTPS_PROXY", &proxy)]);
    assert_eq!(status, 502, "{text}");
    assert!(
        !seen.is_empty(),
        "the request did not go to the proxy: {seen:?}"
    );
}

/// Requests to a provider go through `HTTP_PROXY` when it applies to the provider's URL (an
/// egress proxy), not when `NO_PROXY` exempts it, and straight to it without either.
#[test]
fn providers_are_reached_through_the_environments_proxy() {
    let mock = start_mock();
    let (proxy, lines) = recording_proxy(mock.clone());
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let http = reqwest::blocking_client();
    let requests_through = |envs: &[(&str, &str)]| {
        lines.lock().unwrap().clear();
        let (mut gw, base, _data) =
            spawn_gateway_in(&mock, &[], envs, tempfile::tempdir().unwrap());
        let (status, text) = http
            .post_json(&format!("{base}/v1/chat/completions"), body)
            .unwrap();
        assert_eq!(status, 200, "{text}");
        assert_eq!(stop_with_sigterm(&mut gw), Some(0));
        lines.lock().unwrap().clone()
    };
    let via_proxy = requests_through(&[("HTTP_PROXY", &proxy)]);
    assert!(
        via_proxy.contains(&format!("POST {mock}/openai/v1/chat/completions HTTP/1.1")),
        "{via_proxy:?}"
    );
    let exempt = requests_through(&[("HTTP_PROXY", &proxy), ("NO_PROXY", "127.0.0.1")]);
    assert!(exempt.is_empty(), "NO_PROXY exempts the mock: {exempt:?}");
    let direct = requests_through(&[]);
    assert!(direct.is_empty(), "no proxy configured: {direct:?}");
}
