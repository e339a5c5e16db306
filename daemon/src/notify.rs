//! systemd readiness and watchdog notifications, without libsystemd.
//!
//! `sd_notify(3)` is one datagram of `KEY=value` lines sent to the Unix socket
//! named by `$NOTIFY_SOCKET`: a path, or an abstract socket name written with a
//! leading `@`. The daemon sends `READY=1` once its state is loaded (and, after
//! integration, once the bus name is owned), `STATUS=...` lines as it works,
//! `WATCHDOG=1` at half of `$WATCHDOG_USEC`, and `STOPPING=1` on shutdown. Without
//! `$NOTIFY_SOCKET` every call is a no-op, so the daemon runs the same outside
//! systemd. Send failures are logged, never fatal: systemd's absence must not
//! stop an update.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sends notifications to systemd (or nowhere when not started by it).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier { target: None }
    }

    /// From `$NOTIFY_SOCKET`; disabled when it is unset or unusable (logged).
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier::disabled(),
            Some(v) => Notifier::for_socket(&v).unwrap_or_else(|e| {
                tracing::warn!(socket = ?v, "cannot use NOTIFY_SOCKET: {e}");
                Notifier::disabled()
            }),
        }
    }

    /// For a `$NOTIFY_SOCKET` value: a path, or `@name` for an abstract socket.
    pub fn for_socket(value: &OsStr) -> io::Result<Self> {
        let bytes = value.as_bytes();
        let addr = match bytes.first() {
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "empty socket name",
                ))
            }
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value))?,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET must be an absolute path or start with '@'",
                ))
            }
        };
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier {
            target: Some((sock, addr)),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send raw `KEY=value` lines.
    pub fn send(&self, state: &str) -> io::Result<()> {
        if let Some((sock, addr)) = &self.target {
            sock.send_to_addr(state.as_bytes(), addr)?;
        }
        Ok(())
    }

    fn send_logged(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!("sd_notify {state:?} failed: {e}");
        }
    }

    /// `READY=1`: the service is up.
    pub fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `STATUS=...`: a one-line status for `systemctl status`.
    pub fn status(&self, status: &str) {
        let line: String = status
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.send_logged(&format!("STATUS={line}"));
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1");
    }
}

/// How often to ping the watchdog, from `$WATCHDOG_USEC` and `$WATCHDOG_PID`
/// values: half the interval, as `sd_watchdog_enabled(3)` advises; `None` when
/// the watchdog is off, malformed, or meant for another process.
pub fn watchdog_ping_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// [`watchdog_ping_interval`] from this process's environment.
pub fn watchdog_ping_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_ping_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Ping the watchdog every `interval` until `shutdown`. It runs on the daemon's
/// runtime, so a wedged runtime stops the pings and systemd restarts the daemon.
pub async fn watchdog_loop(notifier: &Notifier, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notifier.watchdog(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_checks_the_pid() {
        assert_eq!(
            watchdog_ping_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_ping_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_ping_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_ping_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_ping_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_ping_interval(None, None, 7), None);
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_abstract_sockets() {
        let name = format!("secureev-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::for_socket(OsStr::new(&format!("@{name}"))).unwrap();
        n.ready();
        n.status("checking\nnow");
        assert_eq!(recv(&server), "READY=1");
        assert_eq!(recv(&server), "STATUS=checking now");
    }

    #[test]
    fn disabled_and_bad_sockets() {
        Notifier::disabled().ready();
        assert!(!Notifier::disabled().is_enabled());
        assert!(Notifier::for_socket(OsStr::new("relative")).is_err());
        assert!(Notifier::for_socket(OsStr::new("")).is_err());
    }
}
