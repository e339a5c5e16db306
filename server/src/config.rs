//! Server configuration: one TOML file, unknown keys refused.
//!
//! ```toml
//! data_dir = "/var/lib/secureev"
//! listen = "0.0.0.0:8443"          # vehicles
//! admin_listen = "127.0.0.1:8444"  # operators (loopback unless admin_exposure = "network")
//! # admin_listen = "unix:/run/secureev-server/admin.sock"  # or a Unix socket (plain HTTP)
//! # admin_socket_mode = 0o600       # or 0o660 (group access)
//! # transport = "insecure-http"   # loopback tests only
//! # tls_cert = "/etc/secureev/server.pem"
//! # tls_key = "/etc/secureev/server-key.pem"
//! max_body_bytes = 1048576
//! max_blob_bytes = 1073741824
//! replay_window_secs = 300
//! request_timeout_secs = 30
//! max_connections_per_peer = 64
//! min_upload_bytes_per_sec = 16384
//! min_body_bytes_per_sec = 1024     # JSON bodies, after 5 s
//! log_format = "text"             # or "json"
//! # device_certificates = "required"  # vehicles present a fleet-CA certificate (mutual TLS)
//! # fleet_ca = "/etc/secureev/fleet-ca.pem"  # default <data_dir>/tls/fleet-ca.pem
//! # key_store = "pkcs11"           # online keys and KEK in a PKCS#11 token
//! # [pkcs11]
//! # module = "/usr/lib/softhsm/libsofthsm2.so"
//! # token_label = "secureev"
//! # pin_file = "/etc/secureev/hsm-pin"   # or pin_env = "SECUREEV_HSM_PIN"
//! # label_prefix = "secureev"
//! ```

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default listen address (vehicles).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default listen address of the admin API.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8444";
/// Default deadline of a whole request, head to response head.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Default cap on connections from one IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Default minimum rate of an image upload after a 10 s grace period.
pub const DEFAULT_MIN_UPLOAD_BYTES_PER_SEC: u64 = 16 * 1024;
/// Default minimum rate of a JSON request body after
/// [`crate::limits::BODY_RATE_GRACE`].
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u64 = 1024;
/// Default cap on vehicle and admin JSON bodies (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default cap on image blob uploads (1 GiB).
pub const DEFAULT_MAX_BLOB_BYTES: usize = 1024 * 1024 * 1024;
/// Default replay window for signed vehicle requests.
pub const DEFAULT_REPLAY_WINDOW_SECS: i64 =
    secureev_uptane::request_auth::DEFAULT_REPLAY_WINDOW_SECS;
/// Default cap on simultaneously open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Name of the configuration file `init` writes into the data directory.
pub const CONFIG_FILE: &str = "server.toml";

/// How the server talks to clients. Plain HTTP must be asked for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// HTTPS, TLS 1.3 only (the default).
    #[default]
    Tls,
    /// Plain HTTP, for loopback tests only; refused on non-loopback addresses.
    InsecureHttp,
}

/// Where a listener listens: a TCP address, or a Unix socket (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `ip:port`.
    Tcp(SocketAddr),
    /// `unix:<absolute path>`: plain HTTP on a socket file whose mode is the
    /// access control (with the operator token still required).
    Unix(PathBuf),
}

/// Prefix of a Unix socket listen address.
pub const UNIX_PREFIX: &str = "unix:";

impl std::str::FromStr for ListenAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix(UNIX_PREFIX) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(Error::Config(format!(
                        "{s}: a Unix socket path must be absolute"
                    )));
                }
                Ok(ListenAddr::Unix(path))
            }
            None => s.parse().map(ListenAddr::Tcp).map_err(|e| {
                Error::Config(format!("{s:?} is neither ip:port nor unix:/path: {e}"))
            }),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{UNIX_PREFIX}{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Tcp(a)
    }
}

/// Default mode of the admin Unix socket (owner only).
pub const DEFAULT_ADMIN_SOCKET_MODE: u32 = 0o600;

/// Where the admin API may listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminExposure {
    /// Loopback addresses only (the default); reach it over SSH or a bastion.
    #[default]
    Loopback,
    /// Any address: the operator takes responsibility for the network path.
    Network,
}

/// Whether vehicles authenticate with a device certificate too (mutual TLS
/// on the vehicle listener; see [`crate::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceCertificates {
    /// No client certificate is asked for; request signatures alone (the
    /// default).
    #[default]
    Off,
    /// Every vehicle connection needs a certificate chaining to `fleet_ca`
    /// whose subject commonName is the VIN that signs its requests.
    Required,
}

