//! TLS: the development PKI `init` creates, the rustls server
//! configuration (TLS 1.3 only, `ring` provider), and device certificates.
//!
//! ## Device certificates (mutual TLS)
//! With `device_certificates = "required"` the vehicle listener asks every
//! client for a certificate and accepts only one chaining to the fleet CA
//! (`fleet_ca`, rustls' `WebPkiClientVerifier`: signature chain, validity,
//! `clientAuth` extended key usage). A device certificate names its vehicle in
//! the **subject's commonName: the VIN**, exactly one CN, of the form the
//! request signature header takes ([`certificate_vin`]). The request
//! signatures stay: every request must also be signed by the vehicle's
//! registered Primary key, and the signing VIN must be the certificate's.
//! `secureev-server device-cert` makes the fleet CA (key in the offline
//! directory) and issues device certificates, from a key it makes or from a
//! PKCS#10 request ([`issue_device_cert`]) as a factory's device sends it.

use crate::error::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
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
pub fn server_config(
    cert: &Path,
    key: &Path,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>> {
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
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let mut config = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
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
    clients: Option<Arc<dyn ClientCertVerifier>>,
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
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let mut config = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of device certificates: chains to a certificate in
/// `fleet_ca` (PEM, one or more CA certificates), `clientAuth` usage, valid
/// now. A client without a certificate is refused in the handshake.
pub fn device_verifier(fleet_ca: &Path) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fleet_ca)
        .map_err(|e| Error::Tls(format!("{}: {e}", fleet_ca.display())))?
    {
        let c = c.map_err(|e| Error::Tls(format!("{}: {e}", fleet_ca.display())))?;
        roots
            .add(c)
            .map_err(|e| Error::Tls(format!("{}: {e}", fleet_ca.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no fleet CA certificate",
            fleet_ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(tls_err)
}

/// Distinguished name of the fleet CA `device-cert init-ca` makes.
pub const FLEET_CA_NAME: &str = "SecureEV-OTA fleet CA";

fn fleet_ca_params() -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, FLEET_CA_NAME);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

/// A new fleet CA: (certificate PEM, private key PEM), ECDSA P-256.
pub fn generate_fleet_ca() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = fleet_ca_params()?.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The key a device certificate certifies.
#[derive(Debug)]
pub enum DeviceKey {
    /// Make a new P-256 key (returned as PKCS#8 PEM by [`issue_device_cert`]).
    Generate,
    /// The public key of a PKCS#10 certificate request (PEM), whose
    /// signature must verify under it (P-256, ECDSA with SHA-256). Its
    /// subject is ignored: the certificate names the VIN it is issued for.
    Csr(String),
}

/// A device certificate issued for `vin` by the fleet CA whose private key
/// is `ca_key_pem`, valid from `now` for `days`: subject CN = the VIN,
/// `clientAuth` only. Returns the certificate PEM and, for
/// [`DeviceKey::Generate`], the new private key PEM.
pub fn issue_device_cert(
    ca_key_pem: &str,
    vin: &str,
    key: DeviceKey,
    now: i64,
    days: u32,
) -> Result<(String, Option<String>)> {
    secureev_uptane::request_auth::claimed_vehicle(vin)
        .map_err(|e| Error::BadRequest(format!("VIN {vin:?}: {e}")))?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err)?;
    // The issuer is the CA's name and key; its certificate is not needed.
    let ca = fleet_ca_params()?.self_signed(&ca_key).map_err(tls_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, vin);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 300).map_err(tls_err)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now + i64::from(days) * 86_400)
        .map_err(tls_err)?;
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    match key {
        DeviceKey::Generate => {
            let k = KeyPair::generate().map_err(tls_err)?;
            let cert = params.signed_by(&k, &ca, &ca_key).map_err(tls_err)?;
            Ok((cert.pem(), Some(k.serialize_pem())))
        }
        DeviceKey::Csr(pem) => {
            let public = csr_public_key(&pem)?;
            let cert = params.signed_by(&public, &ca, &ca_key).map_err(tls_err)?;
            Ok((cert.pem(), None))
        }
    }
}

