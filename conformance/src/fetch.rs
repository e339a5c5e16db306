//! Fetching bytes with a hard length cap.
//!
//! The client never trusts a server to stop sending: every download has a
//! maximum length (from signed metadata, or a default cap), and the body is
//! read through a limit one byte past it, so an endless response is cut off
//! after `max_length + 1` bytes (TUF 1.0 §5.2, endless-data attacks).

use crate::error::{Error, Result};
use std::io::Read;
use std::time::Duration;

/// Whole-request deadline (connect, headers and body): a server that trickles
/// bytes cannot hold the client forever (slow-retrieval attacks).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Source of repository bytes.
pub trait Fetch {
    /// GET `url` and return its body, failing with
    /// [`secureev_uptane::Error::EndlessData`] as soon as more than
    /// `max_length` bytes arrive, and with [`Error::HttpStatus`] for any status
    /// but 200.
    fn fetch(&self, url: &str, max_length: u64) -> Result<Vec<u8>>;
}

/// Blocking HTTP fetcher (plain `http://` only: the conformance suite serves
/// its repositories on loopback).
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    agent: ureq::Agent,
}

impl Default for HttpFetcher {
    fn default() -> Self {
        Self::new(DEFAULT_REQUEST_TIMEOUT)
    }
}

impl HttpFetcher {
    /// A fetcher whose requests each end after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        HttpFetcher {
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .user_agent(concat!(
                    "secureev-tuf-conformance/",
                    env!("CARGO_PKG_VERSION")
                ))
                .build(),
        }
    }
}

impl Fetch for HttpFetcher {
    fn fetch(&self, url: &str, max_length: u64) -> Result<Vec<u8>> {
        let transport = |reason: String| Error::Transport {
            url: url.to_owned(),
            reason,
        };
        let response = match self.agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, _)) => {
                return Err(Error::HttpStatus {
                    url: url.to_owned(),
                    status,
                })
            }
            Err(ureq::Error::Transport(t)) => return Err(transport(t.to_string())),
        };
        if response.status() != 200 {
            return Err(Error::HttpStatus {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let endless = || {
            Error::verification_of(
                url.to_owned(),
                secureev_uptane::Error::EndlessData {
                    what: url.to_owned(),
                    limit: max_length,
                },
            )
        };
        // A declared length past the cap is refused before reading anything.
        if let Some(declared) = response.header("Content-Length") {
            if declared.trim().parse::<u64>().is_ok_and(|n| n > max_length) {
                return Err(endless());
            }
        }
        read_capped(response.into_reader(), max_length)
            .map_err(|e| transport(e.to_string()))?
            .ok_or_else(endless)
    }
}

/// Read at most `max_length` bytes; `None` when the stream has more.
pub fn read_capped(reader: impl Read, max_length: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    reader
        .take(max_length.saturating_add(1))
        .read_to_end(&mut body)?;
    Ok((body.len() as u64 <= max_length).then_some(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cap_cuts_endless_streams() {
        let endless = std::io::repeat(b'x');
        assert_eq!(read_capped(endless, 16).unwrap(), None);
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_capped(&b"abcd"[..], 3).unwrap(), None);
        assert_eq!(read_capped(&b""[..], 0).unwrap(), Some(Vec::new()));
    }
}
