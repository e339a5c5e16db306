//! Step 5 of a cycle: the signed vehicle version manifest (Uptane 2.1
//! §5.4.2), with a fresh, checked version report from every secondary.

use crate::agent::Agent;
use crate::error::{Error, Result};
use futures_util::FutureExt;
use secureev_dbus::State;
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, InstalledImage, VehicleManifest,
};
use secureev_uptane::Attack;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for one secondary's signed version report while building the
/// manifest. Reading it is a session change, the generate-report routine (the
/// ECU signs) and up to 16 chunk reads (`docs/secondary-protocol.md` §5.3):
/// milliseconds over DoIP, but over a slow or busy CAN bus, with the UDS
/// client's retries (P2 1 s, P2* 10 s after a 0x78), several seconds. 20 s
/// covers one full P2* wait with room to spare, and bounds how long a dead or
/// stalling ECU holds up the manifest: all secondaries are asked at once, so
/// this bounds the whole step.
pub const SECONDARY_REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// A secondary's version report request, run as a task of its own.
pub(crate) type ReportTask = tokio::task::JoinHandle<Result<Vec<u8>>>;

/// Check a secondary's version report before it goes into the manifest,
/// and return its envelope. The backend refuses a whole manifest when one
/// report in it does not verify, so everything that can be checked without
/// the ECU's key is checked here, as `secureev_uptane::manifest` checks it.
/// The signature itself is the backend's to check (the Primary only relays
/// the report; it cannot change it).
fn check_secondary_report(serial: &str, bytes: &[u8]) -> Result<serde_json::Value> {
    use serde_json::Value;
    let bad = |reason: String| Error::Secondary {
        ecu: serial.to_owned(),
        reason: format!("bad version report: {reason}"),
    };
    let envelope: Value =
        secureev_uptane::json::parse(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let signed = envelope
        .as_object()
        .and_then(|o| o.get("signed"))
        .filter(|s| s.is_object())
        .ok_or_else(|| bad("not an envelope with a \"signed\" object".into()))?;
    // Uptane 2.1 §5.4.2.1.2: the report carries the identifier of the ECU
    // that made it; one under another serial is a misrouted address or an
    // ECU speaking for another.
    match signed.get("ecu_serial").and_then(Value::as_str) {
        Some(s) if s == serial => {}
        Some(s) => {
            let shown: String = s.chars().take(64).collect();
            return Err(bad(format!("it is for ECU {shown:?}")));
        }
        None => return Err(bad("no signed.ecu_serial".into())),
    }
    if envelope
        .get("signatures")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Err(bad("no signatures".into()));
    }
    // The signature covers the canonical form of `signed` as parsed here
    // (and by the backend); a value without one (a float, or an integer
    // beyond u64 that parsing turned into one) could never verify.
    secureev_uptane::canonical::to_canonical(signed).map_err(|e| bad(e.to_string()))?;
    let report: EcuVersionReport =
        serde_json::from_value(signed.clone()).map_err(|e| bad(e.to_string()))?;
    // Uptane 2.1 §5.4.2.1.2: "the latest time the ECU can verify".
    report
        .latest_verified_at()
        .map_err(|_| bad("latest_verified_time is not YYYY-MM-DDTHH:MM:SSZ".into()))?;
    Ok(envelope)
}

impl Agent {
    /// Sign and send the vehicle version manifest (Uptane 2.1 §5.4.2): the
    /// Primary's report and every secondary's that could be read now.
    ///
    /// Issue 11: a manifest that does not go out keeps its attacks for the
    /// next one, and a manifest PUT that stalls (slow retrieval) is itself
    /// an attack that the next manifest reports.
    ///
    /// The installation result it carries is the one kept by
    /// [`Agent::keep_result`] (on disk until a manifest carrying it is
    /// accepted, so an install that ends after SIGTERM or a manifest lost to
    /// a kill reports it in the next manifest, after a restart too).
    pub(crate) async fn report(&self, attacks: &[Attack]) -> Result<()> {
        let sent = self.send_report(attacks).await;
        if let Err(e) = &sent {
            let mut inner = self.lock();
            for a in attacks.iter().copied().chain(crate::agent::attack_of(e)) {
                if !inner.attacks.contains(&a) {
                    inner.attacks.push(a);
                }
            }
        }
        sent
    }

