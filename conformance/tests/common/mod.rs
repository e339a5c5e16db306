//! Test support: an HTTP file server on loopback that logs every request,
//! scratch directories, and a runner for the client binary.
// Each test binary uses a different part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most an endless response sends before giving up on a client that keeps
/// reading: bounds the test even if the client under test had no cap.
const ENDLESS_CAP: usize = 64 << 20;

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    endless: HashSet<String>,
    log: Vec<String>,
}

/// A static HTTP/1.1 server on 127.0.0.1. Paths are matched exactly as
/// requested (no percent-decoding), as the conformance suite's simulator
/// does, so a test sees precisely how the client quoted a name.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    /// Start serving (nothing yet); the accept thread lives as long as the
    /// test process.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Server { addr, state }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path)
    }

    /// Serve `data` at `path` (no leading `/`).
    pub fn put(&self, path: &str, data: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), data.into());
    }

    /// Stop serving `path`.
    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().files.remove(path);
    }

    /// Serve every file under `dir` at `<prefix>/<relative path>`.
    pub fn put_dir(&self, prefix: &str, dir: &Path) {
        for (rel, data) in walk(dir) {
            self.put(&format!("{prefix}/{rel}"), data);
        }
    }

    /// Answer `path` with a body that never ends.
    pub fn endless(&self, path: &str) {
        self.state.lock().unwrap().endless.insert(path.to_owned());
    }

    /// Requests so far (paths without the leading `/`), and forget them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.strip_prefix('/').unwrap_or(target).to_owned();
    let (body, endless) = {
        let mut s = state.lock().unwrap();
        s.log.push(path.clone());
        (s.files.get(&path).cloned(), s.endless.contains(&path))
    };
    let mut out = stream;
    if method != "GET" {
        return out.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    if endless {
        out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < ENDLESS_CAP {
            out.write_all(&chunk)?;
            sent += chunk.len();
        }
        return Ok(());
    }
    match body {
        Some(body) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body)
        }
        None => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Every regular file under `dir`, as (`/`-separated relative path, bytes).
pub fn walk(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.push((rel, fs::read(entry.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Names of the entries of `dir`, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "secureev-conformance-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Run the client binary with `args`.
pub fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuf-conformance-client"))
        .args(args)
        .output()
        .unwrap()
}

/// Exit code of a client run (-1 when a signal ended it).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Assert a run's exit code, showing its stderr on mismatch.
#[track_caller]
pub fn assert_exit(out: &Output, expected: i32) {
    assert_eq!(
        code(out),
        expected,
        "exit code; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client under test, as the conformance suite drives it.
pub struct Cli {
    pub metadata_dir: PathBuf,
    pub target_dir: PathBuf,
    pub metadata_url: String,
    pub targets_url: String,
}

impl Cli {
    pub fn init(&self, root: &Path) -> Output {
        client(&[
            "--metadata-dir",
            self.metadata_dir.to_str().unwrap(),
            "init",
            root.to_str().unwrap(),
        ])
    }

    pub fn refresh(&self) -> Output {
        client(&[
            "--metadata-url",
            &self.metadata_url,
            "--metadata-dir",
            self.metadata_dir.to_str().unwrap(),
            "refresh",
        ])
    }

    pub fn download(&self, targets: &[&str]) -> Output {
        let mut args = vec![
            "--metadata-url",
            &self.metadata_url,
            "--metadata-dir",
            self.metadata_dir.to_str().unwrap(),
        ];
        for t in targets {
            args.extend(["--target-name", t]);
        }
        args.extend([
            "--target-dir",
            self.target_dir.to_str().unwrap(),
            "--target-base-url",
            &self.targets_url,
            "download",
        ]);
        client(&args)
    }
}

/// `version` of a metadata envelope.
pub fn version_of(bytes: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

/// The name of an error's variant, from its `Debug` form: `Rollback { .. }`
/// gives `Rollback`.
pub fn variant(e: &secureev_uptane::Error) -> String {
    format!("{e:?}")
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Wall-clock time, for tests against repositories built with real expiries.
pub fn now() -> secureev_uptane::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    secureev_uptane::Timestamp::from_unix(i64::try_from(secs).unwrap())
}
