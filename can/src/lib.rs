//! # secureev-can
//!
//! The CAN transport of SecureEV-OTA: the Linux kernel's ISO-TP
//! (ISO 15765-2) socket and raw SocketCAN frames, on tokio.
//!
//! ## Architecture and I/O boundary
//! This crate is the I/O side. The UDS codec and the flashing state machines
//! (`secureev-uds`) are sans-IO and only see whole PDUs; this crate moves those
//! PDUs over a CAN interface. Segmentation, flow control, STmin, padding and
//! the N_Bs/N_Cr timeouts are done by the kernel (`net/can/isotp.c`), so one
//! [`IsoTpSocket::send`] is one PDU and one [`IsoTpSocket::recv`] is one
//! reassembled PDU.
//!
//! - [`config`]: [`IsoTpConfig`] and its encoding into kernel socket options
//!   (pure, unit tested everywhere).
//! - [`IsoTpSocket`]: the `CAN_ISOTP` socket on a tokio [`AsyncFd`] registered
//!   for readable, writable **and error** readiness: ISO-TP reports protocol
//!   failures asynchronously through `SO_ERROR`, mapped to typed [`Error`]s.
//! - [`RawCanSocket`]: raw frames via the `socketcan` crate, for tests and
//!   monitors (garbage injection, frame dumps).
//! - `sys` (private): kernel constants, `repr(C)` option structs and syscalls.
//!   It is the only module allowed `unsafe` in the whole workspace; every
//!   block there states why it is sound.
//!
//! ## Limits
//! - PDUs above 4095 bytes use the 32-bit FF_DL of ISO 15765-2:2016; Linux
//!   allows them up to 8200 (5.10), 66 000 (5.18–6.3) or the `max_pdu_size`
//!   module parameter (6.4+, default 8300); see [`config::kernel_max_pdu`].
//!   Many classic ECUs accept only ≤ 4095, the default [`IsoTpConfig::max_pdu`].
//! - CAN FD needs an interface with MTU 72 (`ip link set can0 mtu 72`).
//! - The kernel's protocol timeouts are fixed (1 s for FC and CF); UDS P2/P2*
//!   timers belong to the caller (`recv_timeout`).
//!
//! On a kernel without SocketCAN every constructor fails with
//! [`Error::NoCanSupport`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use secureev_can::{Error, IsoTpConfig, IsoTpSocket};
//! match IsoTpSocket::open("vcan0", IsoTpConfig::new(0x7E0, 0x7E8)) {
//!     Ok(sock) => assert_eq!(sock.iface(), "vcan0"),
//!     Err(Error::NoCanSupport { .. } | Error::NoSuchInterface { .. }) => {}
//!     Err(e) => panic!("{e}"),
//! }
//! # }
//! ```
//!
//! [`AsyncFd`]: tokio::io::unix::AsyncFd
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
mod error;
mod isotp;
mod raw;
#[allow(unsafe_code)]
mod sys;

pub use config::{
    frames_for_pdu, kernel_max_pdu, Addressing, FdConfig, IsoTpConfig, Padding, StMin,
    DEFAULT_PAD_BYTE,
};
pub use error::{Error, Op};
pub use isotp::{probe_isotp, IsoTpSocket};
pub use raw::{format_dump, probe_raw, CanFrame, FrameKind, RawCanSocket};

/// Kernel constants and option structs of `<linux/can/isotp.h>`, for callers
/// that need to inspect the encoded socket options.
pub mod kernel {
    pub use crate::sys::{
        CanIsotpFcOptions, CanIsotpLlOptions, CanIsotpOptions, CANFD_BRS, CANFD_MTU, CAN_EFF_FLAG,
        CAN_ISOTP_CHK_PAD_DATA, CAN_ISOTP_CHK_PAD_LEN, CAN_ISOTP_EXTEND_ADDR,
        CAN_ISOTP_FORCE_RXSTMIN, CAN_ISOTP_FORCE_TXSTMIN, CAN_ISOTP_FRAME_TXTIME_DEFAULT_NS,
        CAN_ISOTP_HALF_DUPLEX, CAN_ISOTP_LISTEN_MODE, CAN_ISOTP_LL_OPTS, CAN_ISOTP_OPTS,
        CAN_ISOTP_RECV_FC, CAN_ISOTP_RX_EXT_ADDR, CAN_ISOTP_RX_PADDING, CAN_ISOTP_RX_STMIN,
        CAN_ISOTP_TX_PADDING, CAN_ISOTP_TX_STMIN, CAN_ISOTP_WAIT_TX_DONE, CAN_MTU, SOL_CAN_ISOTP,
    };
}
