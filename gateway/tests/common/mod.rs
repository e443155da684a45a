//! Test harness: a mock-providers server and a gateway configured with all five providers
//! pointing at it, both in-process on ephemeral ports.

#![allow(dead_code)]

use std::sync::Arc;

use llm_gateway::config;
use llm_gateway::state::{Gateway, Services};
use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};
use serde_json::Value;

/// The admin token every harness gateway gets (its environment stub answers any variable).
pub const ADMIN: &str = "key-for-LLM_GATEWAY_ADMIN_TOKEN";

pub struct Harness {
    pub mock: String,
    pub gw: String,
    pub http: reqwest::Client,
    /// The key store, when started with one.
    pub store: Option<llm_gateway::store::Store>,
    /// The gateway's shared state.
    pub state: Arc<Gateway>,
    _dir: Option<tempfile::TempDir>,
}

/// The YAML config for a gateway in front of the mock at `mock`.
pub fn config_yaml(mock: &str, extra_provider_yaml: &str) -> String {
    config_yaml_with(mock, extra_provider_yaml, "")
}

/// The same with a `routing:` section (YAML text, without the key).
pub fn config_yaml_with(mock: &str, extra_provider_yaml: &str, routing: &str) -> String {
    format!(
        r#"
routing:
{routing}
server:
  max_body_bytes: 1048576
providers:
  - name: openai
    base_url: {mock}/openai/v1
    api_key: {{env: OPENAI_API_KEY}}
    timeout_secs: 3
{extra_provider_yaml}
  - name: anthropic
    base_url: {mock}/anthropic
    api_key: {{env: ANTHROPIC_API_KEY}}
  - name: groq
    base_url: {mock}/groq/openai/v1
    api_key: {{env: GROQ_API_KEY}}
  - name: together
    base_url: {mock}/together/v1
    api_key: {{env: TOGETHER_API_KEY}}
  - name: ollama
    base_url: {mock}/ollama
"#
    )
}

/// A gateway with the default config (all five providers at the mock).
pub async fn start() -> Harness {
    gateway().start().await
}

/// The one way tests build a gateway: defaults, then what a test needs.
pub fn gateway() -> Setup {
    Setup {
        yaml: None,
        provider_yaml: String::new(),
        routing: String::new(),
        keys: None,
        budgets: None,
        shared_cache: None,
    }
}

/// Builds the config text from the mock's base URL.
type YamlFn = Box<dyn FnOnce(&str) -> String>;

/// What a test gateway is built with (see [`gateway`]).
pub struct Setup {
    yaml: Option<YamlFn>,
    provider_yaml: String,
    routing: String,
    keys: Option<(bool, std::time::Duration)>,
    budgets: Option<BudgetSetup>,
    shared_cache: Option<(String, String)>,
}

impl Setup {
    /// The whole config, built from the mock's base URL.
    pub fn yaml(mut self, f: impl FnOnce(&str) -> String + 'static) -> Self {
        self.yaml = Some(Box::new(f));
        self
    }

    /// YAML appended to the default config's openai provider entry.
    pub fn provider_yaml(mut self, extra: &str) -> Self {
        self.provider_yaml = extra.to_owned();
        self
    }

    /// The default config's `routing:` section (YAML text, without the key).
    pub fn routing(mut self, routing: &str) -> Self {
        self.routing = routing.to_owned();
        self
    }

    /// A SQLite key store; `required` makes keys mandatory; lookups cached for `ttl`.
    pub fn keys(mut self, required: bool, ttl: std::time::Duration) -> Self {
        self.keys = Some((required, ttl));
        self
    }

    /// Budgets (and so a store with required keys).
    pub fn budgets(mut self, setup: BudgetSetup) -> Self {
        self.keys
            .get_or_insert((true, std::time::Duration::from_secs(5)));
        self.budgets = Some(setup);
        self
    }

    /// The cache's entries shared through Redis at `url` under `prefix`.
    pub fn shared_cache(mut self, url: &str, prefix: &str) -> Self {
        self.shared_cache = Some((url.to_owned(), prefix.to_owned()));
        self
    }

