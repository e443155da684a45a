//! The listener: connections accepted up to a cap, each served by hyper with a header-read
//! timeout that also reaps idle kept-alive connections, graceful shutdown that lets in-flight
//! requests and streams finish.
//!
//! Why not `axum::serve`: it has no header-read timeout and no connection cap, so connections
//! that send nothing, or one header byte a second, stay open until the file descriptors run
//! out (slowloris), and nothing says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tracing::{error, info, warn};

/// File descriptors kept for everything that is not a client connection (upstreams, the
/// database, Redis, logs).
const FD_RESERVE: u64 = 512;

/// How one listener serves.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request's headers, and on an idle kept-alive connection.
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Where connections are served.
    pub threads: Threads,
}

/// Raises the soft open-file limit to the hard one and returns the connection cap that fits
/// in it (at most `wanted`).
pub fn fit_connections(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    // Each client connection may hold an upstream connection too.
    let fits = usize::try_from(soft.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    if fits < wanted {
        warn!(
            open_file_limit = soft,
            max_connections = fits.max(1),
            configured = wanted,
            "the open-file limit allows fewer connections than configured; raise `ulimit -n` to serve more"
        );
    }
    wanted.min(fits).max(1)
}

/// Where accepted connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// As tasks of the runtime that calls [`serve`].
    Shared,
    /// Each on one of this many threads with a single-threaded runtime of its own: a
    /// connection's requests, upstream calls and timers stay on one thread, so serving a
    /// request wakes no other thread (on a shared multi-thread runtime, tasks hop between
    /// workers and each hop is a wake-up through the kernel).
    PerThread(NonZeroUsize),
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish for
/// at most `drain()` (read then: the configuration may have changed it since the start).
/// `on_reject` is called for each connection closed at the cap. The returned [`Drained`]
/// keeps the serving threads' runtimes (and the connections they opened to the database
/// and upstreams) until it is closed: close it after the last write that may use them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: impl Fn() -> Duration + Send + Sync + 'static,
    on_reject: impl Fn() + Send + Sync + 'static,
    open: prometheus_client::metrics::gauge::Gauge,
) -> std::io::Result<Drained> {
    // HTTP/1.1 only: protocol sniffing for cleartext HTTP/2 would read the first bytes with
    // no timeout, which is exactly what a slowloris client exploits. (Clients reach the
    // gateway over HTTP/1.1; TLS and HTTP/2 end at the ingress in front of it.)
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conns = Conns {
        builder: Arc::new(builder),
        app,
        open,
    };
    let drain: Arc<dyn Fn() -> Duration + Send + Sync> = Arc::new(drain);
    let pool = match limits.threads {
        Threads::Shared => None,
        Threads::PerThread(n) => Some(Pool::start(n.get(), &conns, &drain)?),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Shared serving's connection tasks, cancelled at the drain timeout like a serving
    // thread's.
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_warning: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            // Reaps finished connections (a JoinSet keeps them until joined).
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            on_reject();
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warn!(
                    max_connections = limits.max_connections,
                    %peer,
                    "connection limit reached; closing new connections (see llm_gateway_connections_rejected_total)"
                );
                last_warning = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            local: stream.local_addr().ok().map(LocalAddr),
            peer,
            permit,
        };
        match &pool {
            None => {
                tasks.spawn(conns.connection(&graceful, stream, accepted, || ()));
            }
            Some(p) => p.hand_over(stream, accepted),
        }
    }
    drop(listener);
    let timed_out = match pool {
        None => {
            tokio::select! {
                () = graceful.shutdown() => false,
                () = tokio::time::sleep(drain()) => true,
            }
        }
        Some(p) => return Ok(p.drain().await),
    };
    // Cancelled now, while the ledger still takes what their cancellation records.
    tasks.shutdown().await;
    if timed_out {
        warn!("drain timeout reached; closed the remaining connections");
    }
    Ok(Drained {
        exit: Vec::new(),
        joins: Vec::new(),
    })
}

