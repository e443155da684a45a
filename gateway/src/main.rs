//! The `llm-gateway` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use llm_gateway::budget::counters::Shared;
use llm_gateway::budget::Budgets;
use llm_gateway::clock::{Clock, SystemClock};
use llm_gateway::config::budget::{Budget, OnLimit, Period, Scope};
use llm_gateway::config::{self, Settings, DEFAULT_LISTEN};
use llm_gateway::state::Gateway;
use llm_gateway::store::Store;
use tracing_subscriber::EnvFilter;

/// One OpenAI-compatible endpoint in front of OpenAI, Anthropic, Groq, Together AI and Ollama.
///
/// Without --config, providers come from the variables their own SDKs read: OPENAI_API_KEY,
/// ANTHROPIC_API_KEY, GROQ_API_KEY, TOGETHER_API_KEY (each with an optional *_BASE_URL), and
/// Ollama at OLLAMA_HOST (default http://127.0.0.1:11434) when it answers. Log verbosity
/// follows RUST_LOG (default `info`).
#[derive(Parser, Debug)]
#[command(name = "llm-gateway", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Validate the configuration, print the providers and models it enables, and exit
    /// (status 0 if valid, 2 if not).
    CheckConfig {
        /// YAML config file; without it, the environment is checked.
        #[arg(long, short, env = "LLM_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the built-in model catalog (prices, context windows, capabilities) as YAML.
    Catalog,
    /// Manage virtual API keys (stored as hashes; a new key is shown once).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Manage budgets and rate limits (global, per tenant, per key); running gateways pick
    /// changes up within 5 seconds.
    Budgets {
        #[command(subcommand)]
        action: BudgetsAction,
    },
}

/// Whom a budget command is about: exactly one of these.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct ScopeArgs {
    /// The global budget (every request).
    #[arg(long)]
    global: bool,
    /// A tenant's budget (all its keys together).
    #[arg(long)]
    tenant: Option<String>,
    /// One key's budget, by key id (from `keys list`).
    #[arg(long)]
    key: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.tenant, &self.key) {
            (Some(t), _) => Scope::Tenant(t.trim().to_owned()),
            (_, Some(k)) => Scope::Key(k.trim().to_owned()),
            _ => Scope::Global,
        }
    }
}

#[derive(Subcommand, Debug)]
enum BudgetsAction {
    /// Create or replace a budget.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Spend limit per period, USD.
        #[arg(long)]
        usd: Option<f64>,
        /// Token limit per period (prompt + completion).
        #[arg(long)]
        tokens: Option<u64>,
        /// The period the limits cover (UTC).
        #[arg(long, default_value = "month", value_parser = ["month", "week", "day"])]
        period: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// At the USD limit: reject (429), or downgrade virtual models to models that still
        /// fit (cheaper or free local ones).
        #[arg(long, default_value = "reject", value_parser = ["reject", "downgrade"])]
        on_limit: String,
    },
    /// List budgets with their recorded spend in the current period.
    List,
    /// Delete a budget.
    Delete {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Create a key for a tenant and print it (it cannot be shown again).
    Create {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// Models the key may use (repeat, or comma-separate): `provider/model`, a model
        /// name, or `provider/*`. Default: every model.
        #[arg(long = "allow-model", value_delimiter = ',')]
        allow_models: Vec<String>,
    },
    /// List keys (ids, tenants, names, prefixes, revocation).
    List,
    /// Revoke a key by id; every replica refuses it within 5 seconds.
    Revoke {
        /// The key's id (from `keys list`).
        id: String,
    },
}

