//! Server configuration: one TOML file, unknown keys refused.
//!
//! ```toml
//! data_dir = "/var/lib/secureev"
//! listen = "0.0.0.0:8443"
//! # transport = "insecure-http"   # loopback tests only
//! # tls_cert = "/etc/secureev/server.pem"
//! # tls_key = "/etc/secureev/server-key.pem"
//! max_body_bytes = 1048576
//! max_blob_bytes = 1073741824
//! replay_window_secs = 300
//! ```

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
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

/// The server's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (database, blobs, online keys, TLS material, admin token).
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
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
}

fn default_listen() -> SocketAddr {
    // A constant that parses.
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443)))
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
            transport: Transport::Tls,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
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