/// What is known of an accepted connection before it is served.
struct Accepted {
    local: Option<LocalAddr>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// What serving a connection needs, on whichever thread it is served.
#[derive(Clone)]
struct Conns {
    builder: Arc<http1::Builder>,
    app: Router,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Conns {
    /// Serving one connection, to spawn on the current runtime; `done` runs when it closes.
    fn connection(
        &self,
        graceful: &GracefulShutdown,
        stream: TcpStream,
        a: Accepted,
        done: impl FnOnce() + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let app = self.app.clone();
        let Accepted {
            local,
            peer,
            permit,
        } = a;
        let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(l) = local {
                req.extensions_mut().insert(l);
            }
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(self.builder.serve_connection(TokioIo::new(stream), service));
        let open = self.open.clone();
        open.inc();
        // Counted down however the task ends, cancelled at the drain timeout included.
        let closed = scopeguard(move || {
            open.dec();
            drop(permit);
            done();
        });
        async move {
            let _closed = closed;
            let _ = conn.await;
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce() + Send + 'static) -> impl Send + 'static {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The serving threads of [`Threads::PerThread`].
struct Pool {
    threads: Vec<PoolThread>,
    /// Where the next search for the least busy thread starts, so ties rotate.
    next: AtomicUsize,
    drained: Vec<oneshot::Receiver<bool>>,
    exit: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
    drain: Arc<dyn Fn() -> Duration + Send + Sync>,
}

/// One serving thread: where to hand it connections, and how many it has open.
struct PoolThread {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, Accepted)>,
    open: Arc<AtomicUsize>,
}

/// How long past the drain timeout a serving thread may take to report before shutdown
/// goes on without it.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

impl Pool {
    /// Starts `n` threads, each running a single-threaded runtime that serves what it is
    /// handed until the hand-over channel closes, then drains for at most `drain()`.
    fn start(
        n: usize,
        conns: &Conns,
        drain: &Arc<dyn Fn() -> Duration + Send + Sync>,
    ) -> std::io::Result<Pool> {
        let mut pool = Pool {
            threads: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            drained: Vec::with_capacity(n),
            exit: Vec::with_capacity(n),
            joins: Vec::with_capacity(n),
            drain: drain.clone(),
        };
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<(std::net::TcpStream, Accepted)>();
            let (drained_tx, drained_rx) = oneshot::channel();
            let (exit_tx, exit_rx) = oneshot::channel::<()>();
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
            let open = Arc::new(AtomicUsize::new(0));
            let (conns, drain, count) = (conns.clone(), drain.clone(), open.clone());
            let join = std::thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || {
                    // Built here, so that a failure is reported, not a runtime dropped
                    // inside the caller's.
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = started_tx.send(Ok(()));
                            rt
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    crate::threads::enter(i);
                    rt.block_on(serve_thread(
                        i, rx, conns, count, drain, drained_tx, exit_rx,
                    ));
                })?;
            started_rx
                .recv()
                .map_err(|_| std::io::Error::other("a serving thread ended while starting"))??;
            pool.threads.push(PoolThread { tx, open });
            pool.drained.push(drained_rx);
            pool.exit.push(exit_tx);
            pool.joins.push(join);
        }
        Ok(pool)
    }

    /// Hands a connection to the thread with the fewest open (long-lived streams pile up
    /// on no one thread; ties rotate).
    fn hand_over(&self, stream: TcpStream, a: Accepted) {
        let n = self.threads.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let Some(t) = (0..n)
            .map(|k| &self.threads[(start + k) % n])
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot hand a connection to a serving thread; closing it");
                return;
            }
        };
        t.open.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((std, a))) = t.tx.send((std, a)) {
            // Its thread is gone (it cannot end before shutdown unless it panicked): never
            // pick it again, and serve this connection on another.
            error!("a serving thread has stopped; serving on the others");
            t.open.store(usize::MAX, Ordering::Relaxed);
            if let Some(other) = self
                .threads
                .iter()
                .filter(|o| o.open.load(Ordering::Relaxed) != usize::MAX)
                .min_by_key(|o| o.open.load(Ordering::Relaxed))
            {
                other.open.fetch_add(1, Ordering::Relaxed);
                let _ = other.tx.send((std, a));
            }
        }
    }

