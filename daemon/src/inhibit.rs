//! Inhibit files: a directory where vehicle services drop a file to hold
//! installs back (`[install] inhibit_dir`, default `/run/secureev-inhibit`).
//!
//! The directory is writable by other users (the UI and vehicle-service
//! group), so everything in it is untrusted input read by a privileged
//! process. A member of that group once symlinked the Primary's signing key
//! into it and had the daemon echo the key back over D-Bus; a FIFO there hung
//! the daemon. So each entry is read like this, and nothing else:
//!
//! - `fstatat(…, AT_SYMLINK_NOFOLLOW)`: only a regular file is opened at all;
//!   a symlink, FIFO, socket, device or directory is *refused* (it still holds
//!   installs back: fail closed) and its content is never read;
//! - `openat(…, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)`
//!   relative to the directory's own descriptor, then `fstat` on the opened
//!   descriptor (the entry may have been swapped between the two calls): still
//!   a regular file, at most [`MAX_FILE_BYTES`];
//! - the reason shown is the first line only, at most [`MAX_REASON_CHARS`]
//!   printable ASCII characters (anything else becomes `?`), and the name is
//!   sanitised the same way; at most [`MAX_ENTRIES`] entries are looked at.
//!
//! A hard link to a secret is not a way around this either: `/run` is a tmpfs
//! apart from the state and key directories (a hard link cannot cross file
//! systems), and `fs.protected_hardlinks` (on by default with systemd) refuses
//! links to files the linking user cannot read.
//!
//! The functions here block (they touch the file system): async code calls
//! [`scan_async`], which runs [`scan`] on the blocking pool.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Largest inhibit file whose reason is shown (bytes); a bigger file still
/// holds installs back, with a fixed reason.
pub const MAX_FILE_BYTES: u64 = 4096;
/// Longest reason shown, in characters.
pub const MAX_REASON_CHARS: usize = 128;
/// Longest file name shown, in characters (the rest is cut).
pub const MAX_NAME_CHARS: usize = 64;
/// Most entries looked at; more are summed up in one extra entry.
pub const MAX_ENTRIES: usize = 64;

/// One inhibit file: an unmet precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibit {
    /// The file name, sanitised.
    pub name: String,
    /// Why installs wait: the file's first line, sanitised and bounded, or
    /// why the file was refused.
    pub reason: String,
}

/// Printable ASCII only, at most `max` characters.
fn sanitise(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn refused(name: String, why: &str) -> Inhibit {
    Inhibit {
        name,
        reason: format!("(refused: {why}; contents not read)"),
    }
}

/// Read one entry of the open directory `dir` (see the module documentation).
fn read_entry(dir: &OwnedFd, raw_name: &std::ffi::OsStr) -> Inhibit {
    use std::os::unix::ffi::OsStrExt;
    let name = sanitise(raw_name.as_bytes(), MAX_NAME_CHARS);
    let st = match rustix::fs::statat(dir, raw_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => return refused(name, &format!("cannot stat it: {e}")),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return refused(name, "not a regular file");
    }
    let fd = match rustix::fs::openat(
        dir,
        raw_name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return refused(name, &format!("cannot open it: {e}")),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return refused(name, &format!("cannot stat it: {e}")),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return refused(name, "not a regular file");
    }
    if st.st_size < 0 || st.st_size as u64 > MAX_FILE_BYTES {
        return refused(name, &format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut buf = vec![0u8; MAX_FILE_BYTES as usize];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(&fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return refused(name, &format!("cannot read it: {e}")),
        }
    }
    let first_line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let reason = sanitise(first_line, MAX_REASON_CHARS).trim().to_owned();
    Inhibit {
        name,
        reason: if reason.is_empty() {
            "inhibit file present".to_owned()
        } else {
            reason
        },
    }
}

/// The inhibit files in `dir`, sorted by name. A missing directory holds
/// nothing back; a directory that exists but cannot be read holds installs
/// back (one entry saying so). Names starting with `.` are ignored (editors'
/// and atomic writers' temporary files).
pub fn scan(dir: &Path) -> Vec<Inhibit> {
    let dirfd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Vec::new(),
        Err(e) => {
            return vec![Inhibit {
                name: "inhibit-dir".into(),
                reason: format!("{} cannot be opened: {e}", dir.display()),
            }]
        }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return vec![Inhibit {
                name: "inhibit-dir".into(),
                reason: format!("{} cannot be read: {e}", dir.display()),
            }]
        }
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| {
            use std::os::unix::ffi::OsStrExt;
            !n.as_bytes().starts_with(b".")
        })
        .collect();
    names.sort();
    let extra = names.len().saturating_sub(MAX_ENTRIES);
    let mut out: Vec<Inhibit> = names
        .iter()
        .take(MAX_ENTRIES)
        .map(|n| read_entry(&dirfd, n))
        .collect();
    if extra > 0 {
        out.push(Inhibit {
            name: "inhibit-dir".into(),
            reason: format!("{extra} more inhibit files not shown"),
        });
    }
    out
}

/// [`scan`] on the blocking pool, so that the async runtime never waits on
/// the file system. A scan that cannot run holds installs back.
pub async fn scan_async(dir: PathBuf) -> Vec<Inhibit> {
    match tokio::task::spawn_blocking(move || scan(&dir)).await {
        Ok(v) => v,
        Err(e) => vec![Inhibit {
            name: "inhibit-dir".into(),
            reason: format!("the inhibit directory could not be scanned: {e}"),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_give_a_bounded_sanitised_first_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("not-parked"),
            b"vehicle moving\nsecond line",
        )
        .unwrap();
        std::fs::write(dir.path().join("ctl"), b"a\x1b[2Jb").unwrap();
        std::fs::write(dir.path().join("long"), "x".repeat(1000)).unwrap();
        std::fs::write(dir.path().join(".tmp"), b"ignored").unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let got = scan(dir.path());
        let find = |n: &str| got.iter().find(|i| i.name == n).unwrap().reason.clone();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(find("not-parked"), "vehicle moving");
        assert_eq!(find("ctl"), "a?[2Jb");
        assert_eq!(find("long").len(), MAX_REASON_CHARS);
        assert_eq!(find("empty"), "inhibit file present");
    }

    #[test]
    fn symlinks_fifos_and_big_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key.pem");
        std::fs::write(&secret, b"-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n").unwrap();
        let inhibit = dir.path().join("inhibit");
        std::fs::create_dir(&inhibit).unwrap();
        std::os::unix::fs::symlink(&secret, inhibit.join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            inhibit.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(inhibit.join("big"), vec![b'k'; 5000]).unwrap();
        std::fs::create_dir(inhibit.join("subdir")).unwrap();
        let got = scan(&inhibit);
        assert_eq!(got.len(), 4, "{got:?}");
        for i in &got {
            assert!(i.reason.starts_with("(refused:"), "{i:?}");
            assert!(
                !i.reason.contains("BEGIN") && !i.reason.contains("SECRET"),
                "{i:?}"
            );
        }
    }

    #[test]
    fn a_missing_directory_holds_nothing_back() {
        assert!(scan(Path::new("/nonexistent/secureev-inhibit")).is_empty());
    }
}