    /// Starts the mock and the gateway, both in-process on ephemeral ports.
    pub async fn start(self) -> Harness {
        llm_gateway::install_crypto();
        let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = format!("http://{}", ml.local_addr().unwrap());
        let models = DEFAULT_OLLAMA_MODELS.map(String::from).to_vec();
        tokio::spawn(mock_providers::serve(ml, Mock::new(models)));

        let text = match self.yaml {
            Some(f) => f(&mock),
            None => config_yaml_with(&mock, &self.provider_yaml, &self.routing),
        };
        let doc = config::parse("test.yaml", &text).unwrap();
        let settings =
            config::validate(&doc, "test.yaml", &|k: &str| Some(format!("key-for-{k}"))).unwrap();
        let redis = self
            .shared_cache
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let cache = llm_gateway::cache::Cache::from_settings(&settings.cache, redis)
            .await
            .unwrap();
        let mut services = Services {
            cache,
            env: Some(std::sync::Arc::new(|k: &str| Some(format!("key-for-{k}")))),
            ..Services::default()
        };
        let (mut store, mut dir) = (None, None);
        if let Some((required, ttl)) = self.keys {
            let d = tempfile::tempdir().unwrap();
            let url = self
                .budgets
                .as_ref()
                .and_then(|b| b.database_url.clone())
                .unwrap_or_else(|| format!("sqlite://{}/gw.db", d.path().display()));
            let s = llm_gateway::store::Store::open(&url).await.unwrap();
            services.auth = llm_gateway::auth::Auth::new(Some(s.clone()), required, ttl);
            services.ledger = Some(llm_gateway::ledger::Ledger::start(
                s.clone(),
                d.path().join("spool.jsonl"),
            ));
            if let Some(b) = self.budgets {
                let shared = match &b.redis_prefix {
                    Some(_) => Some(
                        llm_gateway::budget::counters::Shared::connect(
                            b.redis_url.as_deref().unwrap_or(redis_url()),
                        )
                        .await
                        .expect("redis for the tests"),
                    ),
                    None => None,
                };
                services.budgets = Some(llm_gateway::budget::Budgets::new(
                    Some(s.clone()),
                    shared,
                    b.clock,
                    b.redis_prefix.as_deref().unwrap_or(""),
                ));
            }
            store = Some(s);
            dir = Some(d);
        }
        let gw = llm_gateway::app::assemble(&doc, settings, services)
            .await
            .unwrap();
        let state = gw.clone();
        let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_url = format!("http://{}", gl.local_addr().unwrap());
        tokio::spawn(llm_gateway::app::serve(gl, gw));
        Harness {
            mock,
            gw: gw_url,
            http: reqwest::Client::new(),
            store,
            state,
            _dir: dir,
        }
    }
}

/// How a budgeted harness keeps its counters.
pub struct BudgetSetup {
    /// Redis key prefix (unique per test), or in-process counters.
    pub redis_prefix: Option<String>,
    /// Redis URL (default [`redis_url`]).
    pub redis_url: Option<String>,
    /// The budgets' clock.
    pub clock: Arc<dyn llm_gateway::clock::Clock>,
    /// The database (default: a SQLite file in a temporary folder).
    pub database_url: Option<String>,
}

/// Deletes every Redis key starting with `prefix`.
pub async fn delete_redis_keys(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// The Redis the tests use: the machine's at 127.0.0.1:6379, or `LLM_GATEWAY_TEST_REDIS`.
pub fn redis_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("LLM_GATEWAY_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    })
}

/// `host:port` of [`redis_url`] (for a proxy in front of it).
pub fn redis_addr() -> &'static str {
    static ADDR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ADDR.get_or_init(|| {
        let u = url::Url::parse(redis_url()).expect("a redis:// URL");
        format!(
            "{}:{}",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(6379)
        )
    })
}

impl Harness {
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.gw))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(
        &self,
        body: &Value,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self.post("/v1/chat/completions", body).await;
        let status = r.status();
        let headers = r.headers().clone();
        let v = r.json().await.unwrap();
        (status, headers, v)
    }

    /// A streamed chat: the response headers and the raw SSE text.
    pub async fn chat_stream(
        &self,
        body: &Value,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
        let r = self.post("/v1/chat/completions", body).await;
        let status = r.status();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    /// A request to an admin endpoint, with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.gw))
            .bearer_auth(ADMIN)
    }

    /// GET a gateway path and parse its JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        fetch_json(&self.http, format!("{}{path}", self.gw)).await
    }

    /// GET a gateway path as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.gw))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The dry-run routing decision for a chat body.
    pub async fn route(&self, body: &Value) -> (reqwest::StatusCode, Value) {
        let r = self.post("/v1/route", body).await;
        (r.status(), r.json().await.unwrap())
    }

    pub async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_mock/faults", self.mock))
            .send()
            .await
            .unwrap();
    }

    /// Scripts the mock's answers (`POST /_mock/replies`).
    pub async fn script_replies(&self, scripts: &Value) {
        let r = self
            .http
            .post(format!("{}/_mock/replies", self.mock))
            .json(scripts)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn fault(&self, fault: Value) {
        let r = self
            .http
            .post(format!("{}/_mock/faults", self.mock))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// `vendor`'s requests in progress at the mock (`in_flight`) and the most at once since
    /// the last reset (`max_in_flight`).
    pub async fn mock_load(&self, vendor: &str) -> Value {
        fetch_json(
            &self.http,
            format!("{}/_mock/load?vendor={vendor}", self.mock),
        )
        .await
    }

    /// Waits (at most 10 s, then fails) until `vendor` has `n` requests in progress at the
    /// mock: what a test waits for instead of a fixed head start, which a busy machine can
    /// exceed.
    pub async fn wait_in_flight(&self, vendor: &str, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let load = self.mock_load(vendor).await;
            if load["in_flight"].as_u64() == Some(n) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{vendor} never had {n} requests in progress: {load}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Writes every usage record queued so far (the ledger otherwise writes on its 250 ms
    /// tick, which a busy machine can delay).
    pub async fn flush_ledger(&self) {
        self.state
            .ledger
            .as_ref()
            .expect("a gateway with a database")
            .flush()
            .await;
    }

    /// Requests the mock received from `vendor`, oldest first.
    pub async fn received(&self, vendor: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/_mock/requests?vendor={vendor}", self.mock))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// GET `url` and parse its JSON (panics on any failure: a test's own request).
pub async fn fetch_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// The `data:` payloads of an SSE body, parsed; `[DONE]` as the string "[DONE]".
pub fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            if d == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}"))
            }
        })
        .collect()
}

