//! The listener speaks TLS 1.3 only.
#![allow(clippy::unwrap_used)]

mod common;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

async fn handshake(
    h: &common::Harness,
    version: &'static rustls::SupportedProtocolVersion,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(h.data.join("tls/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = h.base.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls13_is_accepted() {
    let h = common::start("tls").await;
    assert!(handshake(&h, &rustls::version::TLS13).await);
    assert!(!handshake(&h, &rustls::version::TLS12).await);
}

/// A TLS client trusting the harness CA, with `client` as its certificate
/// (chain and key PEM) when given.
fn client_config(h: &common::Harness, client: Option<(&[u8], &[u8])>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(h.data.join("tls/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key).unwrap(),
            )
            .unwrap(),
    }
}

async fn connect(
    h: &common::Harness,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let addr = h.base.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

const BOUND: std::time::Duration = std::time::Duration::from_secs(15);

/// Regression (schemathesis under load: "EOF occurred in violation of
/// protocol" on POST /enroll and POST /admin/image/online-keys): a request
/// refused on its headers gets its whole 401 and a close_notify, and the
/// body it sends after that is read and dropped (a lingering close): the
/// connection ends with the server's FIN after the client's, never with a
/// reset, which may destroy an answer the client has not read yet. Without
/// the lingering close the server's kernel answers the late body with a
/// reset and the last read fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_an_early_refusal_gets_the_whole_answer_and_no_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = common::start("early-refusal").await;
    let config = Arc::new(client_config(&h, None));
    for round in 0..3 {
        let mut tls = connect(&h, config.clone()).await.unwrap();
        let body = vec![b' '; 256 * 1024];
        let head = format!(
            "POST /enroll HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             authorization: Bearer nope\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // The whole answer and the close_notify (read_to_end fails on an EOF
        // without one), before any of the body is sent.
        let mut answer = Vec::new();
        tokio::time::timeout(BOUND, tls.read_to_end(&mut answer))
            .await
            .expect("no answer and close_notify in time")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 401"), "round {round}: {text}");
        assert!(
            text.contains(secureev_server::error::UNAUTHORIZED_MESSAGE),
            "round {round}: incomplete answer {text}"
        );
        // Now the body, as a client that writes everything first would.
        let sent = async {
            for chunk in body.chunks(16 * 1024) {
                tls.write_all(chunk).await?;
            }
            tls.flush().await?;
            tls.get_mut().0.shutdown().await
        }
        .await;
        let mut rest = Vec::new();
        let end = tokio::time::timeout(BOUND, tls.get_mut().0.read_to_end(&mut rest))
            .await
            .expect("the server did not close in time");
        assert!(
            sent.is_ok() && end.is_ok(),
            "round {round}: sending the late body: {sent:?}, end of the connection: {end:?}"
        );
        assert!(rest.is_empty(), "round {round}: bytes after close_notify");
    }
}

/// A keep-alive connection left idle past the header read timeout is closed
/// with a close_notify (it was dropped without one: the client's next read
/// was an EOF "in violation of protocol").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = common::start("idle-close").await;
    let mut tls = connect(&h, Arc::new(client_config(&h, None)))
        .await
        .unwrap();
    tls.write_all(b"GET /nowhere HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    let r = tokio::time::timeout(
        secureev_server::HEADER_READ_TIMEOUT + BOUND,
        tls.read_to_end(&mut all),
    )
    .await
    .expect("idle connection not closed");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(r.is_ok(), "closed without close_notify: {r:?}");
    assert!(started.elapsed() >= secureev_server::HEADER_READ_TIMEOUT);
}
