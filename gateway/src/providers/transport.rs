//! How a provider's requests reach it. Normally hyper's pooled client, straight over TCP or
//! TLS: reqwest on the same connections costs about a quarter more instructions per request
//! (its redirect and retry layers run even when both are off, and it parses the URL twice per
//! request), which is most of what separates the gateway from a bare proxy. reqwest is kept
//! where it does what the direct client does not: when `HTTP(S)_PROXY` applies to the
//! provider's URL (reqwest speaks every proxy form, with `NO_PROXY` and credentials), and when
//! no TLS configuration could be built (its builder then says why).
//!
//! Both give the same [`Response`] and the same [`TransportError`], so the provider code above
//! does not know which one carried a request. Timeouts mean the same on both: `connect` for
//! the whole connect (DNS, TCP, TLS), `read_idle` for any wait for the upstream's next bytes (headers
//! included), and the whole-request `total` when the caller gives one.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

/// How long an idle pooled connection is kept (reqwest's default, kept across the switch).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A failure to get a response or its next bytes.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TCP or TLS connect did not finish within the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection could not be made (refused, DNS, TLS).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The upstream went quiet for the read timeout, or the request passed its total timeout.
    #[error("timed out")]
    Timeout,
    /// The connection failed after it was made (reset, closed mid-body, a protocol error).
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// Whether a timeout (connect, read or total) ended the request.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::Timeout)
    }

    /// Whether the connection could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::Connect(_))
    }

    /// From hyper's client: a connect error whose cause is a timed-out socket is a connect
    /// timeout (hyper's connect timeout and the kernel's both end as `TimedOut`).
    fn from_hyper(e: hyper_util::client::legacy::Error) -> Self {
        let chain = error_chain(&e);
        if !e.is_connect() {
            return Self::Other(chain);
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return Self::ConnectTimeout;
            }
            source = s.source();
        }
        Self::Connect(chain)
    }

    /// From reqwest (whose messages lose the URL: it may carry credentials).
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_connect() && e.is_timeout() {
            Self::ConnectTimeout
        } else if e.is_timeout() {
            Self::Timeout
        } else if e.is_connect() {
            Self::Connect(error_chain(&e.without_url()))
        } else {
            Self::Other(error_chain(&e.without_url()))
        }
    }
}

/// An error and its causes, `: `-separated (hyper's own message names only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The connection settings a provider's client is built from.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// TCP and TLS connect timeout.
    pub connect: Duration,
    /// Longest wait for the upstream's next bytes.
    pub read_idle: Duration,
}

type Direct = hyper_util::client::legacy::Client<ConnectWithin, Full<Bytes>>;

/// How many times a request the upstream refused unprocessed on an HTTP/2 connection (a
/// `REFUSED_STREAM` reset, or a graceful `GOAWAY` that came before it was read) is sent again,
/// as reqwest did: the upstream promises it did nothing with it.
const H2_RETRIES: usize = 2;

/// One HTTP client of a provider (one per serving thread, see [`super::learned::Clients`]).
#[derive(Debug, Clone)]
pub struct Client {
    via: Via,
    read_idle: Duration,
}

#[derive(Debug, Clone)]
enum Via {
    Direct(Box<Direct>),
    Reqwest(reqwest::Client),
}

impl Client {
    /// A client for requests to `url`: the direct one unless [`Client::through_reqwest`].
    pub fn new(url: &http::Uri, s: Settings) -> reqwest::Result<Self> {
        match super::tls::config() {
            Some(tls) if !proxied(url) => Ok(Self::direct(tls, s)),
            _ => Self::reqwest(s),
        }
    }

    /// Whether requests to `url` go through reqwest: a proxy from the environment applies to
    /// it, or there is no TLS configuration.
    pub fn through_reqwest(url: &http::Uri) -> bool {
        proxied(url) || super::tls::config().is_none()
    }

