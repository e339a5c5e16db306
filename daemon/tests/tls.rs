//! The backend client over real TLS on 127.0.0.1, with a CA made by rcgen:
//! TLS 1.3 with the configured CA works; TLS 1.2, another CA and plain HTTP
//! are refused.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secureev_daemon::error::Error;
use secureev_daemon::fetch::download::{DownloadOptions, Downloader, ImageRequest};
use secureev_daemon::fetch::http::{client_with_tls, tls_config_from_pem};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// Serve `body` over TLS with `versions`; returns the port.
async fn server(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    body: Arc<Vec<u8>>,
) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn request(url: String, body: &[u8]) -> ImageRequest {
    use sha2::Digest;
    ImageRequest {
        target: "fw.bin".into(),
        url,
        length: body.len() as u64,
        hashes: BTreeMap::from([("sha256".to_owned(), hex::encode(sha2::Sha256::digest(body)))]),
    }
}

fn downloader(ca_pem: &str, cache: &std::path::Path) -> Downloader {
    let tls = tls_config_from_pem(ca_pem.as_bytes(), None).unwrap();
    let client = client_with_tls(tls, Duration::from_secs(5)).unwrap();
    Downloader::new(
        client,
        DownloadOptions {
            cache_dir: cache.to_owned(),
            storage_budget_bytes: 1 << 30,
            min_rate_bytes_per_sec: 0,
            min_rate_window: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            attempts: 1,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn tls13_with_the_configured_ca_works_and_everything_else_is_refused() {
    let pki = pki();
    let body = Arc::new(vec![7u8; 100_000]);
    let dir = tempfile::tempdir().unwrap();
    let none = |_| {};

    let port13 = server(&pki, &[&rustls::version::TLS13], body.clone()).await;
    let d = downloader(&pki.ca_pem, &dir.path().join("ok"));
    let path = d
        .fetch(
            &request(format!("https://localhost:{port13}/fw.bin"), &body),
            &none,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), *body);

    // A server that only speaks TLS 1.2.
    let port12 = server(&pki, &[&rustls::version::TLS12], body.clone()).await;
    let err = downloader(&pki.ca_pem, &dir.path().join("tls12"))
        .fetch(
            &request(format!("https://localhost:{port12}/fw.bin"), &body),
            &none,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err}");

    // A certificate from another CA.
    let other = pki_other_ca();
    let err = downloader(&other, &dir.path().join("other-ca"))
        .fetch(
            &request(format!("https://localhost:{port13}/fw.bin"), &body),
            &none,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err}");

    // Plain HTTP is refused by the client itself.
    let err = downloader(&pki.ca_pem, &dir.path().join("plain"))
        .fetch(
            &request(format!("http://127.0.0.1:{port13}/fw.bin"), &body),
            &none,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err}");
}

fn pki_other_ca() -> String {
    pki().ca_pem
}
