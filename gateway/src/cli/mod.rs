//! The command line: what each subcommand takes, and running it. `serve` assembles and runs
//! the gateway ([`serve`]); `keys` and `budgets` administer the database through the same
//! service as the admin API ([`admin`]); `check-config` validates ([`check`]).

mod admin;
mod bench;
mod cache_eval;
mod check;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use llm_gateway::config::budget::Scope;
use llm_gateway::store::Store;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;

/// One OpenAI-compatible endpoint in front of OpenAI, Anthropic, Groq, Together AI and Ollama.
///
/// Without --config, providers come from the variables their own SDKs read: OPENAI_API_KEY,
/// ANTHROPIC_API_KEY, GROQ_API_KEY, TOGETHER_API_KEY (each with an optional *_BASE_URL), and
/// Ollama at OLLAMA_HOST (default http://127.0.0.1:11434) when it answers. Log verbosity
/// follows RUST_LOG (default `info`).
#[derive(Parser, Debug)]
#[command(name = "llm-gateway", version, about, long_about)]
pub struct Cli {
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
    /// Measure the semantic cache on labelled prompt pairs (a `.jsonl` with a, b, same, or a
    /// TSV with the header `source a b label`): true- and false-hit rates per source, at the
    /// configured threshold and across others, through the cache the configuration builds.
    CacheEval {
        /// YAML config file (its `cache` section: threshold, embedding model or provider).
        #[arg(long, short, env = "LLM_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Pair files (repeat for several).
        #[arg(long = "pairs", required = true)]
        pairs: Vec<PathBuf>,
        /// Also write every pair's verifier features to this CSV (for training).
        #[arg(long)]
        features_out: Option<PathBuf>,
    },
    /// Run the 14-task benchmark (knowledge, code, summarization, reasoning, instruction
    /// following) against the enabled chat models through the provider layer, store the
    /// results in the database (running gateways then route with the measured quality per
    /// complexity tier), print a markdown report and write it with a PNG chart.
    Bench {
        /// YAML config file; without it, the environment's providers.
        #[arg(long, short, env = "LLM_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Models to run (`provider/model` or a bare name, comma-separated); default: every
        /// enabled chat model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Task ids to run (comma-separated); default: all 14.
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// (model, task) pairs in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Folder for `bench-<run>.md` and `bench-<run>.png`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
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
    /// How often the config file is re-read; a changed file is applied while serving (a
    /// ConfigMap volume's update included); 0: never. SIGHUP applies it at once.
    #[arg(long, default_value_t = 2.0, env = "LLM_GATEWAY_CONFIG_POLL_SECS")]
    config_poll_secs: f64,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "LLM_GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Start with no providers while the --config file does not exist yet, instead of
    /// failing (Kubernetes: the operator creates it and pushes the configuration).
    #[arg(long, env = "LLM_GATEWAY_WAIT_FOR_CONFIG")]
    wait_for_config: bool,
    /// Sidecar mode: calls from loopback are this workload, `namespace/serviceaccount` (the
    /// injected sidecar sets it from the downward API); other callers authenticate as usual.
    #[arg(long, env = "LLM_GATEWAY_WORKLOAD")]
    workload: Option<String>,
    /// Accept Kubernetes service-account tokens (checked with a TokenReview) as the tenant
    /// `namespace/serviceaccount`. In a pod the API server and credentials are found as
    /// usual; elsewhere set --kube-api, --kube-ca and --kube-token-file.
    #[arg(long, env = "LLM_GATEWAY_KUBERNETES_AUTH")]
    kubernetes_auth: bool,
    /// The API server for --kubernetes-auth (default: in-cluster).
    #[arg(long, env = "LLM_GATEWAY_KUBE_API")]
    kube_api: Option<String>,
    /// Its CA certificate file (default: the mounted service account's).
    #[arg(long, env = "LLM_GATEWAY_KUBE_CA")]
    kube_ca: Option<PathBuf>,
    /// The gateway's own token file (default: the mounted service account's).
    #[arg(long, env = "LLM_GATEWAY_KUBE_TOKEN_FILE")]
    kube_token_file: Option<PathBuf>,
    /// The audience callers' service-account tokens must be for (a projected token with
    /// this audience; tokens for the API server itself are refused).
    #[arg(
        long,
        env = "LLM_GATEWAY_KUBE_TOKEN_AUDIENCE",
        default_value = "llm-gateway"
    )]
    kube_token_audience: String,
    /// Threads that serve requests. Default: the CPUs this process may use (a cgroup's CPU
    /// limit included); a sidecar sets a small number, since each thread costs memory (and,
    /// with `--threading shared`, more hand-offs between threads per request).
    #[arg(long, env = "LLM_GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// How requests share the threads: `per-thread` gives each thread a runtime and upstream
    /// connections of its own and hands it whole connections (a request's own work stays on
    /// one thread); `shared` is one work-stealing runtime, where any thread runs any
    /// request's next step.
    #[arg(
        long,
        value_enum,
        env = "LLM_GATEWAY_THREADING",
        default_value = "per-thread"
    )]
    threading: Threading,
    /// How many nice levels below the serving threads the usage ledger's SQLite writes run
    /// (embedded SQLite on Linux; 0: the same priority), so that a batch yields the cores to
    /// requests.
    #[arg(long, env = "LLM_GATEWAY_LEDGER_NICE", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    ledger_nice: u8,
    /// Days usage records are kept; older ones are deleted at start and every minute after. 0 keeps
    /// every record; otherwise at least 32 (budgets seed a month's spend from the ledger).
    #[arg(long, env = "LLM_GATEWAY_LEDGER_RETENTION_DAYS", default_value = "0", value_parser = retention_days)]
    ledger_retention_days: KeepRecords,
}