    /// Stops handing over and waits for every thread to drain (at most the drain timeout
    /// and [`DRAIN_GRACE`]); their runtimes stay until the [`Drained`] is closed.
    async fn drain(self) -> Drained {
        drop(self.threads);
        let limit = (self.drain)() + DRAIN_GRACE;
        let mut timed_out = false;
        let all = async {
            for d in self.drained {
                timed_out |= d.await.unwrap_or(false);
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            error!("a serving thread did not finish draining; stopping without it");
        } else if timed_out {
            warn!("drain timeout reached; closed the remaining connections");
        }
        Drained {
            exit: self.exit,
            joins: self.joins,
        }
    }
}

/// One serving thread's life: serve the connections handed over until the channel closes,
/// drain them for at most `drain()` (cancelling the rest, so their requests are recorded
/// as cut while the ledger can still take them), report, and keep the runtime until told.
async fn serve_thread(
    i: usize,
    mut rx: mpsc::UnboundedReceiver<(std::net::TcpStream, Accepted)>,
    conns: Conns,
    count: Arc<AtomicUsize>,
    drain: Arc<dyn Fn() -> Duration + Send + Sync>,
    drained: oneshot::Sender<bool>,
    exit: oneshot::Receiver<()>,
) {
    let lag = tokio::spawn(crate::threads::watch_lag(i));
    let graceful = GracefulShutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            handed = rx.recv() => {
                let Some((std, a)) = handed else { break };
                let stream = match TcpStream::from_std(std) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot serve a handed-over connection; closing it");
                        count.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let count = count.clone();
                tasks.spawn(conns.connection(&graceful, stream, a, move || {
                    count.fetch_sub(1, Ordering::Relaxed);
                }));
            }
            // Reaps finished connections (a JoinSet keeps them until joined).
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!(thread = i, "a connection's task panicked");
                    }
                }
            }
        }
    }
    let timed_out = tokio::select! {
        () = graceful.shutdown() => false,
        () = tokio::time::sleep(drain()) => true,
    };
    tasks.shutdown().await;
    lag.abort();
    let _ = drained.send(timed_out);
    let _ = exit.await;
}

