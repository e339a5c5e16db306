//! ISO-TP socket configuration and its encoding into kernel socket options.
//! Pure: no syscalls, so it is unit tested everywhere.

use std::time::Duration;

use crate::error::Error;
use crate::sys;

/// The largest PDU that a 12-bit FF_DL can announce, and what classic
/// ECUs usually accept (ISO 15765-2:2016 §9.6.3.1).
pub const MAX_PDU_12BIT: usize = 4095;

/// Default [`IsoTpConfig::max_pdu`]: 4095 bytes, the 12-bit FF_DL limit that
/// every ISO-TP implementation supports. Raise it (up to
/// [`kernel_max_pdu`]) for peers that understand the 32-bit FF_DL escape.
pub const DEFAULT_MAX_PDU: usize = MAX_PDU_12BIT;

/// Default padding byte: 0xCC, the kernel's and AUTOSAR's usual choice.
pub const DEFAULT_PAD_BYTE: u8 = 0xCC;

/// The largest PDU the running kernel's ISO-TP accepts in one `write()`.
///
/// - Linux ≥ 6.4 (96d1c81e): module parameter `max_pdu_size` (default 8300,
///   clamped to 4095 … 1 049 600), read from sysfs when the module is loaded;
/// - Linux 5.18 … 6.3 (9c0c191d): 66 000 (verified on Debian 6.1: 66 000 B
///   round-trip, 66 001 B fails `write()` with `EINVAL`);
/// - Linux 5.10 … 5.17: 8200; older out-of-tree modules: 4095.
pub fn kernel_max_pdu() -> usize {
    if let Ok(s) = std::fs::read_to_string("/sys/module/can_isotp/parameters/max_pdu_size") {
        if let Ok(n) = s.trim().parse::<usize>() {
            return n;
        }
    }
    sys::kernel_release()
        .as_deref()
        .map(max_pdu_for_release)
        .unwrap_or(MAX_PDU_12BIT)
}

/// The built-in maximum PDU size of kernels without the `max_pdu_size`
/// parameter, by release string (`uname -r`).
pub fn max_pdu_for_release(release: &str) -> usize {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (6, 4) {
        8300 // the module parameter's default, when sysfs could not be read
    } else if version >= (5, 18) {
        66_000
    } else if version >= (5, 10) {
        8200
    } else {
        MAX_PDU_12BIT
    }
}

/// How the CAN frames are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Frames carry only their data (can-utils' default).
    None,
    /// Pad transmitted frames (and our flow control) to the full data length
    /// with this byte; accept received frames padded or not.
    Tx(u8),
    /// Pad transmitted frames and require the peer to pad its frames to the
    /// full length with this byte (`CHK_PAD_LEN | CHK_PAD_DATA`); frames that
    /// do not are rejected with [`Error::MalformedFrame`].
    Strict(u8),
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Tx(DEFAULT_PAD_BYTE)
    }
}

/// Addressing of the ISO-TP frames (ISO 15765-2 §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// Normal addressing: the CAN id alone identifies the connection.
    #[default]
    Normal,
    /// Extended addressing: the first data byte of each frame is a target
    /// address; `tx` is what we send, `rx` what we expect.
    Extended {
        /// Address byte of transmitted frames.
        tx: u8,
        /// Address byte expected in received frames.
        rx: u8,
    },
}

/// Separation time between consecutive frames (STmin), as the byte on the
/// wire (ISO 15765-2:2016 table 20): 0x00–0x7F = 0–127 ms, 0xF1–0xF9 = 100–900 µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StMin(u8);

impl StMin {
    /// No separation time: the sender goes as fast as the bus allows.
    pub const ZERO: StMin = StMin(0);

    /// `ms` milliseconds (0..=127).
    pub fn millis(ms: u8) -> Result<StMin, Error> {
        if ms <= 0x7F {
            Ok(StMin(ms))
        } else {
            Err(Error::InvalidConfig(format!(
                "STmin {ms} ms out of range 0..=127 ms"
            )))
        }
    }

    /// `us` microseconds: 100, 200 … 900.
    pub fn micros(us: u16) -> Result<StMin, Error> {
        if matches!(us, 100 | 200 | 300 | 400 | 500 | 600 | 700 | 800 | 900) {
            Ok(StMin(0xF0 + (us / 100) as u8))
        } else {
            Err(Error::InvalidConfig(format!(
                "STmin {us} µs is not one of 100, 200 … 900 µs"
            )))
        }
    }