/// Where the online signing keys and the key-encryption key live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStoreKind {
    /// PKCS#8 PEM files and a raw KEK under `<data_dir>/keys/` (the default).
    #[default]
    Pem,
    /// Objects in a PKCS#11 token (`[pkcs11]`); `<data_dir>/keys/` holds none.
    Pkcs11,
}

/// Default prefix of the labels of the server's objects in a PKCS#11 token.
pub const DEFAULT_PKCS11_LABEL_PREFIX: &str = "secureev";

/// The PKCS#11 token holding the online keys and the KEK.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`libsofthsm2.so`, a vendor's library).
    pub module: PathBuf,
    /// Label of the token (as `softhsm2-util --show-slots` prints it).
    pub token_label: String,
    /// File holding the user PIN (trailing newline ignored; mode 0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Objects are labelled `<prefix>/<repo>/<role>` (`secureev/director/targets`)
    /// and `<prefix>/kek`.
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
}

fn default_label_prefix() -> String {
    DEFAULT_PKCS11_LABEL_PREFIX.to_owned()
}

impl Pkcs11Config {
    /// Read the user PIN from `pin_file` or `pin_env`.
    pub fn read_pin(&self) -> Result<zeroize::Zeroizing<String>> {
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(f), None) => {
                crate::secrets::refuse_wider(f, 0o600)?;
                std::fs::read_to_string(f)
                    .map_err(|e| Error::io(format!("reading PIN file {}", f.display()), e))?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| Error::Config(format!("PIN variable {var} is not set")))?,
            _ => {
                return Err(Error::Config(
                    "[pkcs11] needs exactly one of pin_file and pin_env".into(),
                ))
            }
        };
        let pin = zeroize::Zeroizing::new(pin.trim_end_matches(['\r', '\n']).to_owned());
        if pin.is_empty() {
            return Err(Error::Config("the PKCS#11 PIN is empty".into()));
        }
        Ok(pin)
    }
}

/// The server's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (database, blobs, online keys, TLS material, admin token).
    pub data_dir: PathBuf,
    /// Address of the vehicle listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the admin API listener.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: ListenAddr,
    /// Mode of the admin socket file when `admin_listen` is `unix:…`:
    /// 0o600 (the server's user) or 0o660 (and its group).
    #[serde(default = "default_admin_socket_mode")]
    pub admin_socket_mode: u32,
    /// Whether `admin_listen` may be a non-loopback address.
    #[serde(default)]
    pub admin_exposure: AdminExposure,
    /// TLS or plain HTTP.
    #[serde(default)]
    pub transport: Transport,
    /// Server certificate chain (PEM); default `<data_dir>/tls/server.pem`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM); default `<data_dir>/tls/server-key.pem`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Largest accepted JSON body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest accepted image blob upload.
    #[serde(default = "default_max_blob")]
    pub max_blob_bytes: usize,
    /// Replay window for signed vehicle requests, seconds.
    #[serde(default = "default_replay_window")]
    pub replay_window_secs: i64,
    /// Most client connections open at once; more are closed on accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Deadline of a whole request (head, body, handler), seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Minimum rate of an image upload (`PUT /admin/blobs`) after 10 s.
    #[serde(default = "default_min_upload_rate")]
    pub min_upload_bytes_per_sec: u64,
    /// Minimum rate of every other request body (JSON, both listeners)
    /// after [`crate::limits::BODY_RATE_GRACE`]; slower is 408.
    #[serde(default = "default_min_body_rate")]
    pub min_body_bytes_per_sec: u64,
    /// Log line format.
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
    /// Whether the vehicle listener requires device certificates.
    #[serde(default)]
    pub device_certificates: DeviceCertificates,
    /// The fleet CA certificate(s), PEM; default `<data_dir>/tls/fleet-ca.pem`.
    #[serde(default)]
    pub fleet_ca: Option<PathBuf>,
    /// Where online keys and the KEK live.
    #[serde(default)]
    pub key_store: KeyStoreKind,
    /// The token, when `key_store = "pkcs11"`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// `[push]`: MQTT nudges to vehicles whose Director metadata changed.
    #[serde(default)]
    pub push: Option<crate::push::PushConfig>,
    /// PostgreSQL connection URL (`postgres://user:password@host:port/db`,
    /// or libpq key=value form); unset: the SQLite file in the data
    /// directory. Several instances may share one PostgreSQL database.
    #[serde(default)]
    pub database_url: Option<String>,
}

