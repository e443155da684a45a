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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish for
/// at most `drain()` (read then: the configuration may have changed it since the start).
/// `on_reject` is called for each connection closed at the cap.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: impl Fn() -> Duration,
    on_reject: impl Fn() + Send + Sync + 'static,
    open: prometheus_client::metrics::gauge::Gauge,
) -> std::io::Result<()> {
    // HTTP/1.1 only: protocol sniffing for cleartext HTTP/2 would read the first bytes with
    // no timeout, which is exactly what a slowloris client exploits. (Clients reach the
    // gateway over HTTP/1.1; TLS and HTTP/2 end at the ingress in front of it.)
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
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
        let local = stream.local_addr().ok().map(LocalAddr);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(l) = local {
                req.extensions_mut().insert(l);
            }
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            let _ = conn.await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain()) => {
            warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
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