    /// hyper's pooled client over `tls`, HTTP/2 where the upstream offers it by ALPN (as
    /// reqwest did), with reqwest's TCP keepalive: a pooled connection to a peer that vanished
    /// fails in about 30 s instead of waiting out the read timeout.
    pub fn direct(tls: &rustls::ClientConfig, s: Settings) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(s.connect));
        tcp.set_keepalive(Some(Duration::from_secs(15)));
        tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
        tcp.set_keepalive_retries(Some(3));
        #[cfg(target_os = "linux")]
        tcp.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let mut tls = tls.clone();
        // The connector sets ALPN itself from the versions enabled below.
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(ConnectWithin {
                inner: https,
                limit: s.connect,
            });
        Self {
            via: Via::Direct(Box::new(client)),
            read_idle: s.read_idle,
        }
    }

    fn reqwest(s: Settings) -> reqwest::Result<Self> {
        let client = super::tls::client_builder()
            // A redirect would re-send the API key and the prompt to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(s.connect)
            .read_timeout(s.read_idle)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            via: Via::Reqwest(client),
            read_idle: s.read_idle,
        })
    }

    /// Sends `req` and waits for the response's head. `total`, when given, bounds the whole
    /// request, the body's reading included.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
        total: Option<Duration>,
    ) -> Result<Response, TransportError> {
        let deadline = total.map(|t| Instant::now() + t);
        match &self.via {
            Via::Direct(client) => {
                let wait = next_read(self.read_idle, deadline);
                // HTTP/2 is only offered by ALPN, so only a TLS connection can refuse a request
                // that way: a plain one sends its request without keeping a copy.
                let h2_possible = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
                let mut req = req;
                let mut retries = 0;
                let resp = loop {
                    let again = (h2_possible && retries < H2_RETRIES).then(|| copy(&req));
                    let sent = tokio::time::timeout_at(wait, client.request(req.map(Full::new)))
                        .await
                        .map_err(|_| TransportError::Timeout)?;
                    match (sent, again) {
                        (Err(e), Some(again)) if refused_unprocessed(&e) => {
                            retries += 1;
                            req = again;
                        }
                        (sent, _) => break sent.map_err(TransportError::from_hyper)?,
                    }
                };
                let (parts, body) = resp.into_parts();
                Ok(Response {
                    status: parts.status,
                    headers: parts.headers,
                    body: Body::Direct(body),
                    read_idle: self.read_idle,
                    deadline,
                })
            }
            Via::Reqwest(client) => {
                let mut req =
                    reqwest::Request::try_from(req).map_err(TransportError::from_reqwest)?;
                *req.timeout_mut() = total;
                let resp = client
                    .execute(req)
                    .await
                    .map_err(TransportError::from_reqwest)?;
                Ok(Response {
                    status: resp.status(),
                    headers: resp.headers().clone(),
                    body: Body::Reqwest(resp),
                    read_idle: self.read_idle,
                    deadline,
                })
            }
        }
    }
}

/// When a wait for the upstream's next bytes gives up: after `read_idle`, and never past the
/// request's total deadline.
fn next_read(read_idle: Duration, deadline: Option<Instant>) -> Instant {
    let idle = Instant::now() + read_idle;
    deadline.map_or(idle, |d| d.min(idle))
}

/// Whether a proxy from the environment (`HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`) applies.
fn proxied(url: &http::Uri) -> bool {
    hyper_util::client::proxy::matcher::Matcher::from_env()
        .intercept(url)
        .is_some()
}

/// A request again (the body is shared, not copied).
fn copy(req: &http::Request<Bytes>) -> http::Request<Bytes> {
    let mut again = http::Request::new(req.body().clone());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.headers_mut() = req.headers().clone();
    again
}

/// Whether the upstream refused a request over HTTP/2 before processing it.
fn refused_unprocessed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = s.source();
    }
    false
}

/// The TLS connector with one timeout over the whole connect: DNS, TCP and the TLS handshake
/// (hyper's own connect timeout covers the TCP connect only).
#[derive(Debug, Clone)]
pub struct ConnectWithin {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for ConnectWithin {
    type Response = <HttpsConnector<HttpConnector> as tower::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connect = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connect).await {
                Ok(conn) => conn,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection was not ready within the connect timeout",
                )
                .into()),
            }
        })
    }
}

/// An upstream response whose head has arrived.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    read_idle: Duration,
    deadline: Option<Instant>,
}