    /// From a duration in whole microseconds, as configuration files give it:
    /// 0, 100 … 900 µs, or whole milliseconds up to 127 000 µs.
    ///
    /// ```
    /// use secureev_can::StMin;
    /// assert_eq!(StMin::from_micros_total(300).unwrap().as_byte(), 0xF3);
    /// assert_eq!(StMin::from_micros_total(5_000).unwrap().as_byte(), 5);
    /// assert!(StMin::from_micros_total(1_500).is_err());
    /// ```
    pub fn from_micros_total(us: u32) -> Result<StMin, Error> {
        match us {
            0 => Ok(StMin::ZERO),
            100..=900 if us.is_multiple_of(100) => StMin::micros(us as u16),
            1_000..=127_000 if us.is_multiple_of(1_000) => StMin::millis((us / 1_000) as u8),
            _ => Err(Error::InvalidConfig(format!(
                "STmin {us} µs: give 0, 100 … 900 µs or whole milliseconds up to 127 ms"
            ))),
        }
    }

    /// From the wire byte; reserved values are refused.
    pub fn from_byte(b: u8) -> Result<StMin, Error> {
        match b {
            0x00..=0x7F | 0xF1..=0xF9 => Ok(StMin(b)),
            _ => Err(Error::InvalidConfig(format!(
                "STmin byte {b:#04x} is reserved"
            ))),
        }
    }

    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        self.0
    }

    /// The separation time it means.
    pub fn duration(self) -> Duration {
        match self.0 {
            b @ 0xF1..=0xF9 => Duration::from_micros(u64::from(b - 0xF0) * 100),
            b => Duration::from_millis(u64::from(b)),
        }
    }
}

/// CAN FD link layer options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdConfig {
    /// Data length of transmitted frames: 8, 12, 16, 20, 24, 32, 48 or 64.
    pub tx_dl: u8,
    /// Switch to the data bit rate in the data phase (BRS).
    pub bit_rate_switch: bool,
}

impl Default for FdConfig {
    fn default() -> Self {
        FdConfig {
            tx_dl: 64,
            bit_rate_switch: true,
        }
    }
}

/// Configuration of one ISO-TP connection (one pair of CAN ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoTpConfig {
    /// CAN id we send on (the peer's receive id).
    pub tx_id: u32,
    /// CAN id we receive on (the peer's transmit id).
    pub rx_id: u32,
    /// Both ids are 29-bit extended identifiers (`CAN_EFF_FLAG`).
    pub extended_ids: bool,
    /// Frame padding.
    pub padding: Padding,
    /// Block size we advertise in our flow control (0 = no further FC).
    pub block_size: u8,
    /// Separation time we ask the sender for in our flow control.
    pub st_min: StMin,
    /// CAN FD link layer; `None` = classic CAN (8-byte frames).
    pub fd: Option<FdConfig>,
    /// Largest PDU we send or expect; sizes the receive buffer of
    /// [`crate::IsoTpSocket::recv_vec`]. Values above 4095 need a peer that
    /// handles the 32-bit FF_DL and a kernel that allows it ([`kernel_max_pdu`]).
    pub max_pdu: usize,
    /// Normal or extended addressing.
    pub addressing: Addressing,
    /// Ignore the peer's STmin and wait this long between our CFs instead
    /// (`CAN_ISOTP_FORCE_TXSTMIN`); for tests and slow peers.
    pub force_tx_st_min: Option<Duration>,
    /// Maximum number of FC.WAIT frames accepted from the peer (`wftmax`).
    pub wait_frames_max: u8,
}

impl IsoTpConfig {
    /// A normal-addressing, 11-bit, classic CAN connection with the defaults:
    /// padding 0xCC, block size 0, STmin 0, PDUs up to 4095 bytes.
    pub fn new(tx_id: u32, rx_id: u32) -> IsoTpConfig {
        IsoTpConfig {
            tx_id,
            rx_id,
            extended_ids: false,
            padding: Padding::default(),
            block_size: 0,
            st_min: StMin::ZERO,
            fd: None,
            max_pdu: DEFAULT_MAX_PDU,
            addressing: Addressing::Normal,
            force_tx_st_min: None,
            wait_frames_max: 0,
        }
    }

    /// The same with CAN FD (64-byte frames, BRS).
    pub fn with_fd(mut self) -> IsoTpConfig {
        self.fd = Some(FdConfig::default());
        self
    }

    /// The same with 29-bit identifiers.
    pub fn with_extended_ids(mut self) -> IsoTpConfig {
        self.extended_ids = true;
        self
    }

