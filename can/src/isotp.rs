//! The kernel ISO-TP socket on tokio.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

use crate::config::{kernel_max_pdu, IsoTpConfig};
use crate::error::{Error, Op};
use crate::sys;

/// An ISO-TP (ISO 15765-2) connection through the kernel's `CAN_ISOTP`
/// socket: one `send` is one PDU, one `recv` is one reassembled PDU. The kernel
/// does segmentation, flow control, STmin and the N_Bs/N_Cr timeouts.
///
/// One socket serves one pair of CAN ids; sends and receives may run
/// concurrently from two tasks (`&self`), but only one PDU is in flight per
/// direction. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct IsoTpSocket {
    io: AsyncFd<OwnedFd>,
    iface: String,
    config: IsoTpConfig,
    max_send: usize,
}

/// Checks that this kernel can open ISO-TP sockets (`AF_CAN` and the
/// `can-isotp` module), without needing an interface.
pub fn probe_isotp() -> Result<(), Error> {
    sys::can_socket(libc::SOCK_DGRAM, libc::CAN_ISOTP)
        .map(drop)
        .map_err(|e| Error::from_io(Op::Socket, e))
}

impl IsoTpSocket {
    /// Opens and binds an ISO-TP socket on `iface` (e.g. `"vcan0"`).
    ///
    /// Fails with [`Error::NoCanSupport`] on a kernel without `AF_CAN` or
    /// `can-isotp`, [`Error::NoSuchInterface`] for an unknown interface and
    /// [`Error::BindRejected`] for CAN FD on an interface with MTU 16.
    pub fn open(iface: &str, config: IsoTpConfig) -> Result<IsoTpSocket, Error> {
        let so = config.to_sockopts()?;
        // The socket first, so that a kernel without CAN says so rather than
        // "no such interface".
        let fd = sys::can_socket(libc::SOCK_DGRAM, libc::CAN_ISOTP)
            .map_err(|e| Error::from_io(Op::Socket, e))?;
        let ifindex = sys::if_nametoindex(iface).ok_or_else(|| Error::NoSuchInterface {
            iface: iface.to_owned(),
        })?;

        // All options before bind(): the kernel refuses them afterwards (EISCONN).
        let set = |name: &'static str, r: io::Result<()>| {
            r.map_err(|e| Error::from_io(Op::SetOption(name), e))
        };
        set(
            "CAN_ISOTP_OPTS",
            sys::setsockopt(&fd, sys::SOL_CAN_ISOTP, sys::CAN_ISOTP_OPTS, &so.opts),
        )?;
        set(
            "CAN_ISOTP_RECV_FC",
            sys::setsockopt(&fd, sys::SOL_CAN_ISOTP, sys::CAN_ISOTP_RECV_FC, &so.fc),
        )?;
        if let Some(ns) = so.tx_stmin_ns {
            set(
                "CAN_ISOTP_TX_STMIN",
                sys::setsockopt(&fd, sys::SOL_CAN_ISOTP, sys::CAN_ISOTP_TX_STMIN, &ns),
            )?;
        }
        if let Some(ll) = &so.ll {
            set(
                "CAN_ISOTP_LL_OPTS",
                sys::setsockopt(&fd, sys::SOL_CAN_ISOTP, sys::CAN_ISOTP_LL_OPTS, ll),
            )?;
        }
        sys::bind_isotp(&fd, ifindex, so.rx_id, so.tx_id).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => Error::BindRejected {
                iface: iface.to_owned(),
                source: e,
            },
            Some(libc::ENODEV) => Error::NoSuchInterface {
                iface: iface.to_owned(),
            },
            _ => Error::from_io(Op::Bind, e),
        })?;

        let io = sys::register(fd).map_err(|e| Error::from_io(Op::Socket, e))?;
        let max_send = config.max_pdu.min(kernel_max_pdu());
        Ok(IsoTpSocket {
            io,
            iface: iface.to_owned(),
            config,
            max_send,
        })
    }

    /// The interface this socket is bound to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &IsoTpConfig {
        &self.config
    }

    /// The largest PDU [`send`](Self::send) accepts: the configured
    /// `max_pdu`, capped at the kernel's limit.
    pub fn max_pdu(&self) -> usize {
        self.max_send
    }

    /// Sends one PDU and waits until the kernel has transmitted all of its
    /// frames, so that transmit failures are reported here: no flow control
    /// from the peer ([`Error::FlowControlTimeout`], after 1 s), peer overflow
    /// ([`Error::PeerOverflow`]).
    ///
    /// Completion is observed through `poll()` readiness, which on current
    /// kernels (79e19fa79cb5, in stable since 2023) is writable only when no
    /// PDU is in flight; on older kernels this returns once the first frame is
    /// queued and failures surface at the next call.
    pub async fn send(&self, pdu: &[u8]) -> Result<(), Error> {
        if pdu.is_empty() || pdu.len() > self.max_send {
            return Err(Error::PduSize {
                len: pdu.len(),
                max: self.max_send,
            });
        }
        // write() fails with EAGAIN while a previous PDU is still in flight.
        // Try the syscall first and wait only on EAGAIN: readiness may have been
        // consumed by the previous send's completion wait, and a socket that
        // stays writable produces no new edge.
        let fd = self.io.get_ref().as_raw_fd();
        let n = loop {
            match sys::write(fd, pdu) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self
                        .io
                        .ready(Interest::WRITABLE | Interest::ERROR)
                        .await
                        .map_err(|e| Error::from_io(Op::Send, e))?;
                    // Clear before retrying: a change after this is a new edge.
                    guard.clear_ready_matching(Ready::WRITABLE | Ready::ERROR);
                    self.check_error(Op::Send)?;
                }
                Err(e) => return Err(Error::from_io(Op::Send, e)),
            }
        };
        if n != pdu.len() {
            return Err(Error::Io {
                op: Op::Send,
                source: io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("kernel took {n} of {} bytes", pdu.len()),
                ),
            });
        }
        self.wait_tx_done().await
    }

    /// Waits until the socket is writable again (the PDU is out), then reports
    /// a pending asynchronous error.
    async fn wait_tx_done(&self) -> Result<(), Error> {
        loop {
            let mut guard = self
                .io
                .ready(Interest::WRITABLE | Interest::ERROR)
                .await
                .map_err(|e| Error::from_io(Op::Send, e))?;
            // tokio keeps readiness until told otherwise, and write() succeeding
            // does not clear it: clear it, then look at the real state. Any
            // change after the clear is a new edge that wakes the next ready().
            guard.clear_ready_matching(Ready::WRITABLE | Ready::ERROR);
            let fd = guard.get_inner().as_raw_fd();
            if sys::poll_writable_now(fd).map_err(|e| Error::from_io(Op::Send, e))? {
                return self.check_error(Op::Send);
            }
        }
    }

    /// Reads and clears the socket's pending asynchronous error, if any.
    fn check_error(&self, op: Op) -> Result<(), Error> {
        match sys::take_socket_error(self.io.get_ref().as_raw_fd()) {
            Ok(None) => Ok(()),
            Ok(Some(e)) | Err(e) => Err(Error::from_io(op, e)),
        }
    }

    /// Receives one PDU into `buf` and returns its length. A PDU longer than
    /// `buf` is dropped and reported as [`Error::BufferTooSmall`]; size `buf`
    /// with [`max_pdu`](Self::max_pdu) or use [`recv_vec`](Self::recv_vec).
    ///
    /// Protocol failures of an incoming transfer (missing consecutive frame,
    /// wrong sequence number) are returned as their [`Error`] variants.
    /// Cancel safe: dropping the future loses no PDU.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = self.recv_inner(buf, false).await?;
        if n > buf.len() {
            return Err(Error::BufferTooSmall {
                pdu_len: n,
                buf_len: buf.len(),
            });
        }
        Ok(n)
    }

    /// Receives one PDU of any length the kernel accepts, into a new vector.
    pub async fn recv_vec(&self) -> Result<Vec<u8>, Error> {
        loop {
            // Peek at the length first (MSG_PEEK | MSG_TRUNC), then read exactly.
            let len = self.recv_inner(&mut [], true).await?;
            let mut buf = vec![0u8; len];
            let n = self.recv_inner(&mut buf, false).await?;
            // Another task may have taken the peeked PDU; retry then.
            if n <= len {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    /// [`recv`](Self::recv) with a deadline: [`Error::RecvTimeout`] when no
    /// complete PDU arrives within `timeout`.
    pub async fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<usize, Error> {
        tokio::time::timeout(timeout, self.recv(buf))
            .await
            .map_err(|_| Error::RecvTimeout(timeout))?
    }

    async fn recv_inner(&self, buf: &mut [u8], peek: bool) -> Result<usize, Error> {
        loop {
            let mut guard = self
                .io
                .ready(Interest::READABLE | Interest::ERROR)
                .await
                .map_err(|e| Error::from_io(Op::Recv, e))?;
            // recv() also returns a pending sk_err (ETIMEDOUT, ECOMM …) and
            // clears it; on EAGAIN try_io clears readiness and we wait again.
            match guard.try_io(|fd| sys::recv_trunc(fd.as_raw_fd(), buf, peek)) {
                Ok(r) => return r.map_err(|e| Error::from_io(Op::Recv, e)),
                Err(_would_block) => {
                    if guard.ready().is_error() {
                        guard.clear_ready_matching(Ready::ERROR);
                    }
                    continue;
                }
            }
        }
    }
}