#[derive(Args, Debug, Clone)]
struct DbArgs {
    /// Database URL: postgres://user:pass@host/db or sqlite://path. Default: the embedded
    /// SQLite file ($LLM_GATEWAY_DATA_DIR/gateway.db, else ~/.local/share/llm-gateway/gateway.db).
    /// Setting it makes virtual keys required on every request.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Redis URL (redis://host:port/db) for budget counters shared by every replica. Without
    /// it each process keeps its own counters (right for a single gateway).
    #[arg(long, env = "REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key this gateway writes (to share one Redis between deployments).
    #[arg(
        long,
        env = "LLM_GATEWAY_REDIS_PREFIX",
        default_value = "llm-gateway:",
        global = true
    )]
    redis_prefix: String,
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on, IP:PORT. Default: the config file's server.listen, else 127.0.0.1:8080.
    #[arg(long, env = "LLM_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve /metrics on this separate address (IP:PORT) instead of the API port. Default:
    /// the config file's server.metrics_listen, else /metrics is on the API port.
    #[arg(long, env = "LLM_GATEWAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// YAML config file (a GatewayConfig document; see examples/gateway.yaml). Without it,
    /// providers come from the environment.
    #[arg(long, short, env = "LLM_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "LLM_GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let db = cli.db;
    let (command, args) = match cli.command {
        None => (None, cli.serve),
        Some(Command::Serve(a)) => (None, a),
        Some(c) => (Some(c), cli.serve),
    };
    init_logging(args.log_format);
    llm_gateway::install_crypto();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Some(Command::Catalog) => {
            print!("{}", include_str!("catalog.yaml"));
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { config }) => rt.block_on(check_config(config)),
        Some(Command::Keys { action }) => rt.block_on(keys(action, db)),
        Some(Command::Budgets { action }) => rt.block_on(budgets(action, db)),
        Some(Command::Serve(_)) | None => rt.block_on(serve(args, db)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in collected logs break parsers and greps.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn load(config: Option<&PathBuf>) -> Result<Settings, config::ConfigError> {
    let getenv = |k: &str| std::env::var(k).ok();
    match config {
        Some(path) => {
            let cfg = config::load_file(path)?;
            config::validate(&cfg, &path.display().to_string(), &getenv)
        }
        None => {
            let cfg = config::from_env(getenv);
            let mut s = config::validate(&cfg, "environment", &getenv)?;
            for p in &mut s.providers {
                // The quick start probes Ollama; absent is fine.
                p.optional = p.discover_models;
            }
            Ok(s)
        }
    }
}

async fn serve(args: ServeArgs, db: DbArgs) -> ExitCode {
    let settings = match load(args.config.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = args
        .listen
        .or(settings.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
    let store = match open_store(&db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Keys are required with an explicit database or beyond loopback; the embedded quick
    // start on loopback stays open.
    let required = db.database_url.is_some() || !addr.ip().is_loopback();
    tracing::info!(
        database = store.kind(),
        auth_required = required,
        "key store ready"
    );
    // Usage records go to the database, or to a spool beside the embedded database when it
    // is unreachable.
    let spool = llm_gateway::store::data_dir().join("usage-spool.jsonl");
    let ledger = llm_gateway::ledger::Ledger::start(store.clone(), spool);
    let budgets = match open_budgets(&db, &store).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let auth =
        llm_gateway::auth::Auth::new(Some(store), required, llm_gateway::auth::KEY_CACHE_TTL);
    let redis = db
        .redis_url
        .as_deref()
        .map(|u| (u, db.redis_prefix.as_str()));
    let cache = match llm_gateway::cache::Cache::from_settings(&settings.cache, redis).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let gw = match Gateway::build(&settings).await {
        Ok(gw) => {
            let gw = gw.with_auth(auth).with_ledger(ledger).with_budgets(budgets);
            Arc::new(match cache {
                Some(mut c) => {
                    if let Err(e) = c.attach_provider(&gw.registry) {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                    gw.with_cache(c)
                }
                None => gw,
            })
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(b) = &gw.budgets {
        b.spawn_refresh();
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match args.metrics_listen.or(settings.metrics_listen) {
        None => None,
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot listen on {a} for metrics: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match llm_gateway::app::serve_with_metrics(listener, metrics, gw).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the configured or embedded database; a clear message and exit code 2 on failure.
async fn open_store(db: &DbArgs) -> Result<Store, ExitCode> {
    let url = db.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            llm_gateway::store::default_sqlite_path().display()
        )
    });
    Store::open(&url).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The budget engine: definitions from the database, counters in Redis if configured.
async fn open_budgets(db: &DbArgs, store: &Store) -> Result<Budgets, ExitCode> {
    let shared = match &db.redis_url {
        Some(url) => match Shared::connect(url).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "error: cannot use Redis at {}: {e}",
                    llm_gateway::store::redact(url)
                );
                return Err(ExitCode::from(2));
            }
        },
        None => None,
    };
    let budgets = Budgets::new(
        Some(store.clone()),
        shared,
        Arc::new(SystemClock),
        &db.redis_prefix,
    );
    if let Err(e) = budgets.reload().await {
        eprintln!("error: cannot read budgets: {e}");
        return Err(ExitCode::from(2));
    }
    tracing::info!(
        counters = if budgets.is_shared() {
            "redis"
        } else {
            "in-process"
        },
        budgets = budgets.count(),
        "budgets ready"
    );
    if budgets.count() > 0 {
        // Budgeted requests count prompt tokens: load the tokenizer now, off the runtime.
        tokio::task::spawn_blocking(llm_gateway::router::tokens::warm_up);
    }
    Ok(budgets)
}

async fn budgets(action: BudgetsAction, db: DbArgs) -> ExitCode {
    let store = match open_store(&db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match action {
        BudgetsAction::Set {
            scope,
            usd,
            tokens,
            period,
            rpm,
            tpm,
            on_limit,
        } => {
            let b = Budget {
                scope: scope.scope(),
                period: Period::parse(&period).unwrap_or_default(),
                limit_usd: usd,
                limit_tokens: tokens,
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                on_limit: if on_limit == "downgrade" {
                    OnLimit::Downgrade
                } else {
                    OnLimit::Reject
                },
            };
            if let Err(e) = b.validate() {
                eprintln!("error: {}", e.message);
                return ExitCode::from(2);
            }
            if b.scope.subject().is_empty() && b.scope != Scope::Global {
                eprintln!("error: --tenant/--key must not be empty");
                return ExitCode::from(2);
            }
            store.put_budget(&b).await.map(|()| {
                eprintln!(
                    "set the {} budget; running gateways apply it within 5 seconds",
                    b.scope.describe()
                );
            })
        }
        BudgetsAction::List => match store.list_budgets().await {
            Ok(list) => {
                println!(
                    "{:<8} {:<38} {:<6} {:>12} {:>12} {:>12} {:>14} {:>8} {:>10}  on limit",
                    "scope",
                    "subject",
                    "period",
                    "limit usd",
                    "spent usd",
                    "limit tok",
                    "spent tok",
                    "rpm",
                    "tpm"
                );
                let now = SystemClock.now_ms();
                let mut out = Ok(());
                for b in list {
                    let w = b.period.window(now);
                    let (nano, tok) = match store.spend(&b.scope, w.start_ms, w.end_ms).await {
                        Ok(s) => s,
                        Err(e) => {
                            out = Err(e);
                            break;
                        }
                    };
                    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    println!(
                        "{:<8} {:<38} {:<6} {:>12} {:>12.6} {:>12} {:>14} {:>8} {:>10}  {}",
                        b.scope.kind(),
                        b.scope.subject(),
                        b.period.name(),
                        opt(b.limit_usd.map(|v| format!("{v:.2}"))),
                        llm_gateway::config::budget::from_nano(nano),
                        opt(b.limit_tokens.map(|v| v.to_string())),
                        tok,
                        opt(b.requests_per_minute.map(|v| v.to_string())),
                        opt(b.tokens_per_minute.map(|v| v.to_string())),
                        b.on_limit.name()
                    );
                }
                out
            }
            Err(e) => Err(e),
        },
        BudgetsAction::Delete { scope } => match store.delete_budget(&scope.scope()).await {
            Ok(true) => {
                eprintln!("deleted the {} budget", scope.scope().describe());
                Ok(())
            }
            Ok(false) => {
                eprintln!("error: no {} budget", scope.scope().describe());
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn keys(action: KeysAction, db: DbArgs) -> ExitCode {
    let store = match open_store(&db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match action {
        KeysAction::Create {
            tenant,
            name,
            allow_models,
        } => {
            if tenant.trim().is_empty() {
                eprintln!("error: --tenant must not be empty");
                return ExitCode::from(2);
            }
            let allowed = (!allow_models.is_empty()).then_some(allow_models);
            store
                .create_key_with(tenant.trim(), name.trim(), allowed)
                .await
                .map(|(rec, key)| {
                    println!("{key}");
                    eprintln!(
                        "created key {} for tenant {} ({}); the key above is shown only once",
                        rec.id, rec.tenant, rec.key_prefix
                    );
                })
        }
        KeysAction::List => store.list_keys().await.map(|keys| {
            println!(
                "{:<36}  {:<16}  {:<16}  {:<14}  status",
                "id", "tenant", "name", "prefix"
            );
            for k in keys {
                let status = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<16}  {:<16}  {:<14}  {status}",
                    k.id, k.tenant, k.name, k.key_prefix
                );
            }
        }),
        KeysAction::Revoke { id } => match store.revoke_key(&id).await {
            Ok(true) => {
                eprintln!("revoked {id}");
                Ok(())
            }
            Ok(false) => {
                eprintln!("error: no active key with id {id}");
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check_config(config: Option<PathBuf>) -> ExitCode {
    let settings = match load(config.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let gw = match Gateway::build(&settings).await {
        Ok(gw) => gw,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("configuration is valid");
    for p in gw.registry.providers() {
        let n = gw
            .registry
            .entries()
            .iter()
            .filter(|e| e.provider.name == p.name)
            .count();
        println!(
            "provider {} ({:?}) at {}: {n} models",
            p.name, p.protocol, p.base_url
        );
    }
    for (v, pool) in gw.router.virtuals() {
        println!(
            "virtual model {} -> strategy {}, {pool} candidates, local preference {}",
            v.name,
            llm_gateway::router::strategy_name(v.strategy),
            v.local_preference
                .map_or("off".to_owned(), |p| p.to_string())
        );
    }
    ExitCode::SUCCESS
}
