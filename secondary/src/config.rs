//! The agent's configuration: one TOML file, unknown keys rejected.
//!
//! ```
//! let c = secureev_secondary::config::parse_str(r#"
//!     serial = "BMS-1"
//!     hardware_id = "bms-v2"
//!     director_root = "/etc/secureev-ecu/director-root.json"
//! "#).unwrap();
//! assert_eq!(c.verification, secureev_secondary::config::Verification::Partial);
//! assert_eq!(c.can.tx_id, secureev_secondary::config::DEFAULT_CAN_TX_ID);
//! ```

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default state directory (the systemd unit passes `--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/secureev-ecu";
/// Default slot A file name, relative to the state directory.
pub const DEFAULT_SLOT_A: &str = "slot-a.bin";
/// Default slot B file name, relative to the state directory.
pub const DEFAULT_SLOT_B: &str = "slot-b.bin";
/// Default security-access secret file, relative to the state directory.
pub const DEFAULT_SECRET_FILE: &str = "security-secret";
/// Default CAN id the ECU answers on (the Primary's rx id).
pub const DEFAULT_CAN_TX_ID: u32 = 0x7E8;
/// Default CAN id the ECU listens on (the Primary's tx id).
pub const DEFAULT_CAN_RX_ID: u32 = 0x7E0;
/// Default DoIP logical address of the ECU.
pub const DEFAULT_LOGICAL_ADDRESS: u16 = 0x0E80;
/// Default largest UDS message: one classic ISO-TP PDU.
pub const DEFAULT_MAX_PDU: u32 = 4095;
/// Largest metadata file accepted (Director or Image role, or the delegation
/// bundle): an endless-data bound on what the Primary may stage.
pub const MAX_METADATA_LEN: u64 = 1 << 20;

/// How much the ECU verifies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// Uptane 2.1 §5.4.4.1: Director root and targets (the default: what a
    /// secondary must at least do).
    #[default]
    Partial,
    /// Uptane 2.1 §5.4.4.2: both repositories, every role.
    Full,
}

/// `[can]`: identifiers on the bus (the interface is a CLI flag).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanSection {
    /// CAN id the ECU sends on (the Primary's `rx_id`).
    #[serde(default = "default_tx")]
    pub tx_id: u32,
    /// CAN id the ECU receives on (the Primary's `tx_id`).
    #[serde(default = "default_rx")]
    pub rx_id: u32,
    /// CAN FD (64-byte frames, BRS; the interface needs MTU 72).
    #[serde(default)]
    pub fd: bool,
    /// Block size in the ECU's flow control: how many consecutive frames the
    /// Primary may send before it waits for the next flow control (0: all).
    #[serde(default)]
    pub block_size: u8,
    /// STmin in the ECU's flow control, µs (0, 100 … 900, or whole
    /// milliseconds up to 127 000): the gap the Primary keeps between
    /// consecutive frames, i.e. the bus load of a flash to this ECU.
    #[serde(default)]
    pub st_min_us: u32,
    /// Padding: `"tx"` (pad ours, accept unpadded), `"strict"` or `"none"`.
    #[serde(default = "default_padding")]
    pub padding: String,
    /// The padding byte.
    #[serde(default = "default_padding_byte")]
    pub padding_byte: u8,
}

fn default_padding() -> String {
    "tx".into()
}
fn default_padding_byte() -> u8 {
    secureev_can::DEFAULT_PAD_BYTE
}

impl CanSection {
    /// The kernel ISO-TP configuration of the ECU's end, with `max_pdu`.
    pub fn isotp(&self, max_pdu: u32) -> Result<secureev_can::IsoTpConfig> {
        use secureev_can::{IsoTpConfig, Padding, StMin};
        let mut c = IsoTpConfig::new(self.tx_id, self.rx_id);
        if self.tx_id > 0x7FF || self.rx_id > 0x7FF {
            c = c.with_extended_ids();
        }
        if self.fd {
            c = c.with_fd();
        }
        c.padding = match self.padding.as_str() {
            "tx" => Padding::Tx(self.padding_byte),
            "strict" => Padding::Strict(self.padding_byte),
            "none" => Padding::None,
            other => {
                return Err(Error::Config(format!(
                    "[can] padding {other:?}: give \"tx\", \"strict\" or \"none\""
                )))
            }
        };
        c.block_size = self.block_size;
        c.st_min = StMin::from_micros_total(self.st_min_us)
            .map_err(|e| Error::Config(format!("[can] st_min_us: {e}")))?;
        c.max_pdu = max_pdu as usize;
        c.to_sockopts()
            .map_err(|e| Error::Config(format!("[can]: {e}")))?;
        Ok(c)
    }
}

fn default_tx() -> u32 {
    DEFAULT_CAN_TX_ID
}
fn default_rx() -> u32 {
    DEFAULT_CAN_RX_ID
}

impl Default for CanSection {
    fn default() -> Self {
        CanSection {
            tx_id: DEFAULT_CAN_TX_ID,
            rx_id: DEFAULT_CAN_RX_ID,
            fd: false,
            block_size: 0,
            st_min_us: 0,
            padding: default_padding(),
            padding_byte: default_padding_byte(),
        }
    }
}

/// `[doip]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoipSection {
    /// The ECU's DoIP logical address.
    #[serde(default = "default_la")]
    pub logical_address: u16,
}

fn default_la() -> u16 {
    DEFAULT_LOGICAL_ADDRESS
}

impl Default for DoipSection {
    fn default() -> Self {
        DoipSection {
            logical_address: DEFAULT_LOGICAL_ADDRESS,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Uptane ECU identifier (as in the Director's `ecuIdentifiers`).
    pub serial: String,
    /// Uptane hardware ID.
    pub hardware_id: String,
    /// Partial (default) or full verification.
    #[serde(default)]
    pub verification: Verification,
    /// State directory (keys, trusted metadata, counters, slots). `--state-dir`
    /// overrides it.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Slot A image file (relative: inside the state directory).
    #[serde(default = "default_slot_a")]
    pub slot_a: PathBuf,
    /// Slot B image file (relative: inside the state directory).
    #[serde(default = "default_slot_b")]
    pub slot_b: PathBuf,
    /// File with the provisioned SecurityAccess secret, hex (≥ 16 bytes);
    /// relative: inside the state directory.
    #[serde(default = "default_secret")]
    pub security_secret_file: PathBuf,
    /// The Director root shipped with the ECU, used until a newer one is
    /// trusted.
    pub director_root: PathBuf,
    /// The Image repository root shipped with the ECU (full verification only).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Largest UDS message the ECU accepts and sends.
    #[serde(default = "default_max_pdu")]
    pub max_pdu: u32,
    /// `[can]`.
    #[serde(default)]
    pub can: CanSection,
    /// `[doip]`.
    #[serde(default)]
    pub doip: DoipSection,
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_slot_a() -> PathBuf {
    DEFAULT_SLOT_A.into()
}
fn default_slot_b() -> PathBuf {
    DEFAULT_SLOT_B.into()
}
fn default_secret() -> PathBuf {
    DEFAULT_SECRET_FILE.into()
}
fn default_max_pdu() -> u32 {
    DEFAULT_MAX_PDU
}

/// Parse and check a configuration text.
pub fn parse_str(text: &str) -> Result<Config> {
    let c: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
    c.validate()?;
    Ok(c)
}

/// Read and parse the configuration file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    parse_str(&text).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

impl Config {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.serial.is_empty() || self.hardware_id.is_empty() {
            return bad("serial and hardware_id must not be empty");
        }
        if self.verification == Verification::Full && self.image_root.is_none() {
            return bad("verification = \"full\" needs image_root");
        }
        if !(64..=0x00FF_FFFF).contains(&self.max_pdu) {
            return bad("max_pdu must be between 64 and 16777215");
        }
        for (k, id) in [("can.tx_id", self.can.tx_id), ("can.rx_id", self.can.rx_id)] {
            if id > 0x1FFF_FFFF {
                return Err(Error::Config(format!("{k}: above 0x1FFFFFFF")));
            }
        }
        if self.slot_a == self.slot_b {
            return bad("slot_a and slot_b must differ");
        }
        self.can.isotp(self.max_pdu)?;
        Ok(())
    }

    /// A path from the configuration, relative ones inside the state directory.
    pub fn in_state(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.state_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_flow_control_and_padding_options() {
        let base = "serial = \"S\"\nhardware_id = \"h\"\ndirector_root = \"/r.json\"\n";
        let c = parse_str(&format!(
            "{base}[can]\nblock_size = 16\nst_min_us = 2000\npadding = \"strict\"\npadding_byte = 0x55\n"
        ))
        .unwrap();
        let i = c.can.isotp(c.max_pdu).unwrap();
        assert_eq!((i.block_size, i.st_min.as_byte()), (16, 2));
        assert_eq!(i.padding, secureev_can::Padding::Strict(0x55));
        assert_eq!(i.max_pdu, DEFAULT_MAX_PDU as usize);
        for bad in ["st_min_us = 150", "padding = \"maybe\""] {
            let e = parse_str(&format!("{base}[can]\n{bad}\n")).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_full_without_image_root_are_refused() {
        let base = "serial = \"E\"\nhardware_id = \"h\"\ndirector_root = \"/r\"\n";
        assert!(parse_str(base).is_ok());
        assert!(parse_str(&format!("{base}bogus = 1\n")).is_err());
        assert!(parse_str(&format!("{base}verification = \"full\"\n")).is_err());
        assert!(parse_str(&format!(
            "{base}verification = \"full\"\nimage_root = \"/i\"\n"
        ))
        .is_ok());
        assert!(parse_str(&format!("{base}[can]\ntx_id = 0x7E9\nbitrate = 5\n")).is_err());
        let c = parse_str(&format!("{base}[doip]\nlogical_address = 0x1234\n")).unwrap();
        assert_eq!(c.doip.logical_address, 0x1234);
        assert_eq!(
            c.in_state(Path::new("slot-a.bin")),
            Path::new(DEFAULT_STATE_DIR).join("slot-a.bin")
        );
    }
}
