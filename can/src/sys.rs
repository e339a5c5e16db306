//! Kernel ABI: constants and `repr(C)` structs of `<linux/can/isotp.h>`, and
//! the thin syscall wrappers. Every `unsafe` block of the crate lives here.
//!
//! The `libc` crate (0.2.191) has `CAN_ISOTP`, `SOL_CAN_BASE`, `CAN_EFF_FLAG`,
//! `CANFD_BRS` and `sockaddr_can` with `can_addr.tp`, but nothing from
//! `include/uapi/linux/can/isotp.h`; those are copied below from that header
//! (torvalds/linux, identical in 5.10 … 6.x apart from flags added later, which
//! are marked with the kernel that introduced them).

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

// ---- include/uapi/linux/can.h (present in libc, re-exported for one place) ----

/// `CAN_EFF_FLAG`: the identifier is a 29-bit extended one.
pub const CAN_EFF_FLAG: u32 = libc::CAN_EFF_FLAG;
/// `CAN_SFF_MASK`: an 11-bit standard identifier.
pub const CAN_SFF_MASK: u32 = libc::CAN_SFF_MASK;
/// `CAN_EFF_MASK`: a 29-bit extended identifier.
pub const CAN_EFF_MASK: u32 = libc::CAN_EFF_MASK;
/// `CANFD_BRS`: bit rate switch in the data phase of a CAN FD frame.
pub const CANFD_BRS: u8 = libc::CANFD_BRS as u8;
/// `CAN_MTU`: `sizeof(struct can_frame)`.
pub const CAN_MTU: u8 = 16;
/// `CANFD_MTU`: `sizeof(struct canfd_frame)`.
pub const CANFD_MTU: u8 = 72;

// ---- include/uapi/linux/can/isotp.h ----

/// `SOL_CAN_ISOTP = SOL_CAN_BASE + CAN_ISOTP` (106).
pub const SOL_CAN_ISOTP: libc::c_int = libc::SOL_CAN_BASE + libc::CAN_ISOTP;
/// `CAN_ISOTP_OPTS`: `struct can_isotp_options`.
pub const CAN_ISOTP_OPTS: libc::c_int = 1;
/// `CAN_ISOTP_RECV_FC`: `struct can_isotp_fc_options`, the FC we send.
pub const CAN_ISOTP_RECV_FC: libc::c_int = 2;
/// `CAN_ISOTP_TX_STMIN`: `__u32` nanoseconds, used with `CAN_ISOTP_FORCE_TXSTMIN`.
pub const CAN_ISOTP_TX_STMIN: libc::c_int = 3;
/// `CAN_ISOTP_RX_STMIN`: `__u32` nanoseconds, used with `CAN_ISOTP_FORCE_RXSTMIN`.
pub const CAN_ISOTP_RX_STMIN: libc::c_int = 4;
/// `CAN_ISOTP_LL_OPTS`: `struct can_isotp_ll_options` (CAN FD).
pub const CAN_ISOTP_LL_OPTS: libc::c_int = 5;

/// Listen only: do not send flow control frames.
pub const CAN_ISOTP_LISTEN_MODE: u32 = 0x001;
/// Extended addressing: the first data byte carries `ext_address`.
pub const CAN_ISOTP_EXTEND_ADDR: u32 = 0x002;
/// Pad transmitted frames with `txpad_content`.
pub const CAN_ISOTP_TX_PADDING: u32 = 0x004;
/// Expect received frames to be padded (see the two checks below).
pub const CAN_ISOTP_RX_PADDING: u32 = 0x008;
/// Check the length of padded received frames.
pub const CAN_ISOTP_CHK_PAD_LEN: u32 = 0x010;
/// Check the content of the padding of received frames (`rxpad_content`).
pub const CAN_ISOTP_CHK_PAD_DATA: u32 = 0x020;
/// Half duplex error state handling.
pub const CAN_ISOTP_HALF_DUPLEX: u32 = 0x040;
/// Ignore the peer's STmin and use `CAN_ISOTP_TX_STMIN`.
pub const CAN_ISOTP_FORCE_TXSTMIN: u32 = 0x080;
/// Drop CFs arriving faster than `CAN_ISOTP_RX_STMIN`.
pub const CAN_ISOTP_FORCE_RXSTMIN: u32 = 0x100;
/// A separate extended address for reception (`rx_ext_address`).
pub const CAN_ISOTP_RX_EXT_ADDR: u32 = 0x200;
/// Block in `write()` until the PDU is sent. Never set on a tokio socket: the
/// kernel then blocks even with `O_NONBLOCK`.
pub const CAN_ISOTP_WAIT_TX_DONE: u32 = 0x400;

/// Default `frame_txtime` (N_As) of the kernel, 50 µs; `0` in the option keeps it.
pub const CAN_ISOTP_FRAME_TXTIME_DEFAULT_NS: u32 = 50_000;

/// `struct can_isotp_options`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanIsotpOptions {
    /// `CAN_ISOTP_*` flags.
    pub flags: u32,
    /// N_As in ns; 0 keeps the default, `u32::MAX` means zero.
    pub frame_txtime: u32,
    /// Extended address we send.
    pub ext_address: u8,
    /// Padding byte for transmitted frames.
    pub txpad_content: u8,
    /// Expected padding byte of received frames.
    pub rxpad_content: u8,
    /// Extended address we expect (with `CAN_ISOTP_RX_EXT_ADDR`).
    pub rx_ext_address: u8,
}

/// `struct can_isotp_fc_options`: what we advertise in our flow control frames.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanIsotpFcOptions {
    /// Block size, 0 = send all CFs without waiting for another FC.
    pub bs: u8,
    /// STmin byte as on the wire (ISO 15765-2 table 20).
    pub stmin: u8,
    /// Maximum number of FC.WAIT frames we accept (0 = none).
    pub wftmax: u8,
}

