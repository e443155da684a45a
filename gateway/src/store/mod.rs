//! Persistent storage: PostgreSQL in production, an embedded SQLite file by default. sqlx
//! migrations (`migrations/postgres`, `migrations/sqlite`, embedded in the binary) run at
//! start; on PostgreSQL sqlx holds an advisory lock while migrating, so replicas starting
//! together do not race.

pub mod bench;
pub mod budgets;
pub mod keys;
pub mod usage;

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// A connected, migrated database.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not a database URL this gateway speaks.
    #[error("unsupported database URL `{0}`: use postgres://… or sqlite://…")]
    Unsupported(String),
    /// Connecting or migrating failed.
    #[error("cannot use the database at {url}: {source}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// The embedded database: `gateway.db` in [`data_dir`].
pub fn default_sqlite_path() -> PathBuf {
    data_dir().join("gateway.db")
}

/// The gateway's data folder: `$LLM_GATEWAY_DATA_DIR`, else `$XDG_DATA_HOME/llm-gateway`,
/// else `~/.local/share/llm-gateway` (the embedded database and the usage spool).
pub fn data_dir() -> PathBuf {
    std::env::var_os("LLM_GATEWAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("llm-gateway")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/llm-gateway"))
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A URL safe to print: the password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Store {
    /// Connects (creating a SQLite file and its folder if needed) and runs the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(err)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_with(opts)
                .await
                .map_err(err)?;
            PG_MIGRATIONS.run(&pool).await.map_err(|e| err(e.into()))?;
            return Ok(Store::Postgres(pool));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
            }
            // Processes creating the same new file together (the server and `keys create`)
            // can hit SQLITE_BUSY while switching to WAL or migrating (sqlx locks migrations
            // only on PostgreSQL): retry briefly; the loser then finds the work done.
            let mut tries = 0u64;
            loop {
                match open_sqlite(url).await {
                    Ok(pool) => return Ok(Store::Sqlite(pool)),
                    Err(e) if tries < 10 && sqlite_busy(&e) => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        Err(StoreError::Unsupported(redact(url)))
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }
}

/// The name of the usage ledger's SQLite thread (Linux keeps 15 bytes of a thread's name).
const LEDGER_THREAD: &str = "sqlite-ledger";

impl Store {
    /// A connection of its own for the usage ledger's ordinary batches, whose SQLite worker
    /// thread (where SQLite spends a batch's CPU: about 20,000 instructions a record, so a
    /// quarter-second batch at 5,000 requests/s is milliseconds of one core) runs `nice`
    /// levels below the serving threads: a batch then yields the core to requests instead of
    /// delaying the ones that arrive during it. `None` on PostgreSQL, which does that work in
    /// its own server, and for `nice` 0.
    pub fn low_priority_writer(&self, nice: u8) -> Option<Store> {
        let Store::Sqlite(pool) = self else {
            return None;
        };
        if nice == 0 {
            return None;
        }
        let opts = (*pool.connect_options())
            .clone()
            .thread_name(|_| LEDGER_THREAD.to_owned());
        Some(Store::Sqlite(
            SqlitePoolOptions::new()
                .max_connections(1)
                // The worker thread exists once the connection does (and again after the pool
                // replaces an idle or old connection).
                .after_connect(move |_, _| {
                    Box::pin(async move {
                        lower_priority(LEDGER_THREAD, nice);
                        Ok(())
                    })
                })
                .connect_lazy_with(opts),
        ))
    }
}

/// Sets every thread of this process named `name` to `by` nice levels below the calling
/// thread (Linux threads have priorities of their own; elsewhere there is no
/// `/proc/self/task` and nothing changes). Best effort: a thread left at normal priority
/// costs tail latency, not records.
fn lower_priority(name: &str, by: u8) {
    use rustix::process::{getpriority_process, setpriority_process, Pid};
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let nice = (getpriority_process(None).unwrap_or(0) + i32::from(by)).min(19);
    for task in tasks.flatten() {
        let named = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == name);
        let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
        if let (true, Some(tid)) = (named, tid.and_then(Pid::from_raw)) {
            if let Err(e) = setpriority_process(Some(tid), nice) {
                tracing::debug!(error = %e, thread = name, "cannot lower the thread's priority");
            }
        }
    }
}

async fn open_sqlite(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    SQLITE_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// SQLITE_BUSY / SQLITE_LOCKED (and their extended codes), directly or inside a migration
/// error.
fn sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("5" | "6" | "261" | "517")),
        sqlx::Error::Migrate(_) => true,
        other => other.to_string().contains("database is locked"),
    }
}