fn default_listen() -> SocketAddr {
    // A constant that parses.
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443)))
}
fn default_admin_listen() -> ListenAddr {
    ListenAddr::Tcp(
        DEFAULT_ADMIN_LISTEN
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8444))),
    )
}
fn default_admin_socket_mode() -> u32 {
    DEFAULT_ADMIN_SOCKET_MODE
}
fn default_max_connections_per_peer() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_PEER
}
fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}
fn default_min_upload_rate() -> u64 {
    DEFAULT_MIN_UPLOAD_BYTES_PER_SEC
}
fn default_min_body_rate() -> u64 {
    DEFAULT_MIN_BODY_BYTES_PER_SEC
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_blob() -> usize {
    DEFAULT_MAX_BLOB_BYTES
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_replay_window() -> i64 {
    DEFAULT_REPLAY_WINDOW_SECS
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            admin_socket_mode: DEFAULT_ADMIN_SOCKET_MODE,
            admin_exposure: AdminExposure::Loopback,
            transport: Transport::Tls,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            min_upload_bytes_per_sec: DEFAULT_MIN_UPLOAD_BYTES_PER_SEC,
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            log_format: crate::logging::LogFormat::Text,
            device_certificates: DeviceCertificates::Off,
            fleet_ca: None,
            key_store: KeyStoreKind::Pem,
            pkcs11: None,
            push: None,
            database_url: None,
        }
    }

    /// Parse TOML text. Relative `data_dir` stays relative to the caller's
    /// working directory.
    pub fn parse_str(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse_str(&text)
    }

    /// Check invariants that TOML types cannot express.
    pub fn validate(&self) -> Result<()> {
        if let Some(push) = &self.push {
            push.validate()?;
        }
        if self.transport == Transport::InsecureHttp && !self.listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "insecure-http is only allowed on loopback, not {}",
                self.listen
            )));
        }
        if !(1..=3600).contains(&self.replay_window_secs) {
            return Err(Error::Config("replay_window_secs must be 1..=3600".into()));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        if let ListenAddr::Tcp(admin) = &self.admin_listen {
            if self.admin_exposure == AdminExposure::Loopback && !admin.ip().is_loopback() {
                return Err(Error::Config(format!(
                    "admin_listen {admin} is not a loopback address; set admin_exposure = \"network\" to allow it"
                )));
            }
            if self.transport == Transport::InsecureHttp && !admin.ip().is_loopback() {
                return Err(Error::Config(
                    "insecure-http is only allowed on loopback admin_listen".into(),
                ));
            }
        }
        if !matches!(self.admin_socket_mode, 0o600 | 0o660) {
            return Err(Error::Config(format!(
                "admin_socket_mode must be 0o600 or 0o660, not {:#o}",
                self.admin_socket_mode
            )));
        }
        if self.max_connections_per_peer == 0
            || self.max_connections_per_peer > self.max_connections
        {
            return Err(Error::Config(
                "max_connections_per_peer must be 1..=max_connections".into(),
            ));
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err(Error::Config(
                "request_timeout_secs must be 1..=3600".into(),
            ));
        }
        match (self.key_store, &self.pkcs11) {
            (KeyStoreKind::Pkcs11, None) => {
                return Err(Error::Config(
                    "key_store = \"pkcs11\" needs a [pkcs11] table".into(),
                ))
            }
            (KeyStoreKind::Pem, Some(_)) => {
                return Err(Error::Config(
                    "[pkcs11] is set but key_store is \"pem\"; set key_store = \"pkcs11\"".into(),
                ))
            }
            (KeyStoreKind::Pkcs11, Some(p)) => {
                if p.pin_file.is_some() == p.pin_env.is_some() {
                    return Err(Error::Config(
                        "[pkcs11] needs exactly one of pin_file and pin_env".into(),
                    ));
                }
                if p.label_prefix.is_empty() || p.label_prefix.contains('/') {
                    return Err(Error::Config(
                        "[pkcs11] label_prefix must be non-empty and without '/'".into(),
                    ));
                }
            }
            (KeyStoreKind::Pem, None) => {}
        }
        if self.min_body_bytes_per_sec == 0 {
            return Err(Error::Config(
                "min_body_bytes_per_sec must be at least 1".into(),
            ));
        }
        match (self.device_certificates, self.transport, &self.fleet_ca) {
            (DeviceCertificates::Required, Transport::InsecureHttp, _) => {
                return Err(Error::Config(
                    "device_certificates = \"required\" needs transport = \"tls\"".into(),
                ))
            }
            (DeviceCertificates::Off, _, Some(_)) => {
                return Err(Error::Config(
                    "fleet_ca is set but device_certificates is \"off\"; set device_certificates = \"required\"".into(),
                ))
            }
            _ => {}
        }
        if self.max_body_bytes < 1024 {
            return Err(Error::Config("max_body_bytes must be at least 1024".into()));
        }
        Ok(())
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::layout::SERVER_CERT))
    }

    /// The fleet CA certificate file.
    pub fn fleet_ca_path(&self) -> PathBuf {
        self.fleet_ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::layout::FLEET_CA_CERT))
    }

    /// The private key file.
    pub fn key_path(&self) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::layout::SERVER_KEY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_refuses_unknown_keys() {
        let c = Config::parse_str("data_dir = \"/tmp/x\"").unwrap();
        assert_eq!(c.transport, Transport::Tls);
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(Config::parse_str("data_dir = \"/x\"\nlisten_addr = \"1\"").is_err());
    }

    #[test]
    fn admin_api_stays_on_loopback_unless_exposed_by_name() {
        let bad = "data_dir = \"/x\"\nadmin_listen = \"0.0.0.0:8444\"";
        assert!(Config::parse_str(bad).is_err());
        let ok = format!("{bad}\nadmin_exposure = \"network\"");
        assert_eq!(
            Config::parse_str(&ok).unwrap().admin_exposure,
            AdminExposure::Network
        );
    }

    #[test]
    fn the_admin_api_may_listen_on_a_unix_socket() {
        let c = Config::parse_str(
            "data_dir = \"/x\"\nadmin_listen = \"unix:/run/secureev-server/admin.sock\"\nadmin_socket_mode = 0o660\n",
        )
        .unwrap();
        assert_eq!(
            c.admin_listen,
            ListenAddr::Unix("/run/secureev-server/admin.sock".into())
        );
        assert_eq!(c.admin_socket_mode, 0o660);
        assert_eq!(
            c.admin_listen.to_string(),
            "unix:/run/secureev-server/admin.sock"
        );
        assert!(
            Config::parse_str("data_dir = \"/x\"\nadmin_listen = \"unix:rel.sock\"\n").is_err()
        );
        assert!(Config::parse_str(
            "data_dir = \"/x\"\nadmin_listen = \"unix:/a\"\nadmin_socket_mode = 0o666\n"
        )
        .is_err());
        assert!(Config::parse_str("data_dir = \"/x\"\nadmin_listen = \"nowhere\"\n").is_err());
        assert_eq!(
            Config::parse_str("data_dir = \"/x\"")
                .unwrap()
                .admin_socket_mode,
            0o600
        );
    }

    #[test]
    fn pkcs11_key_store_needs_its_table_and_one_pin_source() {
        let c = Config::parse_str("data_dir = \"/x\"").unwrap();
        assert_eq!(c.key_store, KeyStoreKind::Pem);
        let base = "data_dir = \"/x\"\nkey_store = \"pkcs11\"\n";
        assert!(Config::parse_str(base).is_err());
        let table = "[pkcs11]\nmodule = \"/m.so\"\ntoken_label = \"t\"\n";
        assert!(Config::parse_str(&format!("{base}{table}")).is_err());
        let ok = format!("{base}{table}pin_env = \"PIN\"\n");
        let c = Config::parse_str(&ok).unwrap();
        let p = c.pkcs11.unwrap();
        assert_eq!(p.label_prefix, DEFAULT_PKCS11_LABEL_PREFIX);
        assert!(Config::parse_str(&format!("{ok}pin_file = \"/p\"\n")).is_err());
        assert!(Config::parse_str(&format!("{ok}slot = 1\n")).is_err());
        let pem_with_table = format!("data_dir = \"/x\"\n{table}pin_env = \"PIN\"\n");
        assert!(Config::parse_str(&pem_with_table).is_err());
    }

    #[test]
    fn device_certificates_are_off_unless_required_by_name() {
        let c = Config::parse_str("data_dir = \"/x\"").unwrap();
        assert_eq!(c.device_certificates, DeviceCertificates::Off);
        assert_eq!(c.fleet_ca_path(), PathBuf::from("/x/tls/fleet-ca.pem"));
        let req = "data_dir = \"/x\"\ndevice_certificates = \"required\"\n";
        assert_eq!(
            Config::parse_str(req).unwrap().device_certificates,
            DeviceCertificates::Required
        );
        assert!(Config::parse_str(&format!("{req}transport = \"insecure-http\"\n")).is_err());
        assert!(Config::parse_str("data_dir = \"/x\"\nfleet_ca = \"/ca.pem\"\n").is_err());
        assert!(Config::parse_str("data_dir = \"/x\"\ndevice_certificates = \"yes\"\n").is_err());
    }

    #[test]
    fn insecure_http_only_on_loopback() {
        let bad = "data_dir = \"/x\"\nlisten = \"0.0.0.0:80\"\ntransport = \"insecure-http\"";
        assert!(Config::parse_str(bad).is_err());
        let ok = "data_dir = \"/x\"\nlisten = \"127.0.0.1:80\"\ntransport = \"insecure-http\"";
        assert_eq!(
            Config::parse_str(ok).unwrap().transport,
            Transport::InsecureHttp
        );
    }
}
