//! A proxy with none of the gateway's logic, for the benchmark: the gateway's own listener
//! (`api::serve`, one runtime per serving thread) and upstream clients (shared TLS
//! configuration, one pooled client per thread, the same pool settings), and in between only
//! a copy: no authentication, parsing, routing, limits, ledger or metrics. What it adds to
//! the direct upstream is what any proxy built this way costs on the machine, so the
//! gateway's overhead beyond it is its own logic's.
//!
//! Usage: bare_proxy LISTEN_ADDR UPSTREAM_BASE_URL (e.g. `127.0.0.1:8080
//! http://127.0.0.1:9100`); serves until SIGTERM or Ctrl-C.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use llm_gateway::api::serve::{serve, Limits, Threads};
use llm_gateway::providers::transport::{Client, Settings};

/// Where requests go and the clients that take them, one per thread slot.
struct Upstream {
    base: String,
    clients: Vec<Client>,
}

// The gateway's allocator, so that the floor is measured on the same footing.
#[global_allocator]
static ALLOCATOR: llm_gateway::alloc::Allocator = llm_gateway::alloc::Allocator;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        anyhow::bail!("usage: bare_proxy LISTEN_ADDR UPSTREAM_BASE_URL");
    };
    let n = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    // As the gateway: serving threads declared before any client is built.
    llm_gateway::threads::set_count(n.get());
    let base: http::Uri = upstream.parse()?;
    let clients = (0..llm_gateway::threads::slots())
        .map(|_| {
            // The gateway's provider client with its default timeouts: a read timeout is a
            // timer on every body read, which a real proxy needs and pays for.
            Client::new(
                &base,
                Settings {
                    connect: Duration::from_secs(10),
                    read_idle: Duration::from_secs(120),
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let upstream = Arc::new(Upstream {
        base: upstream.trim_end_matches('/').to_owned(),
        clients,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n.get())
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
        eprintln!("bare proxy on http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(forward).with_state(upstream);
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            threads: Threads::PerThread(n),
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        serve(
            listener,
            app,
            limits,
            stop,
            || Duration::from_secs(1),
            || (),
            prometheus_client::metrics::gauge::Gauge::default(),
        )
        .await?
        .close()
        .await;
        Ok(())
    })
}

/// Sends the request on as it came (method, path, content type and authorization; the body
/// read whole, as the gateway reads it) and sends the answer back with its status and
/// content type: read whole when its length is known (a JSON answer, as the gateway reads
/// one to count its usage), else streamed.
async fn forward(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body: Bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return status(400),
    };
    let client = &up.clients[llm_gateway::threads::slot() % up.clients.len()];
    let Ok(uri) = format!("{}{path}", up.base).parse::<http::Uri>() else {
        return status(400);
    };
    let mut out_req = http::Request::new(body);
    *out_req.method_mut() = parts.method;
    *out_req.uri_mut() = uri;
    for name in [http::header::CONTENT_TYPE, http::header::AUTHORIZATION] {
        if let Some(v) = parts.headers.get(&name) {
            out_req.headers_mut().insert(name, v.clone());
        }
    }
    out_req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("bare-proxy"),
    );
    let Ok(mut answer) = client.send(out_req, None).await else {
        return status(502);
    };
    let mut out = Response::builder().status(answer.status());
    if let Some(ct) = answer.headers().get(http::header::CONTENT_TYPE) {
        out = out.header(http::header::CONTENT_TYPE, ct);
    }
    let body = if answer.headers().contains_key(http::header::CONTENT_LENGTH) {
        let mut whole = bytes::BytesMut::new();
        loop {
            match answer.chunk().await {
                Ok(Some(c)) => whole.extend_from_slice(&c),
                Ok(None) => break Body::from(whole.freeze()),
                Err(_) => return status(502),
            }
        }
    } else {
        Body::from_stream(answer.into_stream())
    };
    out.body(body).unwrap_or_else(|_| status(502))
}

fn status(code: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}
