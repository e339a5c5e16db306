//! Availability: what one client may hold of the server.
//!
//! - At most `max_connections` open connections, and at most
//!   `max_connections_per_peer` from one IP address ([`PeerLimiter`]); beyond
//!   either, a connection is closed on accept, before any TLS work.
//! - The TLS handshake and the request head each have a bound
//!   ([`crate::TLS_HANDSHAKE_TIMEOUT`], [`crate::HEADER_READ_TIMEOUT`]).
//! - Every request, from its head to the response head, has a deadline
//!   (`request_timeout_secs`, [`request_deadline`]); a body arriving too slowly
//!   runs into it (vehicle and admin JSON bodies are at most
//!   `max_body_bytes`). Image uploads, which may be large, instead must keep
//!   `min_upload_bytes_per_sec` after [`UPLOAD_GRACE`].
//! - Every other request body (the JSON ones, both listeners) must keep
//!   `min_body_bytes_per_sec` after [`BODY_RATE_GRACE`] ([`min_body_rate`]):
//!   a client trickling its body is answered 408 and its connection freed
//!   long before the request deadline.
//! - Vehicle requests are refused on their headers (unknown vehicle, stale
//!   timestamp, malformed signature, replayed nonce) before the body is read.
//! - At start the file-descriptor limit is raised to the hard limit
//!   ([`raise_nofile_limit`]) and must be well above `max_connections`.

use crate::error::{Error, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Open connections per peer address.
#[derive(Debug)]
pub struct PeerLimiter {
    per_peer: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection slot of one peer; released on drop.
#[derive(Debug)]
pub struct PeerSlot {
    limiter: Arc<PeerLimiter>,
    ip: IpAddr,
}

impl PeerLimiter {
    /// At most `per_peer` connections from one address.
    pub fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(PeerLimiter {
            per_peer,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for `ip`, or `None` when it holds `per_peer` already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Middleware: the whole request, up to the response head, within `deadline`.
pub async fn request_deadline(
    State(deadline): State<Duration>,
    req: Request,
    next: Next,
) -> Result<Response> {
    tokio::time::timeout(deadline, next.run(req))
        .await
        .map_err(|_| {
            Error::RequestTimeout(format!(
                "request not complete within {} s",
                deadline.as_secs()
            ))
        })
}

/// Time a JSON request body may take before its minimum rate is enforced.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// When the next body byte is due: after `grace`, the bytes received must
/// keep up with `rate` bytes per second counted from the start.
fn next_byte_due(started: Instant, grace: Duration, received: u64, rate: u64) -> Instant {
    started + grace + Duration::from_secs_f64((received + 1) as f64 / rate.max(1) as f64)
}

/// A request body that fails once it falls below a minimum rate, also when
/// no byte comes at all (a timer, not a check on arrival).
struct MinRateBody {
    inner: Body,
    started: Instant,
    received: u64,
    rate: u64,
    grace: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    tripped: Arc<AtomicBool>,
}

impl http_body::Body for MinRateBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                    let due = next_byte_due(this.started, this.grace, this.received, this.rate);
                    if let Some(t) = this.timer.as_mut() {
                        t.as_mut().reset(due);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                let (started, grace, received, rate) =
                    (this.started, this.grace, this.received, this.rate);
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(next_byte_due(
                        started, grace, received, rate,
                    )))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.tripped.store(true, Ordering::SeqCst);
                        Poll::Ready(Some(Err(axum::Error::new(format!(
                            "request body slower than {} bytes/s",
                            this.rate
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: the request body must keep `rate` bytes per second after
/// [`BODY_RATE_GRACE`]. Whoever reads the body (request authentication,
/// the JSON extractor) sees an error when it falls behind; the answer is
/// then 408, whatever that reader made of the error.
pub async fn min_body_rate(State(rate): State<u64>, req: Request, next: Next) -> Response {
    let tripped = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(MinRateBody {
        inner: body,
        started: Instant::now(),
        received: 0,
        rate: rate.max(1),
        grace: BODY_RATE_GRACE,
        timer: None,
        tripped: tripped.clone(),
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if tripped.load(Ordering::SeqCst) {
        return Error::RequestTimeout(format!("request body slower than {rate} bytes/s"))
            .into_response();
    }
    resp
}

/// Time an upload may take before its minimum rate is enforced.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);

/// Raise the soft file-descriptor limit to the hard limit; refuse to serve
/// when it stays below what `max_connections` needs (two descriptors per
/// connection at most, plus [`NOFILE_RESERVE`] for the database, blobs, logs).
/// Returns the limit in force.
pub fn raise_nofile_limit(max_connections: usize) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    // An unlimited hard limit: ask for a large finite one (the kernel's
    // nr_open caps it).
    let wanted = current.maximum.or(Some(1 << 20));
    if wanted != current.current {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: wanted,
                maximum: current.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = 2 * max_connections as u64 + NOFILE_RESERVE;
    if now < needed {
        return Err(Error::Config(format!(
            "the file-descriptor limit is {now}, below the {needed} that max_connections = {max_connections} needs; raise LimitNOFILE or lower max_connections"
        )));
    }
    Ok(now)
}

/// Descriptors kept free of connections.
pub const NOFILE_RESERVE: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_raised_and_checked_against_max_connections() {
        let n = raise_nofile_limit(16).unwrap();
        assert!(n >= 2 * 16 + NOFILE_RESERVE);
        assert_eq!(
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            Some(n)
        );
        // A limit no host grants is refused rather than served into EMFILE.
        assert!(matches!(
            raise_nofile_limit(usize::MAX / 4),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn peer_slots_are_bounded_and_released() {
        let l = PeerLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none());
        assert!(l.acquire(b).is_some());
        drop(s1);
        assert_eq!(l.open(a), 1);
        assert!(l.acquire(a).is_some());
    }
}
