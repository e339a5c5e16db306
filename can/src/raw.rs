//! Raw CAN frames (`CAN_RAW`), for tests, bus monitors and injecting
//! arbitrary or malformed frames. Built on the `socketcan` crate's tokio socket.

use std::fmt::Write as _;
use std::time::Duration;

use socketcan::{CanAnyFrame, EmbeddedFrame, ExtendedId, Frame as _, Id, StandardId};

use crate::error::{Error, Op};
use crate::sys;

/// What kind of frame a [`CanFrame`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A classic data frame (0–8 bytes).
    Classic,
    /// A CAN FD frame (0–64 bytes), with or without bit rate switch.
    Fd {
        /// Bit rate switch.
        brs: bool,
    },
    /// A classic remote request (RTR) with this DLC.
    Remote(u8),
    /// An error frame reported by the controller.
    Error,
}

/// An owned CAN frame, independent of the socket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanFrame {
    /// Identifier without flags.
    pub id: u32,
    /// 29-bit identifier.
    pub extended: bool,
    /// Classic, FD, remote or error.
    pub kind: FrameKind,
    /// Payload (for FD, as long as the DLC says, i.e. padded by the kernel).
    pub data: Vec<u8>,
}

impl CanFrame {
    /// A classic data frame with an 11-bit id (or 29-bit when `id > 0x7FF`).
    pub fn classic(id: u32, data: &[u8]) -> CanFrame {
        CanFrame {
            id,
            extended: id > sys::CAN_SFF_MASK,
            kind: FrameKind::Classic,
            data: data.to_vec(),
        }
    }

    /// A CAN FD data frame with bit rate switch (29-bit when `id > 0x7FF`).
    pub fn fd(id: u32, data: &[u8]) -> CanFrame {
        CanFrame {
            id,
            extended: id > sys::CAN_SFF_MASK,
            kind: FrameKind::Fd { brs: true },
            data: data.to_vec(),
        }
    }

    /// The frame in can-utils' compact `candump`/`cansend` notation:
    /// `7E0#021003`, `18DAF110#…`, `7E0##1<data>` for FD (flags nibble), `7E0#R2`.
    pub fn to_candump(&self) -> String {
        let mut s = if self.extended {
            format!("{:08X}", self.id)
        } else {
            format!("{:03X}", self.id)
        };
        match self.kind {
            FrameKind::Classic | FrameKind::Error => s.push('#'),
            FrameKind::Fd { brs } => {
                s.push_str("##");
                s.push(if brs { '1' } else { '0' });
            }
            FrameKind::Remote(dlc) => {
                let _ = write!(s, "#R{dlc}");
                return s;
            }
        }
        for b in &self.data {
            let _ = write!(s, "{b:02X}");
        }
        s
    }

    fn to_socketcan(&self) -> Result<CanAnyFrame, Error> {
        let id: Id = if self.extended {
            ExtendedId::new(self.id).map(Id::Extended)
        } else {
            u16::try_from(self.id)
                .ok()
                .and_then(StandardId::new)
                .map(Id::Standard)
        }
        .ok_or_else(|| Error::InvalidConfig(format!("CAN id {:#x} out of range", self.id)))?;
        let bad_len = || {
            Error::InvalidConfig(format!(
                "{} data bytes do not fit a {:?} frame",
                self.data.len(),
                self.kind
            ))
        };
        Ok(match self.kind {
            FrameKind::Classic => socketcan::CanFrame::new(id, &self.data)
                .ok_or_else(bad_len)?
                .into(),
            FrameKind::Fd { brs } => {
                let mut f = socketcan::CanFdFrame::new(id, &self.data).ok_or_else(bad_len)?;
                f.set_brs(brs);
                f.into()
            }
            FrameKind::Remote(dlc) => socketcan::CanFrame::new_remote(id, usize::from(dlc))
                .ok_or_else(bad_len)?
                .into(),
            FrameKind::Error => {
                return Err(Error::InvalidConfig(
                    "error frames are made by controllers, not sent".into(),
                ))
            }
        })
    }

    fn from_socketcan(f: &CanAnyFrame) -> CanFrame {
        let (kind, data) = match f {
            CanAnyFrame::Normal(d) => (FrameKind::Classic, d.data().to_vec()),
            CanAnyFrame::Fd(d) => (FrameKind::Fd { brs: d.is_brs() }, d.data().to_vec()),
            CanAnyFrame::Remote(r) => (FrameKind::Remote(r.dlc() as u8), Vec::new()),
            CanAnyFrame::Error(e) => (FrameKind::Error, e.data().to_vec()),
        };
        CanFrame {
            id: f.raw_id(),
            extended: f.is_extended(),
            kind,
            data,
        }
    }
}

impl std::fmt::Display for CanFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_candump())
    }
}

/// A raw CAN socket on one interface that sends and receives classic and
/// CAN FD frames (FD needs an interface with MTU 72). It receives every frame
/// on the bus, including those of ISO-TP sockets on the same host.
#[derive(Debug)]
pub struct RawCanSocket {
    inner: socketcan::tokio::CanFdSocket,
    iface: String,
}

