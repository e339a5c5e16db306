//! Push nudges over MQTT (`[push]`): a faster way to learn that the Director
//! has something new, never a way to tell the vehicle what it is.
//!
//! The backend publishes a content-free message to
//! `<topic_prefix>/<VIN>/nudge` when this vehicle's Director metadata changes.
//! On one, the daemon asks the scheduler for a check-in ([`Trigger`]), which
//! runs the usual full verification: the message's payload is ignored, and a
//! forged or replayed nudge costs at most one check-in per
//! `min_interval_secs`. Nudges inside that interval are dropped (the check-in
//! they would cause has just run or is about to), so a flood cannot drive
//! check-ins faster than the limit.
//!
//! The connection is TLS (rustls with `ring`, TLS 1.3, `[push] ca_file` as the
//! only roots) with a username and password or a client certificate. Connect,
//! TLS handshake and CONNACK are bounded by `connect_timeout_secs`; a dead
//! broker is noticed by the MQTT keep-alive; reconnection waits 1 s, doubling
//! up to `backoff_max_secs`, reset by a connection that got its subscription
//! acknowledged. A nudge sent while the vehicle was offline is lost, so a
//! reconnection after a lost connection asks for one check-in (rate-limited
//! like a nudge). Polling (`[checkin]`) goes on regardless: push only makes it
//! sooner.

use crate::config::{parse_mqtt_url, Config, PushConfig};
use crate::error::{Error, Result};
use crate::schedule::Trigger;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First wait before reconnecting.
pub const RECONNECT_START: Duration = Duration::from_secs(1);
/// Largest MQTT packet the daemon accepts (a nudge is a few bytes).
pub const MAX_INCOMING_PACKET: usize = 4096;

/// Everything the push task needs, checked and loaded at start-up.
pub struct Push {
    options: MqttOptions,
    topic: String,
    min_interval: Duration,
    backoff_max: Duration,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("broker", &self.options.broker_address())
            .field("topic", &self.topic)
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read", path, e))
}

impl Push {
    /// `None` when `[push] mqtt_url` is unset. Reads the CA, the password
    /// file and the client certificate now, so that a broken file stops
    /// start-up rather than the push task.
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let p: &PushConfig = &config.push;
        let Some(url) = &p.mqtt_url else {
            return Ok(None);
        };
        let vin = &config.vehicle.vin;
        let (host, port) =
            parse_mqtt_url(url).map_err(|r| Error::Tls(format!("push.mqtt_url {r}")))?;
        let ca_path = p
            .ca_file
            .as_ref()
            .ok_or_else(|| Error::Tls("push.ca_file is required with push.mqtt_url".into()))?;
        let ca = read(ca_path)?;
        let client = match (&p.client_cert, &p.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let tls = crate::fetch::http::tls_config_from_pem(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )?;
        let mut options = MqttOptions::new(format!("secureev-otad-{vin}"), host, port);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )))
            .set_keep_alive(Duration::from_secs(p.keep_alive_secs.max(5)))
            .set_clean_session(true)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
        if let Some(pw) = &p.password_file {
            let bytes = read(pw)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Tls(format!("{} is not UTF-8", pw.display())))?;
            let password = text.lines().next().unwrap_or("").to_owned();
            let username = p.username.clone().unwrap_or_else(|| vin.clone());
            options.set_credentials(username, password);
        } else if let Some(u) = &p.username {
            options.set_credentials(u.clone(), String::new());
        }
        Ok(Some(Push {
            options,
            topic: p.topic(vin),
            min_interval: Duration::from_secs(p.min_interval_secs),
            backoff_max: Duration::from_secs(p.backoff_max_secs),
        }))
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Stay subscribed until `shutdown`, asking `trigger` for a check-in on
    /// each nudge the rate limit lets through.
    pub async fn run(
        self,
        trigger: Trigger,
        connect_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        let mut limiter = RateLimit::new(self.min_interval);
        let mut backoff = RECONNECT_START;
        let mut ever_subscribed = false;
        loop {
            let (client, mut events) = AsyncClient::new(self.options.clone(), 10);
            events
                .network_options
                .set_connection_timeout(connect_timeout.as_secs().max(1));
            let mut subscribed = false;
            let why: String = loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = client.try_disconnect();
                        return;
                    }
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Err(e) = client.try_subscribe(self.topic.clone(), QoS::AtLeastOnce) {
                            break format!("subscribing: {e}");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure))
                        {
                            break format!("the broker refused the subscription to {}", self.topic);
                        }
                        subscribed = true;
                        backoff = RECONNECT_START;
                        tracing::info!(topic = %self.topic, "push: subscribed");
                        if ever_subscribed && limiter.allow(Instant::now()) {
                            // Nudges sent while offline are lost: look now.
                            tracing::info!("push: reconnected; checking in");
                            trigger.check_now();
                        }
                        ever_subscribed = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic != self.topic {
                            tracing::warn!(topic = %p.topic, "push: ignoring a message on another topic");
                        } else if limiter.allow(Instant::now()) {
                            tracing::info!("push: nudge; checking in");
                            trigger.check_now();
                        } else {
                            tracing::debug!("push: nudge inside min_interval_secs; dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break describe(&e),
                }
            };
            drop(client);
            tracing::warn!(
                broker = ?self.options.broker_address(),
                retry_in = ?backoff,
                subscribed,
                "push: connection lost: {why}"
            );
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.backoff_max.max(RECONNECT_START));
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        ConnectionError::NetworkTimeout => "timed out connecting".into(),
        e => e.to_string(),
    }
}

/// At most one event per `interval` (the first is always allowed).
#[derive(Debug, Clone)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    /// A limit of one per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            last: None,
        }
    }

    /// Whether an event at `now` is let through (and if so, counted).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_interval() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert!(r.allow(t0));
        assert!(!r.allow(t0 + Duration::from_secs(1)));
        assert!(!r.allow(t0 + Duration::from_millis(9_999)));
        assert!(r.allow(t0 + Duration::from_secs(10)));
        assert!(!r.allow(t0 + Duration::from_secs(19)));
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtts://broker.example:8884").unwrap(),
            ("broker.example".into(), 8884)
        );
        assert_eq!(parse_mqtt_url("mqtts://b").unwrap(), ("b".into(), 8883));
        for bad in [
            "mqtt://b:1883",
            "mqtts://",
            "mqtts://b:0",
            "mqtts://b:x",
            "mqtts://u:p@b",
            "mqtts://b/t",
            "mqtts://::1",
        ] {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }
}