/// The concatenated `delta.content` of stream chunks.
pub fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// A usage record of a priced 10 + 5 token chat request by tenant `t`, for tests that store
/// records themselves.
pub fn usage_record(id: &str, at_ms: i64) -> llm_gateway::store::usage::UsageRecord {
    llm_gateway::store::usage::UsageRecord {
        id: id.into(),
        at_ms,
        request_id: "same-client-id".into(),
        key_id: None,
        tenant: Some("t".into()),
        endpoint: "chat".into(),
        virtual_model: None,
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: Some(0.000004),
        usage_estimated: false,
        latency_ms: 12,
        ttft_ms: None,
        cache: None,
        status: 200,
        attempts: 1,
    }
}

/// The ids of the stored usage records, oldest first.
pub async fn usage_ids(store: &llm_gateway::store::Store) -> Vec<String> {
    let records = store.usage_records().await.unwrap();
    records.into_iter().map(|r| r.id).collect()
}

/// PostgreSQL on the machine.
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh schema; returns a URL whose connections use it, and its name.
pub async fn pg_schema() -> (String, String) {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(PG)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&admin)
        .await
        .unwrap();
    (format!("{PG}?options=-c%20search_path%3D{name}"), name)
}

/// Drops a test schema (the server is shared with other runs).
pub async fn drop_schema(name: &str) {
    let admin = sqlx::PgPool::connect(PG).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

/// A TCP proxy that can be cut and restored (a database or Redis outage), or silence the
/// connections open now (a peer gone without closing them).
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
    silence: Arc<tokio::sync::Notify>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let silence = Arc::new(tokio::sync::Notify::new());
        let (u, c, quiet) = (up.clone(), conns.clone(), silence.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = l.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let quiet = quiet.clone();
                c.lock().await.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = quiet.notified() => {
                                // Open, and nothing passes either way any more.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            conns,
            silence,
        }
    }

    /// The connections open now stay open but pass nothing more; new ones work.
    pub fn silence(&self) {
        self.silence.notify_waiters();
    }

    pub async fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.conns.lock().await.abort_all();
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A child process serving on a port it bound itself, and every line it has written.
pub struct Listening {
    /// The process.
    pub child: std::process::Child,
    /// `http://ADDRESS` it announced.
    pub base: String,
    /// Its stdout and stderr lines so far, in the order each stream wrote them.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Listening {
    /// Everything the process wrote, once it has exited (both streams read to their end).
    pub fn full_log(&mut self) -> String {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        self.log.lock().unwrap().join("\n")
    }
}

/// The `http://ADDRESS` a log line announces after `what` ("listening on ", "metrics on ").
pub fn announced(line: &str, what: &str) -> Option<String> {
    let at = line.find(&format!("{what}http://"))? + what.len();
    line[at..].split_whitespace().next().map(str::to_owned)
}

/// Starts `cmd` (the gateway or the mock-providers binary) with `--listen 127.0.0.1:0` and
/// waits, 20 s at most, for the address it announces ("listening on http://…"). A port the
/// test picked and released before the child bound it could meanwhile be taken by anything on
/// the machine (another test's outgoing connection, say); a port the child binds cannot.
/// Both streams are read to the end (stderr is also echoed, as an inherited stream would be);
/// a gateway whose `RUST_LOG` hides info lines gets them for its start-up module only.
pub fn spawn_listening(cmd: &mut std::process::Command) -> Listening {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let log_env = cmd
        .get_envs()
        .find(|(k, _)| *k == "RUST_LOG")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()));
    if let Some(filter) = log_env {
        let shows_info = filter
            .split(',')
            .any(|d| matches!(d.trim(), "info" | "debug" | "trace"));
        if !shows_info {
            cmd.env("RUST_LOG", format!("{filter},llm_gateway::app=info"));
        }
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the process");
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let read = |stream: Box<dyn std::io::Read + Send>, echo: bool| {
        let (log, tx) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(base) = announced(&line, "listening on ") {
                    let _ = tx.send(base);
                }
                if echo {
                    eprintln!("{line}");
                }
                log.lock().unwrap().push(line);
            }
        })
    };
    let readers = vec![
        read(Box::new(child.stdout.take().unwrap()), false),
        read(Box::new(child.stderr.take().unwrap()), true),
    ];
    drop(tx);
    let base = match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(base) => base,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no `listening on` line ({e}): {:?}",
                log.lock().unwrap().join("\n")
            );
        }
    };
    Listening {
        child,
        base,
        log,
        readers,
    }
}