    async fn send_report(&self, attacks: &[Attack]) -> Result<()> {
        // Cancel (where the phase model allows it: nothing was installed) and
        // SIGTERM (a check-in's token) reach the reporting phase too; an
        // install's report is still bounded by the secondaries' and the
        // manifest's timeouts.
        let cancel = match self.running_op() {
            Some((op, cancel)) => {
                self.enter(op, State::Reporting)?;
                cancel
            }
            None => tokio_util::sync::CancellationToken::new(),
        };
        self.status(State::Reporting, "sending the vehicle version manifest");
        // First, so that the time the Primary reports and signs the request
        // with is taken after the (up to SECONDARY_REPORT_TIMEOUT) wait.
        let secondary_reports = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled("report".into())),
            r = self.secondary_reports() => r,
        };
        if !self.secondaries.is_empty() {
            self.publish_ecus();
        }
        let c = &self.daemon.config;
        let now = self.now();
        let counter = self.daemon.store.next_report_counter()?;
        let installed = self.daemon.store.installed()?;
        let mut report = EcuVersionReport::new(
            &c.vehicle.primary_serial,
            &c.vehicle.hardware_id,
            now,
            counter,
        )
        .with_attacks(attacks)
        .with_nonce(secureev_uptane::manifest::random_nonce());
        if let Some(r) = installed.get(&c.vehicle.primary_serial) {
            report = report.with_installed_image(InstalledImage::of(r));
        }
        // The last install's result, until a manifest carrying it is accepted.
        let result = self.lock().recovered.clone();
        if let Some(r) = &result {
            report = report.with_installation_result(
                secureev_uptane::manifest::InstallationResult::new(
                    r.success,
                    r.code.as_str(),
                    r.message.as_str(),
                ),
            );
        }
        let signed = sign_ecu_report(&report, &self.daemon.keys.signing)
            .map_err(|e| Error::uptane("ECU report", e))?;
        let mut manifest = VehicleManifest::new(&c.vehicle.vin, &c.vehicle.primary_serial, counter);
        manifest
            .add_report(signed)
            .map_err(|e| Error::uptane("manifest", e))?;
        let mut carried = Vec::new();
        for (serial, report) in secondary_reports {
            let counter = report
                .get("signed")
                .and_then(|s| s.get("report_counter"))
                .and_then(serde_json::Value::as_u64);
            // Unreachable (check_secondary_report checked the serial and the
            // configuration refuses duplicate serials), but a report that
            // cannot be filed must not cost the manifest.
            match manifest.add_report(report) {
                Ok(()) => carried.extend(counter.map(|c| (serial, c))),
                Err(e) => {
                    tracing::warn!(ecu = %serial, "version report left out of the manifest: {e}")
                }
            }
        }
        let body = serde_json::to_vec(
            &sign_manifest(&manifest, &self.daemon.keys.signing)
                .map_err(|e| Error::uptane("manifest", e))?,
        )
        .map_err(|e| Error::Tls(format!("manifest JSON: {e}")))?;
        let sent = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Cancelled("report".into())),
            r = self.backend.put_manifest(&body, now) => r,
        };
        if sent.is_ok() {
            // Delivered: the result is forgotten (unless a newer one was
            // kept meanwhile), and each secondary is told that its report
            // reached the Director. Not delivered: both stay for the next
            // manifest. (A kill between the Director's acceptance and this
            // point repeats them in the next manifest: at least once.)
            if result.is_some() {
                let mut inner = self.lock();
                if inner.recovered == result {
                    inner.recovered = None;
                    if let Err(e) = self.daemon.store.clear_unreported_result() {
                        tracing::error!("the reported installation result stays on disk: {e}");
                    }
                }
            }
            // SIGTERM or Cancel need not wait for them: an ECU not told
            // only reports the same again.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = self.reports_delivered(carried) => {}
            }
        }
        sent
    }

    /// Tell each secondary that the Director accepted a manifest carrying
    /// its report (`REPORT_DELIVERED`, `docs/secondary-protocol.md` §5.3),
    /// all at once, each bounded by [`SECONDARY_REPORT_TIMEOUT`]. Each runs
    /// as a task of its own and is abandoned, never cut mid-exchange, when it
    /// takes longer (as [`Agent::secondary_report`]). One that fails (or
    /// that SIGTERM or Cancel leaves unfinished) only means the ECU reports
    /// the same attacks and result again.
    async fn reports_delivered(&self, carried: Vec<(String, u64)>) {
        let acks = carried.into_iter().filter_map(|(serial, counter)| {
            let transport = self.secondaries.get(&serial)?.clone();
            let task = tokio::spawn(async move { transport.report_delivered(counter).await });
            Some(async move {
                match tokio::time::timeout(SECONDARY_REPORT_TIMEOUT, task).await {
                    Ok(Ok(Ok(()))) => {
                        tracing::debug!(ecu = %serial, counter, "report delivered")
                    }
                    Ok(Ok(Err(e))) => tracing::warn!(
                        ecu = %serial,
                        "could not tell the ECU its report {counter} was delivered: {e}"
                    ),
                    Ok(Err(e)) => tracing::warn!(ecu = %serial, "report-delivered task: {e}"),
                    Err(_) => tracing::warn!(
                        ecu = %serial,
                        "no answer to report-delivered within {} s",
                        SECONDARY_REPORT_TIMEOUT.as_secs()
                    ),
                }
            })
        });
        futures_util::future::join_all(acks).await;
    }

    /// A fresh signed version report from every configured secondary that
    /// gives one, by serial. Uptane 2.1 §5.4.2.1.1: the manifest carries the
    /// ECU version reports of the vehicle's ECUs. A secondary that cannot give
    /// a good report now is left out, never replaced by an older report of it:
    /// the backend refuses a whole manifest in which an ECU's report counter
    /// does not increase.
    pub(crate) async fn secondary_reports(&self) -> Vec<(String, serde_json::Value)> {
        let requests = self.secondaries.iter().map(|(serial, transport)| async move {
            match self.secondary_report(serial, transport).await {
                Ok(report) => Some((serial.clone(), report)),
                Err(e) => {
                    tracing::warn!(ecu = %serial, "version report left out of the manifest: {e}");
                    None
                }
            }
        });
        futures_util::future::join_all(requests)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Ask one secondary for its report and check it.
    ///
    /// The request runs as a task of its own and is abandoned, not cancelled,
    /// after [`SECONDARY_REPORT_TIMEOUT`]: a transport dropped in the middle
    /// of a UDS exchange could leave half a frame or a late response on the
    /// link it keeps for the next install. An abandoned request ends by the
    /// UDS client's own timeouts; until it has, the ECU is not asked again
    /// (at most one request per ECU, however often the manifest is sent).
    pub(crate) async fn secondary_report(
        &self,
        serial: &str,
        transport: &Arc<dyn crate::ecus::SecondaryTransport>,
    ) -> Result<serde_json::Value> {
        let failed = |reason: String| Error::Secondary {
            ecu: serial.to_owned(),
            reason,
        };
        let mut task = {
            let mut inner = self.lock();
            if let Some(late) = inner.late_reports.remove(serial) {
                if !late.is_finished() {
                    inner.late_reports.insert(serial.to_owned(), late);
                    return Err(failed(
                        "its previous version report request has not finished".into(),
                    ));
                }
                // A late report is not the latest once the ECU is asked
                // again (and may predate an install since): it is dropped.
                // The ECU keeps its attacks and installation result until a
                // delivered report carried them, so the fresh one has them.
                if let Some(Ok(Ok(bytes))) = late.now_or_never() {
                    tracing::warn!(
                        ecu = %serial,
                        report = %String::from_utf8_lossy(&bytes).chars().take(2048).collect::<String>(),
                        "discarding a version report that came after the manifest was sent"
                    );
                }
            }
            let transport = transport.clone();
            tokio::spawn(async move { transport.report().await })
        };
        let started = std::time::Instant::now();
        let read = match tokio::time::timeout(SECONDARY_REPORT_TIMEOUT, &mut task).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => Err(failed(format!("version report request failed: {e}"))),
            Err(_) => {
                self.lock().late_reports.insert(serial.to_owned(), task);
                Err(failed(format!(
                    "no version report within {} s",
                    SECONDARY_REPORT_TIMEOUT.as_secs()
                )))
            }
        };
        self.note_link(serial, &read);
        let bytes = read?;
        tracing::debug!(
            ecu = %serial,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "version report read"
        );
        check_secondary_report(serial, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secureev_uptane::{SigningKey, Timestamp};

    fn signed_report(serial: &str) -> serde_json::Value {
        let report = EcuVersionReport::new(serial, "hw", Timestamp::from_unix(1_800_000_000), 3)
            .with_nonce("00112233445566778899aabbccddeeff");
        sign_ecu_report(&report, &SigningKey::generate_ed25519()).unwrap()
    }

    fn reason(serial: &str, bytes: &[u8]) -> String {
        match check_secondary_report(serial, bytes) {
            Err(Error::Secondary { ecu, reason }) => {
                assert_eq!(ecu, serial);
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_secondarys_own_report_passes_unchanged() {
        let envelope = signed_report("BMS-1");
        let bytes = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(check_secondary_report("BMS-1", &bytes).unwrap(), envelope);
    }

    #[test]
    fn reports_the_backend_would_refuse_are_left_out() {
        assert!(reason("BMS-1", b"not json").contains("not JSON"));
        assert!(reason("BMS-1", b"[1]").contains("\"signed\""));
        // Filed under the configured serial, but made by (or for) another ECU.
        let other = serde_json::to_vec(&signed_report("BMS-2")).unwrap();
        assert!(reason("BMS-1", &other).contains("\"BMS-2\""));
        let mut unsigned = signed_report("BMS-1");
        unsigned["signatures"] = serde_json::json!([]);
        let unsigned = serde_json::to_vec(&unsigned).unwrap();
        assert!(reason("BMS-1", &unsigned).contains("no signatures"));
        let mut float = signed_report("BMS-1");
        float["signed"]["extra"] = serde_json::json!(1.5);
        assert!(!reason("BMS-1", &serde_json::to_vec(&float).unwrap()).is_empty());
        let mut time = signed_report("BMS-1");
        time["signed"]["latest_verified_time"] = serde_json::json!("yesterday");
        assert!(reason("BMS-1", &serde_json::to_vec(&time).unwrap()).contains("latest_verified"));
        let mut counter = signed_report("BMS-1");
        counter["signed"]["report_counter"] = serde_json::json!(-1);
        assert!(!reason("BMS-1", &serde_json::to_vec(&counter).unwrap()).is_empty());
    }
}
