//! A tiny HTTP/1.1 server on 127.0.0.1 whose misbehaviour each test scripts:
//! cut connections, ignored ranges, endless bodies, trickled bodies. Written on
//! raw TCP so that the tests control every byte and every close.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does for one request.
#[derive(Clone)]
pub enum Behaviour {
    /// Serve `body`; answer ranges with 206 if `ranges`; close the connection
    /// after `cut_after` body bytes if set.
    Serve {
        body: Arc<Vec<u8>>,
        ranges: bool,
        cut_after: Option<usize>,
    },
    /// 200 without a length, then bytes until the client hangs up.
    Endless,
    /// 200 with the right length, then `chunk` bytes every `every`.
    Trickle {
        body: Arc<Vec<u8>>,
        chunk: usize,
        every: Duration,
    },
    /// This status, empty body.
    Status(u16),
    /// 200 with `block` repeated `count` times, generated while sending.
    Repeat { block: Arc<Vec<u8>>, count: usize },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub path: String,
    pub range_from: Option<u64>,
}

type Handler = dyn Fn(&str, Option<u64>, usize) -> Behaviour + Send + Sync;

pub struct Server {
    pub base: String,
    pub log: Arc<Mutex<Vec<Logged>>>,
}

impl Server {
    /// Start serving; `handler(path, range_from, request_index)` decides.
    pub async fn start(
        handler: impl Fn(&str, Option<u64>, usize) -> Behaviour + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (h, l) = (handler.clone(), log2.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, h, l).await;
                });
            }
        });
        Server {
            base: format!("http://{addr}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve(
    mut sock: TcpStream,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Logged>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let range_from = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.eq_ignore_ascii_case("range") {
            return None;
        }
        v.trim()
            .strip_prefix("bytes=")?
            .trim_end_matches('-')
            .parse()
            .ok()
    });
    let index = {
        let mut l = log.lock().unwrap();
        l.push(Logged {
            path: path.clone(),
            range_from,
        });
        l.len() - 1
    };
    match handler(&path, range_from, index) {
        Behaviour::Status(code) => {
            sock.write_all(
                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        }
        Behaviour::Serve {
            body,
            ranges,
            cut_after,
        } => {
            let from = match range_from {
                Some(f) if ranges && (f as usize) < body.len() => f as usize,
                _ => 0,
            };
            let part = &body[from..];
            let head = if from > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            sock.write_all(head.as_bytes()).await?;
            let n = cut_after.unwrap_or(part.len()).min(part.len());
            sock.write_all(&part[..n]).await?;
            sock.flush().await?;
        }
        Behaviour::Endless => {
            sock.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await?;
            let chunk = vec![0x41u8; 16 * 1024];
            loop {
                sock.write_all(&chunk).await?;
            }
        }
        Behaviour::Repeat { block, count } => {
            let len = block.len() * count;
            sock.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            for _ in 0..count {
                sock.write_all(&block).await?;
            }
        }
        Behaviour::Trickle { body, chunk, every } => {
            sock.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            for piece in body.chunks(chunk) {
                sock.write_all(piece).await?;
                sock.flush().await?;
                tokio::time::sleep(every).await;
            }
        }
    }
    let _ = sock.shutdown().await;
    Ok(())
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
