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
use tracing::{info, warn};

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
    let mut last_warning: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
            None => conns.spawn(&graceful, stream, accepted, || ()),
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
    if timed_out {
        warn!("drain timeout reached; closing the remaining connections");
    }
    Ok(Drained { exit: Vec::new() })
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
    /// Serves one connection as a task of the current runtime; `done` runs when it closes.
    fn spawn(
        &self,
        graceful: &GracefulShutdown,
        stream: TcpStream,
        a: Accepted,
        done: impl FnOnce() + Send + 'static,
    ) {
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
        tokio::spawn(async move {
            let _ = conn.await;
            open.dec();
            drop(permit);
            done();
        });
    }
}

/// The serving threads of [`Threads::PerThread`].
struct Pool {
    threads: Vec<PoolThread>,
    drained: Vec<oneshot::Receiver<bool>>,
    exit: Vec<oneshot::Sender<()>>,
}

/// One serving thread: where to hand it connections, and how many it has open.
struct PoolThread {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, Accepted)>,
    open: Arc<AtomicUsize>,
}

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
            drained: Vec::with_capacity(n),
            exit: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (tx, mut rx) = mpsc::unbounded_channel::<(std::net::TcpStream, Accepted)>();
            let (drained_tx, drained_rx) = oneshot::channel();
            let (exit_tx, exit_rx) = oneshot::channel::<()>();
            let open = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (conns, drain, count) = (conns.clone(), drain.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || {
                    crate::threads::enter(i);
                    rt.block_on(async move {
                        let graceful = GracefulShutdown::new();
                        while let Some((std, a)) = rx.recv().await {
                            let Ok(stream) = TcpStream::from_std(std) else {
                                count.fetch_sub(1, Ordering::Relaxed);
                                continue;
                            };
                            let count = count.clone();
                            conns.spawn(&graceful, stream, a, move || {
                                count.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                        let timed_out = tokio::select! {
                            () = graceful.shutdown() => false,
                            () = tokio::time::sleep(drain()) => true,
                        };
                        let _ = drained_tx.send(timed_out);
                        let _ = exit_rx.await;
                    });
                })?;
            pool.threads.push(PoolThread { tx, open });
            pool.drained.push(drained_rx);
            pool.exit.push(exit_tx);
        }
        Ok(pool)
    }

    /// Hands a connection to the thread with the fewest open (long-lived streams pile up
    /// on no one thread).
    fn hand_over(&self, stream: TcpStream, a: Accepted) {
        let Some(t) = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        let Ok(std) = stream.into_std() else { return };
        t.open.fetch_add(1, Ordering::Relaxed);
        if t.tx.send((std, a)).is_err() {
            t.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Stops handing over, waits for every thread to drain, and keeps their runtimes.
    async fn drain(self) -> Drained {
        drop(self.threads);
        let mut timed_out = false;
        for d in self.drained {
            timed_out |= d.await.unwrap_or(false);
        }
        if timed_out {
            warn!("drain timeout reached; closing the remaining connections");
        }
        Drained { exit: self.exit }
    }
}

/// Serving threads that have drained but keep their runtimes until [`Drained::close`] (or
/// drop).
#[must_use = "close it after the last write that may use the serving threads' connections"]
pub struct Drained {
    exit: Vec<oneshot::Sender<()>>,
}

impl Drained {
    /// Lets the serving threads end (their runtimes cancel what is left on them).
    pub fn close(self) {}
}

impl Drop for Drained {
    fn drop(&mut self) {
        for tx in self.exit.drain(..) {
            let _ = tx.send(());
        }
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

    async fn start(
        threads: Threads,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Drained>,
    ) {
        crate::install_crypto();
        let app = Router::new()
            .route(
                "/thread",
                get(|| async { crate::threads::index().to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 100,
            threads,
        };
        let server = tokio::spawn(async move {
            serve(
                listener,
                app,
                limits,
                async {
                    let _ = stopped.await;
                },
                || Duration::from_secs(5),
                || (),
                prometheus_client::metrics::gauge::Gauge::default(),
            )
            .await
            .unwrap()
        });
        (addr, stop, server)
    }

    /// Connections are spread over the serving threads (each request runs on one of them),
    /// and a request in flight at shutdown still gets its answer.
    #[tokio::test]
    async fn per_thread_serving_spreads_connections_and_drains() {
        let (addr, stop, server) = start(Threads::PerThread(NonZeroUsize::new(2).unwrap())).await;
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
            ["0", "1", "0", "1"],
            "a connection stays on its thread"
        );
        let slow = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let answer = slow.await.unwrap().unwrap().text().await.unwrap();
        assert_eq!(answer, "done");
        let drained = server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed once drained"
        );
        drained.close();
    }

    /// Shared serving runs requests as tasks of the caller's runtime.
    #[tokio::test]
    async fn shared_serving_answers_and_drains() {
        let (addr, stop, server) = start(Threads::Shared).await;
        let body = reqwest::get(format!("http://{addr}/thread"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "0");
        let slow = tokio::spawn(reqwest::get(format!("http://{addr}/slow")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap().text().await.unwrap(), "done");
        server.await.unwrap().close();
    }
}
