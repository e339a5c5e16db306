//! One transport per `[[secondary]]` of the configuration, and where each
//! ECU's SecurityAccess secret is read from.

use super::link::{CanConnector, DoipConnector, DEFAULT_TESTER_ADDRESS};
use super::uds::{system_time, CanSecondary, DoipSecondary, SecretSource, TimeSource};
use super::SecondaryTransport;
use crate::config::Config;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Directory under `[keys] dir` with one SecurityAccess secret per secondary:
/// `secondaries/<serial>.secret`, hex (the format `secureev-ecu` reads).
pub const SECRETS_DIR: &str = "secondaries";

/// Percent-encode a serial into a file name (as the store does for roles).
fn file_name_for(serial: &str) -> String {
    let mut out = String::with_capacity(serial.len());
    for b in serial.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the SecurityAccess secret of ECU `serial` is read from (hex): its
/// `[[secondary]] security_secret_file`, else
/// `<keys.dir>/secondaries/<serial>.secret`.
pub fn secret_path(config: &Config, serial: &str) -> PathBuf {
    if let Some(p) = config
        .secondaries
        .iter()
        .find(|s| s.serial == serial)
        .and_then(|s| s.security_secret_file.clone())
    {
        return p;
    }
    config
        .keys
        .dir
        .join(SECRETS_DIR)
        .join(format!("{}.secret", file_name_for(serial)))
}

/// One transport per `[[secondary]]`, by serial, with the system clock.
pub fn transports_from_config(
    config: &Config,
) -> Result<BTreeMap<String, Arc<dyn SecondaryTransport>>> {
    transports_from_config_with(config, Arc::new(system_time))
}

/// [`transports_from_config`] with the daemon's clock.
pub fn transports_from_config_with(
    config: &Config,
    clock: TimeSource,
) -> Result<BTreeMap<String, Arc<dyn SecondaryTransport>>> {
    use crate::config::TransportKind;
    let mut out: BTreeMap<String, Arc<dyn SecondaryTransport>> = BTreeMap::new();
    for s in &config.secondaries {
        let secret = SecretSource::File(secret_path(config, &s.serial));
        let invalid = |what: &str| Error::Secondary {
            ecu: s.serial.clone(),
            reason: format!("transport = {:?} without [secondary.{what}]", s.transport),
        };
        let t: Arc<dyn SecondaryTransport> = match s.transport {
            TransportKind::Doip => {
                let d = s.doip.as_ref().ok_or_else(|| invalid("doip"))?;
                Arc::new(
                    DoipSecondary::new(
                        &s.serial,
                        &s.hardware_id,
                        s.verification,
                        DoipConnector {
                            address: d.address.clone(),
                            tester: DEFAULT_TESTER_ADDRESS,
                            ecu: d.logical_address,
                        },
                        secret,
                    )
                    .with_clock(clock.clone()),
                )
            }
            TransportKind::Can => {
                let c = s.can.as_ref().ok_or_else(|| invalid("can"))?;
                let isotp = c.isotp().map_err(|e| Error::Secondary {
                    ecu: s.serial.clone(),
                    reason: format!("[secondary.can]: {e}"),
                })?;
                Arc::new(
                    CanSecondary::new(
                        &s.serial,
                        &s.hardware_id,
                        s.verification,
                        CanConnector {
                            interface: c.interface.clone(),
                            isotp,
                        },
                        secret,
                    )
                    .with_clock(clock.clone()),
                )
            }
        };
        out.insert(s.serial.clone(), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_names_cannot_escape() {
        assert_eq!(file_name_for("ECU-1_a"), "ECU-1_a");
        assert_eq!(file_name_for("../x"), "%2E%2E%2Fx");
    }
}