/// Checks that this kernel can open raw CAN sockets.
pub fn probe_raw() -> Result<(), Error> {
    sys::can_socket(libc::SOCK_RAW, libc::CAN_RAW)
        .map(drop)
        .map_err(|e| match Error::from_io(Op::Socket, e) {
            Error::NoCanSupport { source, .. } => Error::NoCanSupport {
                what: "CAN_RAW",
                source,
            },
            other => other,
        })
}

impl RawCanSocket {
    /// Opens a raw socket on `iface`. Must be called inside a tokio runtime.
    pub fn open(iface: &str) -> Result<RawCanSocket, Error> {
        probe_raw()?;
        let ifindex = sys::if_nametoindex(iface).ok_or_else(|| Error::NoSuchInterface {
            iface: iface.to_owned(),
        })?;
        let inner = socketcan::tokio::CanFdSocket::open_if(ifindex)
            .map_err(|e| Error::from_io(Op::Socket, e))?;
        Ok(RawCanSocket {
            inner,
            iface: iface.to_owned(),
        })
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether our own sent frames are received on this socket too
    /// (`CAN_RAW_RECV_OWN_MSGS`, off by default).
    pub fn set_recv_own(&self, on: bool) -> Result<(), Error> {
        use socketcan::SocketOptions as _;
        self.inner
            .set_recv_own_msgs(on)
            .map_err(|e| Error::from_io(Op::SetOption("CAN_RAW_RECV_OWN_MSGS"), e))
    }

    /// Sets the socket's receive buffer (in bytes of kernel memory; a CAN
    /// frame takes about 1 KiB), so that a monitor that falls behind a long
    /// transfer does not drop frames.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), Error> {
        use std::os::fd::AsRawFd as _;
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        sys::set_rcvbuf(self.inner.as_raw_fd(), bytes)
            .map_err(|e| Error::from_io(Op::SetOption("SO_RCVBUF"), e))
    }

    /// Sends one frame.
    pub async fn send(&self, frame: &CanFrame) -> Result<(), Error> {
        let f = frame.to_socketcan()?;
        self.inner
            .write_frame(&f)
            .await
            .map_err(|e| Error::from_io(Op::Send, e))
    }

    /// Receives the next frame.
    pub async fn recv(&self) -> Result<CanFrame, Error> {
        let f = self
            .inner
            .read_frame()
            .await
            .map_err(|e| Error::from_io(Op::Recv, e))?;
        Ok(CanFrame::from_socketcan(&f))
    }

    /// Receives the next frame or fails with [`Error::RecvTimeout`].
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<CanFrame, Error> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| Error::RecvTimeout(timeout))?
    }

    /// Collects every frame seen until `quiet` passes without a frame (or
    /// `limit` frames were seen): a frame dump for tests and diagnostics.
    pub async fn dump_until_quiet(
        &self,
        quiet: Duration,
        limit: usize,
    ) -> Result<Vec<CanFrame>, Error> {
        let mut frames = Vec::new();
        while frames.len() < limit {
            match self.recv_timeout(quiet).await {
                Ok(f) => frames.push(f),
                Err(Error::RecvTimeout(_)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(frames)
    }
}

/// Formats frames one per line as `candump` would print them for `iface`.
pub fn format_dump(iface: &str, frames: &[CanFrame]) -> String {
    let mut out = String::new();
    for f in frames {
        let _ = writeln!(out, "{iface} {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candump_notation() {
        assert_eq!(
            CanFrame::classic(0x7E0, &[0x02, 0x10, 0x03]).to_candump(),
            "7E0#021003"
        );
        assert_eq!(
            CanFrame::classic(0x18DA_F110, &[0xAA]).to_candump(),
            "18DAF110#AA"
        );
        assert_eq!(CanFrame::fd(0x123, &[1, 2]).to_candump(), "123##10102");
        let r = CanFrame {
            id: 0x7DF,
            extended: false,
            kind: FrameKind::Remote(2),
            data: vec![],
        };
        assert_eq!(r.to_candump(), "7DF#R2");
        assert_eq!(
            format_dump("vcan0", &[CanFrame::classic(1, &[])]),
            "vcan0 001#\n"
        );
    }

    #[test]
    fn conversion_round_trips_and_rejects_bad_frames() {
        for f in [
            CanFrame::classic(0x7E8, &[0x03, 0x7F, 0x10, 0x78]),
            CanFrame::classic(0x1234_5678, &[0; 8]),
            CanFrame::fd(0x7E8, &[0x55; 64]),
        ] {
            let back = CanFrame::from_socketcan(&f.to_socketcan().unwrap());
            assert_eq!(back, f);
        }
        assert!(CanFrame::classic(0x7E0, &[0; 9]).to_socketcan().is_err());
        assert!(CanFrame::fd(0x7E0, &[0; 65]).to_socketcan().is_err());
        let mut too_big = CanFrame::classic(0x7FF, &[]);
        too_big.id = 0x800;
        assert!(too_big.to_socketcan().is_err());
    }
}