/// `device-cert init-ca`: a new fleet CA, its key and certificate in
/// `<offline_dir>/fleet/` (0600 and 0644), the certificate also at
/// `<data_dir>/tls/fleet-ca.pem` when a data directory is given. Refuses to
/// overwrite any of them.
pub fn init_fleet_ca(offline_dir: &Path, data_dir: Option<&Path>) -> Result<()> {
    use crate::layout;
    let key_path = offline_dir.join(layout::FLEET_CA_KEY);
    if key_path.exists() {
        return Err(Error::Conflict(format!(
            "{} exists: the fleet CA is made once",
            key_path.display()
        )));
    }
    let (cert, key) = generate_fleet_ca()?;
    if let Some(data) = data_dir {
        let path = data.join(layout::FLEET_CA_CERT);
        if path.exists() {
            return Err(Error::Conflict(format!("{} exists", path.display())));
        }
    }
    layout::write_private(&key_path, key.as_bytes())?;
    layout::write_public(
        &offline_dir.join(layout::FLEET_CA_OFFLINE_CERT),
        cert.as_bytes(),
    )?;
    if let Some(data) = data_dir {
        layout::write_public(&data.join(layout::FLEET_CA_CERT), cert.as_bytes())?;
    }
    Ok(())
}

/// `device-cert issue`: a certificate for `vin` from the fleet CA in
/// `offline_dir`, written to `out` (0644); with [`DeviceKey::Generate`] the
/// new key goes to `key_out` (0600). Refuses to overwrite.
pub fn issue_device_cert_files(
    offline_dir: &Path,
    vin: &str,
    key: DeviceKey,
    out: &Path,
    key_out: Option<&Path>,
    now: i64,
    days: u32,
) -> Result<()> {
    use crate::layout;
    let ca_path = offline_dir.join(layout::FLEET_CA_KEY);
    crate::secrets::refuse_wider(&ca_path, 0o600)?;
    let ca_key = zeroize::Zeroizing::new(
        std::fs::read_to_string(&ca_path)
            .map_err(|e| Error::io(format!("reading {}", ca_path.display()), e))?,
    );
    let generate = matches!(key, DeviceKey::Generate);
    if generate != key_out.is_some() {
        return Err(Error::BadRequest(
            "a generated key needs a key file, a certificate request none".into(),
        ));
    }
    for p in std::iter::once(out).chain(key_out) {
        if p.exists() {
            return Err(Error::Conflict(format!("{} exists", p.display())));
        }
    }
    let (cert, new_key) = issue_device_cert(&ca_key, vin, key, now, days)?;
    if let (Some(path), Some(k)) = (key_out, new_key) {
        let k = zeroize::Zeroizing::new(k);
        layout::write_private(path, k.as_bytes())?;
    }
    layout::write_public(out, cert.as_bytes())
}

struct CsrKey(Vec<u8>);

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// One DER TLV: (tag, content, the whole TLV, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8], &[u8])> {
    match tlv(input) {
        Some((t, content, whole, rest)) if t == tag => Ok((content, whole, rest)),
        _ => Err(Error::BadRequest(format!(
            "malformed DER: expected tag {tag:#04x}"
        ))),
    }
}

/// DER of the OID 1.2.840.10045.4.3.2 (ecdsa-with-SHA256).
const ECDSA_SHA256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// DER of the OID 2.5.4.3 (commonName).
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The SEC1 point of a PKCS#10 request's P-256 key, once its signature
/// (proof of possession of the private key) verifies.
fn csr_public_key(pem: &str) -> Result<CsrKey> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::BadRequest(format!("certificate request: {e}")))?;
    let (req, _, _) = expect(der.as_ref(), 0x30)?;
    let (info, info_der, rest) = expect(req, 0x30)?;
    let (alg, _, rest) = expect(rest, 0x30)?;
    let (sig, _, _) = expect(rest, 0x03)?;
    let (oid, _, _) = expect(alg, 0x06)?;
    if oid != ECDSA_SHA256_OID {
        return Err(Error::BadRequest(
            "certificate request: only ECDSA with SHA-256 (P-256) is accepted".into(),
        ));
    }
    let (_version, _, rest) = expect(info, 0x02)?;
    let (_subject, _, rest) = expect(rest, 0x30)?;
    let (_, spki, _) = expect(rest, 0x30)?;
    let key = p256::PublicKey::from_public_key_der(spki)
        .map_err(|e| Error::BadRequest(format!("certificate request: not a P-256 key: {e}")))?;
    let vk = p256::ecdsa::VerifyingKey::from(key);
    let sig = sig
        .strip_prefix(&[0])
        .ok_or_else(|| Error::BadRequest("certificate request: bad signature".into()))?;
    let sig = p256::ecdsa::Signature::from_der(sig)
        .map_err(|e| Error::BadRequest(format!("certificate request: bad signature: {e}")))?;
    vk.verify(info_der, &sig).map_err(|_| {
        Error::BadRequest("certificate request: its signature does not verify".into())
    })?;
    Ok(CsrKey(vk.to_encoded_point(false).as_bytes().to_vec()))
}

