//! The usage ledger: every request's [`UsageRecord`] is handed to a background writer that
//! inserts everything queued every 250 ms, off the request path. The writer is not woken per
//! record: a wake-up per request would be a hand-off between threads (a futex call and a
//! context switch) on every request, for a write that waits for the tick anyway.
//!
//! On the embedded SQLite database, batches of ordinary size go through a connection whose
//! thread runs at a lower priority than the serving threads (see
//! [`Store::low_priority_writer`]), so a batch's inserts yield the CPU to requests.
//!
//! When the database is down, batches are appended to a local spool file (JSON lines) and
//! replayed once it answers again (tried every 2 s): no record is lost, and none is counted
//! twice, because each record's id is generated here and inserts skip ids already stored.
//! Requests are served normally meanwhile.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

use crate::store::usage::UsageRecord;
use crate::store::Store;

const TICK: Duration = Duration::from_millis(250);

/// A batch larger than this (a tick's worth at 16,000 requests/s) goes through the store's
/// own pool even when there is a low-priority writer: a writer that yields the CPU falls
/// behind when the cores are saturated, and its backlog, held in memory, must not grow
/// without bound. (Raising the low writer's priority instead would need a privilege a
/// container seldom has.)
const CATCH_UP: usize = 4096;
const REPLAY_EVERY: Duration = Duration::from_secs(2);

enum Msg {
    Record(Box<UsageRecord>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the ledger writer.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Msg>,
    /// Wakes the writer before its tick (a flush).
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Ledger {
    /// Starts the writer for `store`, spooling to `spool` when the store is down.
    pub fn start(store: Store, spool: PathBuf) -> Ledger {
        Self::start_with(store, None, spool)
    }

    /// As [`Ledger::start`], writing batches of up to [`CATCH_UP`] records through `low`, a
    /// connection to the same database at a lower priority
    /// ([`Store::low_priority_writer`]), when there is one.
    pub fn start_with(store: Store, low: Option<Store>, spool: PathBuf) -> Ledger {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        tokio::spawn(
            Writer {
                store,
                low,
                spool,
                batch: Vec::new(),
                last_replay: Instant::now() - REPLAY_EVERY,
                failing: false,
            }
            .run(rx, wake.clone()),
        );
        Ledger { tx, wake }
    }

    /// Queues a record (never blocks).
    pub fn record(&self, r: UsageRecord) {
        let _ = self.tx.send(Msg::Record(Box::new(r)));
    }

    /// Writes everything queued so far (to the database, or the spool) and tries a replay.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            self.wake.notify_one();
            let _ = done.await;
        }
    }
}

struct Writer {
    store: Store,
    /// Where ordinary batches go, if not `store`.
    low: Option<Store>,
    spool: PathBuf,
    batch: Vec<UsageRecord>,
    last_replay: Instant,
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, wake: Arc<Notify>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            let mut acks = Vec::new();
            let closed = loop {
                match rx.try_recv() {
                    Ok(Msg::Record(r)) => self.batch.push(*r),
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Err(mpsc::error::TryRecvError::Empty) => break false,
                    Err(mpsc::error::TryRecvError::Disconnected) => break true,
                }
            };
            self.write().await;
            if !acks.is_empty() || self.last_replay.elapsed() >= REPLAY_EVERY {
                self.replay().await;
            }
            for ack in acks {
                let _ = ack.send(());
            }
            if closed {
                return;
            }
        }
    }

    async fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let store = match &self.low {
            Some(low) if batch.len() <= CATCH_UP => low,
            _ => &self.store,
        };
        match store.insert_usage(&batch).await {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    info!("usage ledger: database reachable again");
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    warn!(error = %e, spool = %self.spool.display(), "usage ledger: database unavailable; spooling records");
                }
                if let Err(e) = self.append(&batch) {
                    // Nowhere to put them: keep them in memory and retry on the next tick.
                    warn!(error = %e, "usage ledger: cannot write the spool");
                    self.batch = batch;
                }
            }
        }
    }

    fn append(&self, batch: &[UsageRecord]) -> std::io::Result<()> {
        if let Some(dir) = self.spool.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spool)?;
        let mut buf = Vec::with_capacity(batch.len() * 300);
        for r in batch {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Re-inserts spooled records; the spool is removed only once all of them are stored.
    async fn replay(&mut self) {
        self.last_replay = Instant::now();
        let Ok(text) = std::fs::read_to_string(&self.spool) else {
            return;
        };
        let mut records = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<UsageRecord>(line) {
                Ok(r) => records.push(r),
                // A line cut by a crash mid-write: the rest of the spool is still good.
                Err(e) => warn!(error = %e, "usage ledger: skipping an unreadable spool line"),
            }
        }
        match self.store.insert_usage(&records).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.spool);
                info!(records = records.len(), "usage ledger: spool replayed");
            }
            Err(_) => self.failing = true,
        }
    }
}
