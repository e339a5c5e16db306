//! TLS: the development PKI `init` creates, and the rustls server
//! configuration (TLS 1.3 only, `ring` provider).

use crate::error::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// PEM material of a development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (clients trust this).
    pub ca_cert: String,
    /// CA private key.
    pub ca_key: String,
    /// Server certificate.
    pub server_cert: String,
    /// Server private key.
    pub server_key: String,
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// A development CA and a server certificate for `names` (DNS names or IP
/// addresses), ECDSA P-256, valid for the rcgen default period.
pub fn generate_dev_pki(names: &[String]) -> Result<DevPki> {
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "SecureEV-OTA development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;

    let server_key = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(tls_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "secureev-server");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(tls_err)?;
    Ok(DevPki {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

/// A rustls server configuration from PEM files: TLS 1.3 only, `ring`
/// provider, HTTP/1.1 via ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS server key that signs through the key store (a PKCS#11 token):
/// ECDSA P-256 with SHA-256, DER, as TLS 1.3 `ecdsa_secp256r1_sha256` needs.
#[derive(Debug)]
struct StoreKey(crate::keystore::OnlineKey);

impl rustls::sign::SigningKey for StoreKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(StoreSigner(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct StoreSigner(crate::keystore::OnlineKey);

impl rustls::sign::Signer for StoreSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.0.sign(message).map_err(|e| {
            tracing::error!(error = %e, "TLS signature in the token failed");
            rustls::Error::General(format!("TLS key: {e}"))
        })
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        rustls::SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// As [`server_config`], with the private key in the key store (a token's
/// `<prefix>/tls/server`); refused when it is not the certificate's key.
pub fn server_config_with_key(
    cert: &Path,
    key: crate::keystore::OnlineKey,
) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    };
    // The leaf's public key must be the token's: compare the SEC1 points.
    let secureev_uptane::PublicKey::P256(vk) = key.verifying_key() else {
        return Err(Error::Tls("the TLS key in the token is not P-256".into()));
    };
    let point = vk.to_encoded_point(false);
    if !leaf
        .as_ref()
        .windows(point.as_bytes().len())
        .any(|w| w == point.as_bytes())
    {
        return Err(Error::Tls(format!(
            "{} is not the certificate of the token's TLS key {}",
            cert.display(),
            key.keyid()
        )));
    }
    let certified = rustls::sign::CertifiedKey::new(certs, Arc::new(StoreKey(key)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
