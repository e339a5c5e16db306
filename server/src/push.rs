//! Push nudges over MQTT (`[push]`, issue 15): after a write transaction that
//! changed vehicles' Director metadata commits (an assignment created or
//! cancelled, a campaign, a rollout group started or withdrawn), an empty
//! message goes to `<topic_prefix>/<VIN>/nudge` for each of them. The nudge
//! carries nothing: the vehicle checks in and verifies as always.
//!
//! Best effort and never in the request's way: the commit hook only puts the
//! VINs on a bounded queue (`queue` entries; when full, nudges are dropped
//! with a warning and the vehicles learn at their next poll); one task
//! publishes them (QoS 1), each publish bounded by `publish_timeout_ms`. The
//! connection to the broker is TLS 1.3 (rustls, ring; `ca_file` as the only
//! roots) with a username and password or a client certificate; connect, TLS
//! and CONNACK are bounded by `connect_timeout_secs`, reconnection backs off
//! from 1 s to 60 s.

use crate::error::{Error, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `[push]` of `server.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `mqtts://host[:port]` (port default 8883).
    pub mqtt_url: String,
    /// CA certificate(s), PEM, for the broker's certificate.
    pub ca_file: PathBuf,
    /// MQTT username.
    #[serde(default = "default_username")]
    pub username: String,
    /// File whose first line is the MQTT password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Client certificate chain (PEM), with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Topics are `<topic_prefix>/<VIN>/nudge`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Bound on one publish.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_ms: u64,
    /// Bound on TCP connect + TLS handshake + CONNACK.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Nudges waiting for the broker at most; more are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_username() -> String {
    "secureev-server".into()
}
fn default_prefix() -> String {
    "secureev/v1/vehicles".into()
}
fn default_publish_timeout() -> u64 {
    2000
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_queue() -> usize {
    100_000
}

/// `(host, port)` of `mqtts://host[:port]`.
fn parse_url(url: &str) -> std::result::Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or("must start with mqtts:// (TLS to the broker is required)")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return Err("must be mqtts://host[:port]".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a port number"))?,
        ),
        None => (rest, 8883),
    };
    if host.is_empty() || host.contains(':') {
        return Err("needs a host name or IPv4 address".into());
    }
    Ok((host.to_owned(), port))
}

impl PushConfig {
    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::Config(format!("push.{key} {why}")));
        if let Err(why) = parse_url(&self.mqtt_url) {
            return bad("mqtt_url", &why);
        }
        if self.password_file.is_none() && self.client_cert.is_none() {
            return bad("password_file", "or client_cert/client_key is required");
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return bad("client_cert", "and client_key must be given together");
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) {
            return bad(
                "topic_prefix",
                "must be non-empty and without MQTT wildcards",
            );
        }
        if self.publish_timeout_ms == 0 || self.connect_timeout_secs == 0 || self.queue == 0 {
            return bad(
                "publish_timeout_ms",
                "connect_timeout_secs and queue must be at least 1",
            );
        }
        Ok(())
    }

    /// The topic of `vin`.
    pub fn topic(&self, vin: &str) -> String {
        format!("{}/{vin}/nudge", self.topic_prefix.trim_end_matches('/'))
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn tls(c: &PushConfig) -> Result<rustls::ClientConfig> {
    let ca = read(&c.ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| Error::Config(format!("push.ca_file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("push.ca_file: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config("push.ca_file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("push TLS: {e}")))?
        .with_root_certificates(roots);
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Config(format!("push.client_cert: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| Error::Config(format!("push.client_key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("push.client_cert: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Start publishing: installs the commit hook on `db` and spawns the
/// publisher and the connection task (call inside the runtime).
pub fn start(config: &PushConfig, db: &crate::db::Db) -> Result<()> {
    let (host, port) = parse_url(&config.mqtt_url).map_err(Error::Config)?;
    let mut options = MqttOptions::new(
        format!("secureev-server-{}", std::process::id()),
        host,
        port,
    );
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls(config)?),
        )))
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    let password = match &config.password_file {
        Some(p) => String::from_utf8(read(p)?)
            .map_err(|_| Error::Config("push.password_file is not UTF-8".into()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        None => String::new(),
    };
    options.set_credentials(config.username.clone(), password);
    let (client, mut events) = AsyncClient::new(options, 1024);
    events
        .network_options
        .set_connection_timeout(config.connect_timeout_secs);
    let (tx, mut rx) = mpsc::channel::<String>(config.queue);
    db.set_commit_hook(crate::db::CommitHook(Box::new(move |vins| {
        for vin in vins {
            if tx.try_send(vin).is_err() {
                tracing::warn!("push: nudge queue full; vehicles learn at their next poll");
                return;
            }
        }
    })));
    // The connection: rumqttc reconnects on the next poll; wait between tries.
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!("push: connected to the MQTT broker");
                    backoff = Duration::from_secs(1);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(retry_in = ?backoff, "push: MQTT broker: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    });
    let (prefix, timeout) = (
        config.clone(),
        Duration::from_millis(config.publish_timeout_ms),
    );
    tokio::spawn(async move {
        while let Some(vin) = rx.recv().await {
            let topic = prefix.topic(&vin);
            match tokio::time::timeout(
                timeout,
                client.publish(topic, QoS::AtLeastOnce, false, Vec::<u8>::new()),
            )
            .await
            {
                Ok(Ok(())) => tracing::debug!(%vin, "push: nudged"),
                Ok(Err(e)) => tracing::warn!(%vin, "push: nudge not sent: {e}"),
                Err(_) => tracing::warn!(%vin, "push: nudge not sent within {timeout:?}"),
            }
        }
    });
    tracing::info!(broker = %config.mqtt_url, "push nudges over MQTT enabled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtts://b:8884").unwrap(), ("b".into(), 8884));
        assert_eq!(parse_url("mqtts://b").unwrap(), ("b".into(), 8883));
        for bad in [
            "mqtt://b",
            "mqtts://",
            "mqtts://b:0",
            "mqtts://u@b",
            "mqtts://b/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
