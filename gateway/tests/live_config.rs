//! Live configuration: a whole new configuration replaces the running one while serving —
//! pushed, from a changed file (a ConfigMap's symlink swap included), on SIGHUP — validated
//! in full first, keeping what was learned about surviving providers, and never showing a
//! secret. (The swap under load through the official SDK is in e2e/python/test_live_config.py.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-gateway");

/// Two providers at the mock; `pick` is a virtual model over `candidate`.
fn doc(mock: &str, version: &str, candidate: &str) -> String {
    format!(
        r#"
version: "{version}"
routing:
  virtual_models:
    - {{name: pick, strategy: quality, candidates: {{models: [{candidate}]}}}}
providers:
  - name: openai
    base_url: {mock}/openai/v1
    api_key: {{env: OPENAI_API_KEY}}
  - name: groq
    base_url: {mock}/groq/openai/v1
    api_key: {{env: GROQ_API_KEY}}
"#
    )
}

async fn push(h: &Harness, content_type: &str, body: String) -> (u16, Value) {
    let r = h
        .admin(reqwest::Method::PUT, "/admin/config")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn ask(h: &Harness, model: &str) -> (u16, String, String) {
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let header = |k: &str| {
        r.headers()
            .get(k)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    (
        r.status().as_u16(),
        header("x-llm-gateway-provider"),
        header("x-llm-gateway-config"),
    )
}

#[tokio::test]
async fn a_pushed_config_serves_the_next_request_and_reports_its_version() {
    let h = gateway()
        .yaml(|m| doc(m, "v1", "gpt-4o-mini"))
        .start()
        .await;
    assert_eq!(ask(&h, "pick").await, (200, "openai".into(), "v1".into()));
    let before: Value = h
        .admin(reqwest::Method::GET, "/admin/config")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["version"], "v1");
    assert_eq!(before["source"], "start");

    let (status, v) = push(
        &h,
        "application/yaml",
        doc(&h.mock, "v2", "llama-3.1-8b-instant"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["version"].as_str(), v["changed"].as_bool()),
        (Some("v2"), Some(true))
    );
    assert_eq!(ask(&h, "pick").await, (200, "groq".into(), "v2".into()));

    // The same document again changes nothing.
    let (status, v) = push(
        &h,
        "application/yaml",
        doc(&h.mock, "v2", "llama-3.1-8b-instant"),
    )
    .await;
    assert_eq!((status, v["changed"].as_bool()), (200, Some(false)));

    // JSON works as well as YAML.
    let json_doc = serde_json::to_string(
        &llm_gateway::config::parse("t", &doc(&h.mock, "v3", "gpt-4o-mini")).unwrap(),
    )
    .unwrap();
    let (status, v) = push(&h, "application/json", json_doc).await;
    assert_eq!((status, v["version"].as_str()), (200, Some("v3")), "{v}");
    assert_eq!(ask(&h, "pick").await, (200, "openai".into(), "v3".into()));

    let now: Value = h
        .admin(reqwest::Method::GET, "/admin/config")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (now["version"].as_str(), now["source"].as_str()),
        (Some("v3"), Some("push"))
    );
    assert_ne!(now["hash"], before["hash"]);
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(r#"llm_gateway_config_info{version="v3",hash=""#),
        "{m}"
    );
    assert!(
        m.contains(r#"llm_gateway_config_reloads_total{source="push",result="applied"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"llm_gateway_config_reloads_total{source="push",result="unchanged"} 1"#),
        "{m}"
    );
    assert!(m.contains("llm_gateway_config_last_reload_success_timestamp_seconds"));
}

#[tokio::test]
async fn an_invalid_push_is_refused_with_its_field_and_the_old_config_keeps_serving() {
    let h = gateway()
        .yaml(|m| doc(m, "v1", "gpt-4o-mini"))
        .start()
        .await;
    let cases = [
        (
            "application/yaml",
            doc(&h.mock, "bad", "gpt-4o-mini").replace("strategy: quality", "strategy: fastest"),
            "routing.virtual_models[0].strategy",
        ),
        (
            "application/yaml",
            doc(&h.mock, "bad", "gpt-4o-mini").replace("base_url: http", "base_url: ftp"),
            "providers[0].base_url",
        ),
        (
            "application/yaml",
            format!(
                "{}server: {{listen: 0.0.0.0:9999}}\n",
                doc(&h.mock, "bad", "gpt-4o-mini")
            ),
            "",
        ),
        // A truncated document does not take every provider away.
        ("application/yaml", "# nothing left\n".into(), "."),
    ];
    for (ct, body, field) in cases {
        let (status, v) = push(&h, ct, body).await;
        assert_eq!(status, 422, "{v}");
        if field.is_empty() {
            assert_eq!(v["error"]["code"], "needs_restart", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("server.listen"),
                "{v}"
            );
        } else if field == "." {
            assert_eq!(v["error"]["code"], "invalid_config", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("is empty"), "{v}");
        } else {
            assert_eq!(v["error"]["code"], "invalid_config", "{v}");
            assert_eq!(v["error"]["param"], field, "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(field),
                "{v}"
            );
        }
        assert_eq!(ask(&h, "pick").await, (200, "openai".into(), "v1".into()));
    }
    let (status, v) = push(&h, "text/plain", "version: x".into()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    // A file may not carry a secret's value; a push may.
    let inline = doc(&h.mock, "v2", "gpt-4o-mini").replace(
        "api_key: {env: OPENAI_API_KEY}",
        "api_key: {value: sk-inline-secret}",
    );
    let e = llm_gateway::config::validate(
        &llm_gateway::config::parse("f.yaml", &inline).unwrap(),
        "f.yaml",
        &|_| Some("a-value-long-enough-for-any-token".into()),
    )
    .unwrap_err();
    assert_eq!(e.path, "providers[0].api_key.value");
    assert_eq!(push(&h, "application/yaml", inline).await.0, 200);
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(r#"llm_gateway_config_reloads_total{source="push",result="refused"} 4"#),
        "{m}"
    );

    // Without the admin token: 401, and nothing changes.
    let r = h
        .http
        .put(format!("{}/admin/config", h.gw))
        .header("content-type", "application/yaml")
        .body(doc(&h.mock, "v9", "llama-3.1-8b-instant"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(ask(&h, "pick").await.2, "v2");
    // Counted (and logged), so a platform team sees someone trying.
    assert!(
        h.get_text("/metrics")
            .await
            .contains("llm_gateway_admin_auth_failures_total 1"),
        "the refusal is counted"
    );
}

#[tokio::test]
async fn what_was_learned_survives_a_swap_and_a_removed_provider_is_forgotten() {
    let h = gateway()
        .yaml(|m| doc(m, "v1", "gpt-4o-mini"))
        .start()
        .await;
    // Five failures open openai's breaker.
    h.fault(json!({"vendor": "openai", "status": 500})).await;
    for _ in 0..5 {
        assert_eq!(ask(&h, "openai/gpt-4o-mini").await.0, 500);
    }
    let open = |b: &Value| {
        b["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["provider"] == "openai" && x["model"].is_null())
            .map(|x| x["status"]["state"].clone())
    };
    let breakers = |h: &Harness| {
        let h = h.admin(reqwest::Method::GET, "/admin/breakers");
        async move { h.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(open(&breakers(&h).await), Some(json!("open")));
    // A new configuration (another virtual model) keeps the open breaker.
    let (status, _) = push(
        &h,
        "application/yaml",
        doc(&h.mock, "v2", "llama-3.1-8b-instant"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(open(&breakers(&h).await), Some(json!("open")));
    let (status, _, _) = ask(&h, "openai/gpt-4o-mini").await;
    assert_eq!(status, 503, "still open after the swap");
    let gauge = r#"llm_gateway_breaker_state{provider="openai",model="*"}"#;
    assert!(h.get_text("/metrics").await.contains(&format!("{gauge} 2")));
    // Dropping openai forgets it; bringing it back starts closed.
    let without = doc(&h.mock, "v3", "llama-3.1-8b-instant");
    let without = without.split("  - name: openai").next().unwrap().to_owned()
        + "  - name: groq"
        + without.split("  - name: groq").nth(1).unwrap();
    assert_eq!(push(&h, "application/yaml", without).await.0, 200);
    assert_eq!(open(&breakers(&h).await), None);
    // Nor do its metrics stay frozen at their last value.
    let metrics = h.get_text("/metrics").await;
    assert!(!metrics.contains(gauge), "{metrics}");
    assert!(!metrics.contains(r#"llm_gateway_provider_concurrency_limit{provider="openai"}"#));
    assert!(metrics.contains(r#"llm_gateway_breaker_state{provider="groq",model="*"} 0"#));
    assert_eq!(ask(&h, "openai/gpt-4o-mini").await.0, 404);
    assert_eq!(
        push(&h, "application/yaml", doc(&h.mock, "v4", "gpt-4o-mini"))
            .await
            .0,
        200
    );
    assert_eq!(open(&breakers(&h).await), Some(json!("closed")));
}

/// A gateway process with `--config path`, its log collected.
struct Process {
    child: std::process::Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn(config: &std::path::Path, env: &[(&str, &str)]) -> Process {
    spawn_polling(config, env, "0.2").await
}

async fn spawn_polling(config: &std::path::Path, env: &[(&str, &str)], poll: &str) -> Process {
    llm_gateway::install_crypto();
    let data = tempfile::tempdir().unwrap().keep();
    let Listening {
        child, base, log, ..
    } = spawn_listening(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["--config-poll-secs", poll])
            .env_clear()
            .env("LLM_GATEWAY_DATA_DIR", &data)
            .env("LLM_GATEWAY_ADMIN_TOKEN", "admin-token-for-the-tests")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied()),
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Process {
        child,
        base,
        log,
        http,
    }
}

impl Process {
    async fn version_served(&self) -> String {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&json!({"model": "pick", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-llm-gateway-config"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    async fn wait_for_version(&self, want: &str) -> Duration {
        let started = Instant::now();
        loop {
            if self.version_served().await == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{want} never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// PUTs a YAML document to an admin path: the status and the answer's text.
    async fn put_yaml(&self, path: &str, body: String) -> (u16, String) {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth("admin-token-for-the-tests")
            .header("content-type", "application/yaml")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get(&self, path: &str, admin: bool) -> String {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if admin {
            rb = rb.bearer_auth("admin-token-for-the-tests");
        }
        rb.send().await.unwrap().text().await.unwrap()
    }
}

/// The mock, in this process.
async fn mock() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(mock_providers::serve(
        l,
        mock_providers::Mock::new(
            mock_providers::DEFAULT_OLLAMA_MODELS
                .map(String::from)
                .to_vec(),
        ),
    ));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_and_sighup_are_picked_up() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    // What the kubelet does: the file is a symlink into `..data`, itself a symlink to a
    // timestamped folder; an update writes a new folder and swaps `..data` atomically.
    let write_version = |n: u32, body: &str| {
        let folder = dir.path().join(format!("..2026_12_02_{n}"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("gateway.yaml"), body).unwrap();
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(folder.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    write_version(1, &doc(&mock, "cm-1", "gpt-4o-mini"));
    let file = dir.path().join("gateway.yaml");
    std::os::unix::fs::symlink("..data/gateway.yaml", &file).unwrap();
    let p = spawn(
        &file,
        &[("OPENAI_API_KEY", "sk-test"), ("GROQ_API_KEY", "gsk-test")],
    )
    .await;
    assert_eq!(p.version_served().await, "cm-1");

    write_version(2, &doc(&mock, "cm-2", "llama-3.1-8b-instant"));
    let took = p.wait_for_version("cm-2").await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An invalid file is refused with a log line; the last good one keeps serving.
    write_version(3, "providers: [{name: openai, api_key: {value: sk-no}}]\n");
    let refused = |log: &str| log.contains("providers[0].api_key.value");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !refused(&p.log.lock().unwrap().join("\n")) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.version_served().await, "cm-2");
    let log = p.log.lock().unwrap().join("\n");
    assert!(refused(&log), "{log}");
    // So is a file caught empty (an editor's truncate before its write).
    write_version(4, "");
    let emptied = |log: &str| log.contains("the new configuration is empty");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !emptied(&p.log.lock().unwrap().join("\n")) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(emptied(&p.log.lock().unwrap().join("\n")));
    assert_eq!(p.version_served().await, "cm-2");

    // SIGHUP applies the file at once: a gateway that polls once an hour sees a change
    // only when signalled.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, doc(&mock, "hup-1", "gpt-4o-mini")).unwrap();
    let q = spawn_polling(
        &plain,
        &[("OPENAI_API_KEY", "sk-test"), ("GROQ_API_KEY", "gsk-test")],
        "3600",
    )
    .await;
    std::fs::write(&plain, doc(&mock, "hup-2", "llama-3.1-8b-instant")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(q.version_served().await, "hup-1", "not polled");
    let pid = q.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    q.wait_for_version("hup-2").await;
    assert!(q
        .get("/metrics", false)
        .await
        .contains(r#"llm_gateway_config_reloads_total{source="signal",result="applied"} 1"#));
    let metrics = p.get("/metrics", false).await;
    assert!(
        metrics.contains(r#"llm_gateway_config_reloads_total{source="file",result="refused"}"#),
        "{metrics}"
    );
}

/// A key read from a file and rotated in place (as a Secret volume does, the ConfigMap
/// unchanged) is picked up by the file watch, without a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_is_picked_up_by_the_file_watch() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("openai-key");
    std::fs::write(&key, "sk-key-one\n").unwrap();
    let file = dir.path().join("gateway.yaml");
    let body = doc(&mock, "k-1", "gpt-4o-mini").replace(
        "api_key: {env: OPENAI_API_KEY}",
        &format!("api_key: {{file: {}}}", key.display()),
    );
    std::fs::write(&file, body).unwrap();
    let p = spawn(&file, &[("GROQ_API_KEY", "gsk-test")]).await;
    let sent_key = || async {
        p.version_served().await;
        let got: Value = p
            .http
            .get(format!("{mock}/_mock/requests?vendor=openai"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let last = got.as_array().unwrap().last().unwrap().clone();
        last["headers"]["authorization"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sent_key().await, "Bearer sk-key-one");
    let fresh = dir.path().join("openai-key.new");
    std::fs::write(&fresh, "sk-key-two\n").unwrap();
    std::fs::rename(&fresh, &key).unwrap();
    let started = Instant::now();
    while sent_key().await != "Bearer sk-key-two" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new key was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A document naming the address the gateway already listens on (started with `--listen`,
/// the file silent on it) changes nothing that needs a restart: it is applied. Another
/// address still is refused.
#[tokio::test]
async fn a_document_naming_the_address_in_use_is_applied() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, doc(&mock, "l-1", "gpt-4o-mini")).unwrap();
    let p = spawn(
        &file,
        &[("OPENAI_API_KEY", "sk-test"), ("GROQ_API_KEY", "gsk-test")],
    )
    .await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let same = format!(
        "{}server: {{listen: \"{addr}\"}}\n",
        doc(&mock, "l-2", "gpt-4o-mini")
    );
    let (status, text) = p.put_yaml("/admin/config", same).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(p.version_served().await, "l-2");
    let moved = format!(
        "{}server: {{listen: \"127.0.0.1:1\"}}\n",
        doc(&mock, "l-3", "gpt-4o-mini")
    );
    let (status, text) = p.put_yaml("/admin/config", moved).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("server.listen"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_in_the_admin_api_the_log_or_the_metrics() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, doc(&mock, "s-1", "gpt-4o-mini")).unwrap();
    let p = spawn(
        &file,
        &[
            ("OPENAI_API_KEY", "sk-env-SECRET-1111"),
            ("GROQ_API_KEY", "gsk-env-SECRET-2222"),
        ],
    )
    .await;
    let pushed = doc(&mock, "s-2", "gpt-4o-mini").replace(
        "api_key: {env: OPENAI_API_KEY}",
        "api_key: {value: sk-pushed-SECRET-3333}",
    );
    let (status, text) = p.put_yaml("/admin/config", pushed).await;
    assert_eq!(status, 200, "{text}");
    // The pushed key is what goes upstream now.
    assert_eq!(p.version_served().await, "s-2");
    let seen: Value = p
        .http
        .get(format!("{mock}/_mock/requests?vendor=openai"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = seen.as_array().unwrap().last().unwrap();
    assert_eq!(
        last["headers"]["authorization"],
        "Bearer sk-pushed-SECRET-3333"
    );

    // The commonest mistake, the key written in directly, is refused without repeating it.
    let plain = doc(&mock, "s-3", "gpt-4o-mini").replace(
        "api_key: {env: OPENAI_API_KEY}",
        "api_key: sk-plain-SECRET-4444",
    );
    let (status, refusal) = p.put_yaml("/admin/config", plain).await;
    assert_eq!(status, 422);
    assert!(
        refusal.contains("api_key") && refusal.contains("written in directly"),
        "{refusal}"
    );

    let config = p.get("/admin/config", true).await;
    assert!(config.contains("<redacted>"), "{config}");
    let metrics = p.get("/metrics", false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = p.log.lock().unwrap().join("\n");
    for secret in [
        "SECRET-1111",
        "SECRET-2222",
        "SECRET-3333",
        "SECRET-4444",
        "admin-token-for-the-tests",
    ] {
        for (what, text) in [
            ("GET /admin/config", &config),
            ("/metrics", &metrics),
            ("the log", &log),
            ("the refusal", &refusal),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
}