    /// The configuration for the other end of this connection (ids and
    /// extended addresses swapped).
    pub fn peer(&self) -> IsoTpConfig {
        let mut p = self.clone();
        p.tx_id = self.rx_id;
        p.rx_id = self.tx_id;
        if let Addressing::Extended { tx, rx } = self.addressing {
            p.addressing = Addressing::Extended { tx: rx, rx: tx };
        }
        p
    }

    /// Checks the configuration and encodes it as the kernel's socket options.
    pub fn to_sockopts(&self) -> Result<SockOpts, Error> {
        let (mask, flag, kind) = if self.extended_ids {
            (sys::CAN_EFF_MASK, sys::CAN_EFF_FLAG, "29-bit")
        } else {
            (sys::CAN_SFF_MASK, 0, "11-bit")
        };
        for (name, id) in [("tx_id", self.tx_id), ("rx_id", self.rx_id)] {
            if id & !mask != 0 {
                return Err(Error::InvalidConfig(format!(
                    "{name} {id:#x} is not a {kind} CAN identifier"
                )));
            }
        }
        if self.tx_id == self.rx_id && self.addressing == Addressing::Normal {
            return Err(Error::InvalidConfig(format!(
                "tx_id and rx_id are both {:#x}",
                self.tx_id
            )));
        }
        if self.max_pdu == 0 {
            return Err(Error::InvalidConfig("max_pdu is 0".into()));
        }

        let mut opts = sys::CanIsotpOptions::default();
        match self.padding {
            Padding::None => {}
            Padding::Tx(b) => {
                opts.flags |= sys::CAN_ISOTP_TX_PADDING;
                opts.txpad_content = b;
                opts.rxpad_content = b;
            }
            Padding::Strict(b) => {
                opts.flags |= sys::CAN_ISOTP_TX_PADDING
                    | sys::CAN_ISOTP_RX_PADDING
                    | sys::CAN_ISOTP_CHK_PAD_LEN
                    | sys::CAN_ISOTP_CHK_PAD_DATA;
                opts.txpad_content = b;
                opts.rxpad_content = b;
            }
        }
        if let Addressing::Extended { tx, rx } = self.addressing {
            opts.flags |= sys::CAN_ISOTP_EXTEND_ADDR | sys::CAN_ISOTP_RX_EXT_ADDR;
            opts.ext_address = tx;
            opts.rx_ext_address = rx;
        }
        let tx_stmin_ns = match self.force_tx_st_min {
            None => None,
            Some(d) => {
                let ns = u32::try_from(d.as_nanos()).map_err(|_| {
                    Error::InvalidConfig(format!("forced TX STmin {d:?} exceeds u32 ns"))
                })?;
                opts.flags |= sys::CAN_ISOTP_FORCE_TXSTMIN;
                Some(ns)
            }
        };

        let fc = sys::CanIsotpFcOptions {
            bs: self.block_size,
            stmin: self.st_min.as_byte(),
            wftmax: self.wait_frames_max,
        };

        let ll = match self.fd {
            None => None,
            Some(fd) => {
                if !matches!(fd.tx_dl, 8 | 12 | 16 | 20 | 24 | 32 | 48 | 64) {
                    return Err(Error::InvalidConfig(format!(
                        "CAN FD tx_dl {} is not one of 8, 12, 16, 20, 24, 32, 48, 64",
                        fd.tx_dl
                    )));
                }
                Some(sys::CanIsotpLlOptions {
                    mtu: sys::CANFD_MTU,
                    tx_dl: fd.tx_dl,
                    tx_flags: if fd.bit_rate_switch {
                        sys::CANFD_BRS
                    } else {
                        0
                    },
                })
            }
        };

        Ok(SockOpts {
            opts,
            fc,
            ll,
            tx_stmin_ns,
            tx_id: self.tx_id | flag,
            rx_id: self.rx_id | flag,
        })
    }
}

/// The kernel socket options and address of one ISO-TP socket, as
/// [`IsoTpConfig::to_sockopts`] encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOpts {
    /// `CAN_ISOTP_OPTS`.
    pub opts: sys::CanIsotpOptions,
    /// `CAN_ISOTP_RECV_FC`.
    pub fc: sys::CanIsotpFcOptions,
    /// `CAN_ISOTP_LL_OPTS` (CAN FD only).
    pub ll: Option<sys::CanIsotpLlOptions>,
    /// `CAN_ISOTP_TX_STMIN` in ns (with `CAN_ISOTP_FORCE_TXSTMIN`).
    pub tx_stmin_ns: Option<u32>,
    /// `sockaddr_can.can_addr.tp.tx_id` (with `CAN_EFF_FLAG` if extended).
    pub tx_id: u32,
    /// `sockaddr_can.can_addr.tp.rx_id` (with `CAN_EFF_FLAG` if extended).
    pub rx_id: u32,
}

