//! The crate's error type and the mapping of kernel errnos to it.

use std::io;
use std::time::Duration;

/// What the socket was doing when an error surfaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Creating the socket.
    Socket,
    /// Setting a socket option.
    SetOption(&'static str),
    /// Binding to the interface and CAN ids.
    Bind,
    /// Sending a PDU or frame (including waiting for its transmission).
    Send,
    /// Receiving a PDU or frame.
    Recv,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Socket => f.write_str("socket"),
            Op::SetOption(name) => write!(f, "setsockopt {name}"),
            Op::Bind => f.write_str("bind"),
            Op::Send => f.write_str("send"),
            Op::Recv => f.write_str("recv"),
        }
    }
}

/// Errors of the CAN transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel has no SocketCAN (`AF_CAN` → `EAFNOSUPPORT`, `CONFIG_CAN` unset)
    /// or no ISO-TP protocol (`EPROTONOSUPPORT`: module `can-isotp` not loaded or
    /// not built; `modprobe can-isotp`).
    #[error("no CAN support in this kernel ({what}): {source}")]
    NoCanSupport {
        /// The missing piece (`AF_CAN`, `CAN_ISOTP`, `CAN_RAW`).
        what: &'static str,
        /// The errno of `socket()`.
        #[source]
        source: io::Error,
    },
    /// No network interface of that name (`ip link add dev vcan0 type vcan`).
    #[error("no CAN interface named {iface:?}")]
    NoSuchInterface {
        /// The interface name asked for.
        iface: String,
    },
    /// The interface exists but is down (`ENETDOWN`).
    #[error("CAN interface is down ({op})")]
    InterfaceDown {
        /// What failed.
        op: Op,
    },
    /// The configuration cannot be expressed to the kernel.
    #[error("invalid ISO-TP configuration: {0}")]
    InvalidConfig(String),
    /// The kernel refused CAN FD options on an interface whose MTU is below 72
    /// (`bind` → `EINVAL`; `ip link set DEV mtu 72`), or another bind argument.
    #[error("bind to {iface:?} refused (CAN FD on a classic-MTU interface?): {source}")]
    BindRejected {
        /// The interface.
        iface: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A PDU longer than the configured or kernel maximum (or empty).
    #[error("PDU of {len} bytes does not fit (1..={max} bytes allowed)")]
    PduSize {
        /// Length of the PDU offered.
        len: usize,
        /// The largest PDU allowed.
        max: usize,
    },
    /// The received PDU was longer than the buffer; it was dropped.
    #[error("received PDU of {pdu_len} bytes does not fit the {buf_len}-byte buffer; dropped")]
    BufferTooSmall {
        /// Length of the PDU on the bus.
        pdu_len: usize,
        /// Length of the buffer given.
        buf_len: usize,
    },
    /// Sender: the peer sent no flow control frame in time (N_Bs, 1 s in the
    /// kernel), or our frames were not echoed (no bus / no ACK): `ECOMM`.
    #[error("ISO-TP transmit timeout: no flow control from the peer (N_Bs) or no TX echo")]
    FlowControlTimeout,
    /// Receiver: a consecutive frame did not arrive in time (N_Cr, 1 s): `ETIMEDOUT`.
    #[error("ISO-TP receive timeout: consecutive frame missing (N_Cr)")]
    ConsecutiveFrameTimeout,
    /// Receiver: a consecutive frame with the wrong sequence number: `EILSEQ`.
    #[error("ISO-TP wrong sequence number in a consecutive frame")]
    WrongSequenceNumber,
    /// A malformed frame: bad PCI, bad padding (with padding checks) or a flow
    /// control frame with a reserved status: `EBADMSG`.
    #[error("ISO-TP malformed frame (PCI, padding or flow status)")]
    MalformedFrame,
    /// Sender: the peer's flow control answered Overflow: `EMSGSIZE`.
    #[error("ISO-TP peer reported overflow: the PDU is too large for its buffer")]
    PeerOverflow,
    /// Nothing arrived within the time given to `recv_timeout`.
    #[error("no PDU received within {0:?}")]
    RecvTimeout(Duration),
    /// Any other I/O error.
    #[error("{op}: {source}")]
    Io {
        /// What failed.
        op: Op,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Maps an error of a socket operation to a typed error. ISO-TP protocol
    /// errnos (from `net/can/isotp.c`, reported through `sk_err`) become their
    /// own variants; `socket()` errnos that mean "no such protocol" become
    /// [`Error::NoCanSupport`].
    pub fn from_io(op: Op, source: io::Error) -> Error {
        let Some(errno) = source.raw_os_error() else {
            return Error::Io { op, source };
        };
        match (op, errno) {
            (Op::Socket, libc::EAFNOSUPPORT) => Error::NoCanSupport {
                what: "AF_CAN",
                source,
            },
            (Op::Socket, libc::EPROTONOSUPPORT) => Error::NoCanSupport {
                what: "CAN_ISOTP",
                source,
            },
            (_, libc::ENETDOWN) => Error::InterfaceDown { op },
            (_, libc::ECOMM) => Error::FlowControlTimeout,
            (_, libc::ETIMEDOUT) => Error::ConsecutiveFrameTimeout,
            (_, libc::EILSEQ) => Error::WrongSequenceNumber,
            (_, libc::EBADMSG) => Error::MalformedFrame,
            (Op::Send | Op::Recv, libc::EMSGSIZE) => Error::PeerOverflow,
            _ => Error::Io { op, source },
        }
    }

    /// Whether the error is a protocol failure of one transfer after which the
    /// socket is still usable (as opposed to a setup or interface problem).
    pub fn is_transfer_error(&self) -> bool {
        matches!(
            self,
            Error::FlowControlTimeout
                | Error::ConsecutiveFrameTimeout
                | Error::WrongSequenceNumber
                | Error::MalformedFrame
                | Error::PeerOverflow
                | Error::RecvTimeout(_)
                | Error::BufferTooSmall { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(op: Op, e: i32) -> Error {
        Error::from_io(op, io::Error::from_raw_os_error(e))
    }

    #[test]
    fn socket_errnos_mean_no_can_support() {
        assert!(matches!(
            errno(Op::Socket, libc::EAFNOSUPPORT),
            Error::NoCanSupport { what: "AF_CAN", .. }
        ));
        assert!(matches!(
            errno(Op::Socket, libc::EPROTONOSUPPORT),
            Error::NoCanSupport {
                what: "CAN_ISOTP",
                ..
            }
        ));
        // EAFNOSUPPORT later than socket() is not about kernel support.
        assert!(matches!(
            errno(Op::Recv, libc::EAFNOSUPPORT),
            Error::Io { op: Op::Recv, .. }
        ));
    }

    #[test]
    fn isotp_protocol_errnos_are_typed() {
        assert!(matches!(
            errno(Op::Recv, libc::ECOMM),
            Error::FlowControlTimeout
        ));
        assert!(matches!(
            errno(Op::Send, libc::ECOMM),
            Error::FlowControlTimeout
        ));
        assert!(matches!(
            errno(Op::Recv, libc::ETIMEDOUT),
            Error::ConsecutiveFrameTimeout
        ));
        assert!(matches!(
            errno(Op::Recv, libc::EILSEQ),
            Error::WrongSequenceNumber
        ));
        assert!(matches!(
            errno(Op::Recv, libc::EBADMSG),
            Error::MalformedFrame
        ));
        assert!(matches!(
            errno(Op::Send, libc::EMSGSIZE),
            Error::PeerOverflow
        ));
        assert!(matches!(
            errno(Op::Bind, libc::ENETDOWN),
            Error::InterfaceDown { op: Op::Bind }
        ));
        assert!(errno(Op::Recv, libc::ETIMEDOUT).is_transfer_error());
        assert!(!errno(Op::Socket, libc::EAFNOSUPPORT).is_transfer_error());
    }

    #[test]
    fn other_errors_keep_their_source() {
        let e = errno(Op::SetOption("CAN_ISOTP_OPTS"), libc::EINVAL);
        assert!(matches!(
            e,
            Error::Io {
                op: Op::SetOption("CAN_ISOTP_OPTS"),
                ..
            }
        ));
        assert!(e.to_string().starts_with("setsockopt CAN_ISOTP_OPTS: "));
        let plain = Error::from_io(Op::Send, io::Error::other("x"));
        assert!(matches!(plain, Error::Io { op: Op::Send, .. }));
    }
}
