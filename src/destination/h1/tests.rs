//! The client against a real TLS server on loopback, with a certificate of our own test CA.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const CA: &[u8] = include_bytes!("../../../tests/fixtures/tls/ca.pem");
const CERT: &[u8] = include_bytes!("../../../tests/fixtures/tls/localhost.pem");
const KEY: &[u8] = include_bytes!("../../../tests/fixtures/tls/localhost.key");

/// A TLS server on loopback answering every request `200 ok`; it counts connections and keeps
/// each request's head.
struct TlsServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    async fn start() -> TlsServer {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(CERT).unwrap()],
                PrivateKeyDer::from_pem_slice(KEY).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (count, kept) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, kept) = (acceptor.clone(), kept.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    while let Some(head) = read_request(&mut tls).await {
                        kept.lock().unwrap().push(head);
                        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                });
            }
        });
        TlsServer { port, connections, heads }
    }

    fn url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("https://localhost:{}/user-attributes", self.port)).unwrap()
    }
}

/// One request's head (its body read and dropped), or `None` at the end of the connection.
async fn read_request<T: tokio::io::AsyncRead + Unpin>(io: &mut T) -> Option<String> {
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = io.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length.saturating_sub(buffer.len() - end)];
    io.read_exact(&mut body).await.ok()?;
    Some(head)
}

fn request() -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::new(Full::new(Bytes::from_static(b"{\"a\":true}")));
    *request.method_mut() = reqwest::Method::PATCH;
    *request.uri_mut() = hyper::Uri::from_static("/user-attributes");
    request
}

/// A client config that trusts the test CA.
fn trusting_test_ca() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(CA).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn requests_over_tls_reuse_one_connection() {
    let server = TlsServer::start().await;
    let pool = H1Pool::with_tls(&server.url(), Some(trusting_test_ca()), SECOND, 5 * SECOND).unwrap();
    for _ in 0..2 {
        let answer = pool.send(request(), &crate::tenure::UNBOUNDED).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "the second request reused the connection");
    let heads = server.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(heads[0].starts_with("PATCH /user-attributes HTTP/1.1\r\n"), "{}", heads[0]);
    let head = heads[0].to_ascii_lowercase();
    assert!(head.contains("user-agent: audience-sync/"), "{head}");
    assert!(head.contains(&format!("host: localhost:{}\r\n", server.port)), "{head}");
    assert!(head.contains("content-length: 10\r\n"), "a body of known length, not chunked: {head}");
}

#[tokio::test]
async fn a_certificate_the_platform_does_not_trust_is_refused() {
    let server = TlsServer::start().await;
    let pool = H1Pool::new(&server.url(), SECOND, 5 * SECOND).unwrap();
    let error = pool.send(request(), &crate::tenure::UNBOUNDED).await.err().expect("our test CA is in no system store");
    assert!(!error.timed_out && error.message.contains("certificate"), "{error:?}");
    assert!(server.heads.lock().unwrap().is_empty(), "nothing was sent in the clear");
}

/// CI finding: a process stopped after its request passed the tenure's check, but before the
/// connection wrote it, sent it when it woke, past its lease. The connection checks last:
/// nothing of a request whose tenure may have lapsed is written, on a new connection or on a
/// kept-alive one.
#[tokio::test]
async fn nothing_is_written_once_the_requests_tenure_may_have_lapsed() {
    let server = TlsServer::start().await;
    let pool = H1Pool::with_tls(&server.url(), Some(trusting_test_ca()), SECOND, 5 * SECOND).unwrap();
    let ttl = 60 * SECOND;
    let lapsed = Tenure::renewable(Instant::now() - 2 * ttl, ttl, None);
    let live = Tenure::renewable(Instant::now(), ttl, None);
    let written = || server.heads.lock().unwrap().len();

    let refused = pool.send(request(), &lapsed).await.err().expect("refused on a new connection");
    assert!(refused.message.contains("past its lease"), "{}", refused.message);
    assert_eq!(written(), 0);
    pool.send(request(), &live).await.unwrap();
    assert_eq!(written(), 1);
    pool.send(request(), &lapsed).await.err().expect("refused on the kept-alive connection");
    assert_eq!(written(), 1);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2, "the second request went on the kept-alive one");
}