/// `--ledger-retention-days`, validated: how long usage records are kept (`None`: always).
#[derive(Clone, Copy, Debug)]
struct KeepRecords(Option<llm_gateway::retention::Retention>);

fn retention_days(s: &str) -> Result<KeepRecords, String> {
    let days: u16 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of days (0 to 65535)"))?;
    llm_gateway::retention::Retention::from_days(days).map(KeepRecords)
}

/// How requests share the serving threads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Threading {
    /// A runtime per thread; connections go to the thread with the fewest open.
    PerThread,
    /// One work-stealing runtime for all threads.
    Shared,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let db = cli.db;
    let (command, args) = match cli.command {
        None => (None, cli.serve),
        Some(Command::Serve(a)) => (None, a),
        Some(c) => (Some(c), cli.serve),
    };
    llm_gateway::install_crypto();
    let traces = match command {
        None => match llm_gateway::telemetry::traces::provider("llm-gateway") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: traces: {e}");
                return ExitCode::from(2);
            }
        },
        Some(_) => None,
    };
    // A subcommand's stdout is its output (a report, YAML, a key): log lines go to stderr.
    init_logging(args.log_format, traces.as_ref(), command.is_some());
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    let n = match serve::thread_count(&args) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = serve::threads(&args, n);
    // With per-thread serving the runtime keeps the accept loop, the ledger, Redis's and the
    // database's connections opened at start, and background tasks: as many workers as
    // serving threads, so that a slow one (a spool written during a database outage) stalls
    // none of that. (Set here, so tokio never parses TOKIO_WORKER_THREADS itself.)
    rt.worker_threads(n.get());
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Some(Command::Catalog) => {
            print!("{}", include_str!("../catalog.yaml"));
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { config }) => rt.block_on(check::run(config)),
        Some(Command::CacheEval {
            config,
            pairs,
            features_out,
        }) => rt.block_on(cache_eval::run(config, pairs, features_out)),
        Some(Command::Bench {
            config,
            models,
            tasks,
            concurrency,
            out,
        }) => rt.block_on(bench::run(
            bench::Options {
                config,
                models,
                tasks,
                concurrency: concurrency as usize,
                out,
            },
            db,
        )),
        Some(Command::Keys { action }) => rt.block_on(admin::keys(action, db)),
        Some(Command::Budgets { action }) => rt.block_on(admin::budgets(action, db)),
        Some(Command::Serve(_)) | None => rt.block_on(serve::run(args, db, threads)),
    }
}

/// Log lines on stdout (stderr for subcommands), and spans to the trace exporter when traces
/// are on.
fn init_logging(format: LogFormat, traces: Option<&SdkTracerProvider>, to_stderr: bool) {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in collected logs break parsers and greps.
    let terminal = if to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let writer =
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
            if to_stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Spans go to the exporter whatever RUST_LOG says of log lines.
    let otel = traces.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("llm-gateway"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
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