/// Serving threads that have drained but keep their runtimes until [`Drained::close`] (or
/// drop).
#[must_use = "close it after the last write that may use the serving threads' connections"]
pub struct Drained {
    exit: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Drained {
    /// Lets the serving threads end (their runtimes cancel what is left on them) and waits
    /// for them.
    pub async fn close(mut self) {
        self.signal();
        let joins = std::mem::take(&mut self.joins);
        if joins.is_empty() {
            return;
        }
        // Joined on a detached thread: a serving thread stuck in a blocking call must not
        // keep the process from exiting (a blocking-pool task would: the runtime waits for
        // those when it is dropped).
        let (tx, rx) = oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("serve-join".into())
            .spawn(move || {
                for j in joins {
                    let _ = j.join();
                }
                let _ = tx.send(());
            });
        if joiner.is_err() || tokio::time::timeout(DRAIN_GRACE, rx).await.is_err() {
            error!("a serving thread did not stop; exiting without it");
        }
    }

    fn signal(&mut self) {
        for tx in self.exit.drain(..) {
            let _ = tx.send(());
        }
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        self.signal();
    }
}

/// The address a connection was accepted on (the sidecar tells loopback from the pod IP).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

/// The local address of a request's connection, when served by [`serve`].
pub fn local(req_extensions: &http::Extensions) -> Option<SocketAddr> {
    req_extensions.get::<LocalAddr>().map(|l| l.0)
}

/// The peer address of a request, when served by [`serve`].
pub fn peer(req_extensions: &http::Extensions) -> Option<SocketAddr> {
    req_extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Logs where a second listener serves.
pub fn announce(what: &str, addr: SocketAddr) {
    info!("{what} on http://{addr}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::sync::atomic::AtomicBool;

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Drained>,
        open: prometheus_client::metrics::gauge::Gauge,
        /// Set when the `/hang` handler is dropped (cancelled).
        hang_dropped: Arc<AtomicBool>,
        /// Notified when `/slow` or `/hang` starts.
        entered: Arc<tokio::sync::Notify>,
    }

    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn start(threads: Threads, drain: Duration) -> Server {
        crate::install_crypto();
        let hang_dropped = Arc::new(AtomicBool::new(false));
        let flag = hang_dropped.clone();
        let entered = Arc::new(tokio::sync::Notify::new());
        let (e1, e2) = (entered.clone(), entered.clone());
        let app = Router::new()
            .route(
                "/thread",
                get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
            )
            .route(
                "/slow",
                get(move || {
                    e1.notify_one();
                    async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        "done"
                    }
                }),
            )
            .route(
                "/hang",
                get(move || {
                    e2.notify_one();
                    let guard = SetOnDrop(flag.clone());
                    async move {
                        let _guard = guard;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        "never"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 100,
            threads,
        };
        let open = prometheus_client::metrics::gauge::Gauge::default();
        let gauge = open.clone();
        let task = tokio::spawn(async move {
            serve(
                listener,
                app,
                limits,
                async {
                    let _ = stopped.await;
                },
                move || drain,
                || (),
                gauge,
            )
            .await
            .unwrap()
        });
        Server {
            addr,
            stop,
            task,
            open,
            hang_dropped,
            entered,
        }
    }

    fn two() -> Threads {
        Threads::PerThread(NonZeroUsize::new(2).unwrap())
    }

    /// Connections are spread over the serving threads and stay on theirs, a request in
    /// flight at shutdown still gets its answer, and every connection is counted closed.
    #[tokio::test]
    async fn per_thread_serving_spreads_connections_and_drains() {
        let s = start(two(), Duration::from_secs(5)).await;
        let addr = s.addr;
        // Two clients, each keeping its connection open: the second connection goes to
        // the thread with fewer.
        let (a, b) = (reqwest::Client::new(), reqwest::Client::new());
        let mut seen = Vec::new();
        for c in [&a, &b, &a, &b] {
            let r = c.get(format!("http://{addr}/thread")).send().await.unwrap();
            seen.push(r.text().await.unwrap());
        }
        assert_eq!(
            seen,
            ["serve-0", "serve-1", "serve-0", "serve-1"],
            "a connection stays on its thread"
        );
        assert_eq!(s.open.get(), 2);
        let slow = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
        s.entered.notified().await;
        s.stop.send(()).unwrap();
        let answer = slow.await.unwrap().unwrap().text().await.unwrap();
        assert_eq!(answer, "done");
        let drained = tokio::time::timeout(Duration::from_secs(10), s.task)
            .await
            .expect("drained in time")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed once drained"
        );
        assert_eq!(s.open.get(), 0, "every connection counted closed");
        drained.close().await;
    }

    /// At the drain timeout the requests still running are cancelled before `serve`
    /// returns (so what their cancellation records reaches the ledger's last flush), in
    /// both modes.
    #[tokio::test]
    async fn the_drain_timeout_cancels_what_is_left_before_returning() {
        for threads in [two(), Threads::Shared] {
            let s = start(threads, Duration::from_millis(200)).await;
            let hang = tokio::spawn(reqwest::get(format!("http://{}/hang", s.addr)));
            s.entered.notified().await;
            s.stop.send(()).unwrap();
            let drained = tokio::time::timeout(Duration::from_secs(10), s.task)
                .await
                .expect("the drain timeout ends serving")
                .unwrap();
            assert!(
                s.hang_dropped.load(Ordering::SeqCst),
                "{threads:?}: the hanging request was cancelled before serve returned"
            );
            assert_eq!(s.open.get(), 0, "{threads:?}");
            assert!(hang.await.unwrap().is_err(), "its connection was closed");
            drained.close().await;
        }
    }

    /// Shared serving runs requests as tasks of the caller's runtime.
    #[tokio::test]
    async fn shared_serving_answers_and_drains() {
        let s = start(Threads::Shared, Duration::from_secs(5)).await;
        let body = reqwest::get(format!("http://{}/thread", s.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.starts_with("serve-"), "{body}");
        let slow = tokio::spawn(reqwest::get(format!("http://{}/slow", s.addr)));
        s.entered.notified().await;
        s.stop.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap().text().await.unwrap(), "done");
        s.task.await.unwrap().close().await;
    }
}