/// The VIN a device certificate (DER, already verified to chain to the
/// fleet CA) names: its subject's only commonName, which must be a VIN as
/// the request signature header carries it.
pub fn certificate_vin(cert: &[u8]) -> Result<String> {
    let bad = |why: &str| Error::Unauthorized(format!("device certificate: {why}"));
    let (c, _, _) = expect(cert, 0x30).map_err(|_| bad("not DER"))?;
    let (tbs, _, _) = expect(c, 0x30).map_err(|_| bad("not DER"))?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = expect(rest, 0xa0).map_err(|_| bad("not DER"))?.2;
    }
    for tag in [0x02, 0x30, 0x30, 0x30] {
        rest = expect(rest, tag).map_err(|_| bad("not DER"))?.2;
    }
    let (mut rdns, _, _) = expect(rest, 0x30).map_err(|_| bad("no subject"))?;
    let mut names = Vec::new();
    while !rdns.is_empty() {
        let (mut set, _, next) = expect(rdns, 0x31).map_err(|_| bad("bad subject"))?;
        rdns = next;
        while !set.is_empty() {
            let (atv, _, next) = expect(set, 0x30).map_err(|_| bad("bad subject"))?;
            set = next;
            let (oid, _, value) = expect(atv, 0x06).map_err(|_| bad("bad subject"))?;
            if oid == COMMON_NAME_OID {
                let (tag, text, _, _) = tlv(value).ok_or_else(|| bad("bad subject"))?;
                // UTF8String, PrintableString, IA5String.
                if !matches!(tag, 0x0c | 0x13 | 0x16) {
                    return Err(bad("commonName is not a string"));
                }
                names.push(std::str::from_utf8(text).map_err(|_| bad("commonName not UTF-8"))?);
            }
        }
    }
    let [vin] = names.as_slice() else {
        return Err(bad(
            "the subject must hold exactly one commonName (the VIN)",
        ));
    };
    secureev_uptane::request_auth::claimed_vehicle(vin)
        .map_err(|e| bad(&format!("commonName {vin:?} is not a VIN: {e}")))?;
    Ok((*vin).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_certificate_names_its_vin_and_a_csr_key_must_sign_its_request() {
        let (ca, ca_key) = generate_fleet_ca().unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE"));
        let now = crate::unix_now();
        let (cert, key) =
            issue_device_cert(&ca_key, "WSEVMTLS000000001", DeviceKey::Generate, now, 30).unwrap();
        assert!(key.unwrap().contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(certificate_vin(der.as_ref()).unwrap(), "WSEVMTLS000000001");
        // A CSR from a device's own key.
        let device = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "ignored");
        let csr = p.serialize_request(&device).unwrap().pem().unwrap();
        let (cert, key) = issue_device_cert(
            &ca_key,
            "WSEVMTLS000000002",
            DeviceKey::Csr(csr.clone()),
            now,
            30,
        )
        .unwrap();
        assert!(key.is_none());
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(certificate_vin(der.as_ref()).unwrap(), "WSEVMTLS000000002");
        assert!(der
            .as_ref()
            .windows(device.public_key_raw().len())
            .any(|w| w == device.public_key_raw()));
        // A request whose signature does not verify is refused.
        let mut bytes =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        let forged = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
        );
        assert!(issue_device_cert(
            &ca_key,
            "WSEVMTLS000000002",
            DeviceKey::Csr(forged),
            now,
            30
        )
        .is_err());
        assert!(issue_device_cert(&ca_key, "bad vin\n", DeviceKey::Generate, now, 30).is_err());
        // A commonName that is no VIN (the CA's own), and no DER at all.
        let der = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
        assert!(certificate_vin(der.as_ref()).is_err());
        assert!(certificate_vin(&der.as_ref()[..40]).is_err());
        assert!(certificate_vin(b"").is_err());
    }
}