#[derive(Debug)]
enum Body {
    Direct(hyper::body::Incoming),
    Reqwest(reqwest::Response),
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body's next bytes; `None` at its end. Waits at most the read timeout (and never
    /// past the request's total timeout).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        match &mut self.body {
            Body::Direct(body) => {
                let wait = next_read(self.read_idle, self.deadline);
                loop {
                    let frame = tokio::time::timeout_at(wait, body.frame())
                        .await
                        .map_err(|_| TransportError::Timeout)?;
                    match frame {
                        None => return Ok(None),
                        Some(Err(e)) => return Err(TransportError::Other(error_chain(&e))),
                        // Trailers carry nothing the gateway reads.
                        Some(Ok(f)) => match f.into_data() {
                            Ok(data) if !data.is_empty() => return Ok(Some(data)),
                            _ => continue,
                        },
                    }
                }
            }
            Body::Reqwest(resp) => resp.chunk().await.map_err(TransportError::from_reqwest),
        }
    }

    /// The body as a stream of byte chunks.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<Bytes, TransportError>> + Send + 'static {
        futures::stream::unfold(Some(self), |resp| async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(c)) => Some((Ok(c), Some(resp))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings(read_idle_ms: u64) -> Settings {
        Settings {
            connect: Duration::from_millis(300),
            read_idle: Duration::from_millis(read_idle_ms),
        }
    }

    /// The direct client whatever the environment's proxy settings (these tests are about it).
    fn client(read_idle_ms: u64) -> Client {
        Client::direct(
            crate::providers::tls::config().expect("a CA bundle on this machine"),
            settings(read_idle_ms),
        )
    }

    fn post(url: &str) -> http::Request<Bytes> {
        http::Request::post(url)
            .body(Bytes::from_static(b"{}"))
            .unwrap()
    }

    /// A server that reads a request, then writes `parts` with `gap` between them and keeps
    /// the connection open.
    async fn server(parts: Vec<&'static str>, gap: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat/completions", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let parts = parts.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    for p in parts {
                        if s.write_all(p.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(gap).await;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        url
    }

    const HEAD: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_not_a_timeout() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let c = client(500);
        let e = c.send(post(&url), None).await.unwrap_err();
        assert!(e.is_connect() && !e.is_timeout(), "{e:?}");
    }

    #[tokio::test]
    async fn a_connect_that_hangs_is_a_connect_timeout() {
        // A listener that never accepts, its queue filled: the kernel drops further SYNs, so
        // the next connect neither succeeds nor fails.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let _l = socket.listen(0).unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                held.push(s);
            }
        }
        let url = format!("http://{addr}/v1/chat/completions");
        let c = client(5_000);
        let start = Instant::now();
        let e = c.send(post(&url), None).await.unwrap_err();
        assert!(matches!(e, TransportError::ConnectTimeout), "{e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the connect timeout, not the read one"
        );
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_times_out_after_the_read_timeout() {
        let url = server(vec![], Duration::ZERO).await;
        let c = client(200);
        let e = c.send(post(&url), None).await.unwrap_err();
        assert!(matches!(e, TransportError::Timeout), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_that_stalls_times_out_and_one_that_trickles_does_not() {
        let url = server(vec![HEAD, "2\r\n{}\r\n"], Duration::ZERO).await;
        let c = client(200);
        let mut r = c.send(post(&url), None).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.chunk().await.unwrap().unwrap(), "{}");
        assert!(matches!(r.chunk().await, Err(TransportError::Timeout)));

        // Each piece comes within the read timeout: the stream goes on as long as it lasts.
        let url = server(
            vec![HEAD, "1\r\na\r\n", "1\r\nb\r\n", "1\r\nc\r\n", "0\r\n\r\n"],
            Duration::from_millis(100),
        )
        .await;
        let c = client(300);
        let mut r = c.send(post(&url), None).await.unwrap();
        let mut got = Vec::new();
        while let Some(b) = r.chunk().await.unwrap() {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, b"abc");
    }

    #[tokio::test]
    async fn the_total_timeout_bounds_a_body_that_keeps_trickling() {
        let parts = std::iter::once(HEAD)
            .chain(std::iter::repeat_n("1\r\na\r\n", 50))
            .collect();
        let url = server(parts, Duration::from_millis(50)).await;
        let c = client(1_000);
        let start = Instant::now();
        let mut r = c
            .send(post(&url), Some(Duration::from_millis(400)))
            .await
            .unwrap();
        let e = loop {
            match r.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the body ended"),
                Err(e) => break e,
            }
        };
        assert!(matches!(e, TransportError::Timeout), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_finishes_is_a_connect_timeout() {
        // TCP is accepted, then nothing: the connect timeout covers the handshake too.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/v1/chat/completions",
            l.local_addr().unwrap().port()
        );
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let start = Instant::now();
        let e = client(5_000).send(post(&url), None).await.unwrap_err();
        assert!(matches!(e, TransportError::ConnectTimeout), "{e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the connect timeout, not the read one"
        );
    }

    /// An HTTP/2 upstream that refuses a stream unprocessed (`REFUSED_STREAM`, as a server
    /// at its stream limit or shutting down does) gets it again, on HTTP/2 negotiated by ALPN.
    #[tokio::test]
    async fn a_request_an_http2_upstream_refused_unprocessed_is_sent_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let provider = || Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                    .unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/v1/chat/completions",
            l.local_addr().unwrap().port()
        );
        let streams = Arc::new(AtomicUsize::new(0));
        let seen = streams.clone();
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                } else {
                    let mut body = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
                }
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let c = Client::direct(&tls, settings(2_000));
        let mut r = c.send(post(&url), None).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.chunk().await.unwrap().unwrap(), "{}");
        assert_eq!(
            streams.load(Ordering::SeqCst),
            2,
            "refused once, then answered"
        );
    }
}