/// `struct can_isotp_ll_options`: link layer (classic CAN or CAN FD).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanIsotpLlOptions {
    /// `CAN_MTU` (16) or `CANFD_MTU` (72).
    pub mtu: u8,
    /// Transmit data length: 8, 12, 16, 20, 24, 32, 48 or 64.
    pub tx_dl: u8,
    /// `canfd_frame.flags` for transmitted frames (`CANFD_BRS`).
    pub tx_flags: u8,
}

// Layout guards: these structs are passed to the kernel by pointer and size.
const _: () = assert!(mem::size_of::<CanIsotpOptions>() == 12);
const _: () = assert!(mem::size_of::<CanIsotpFcOptions>() == 3);
const _: () = assert!(mem::size_of::<CanIsotpLlOptions>() == 3);

/// Marker for the plain-data option structs that may be passed to `setsockopt`.
///
/// # Safety
/// Implementors must be `repr(C)` (or a primitive) with no padding bytes, so
/// that every byte of a value is initialised.
pub unsafe trait SockOptValue: Copy {}
// SAFETY: repr(C), 2 × u32 + 4 × u8 = 12 bytes, no padding (asserted above).
unsafe impl SockOptValue for CanIsotpOptions {}
// SAFETY: repr(C), 3 × u8, no padding.
unsafe impl SockOptValue for CanIsotpFcOptions {}
// SAFETY: repr(C), 3 × u8, no padding.
unsafe impl SockOptValue for CanIsotpLlOptions {}
// SAFETY: a primitive integer.
unsafe impl SockOptValue for u32 {}
// SAFETY: a primitive integer.
unsafe impl SockOptValue for libc::c_int {}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // A non-negative ssize_t always fits in usize.
        Ok(ret as usize)
    }
}

/// `socket(AF_CAN, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol)`.
pub fn can_socket(ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; any arguments are sound.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_CAN,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2), is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `if_nametoindex(3)`; `None` when there is no such interface (or the name
/// cannot be one: empty, too long or with a NUL byte).
pub fn if_nametoindex(name: &str) -> Option<u32> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    let c_name = CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `setsockopt(fd, level, name, &value, sizeof value)`.
pub fn setsockopt<T: SockOptValue>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to `len` initialised bytes (SockOptValue: no padding)
    // that live for the duration of the call; the kernel only reads them.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            len,
        )
    })
    .map(drop)
}

/// Sets the receive buffer of a socket to `bytes`: `SO_RCVBUFFORCE` (needs
/// CAP_NET_ADMIN, ignores `rmem_max`), else `SO_RCVBUF`.
pub fn set_rcvbuf(fd: RawFd, bytes: libc::c_int) -> io::Result<()> {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `bytes` is a valid c_int that outlives the call; the kernel reads
        // exactly size_of::<c_int>() bytes.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast::<libc::c_void>(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// `getsockopt(fd, SOL_SOCKET, SO_ERROR)`: reads and clears the pending
/// asynchronous error of the socket (`sk_err`); `None` when there is none.
pub fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid, writable and correctly sized for SO_ERROR.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// `bind()` an ISO-TP socket to `ifindex` with the (already flagged) CAN ids.
pub fn bind_isotp(fd: &OwnedFd, ifindex: u32, rx_id: u32, tx_id: u32) -> io::Result<()> {
    // SAFETY: sockaddr_can is plain old data (integers and a union of integer
    // structs); the all-zero bit pattern is a valid value of it.
    let mut addr: libc::sockaddr_can = unsafe { mem::zeroed() };
    addr.can_family = libc::AF_CAN as libc::sa_family_t;
    addr.can_ifindex = ifindex as libc::c_int;
    addr.can_addr.tp = libc::__c_anonymous_sockaddr_can_tp { rx_id, tx_id };
    // SAFETY: `addr` is a fully initialised sockaddr_can that outlives the call,
    // and the length passed is its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_can).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_can>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `write(2)` one PDU.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast::<libc::c_void>(), buf.len()) })
}

/// `recv(2)` with `MSG_TRUNC` (and optionally `MSG_PEEK`): returns the full
/// length of the PDU even when `buf` is shorter; only `buf.len()` bytes are copied.
pub fn recv_trunc(fd: RawFd, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_TRUNC | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of
    // the call; the kernel writes at most that many.
    cvt_size(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            flags,
        )
    })
}

/// Whether the socket is writable right now (`poll(2)` with a zero timeout).
/// On kernels with 79e19fa79cb5 ("can: isotp: isotp_ops: fix poll() to not
/// report false EPOLLOUT events", 2023, in stable) an ISO-TP socket is
/// writable only when no PDU is in flight.
pub fn poll_writable_now(fd: RawFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, writable pollfd; nfds is 1.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(n > 0 && pfd.revents & (libc::POLLOUT | libc::POLLERR) != 0)
}

/// Registers an owned socket with the tokio reactor for readable, writable and
/// error readiness. ISO-TP reports protocol failures (no flow control, missing
/// consecutive frames) asynchronously through `sk_err`, i.e. as `EPOLLERR`;
/// without `Interest::ERROR` a task waiting only for readability is never woken.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` takes ownership of the `OwnedFd`, which keeps the
    // descriptor open (and `as_raw_fd` constant) until the `AsyncFd` is dropped
    // or `into_inner` returns it; nothing else can close it meanwhile.
    unsafe {
        AsyncFd::register_with_interest(
            fd,
            Interest::READABLE | Interest::WRITABLE | Interest::ERROR,
        )
    }
    .map_err(io::Error::from)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}
