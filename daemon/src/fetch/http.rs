//! The HTTPS client the daemon talks to the backend with.
//!
//! reqwest on rustls with the `ring` provider, TLS 1.3 only, trusting only the
//! CA certificates of `[backend] ca_file` (never the system store), with an
//! optional client certificate for mutual TLS. Plain `http://` URLs are refused
//! (`https_only`).
//!
//! **Proxies.** reqwest honours the standard environment variables by itself:
//! `HTTPS_PROXY`/`https_proxy` for https URLs, `HTTP_PROXY`/`http_proxy`,
//! `ALL_PROXY`/`all_proxy`, and `NO_PROXY`/`no_proxy` for exceptions (checked in
//! reqwest 0.12 and hyper-util's proxy matcher: the environment is read whether
//! or not reqwest's `system-proxy` feature is on; that feature only adds the
//! macOS and Windows system settings). With systemd, set them with
//! `Environment=` or `EnvironmentFile=` in the unit. TLS still runs end to end
//! through an HTTPS proxy's CONNECT tunnel, so the proxy cannot read or alter
//! traffic.

use crate::config::Config;
use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// User-Agent of every request.
pub const USER_AGENT: &str = concat!("secureev-otad/", env!("CARGO_PKG_VERSION"));

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read", path, e))
}

/// A rustls client configuration: TLS 1.3 only, `ca_pem` as the only roots, and
/// an optional client certificate chain and key (PEM).
pub fn tls_config_from_pem(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::Tls("the CA file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(Error::Tls(
                    "the client certificate file holds no certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| Error::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))
        }
    }
}

/// [`tls_config_from_pem`] from the files of `[backend]`.
pub fn tls_config(config: &Config) -> Result<rustls::ClientConfig> {
    let b = &config.backend;
    let ca = read(&b.ca_file)?;
    match (&b.client_cert, &b.client_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (read(cert)?, zeroize::Zeroizing::new(read(key)?));
            tls_config_from_pem(&ca, Some((&cert, &key)))
        }
        _ => tls_config_from_pem(&ca, None),
    }
}

/// A reqwest client on `tls`, HTTPS only, connecting (TCP and TLS handshake)
/// within `connect_timeout`.
/// No overall timeout: downloads are long, and the download engine enforces a
/// minimum rate instead.
pub fn client_with_tls(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .connect_timeout(connect_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| Error::Tls(format!("building the HTTP client: {e}")))
}

/// The backend client for `config`: the integration point for check-in, which
/// adds request signing (`secureev_uptane::request_auth`) per request.
pub fn client(config: &Config) -> Result<reqwest::Client> {
    client_with_tls(
        tls_config(config)?,
        // reqwest's connect timeout covers the whole connector: TCP connect
        // and the TLS handshake (a server that accepts and then says nothing
        // is cut off here).
        Duration::from_secs(config.network.connect_timeout_secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_or_garbage_ca() {
        assert!(matches!(tls_config_from_pem(b"", None), Err(Error::Tls(_))));
        assert!(tls_config_from_pem(
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
            None
        )
        .is_err());
    }

    #[test]
    fn builds_configs_with_and_without_client_certificate() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cfg = tls_config_from_pem(ca.cert.pem().as_bytes(), None).unwrap();
        let key = ca.key_pair.serialize_pem();
        let with_client = tls_config_from_pem(
            ca.cert.pem().as_bytes(),
            Some((ca.cert.pem().as_bytes(), key.as_bytes())),
        )
        .unwrap();
        assert!(with_client.client_auth_cert_resolver.has_certs());
        client_with_tls(cfg, Duration::from_secs(5)).unwrap();
    }
}
