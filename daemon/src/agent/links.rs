//! What the UI is shown about each ECU (`Ecus`): installed version, the
//! secondary's transport and its link as of the last exchange.

use crate::agent::Agent;
use crate::error::{Error, Result};
use secureev_dbus::Ecu;

/// A secondary's link as of the last exchange (`Ecus` `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkStatus {
    Unknown,
    Ok,
    Refused,
    Unreachable,
}

impl LinkStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Unknown => "unknown",
            LinkStatus::Ok => "ok",
            LinkStatus::Refused => "refused",
            LinkStatus::Unreachable => "unreachable",
        }
    }
}

impl Agent {
    pub(crate) fn publish_ecus(&self) {
        let installed = self.daemon.store.installed().unwrap_or_default();
        let c = &self.daemon.config;
        let links = self.lock().links.clone();
        // Recorded versions were sanitised when installed; sanitised again
        // here, as installed.json is read back from disk.
        let version = |serial: &str| {
            installed
                .get(serial)
                .and_then(|r| r.version.as_deref())
                .map(|v| secureev_uptane::custom::DisplayText::Version.sanitize(v))
                .unwrap_or_default()
        };
        let target = |serial: &str| {
            installed
                .get(serial)
                .map(|r| r.name().to_owned())
                .unwrap_or_default()
        };
        let counter = |serial: &str| installed.get(serial).map_or(0, |r| r.release_counter());
        let mut ecus = vec![Ecu {
            serial: c.vehicle.primary_serial.clone(),
            hardware_id: c.vehicle.hardware_id.clone(),
            installed_version: version(&c.vehicle.primary_serial),
            installed_target: target(&c.vehicle.primary_serial),
            installed_release_counter: counter(&c.vehicle.primary_serial),
            primary: true,
            transport: String::new(),
            status: LinkStatus::Ok.as_str().into(),
            last_contact: 0,
        }];
        for s in &c.secondaries {
            let (status, last_contact) = links
                .get(&s.serial)
                .copied()
                .unwrap_or((LinkStatus::Unknown, 0));
            ecus.push(Ecu {
                serial: s.serial.clone(),
                hardware_id: s.hardware_id.clone(),
                installed_version: version(&s.serial),
                installed_target: target(&s.serial),
                installed_release_counter: counter(&s.serial),
                primary: false,
                transport: match s.transport {
                    crate::config::TransportKind::Can => "can".into(),
                    crate::config::TransportKind::Doip => "doip".into(),
                },
                status: status.as_str().into(),
                last_contact,
            });
        }
        self.state.set_ecus(ecus);
    }

    /// Record how an exchange with secondary `serial` ended, for `Ecus`:
    /// an answer (even a refusal) is a contact; anything else is no answer.
    /// Errors that are not about the link (the Primary's own state) change
    /// nothing.
    pub(crate) fn note_link<T>(&self, serial: &str, outcome: &Result<T>) {
        let now = self.now().unix();
        let mut inner = self.lock();
        let last = inner.links.get(serial).map_or(0, |l| l.1);
        let link = match outcome {
            Ok(_) => (LinkStatus::Ok, now),
            Err(Error::SecondaryRefused { .. } | Error::SecondaryFault { .. }) => {
                (LinkStatus::Refused, now)
            }
            Err(Error::Secondary { .. }) => (LinkStatus::Unreachable, last),
            Err(_) => return,
        };
        inner.links.insert(serial.to_owned(), link);
    }
}
