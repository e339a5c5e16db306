//! Provisioning: register this vehicle, its Primary's keys and every
//! secondary's identity with the backend's registry.

use crate::agent::Agent;
use crate::error::{Error, Result};

impl Agent {
    /// Enroll this vehicle and its Primary's keys with the backend's registry
    /// (`POST /enroll` on the vehicle listener, authorised by the single-use
    /// enrollment credential the backend's fleet admin made for this VIN),
    /// with every secondary's identity read over its transport.
    pub(crate) async fn register(&self, base: &str, token: &str) -> Result<()> {
        let c = &self.daemon.config;
        let mut ecus = vec![serde_json::json!({
            "serial": c.vehicle.primary_serial,
            "hardware_id": c.vehicle.hardware_id,
            "public_key": self.daemon.keys.did(),
            "encryption_key": self.daemon.keys.encryption_public().to_hex(),
        })];
        // Each secondary is asked for its identity over its transport; one
        // that cannot be reached fails the registration (the vehicle would
        // otherwise be registered without it).
        for (serial, transport) in &self.secondaries {
            let info = transport.info().await;
            self.note_link(serial, &info);
            self.publish_ecus();
            let info = info?;
            let did = info.did.ok_or_else(|| Error::Secondary {
                ecu: serial.clone(),
                reason: "its transport cannot read the ECU's public key".into(),
            })?;
            let mut ecu = serde_json::json!({
                "serial": info.serial,
                "hardware_id": info.hardware_id,
                "public_key": did,
            });
            if let Some(k) = info.encryption_key {
                ecu["encryption_key"] = serde_json::Value::String(k.to_hex());
            }
            ecus.push(ecu);
        }
        let body = serde_json::json!({
            "vin": c.vehicle.vin,
            "primary_serial": c.vehicle.primary_serial,
            "ecus": ecus,
        });
        let url = format!("{base}/enroll");
        let resp = self
            .daemon
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            // Bounded like the manifest PUT: the whole exchange.
            .timeout(std::time::Duration::from_secs(
                c.network.manifest_timeout_secs,
            ))
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            tracing::warn!(status, body = %text.chars().take(500).collect::<String>(), "registration refused");
            return Err(Error::HttpStatus { url, status });
        }
        Ok(())
    }
}
