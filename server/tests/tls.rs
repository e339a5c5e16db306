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
