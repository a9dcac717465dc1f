//! A small HTTP/1.1 client for Contentstack's one-request-per-user updates: keep-alive
//! connections (TLS for `https`) kept in a stack of idle ones, each request on a connection of
//! its own, and nothing else.
//!
//! Why not reqwest, as everywhere else: on the one thread that sends and records, a request
//! through reqwest costs markedly more CPU (its pool, redirect and URL layers) than straight
//! through hyper, and at thousands of requests a second that decides how long an answer waits
//! for the thread once the machine is busy (figures in docs/performance.md).
//!
//! Through a proxy (`HTTPS_PROXY` and the like), Contentstack keeps to reqwest, which speaks
//! to proxies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use reqwest::header::{HOST, HeaderMap, HeaderValue, USER_AGENT};
use rustls::pki_types::ServerName;

use crate::http::answer::error_chain;
use crate::tenure::Tenure;
use gate::{Gate, Gated};

mod gate;

/// A request's answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request that got no answer: why, and whether it was the request timeout.
#[derive(Debug)]
pub struct TransportError {
    pub timed_out: bool,
    pub message: String,
}

impl From<String> for TransportError {
    fn from(message: String) -> Self {
        TransportError { timed_out: false, message }
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// A kept-alive connection: what sends on it, and the gate of its writes.
struct Connection {
    sender: Sender,
    gate: Gate,
}

/// Connections to one origin.
pub struct H1Pool {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header: the URL's host, and its port if the URL names one.
    host: HeaderValue,
    /// For `https`: the TLS set-up and the name the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Idle connections, each with when it last answered.
    idle: Mutex<Vec<(Connection, Instant)>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl H1Pool {
    /// Connections to the origin of `url` (`http` or `https`); `https` certificates are checked
    /// by the platform's verifier, as reqwest does.
    pub fn new(url: &reqwest::Url, connect_timeout: Duration, request_timeout: Duration) -> anyhow::Result<H1Pool> {
        let tls = match url.scheme() {
            "https" => Some(platform_tls()?),
            _ => None,
        };
        H1Pool::with_tls(url, tls, connect_timeout, request_timeout)
    }

    fn with_tls(
        url: &reqwest::Url,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<H1Pool> {
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("{url} has no host"))?;
        let port = url.port_or_known_default().ok_or_else(|| anyhow::anyhow!("{url} has no port"))?;
        let host_header = match url.port() {
            Some(port) => HeaderValue::from_str(&format!("{host}:{port}"))?,
            None => HeaderValue::from_str(host)?,
        };
        let tls = match tls {
            Some(config) => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(H1Pool {
            address: format!("{host}:{port}"),
            host: host_header,
            tls,
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            request_timeout,
        })
    }

    /// Sends `request` (its path; the pool adds `Host` and `User-Agent`) on an idle
    /// connection, or a new one, within the request timeout. A
    /// request that an idle connection could not take (the server had just closed it) goes on
    /// a new one at once; any other failure is the caller's to retry. Nothing of it is written
    /// once `tenure` may have lapsed (`gate`).
    pub async fn send(
        &self,
        mut request: hyper::Request<Full<Bytes>>,
        tenure: &Tenure,
    ) -> Result<Answer, TransportError> {
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(crate::http::USER_AGENT));
        let exchange = async {
            let response = match self.checkout() {
                Some(mut connection) => {
                    connection.gate.set(tenure);
                    match connection.sender.try_send_request(request).await {
                        Ok(response) => (response, connection),
                        Err(mut e) => match e.take_message() {
                            Some(request) => self.send_on_new(request, tenure).await?,
                            None => return Err(error_chain(&e.into_error()).into()),
                        },
                    }
                }
                None => self.send_on_new(request, tenure).await?,
            };
            let (response, connection) = response;
            let (parts, body) = response.into_parts();
            let (body, whole) = read_at_most(body, crate::http::MAX_ANSWER_BODY).await?;
            // A connection whose answer was not read to its end cannot carry another request.
            if whole {
                self.idle.lock().expect("idle connections").push((connection, Instant::now()));
            }
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        let timed_out = || TransportError {
            timed_out: true,
            message: format!("no answer from {} within {:?}", self.address, self.request_timeout),
        };
        tokio::time::timeout(self.request_timeout, exchange).await.map_err(|_| timed_out())?
    }

    async fn send_on_new(
        &self,
        request: hyper::Request<Full<Bytes>>,
        tenure: &Tenure,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Connection), String> {
        let mut connection = self.connect(Gate::carrying(tenure)).await?;
        let response = connection.sender.send_request(request).await.map_err(|e| error_chain(&e))?;
        Ok((response, connection))
    }

    /// The last connection to have answered that can take a request now. Connections idle
    /// for `MAX_IDLE` are dropped: servers and load balancers close theirs after a minute or so,
    /// and a request written as they do fails.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("idle connections");
        while let Some((connection, since)) = idle.pop() {
            if connection.sender.is_ready() && since.elapsed() < MAX_IDLE {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self, gate: Gate) -> Result<Connection, String> {
        let tcp = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.tls {
            None => handshake(Gated { io: tcp, gate }).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| format!("TLS with {} timed out", self.address))?
                    .map_err(|e| format!("TLS with {}: {e}", self.address))?;
                handshake(Gated { io: tls, gate }).await
            }
        }
    }
}

const MAX_IDLE: Duration = Duration::from_secs(30);

/// An HTTP/1.1 connection over `io`, its driver spawned on the runtime.
async fn handshake<T>(io: Gated<T>) -> Result<Connection, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let gate = io.gate.clone();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(Connection { sender, gate })
}

/// TLS 1.2 and 1.3 with aws-lc-rs, certificates checked by the platform's verifier (the
/// operating system's roots), offering HTTP/1.1 only.
fn platform_tls() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;

/// The first `limit` bytes of `body`, and whether that was all of it: an answer's body is read
/// only to be shown in an error, and a hostile one must not take the memory.
async fn read_at_most(mut body: hyper::body::Incoming, limit: usize) -> Result<(Bytes, bool), String> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else { continue };
        if read.len() + data.len() > limit {
            read.extend_from_slice(&data[..limit - read.len()]);
            return Ok((Bytes::from(read), false));
        }
        read.extend_from_slice(&data);
    }
    Ok((Bytes::from(read), true))
}