/// Number of CAN frames that carry one ISO-TP PDU of `len` bytes in one
/// direction (SF, or FF + CFs), for frames of `frame_dl` bytes (8 classic, up
/// to 64 FD) with normal addressing; flow control frames are not counted.
pub fn frames_for_pdu(len: usize, frame_dl: usize) -> usize {
    // Single frame: 1 PCI byte (≤ 8-byte frames), 2 PCI bytes on CAN FD.
    let sf_max = if frame_dl <= 8 {
        frame_dl - 1
    } else {
        frame_dl - 2
    };
    if len <= sf_max {
        return 1;
    }
    // First frame: 2 PCI bytes (12-bit FF_DL) or 6 (escape + 32-bit FF_DL).
    let ff_data = if len <= MAX_PDU_12BIT {
        frame_dl - 2
    } else {
        frame_dl - 6
    };
    let cf_data = frame_dl - 1;
    1 + (len - ff_data).div_ceil(cf_data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_encodes_tx_padding_and_ids() {
        let so = IsoTpConfig::new(0x7E0, 0x7E8).to_sockopts().unwrap();
        assert_eq!(so.tx_id, 0x7E0);
        assert_eq!(so.rx_id, 0x7E8);
        assert_eq!(so.opts.flags, sys::CAN_ISOTP_TX_PADDING);
        assert_eq!(so.opts.txpad_content, 0xCC);
        assert_eq!(so.opts.frame_txtime, 0, "0 keeps the kernel default");
        assert_eq!(
            so.fc,
            sys::CanIsotpFcOptions {
                bs: 0,
                stmin: 0,
                wftmax: 0
            }
        );
        assert_eq!(so.ll, None);
        assert_eq!(so.tx_stmin_ns, None);
    }

    #[test]
    fn option_structs_match_the_kernel_layout() {
        // struct can_isotp_options { __u32 flags; __u32 frame_txtime; __u8 ext_address,
        // txpad_content, rxpad_content, rx_ext_address; } on little-endian x86_64/aarch64.
        let mut cfg = IsoTpConfig::new(0x7E0, 0x7E8);
        cfg.padding = Padding::Strict(0xAA);
        cfg.addressing = Addressing::Extended { tx: 0x12, rx: 0x34 };
        let so = cfg.to_sockopts().unwrap();
        let bytes: [u8; 12] = {
            let o = so.opts;
            let mut b = [0u8; 12];
            b[0..4].copy_from_slice(&o.flags.to_ne_bytes());
            b[4..8].copy_from_slice(&o.frame_txtime.to_ne_bytes());
            b[8] = o.ext_address;
            b[9] = o.txpad_content;
            b[10] = o.rxpad_content;
            b[11] = o.rx_ext_address;
            b
        };
        let flags = 0x004 | 0x008 | 0x010 | 0x020 | 0x002 | 0x200;
        let mut want = [0u8; 12];
        want[0..4].copy_from_slice(&(flags as u32).to_ne_bytes());
        want[8..12].copy_from_slice(&[0x12, 0xAA, 0xAA, 0x34]);
        assert_eq!(bytes, want);
        assert_eq!(std::mem::size_of_val(&so.opts), 12);
        assert_eq!(std::mem::align_of_val(&so.opts), 4);
    }

    #[test]
    fn extended_ids_get_the_eff_flag_and_are_range_checked() {
        let so = IsoTpConfig::new(0x18DA_F110, 0x18DA_10F1)
            .with_extended_ids()
            .to_sockopts()
            .unwrap();
        assert_eq!(so.tx_id, 0x8000_0000 | 0x18DA_F110);
        assert_eq!(so.rx_id, 0x8000_0000 | 0x18DA_10F1);
        let err = IsoTpConfig::new(0x800, 0x7E8).to_sockopts().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(m) if m.contains("tx_id 0x800")));
        let err = IsoTpConfig::new(0x7E0, 0x2000_0000)
            .with_extended_ids()
            .to_sockopts()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(m) if m.contains("rx_id")));
        assert!(IsoTpConfig::new(0x7E0, 0x7E0).to_sockopts().is_err());
    }

    #[test]
    fn fd_encodes_ll_opts() {
        let so = IsoTpConfig::new(1, 2).with_fd().to_sockopts().unwrap();
        assert_eq!(
            so.ll,
            Some(sys::CanIsotpLlOptions {
                mtu: 72,
                tx_dl: 64,
                tx_flags: 0x01
            })
        );
        let mut cfg = IsoTpConfig::new(1, 2);
        cfg.fd = Some(FdConfig {
            tx_dl: 13,
            bit_rate_switch: false,
        });
        assert!(cfg.to_sockopts().is_err());
        cfg.fd = Some(FdConfig {
            tx_dl: 16,
            bit_rate_switch: false,
        });
        assert_eq!(cfg.to_sockopts().unwrap().ll.unwrap().tx_flags, 0);
    }

    #[test]
    fn flow_control_and_forced_stmin() {
        let mut cfg = IsoTpConfig::new(1, 2);
        cfg.block_size = 8;
        cfg.st_min = StMin::micros(300).unwrap();
        cfg.wait_frames_max = 2;
        cfg.force_tx_st_min = Some(Duration::from_micros(250));
        cfg.padding = Padding::None;
        let so = cfg.to_sockopts().unwrap();
        assert_eq!(
            so.fc,
            sys::CanIsotpFcOptions {
                bs: 8,
                stmin: 0xF3,
                wftmax: 2
            }
        );
        assert_eq!(so.tx_stmin_ns, Some(250_000));
        assert_eq!(so.opts.flags, sys::CAN_ISOTP_FORCE_TXSTMIN);
    }

    #[test]
    fn stmin_encoding() {
        assert_eq!(StMin::millis(127).unwrap().as_byte(), 0x7F);
        assert!(StMin::millis(128).is_err());
        assert_eq!(StMin::micros(100).unwrap().as_byte(), 0xF1);
        assert_eq!(StMin::micros(900).unwrap().as_byte(), 0xF9);
        assert!(StMin::micros(50).is_err());
        assert!(StMin::micros(150).is_err());
        assert!(StMin::from_byte(0x80).is_err());
        assert!(StMin::from_byte(0xF0).is_err());
        assert!(StMin::from_byte(0xFA).is_err());
        assert_eq!(
            StMin::from_byte(0xF5).unwrap().duration(),
            Duration::from_micros(500)
        );
        assert_eq!(
            StMin::millis(5).unwrap().duration(),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn peer_swaps_ids_and_addresses() {
        let mut cfg = IsoTpConfig::new(0x7E0, 0x7E8);
        cfg.addressing = Addressing::Extended { tx: 1, rx: 2 };
        let p = cfg.peer();
        assert_eq!((p.tx_id, p.rx_id), (0x7E8, 0x7E0));
        assert_eq!(p.addressing, Addressing::Extended { tx: 2, rx: 1 });
    }

    #[test]
    fn kernel_max_pdu_by_release() {
        assert_eq!(max_pdu_for_release("6.1.0-56-amd64"), 66_000);
        assert_eq!(max_pdu_for_release("5.18.0"), 66_000);
        assert_eq!(max_pdu_for_release("5.10.0-30-amd64"), 8200);
        assert_eq!(max_pdu_for_release("6.18.44-fc"), 8300);
        assert_eq!(max_pdu_for_release("4.19.0"), 4095);
        assert_eq!(max_pdu_for_release("garbage"), 4095);
    }

    #[test]
    fn frame_counts() {
        // Classic: SF up to 7 bytes, FF 6 + CF 7.
        assert_eq!(frames_for_pdu(1, 8), 1);
        assert_eq!(frames_for_pdu(7, 8), 1);
        assert_eq!(frames_for_pdu(8, 8), 2);
        assert_eq!(frames_for_pdu(13, 8), 2);
        assert_eq!(frames_for_pdu(14, 8), 3);
        assert_eq!(frames_for_pdu(4095, 8), 1 + 4089usize.div_ceil(7));
        // 32-bit FF_DL: FF carries 2 bytes.
        assert_eq!(frames_for_pdu(4096, 8), 1 + 4094usize.div_ceil(7));
        // FD 64: SF up to 62, FF 62, CF 63; escape FF 58.
        assert_eq!(frames_for_pdu(62, 64), 1);
        assert_eq!(frames_for_pdu(63, 64), 2);
        assert_eq!(frames_for_pdu(4095, 64), 1 + 4033usize.div_ceil(63));
        assert_eq!(frames_for_pdu(65_536, 64), 1 + 65_478usize.div_ceil(63));
    }
}
