//! The `command` installer: runs an integrator's program on the verified image.
//!
//! # Progress protocol
//!
//! The program may report its progress on the file descriptor named by
//! `SECUREEV_PROGRESS_FD` (the write end of a pipe the daemon reads), one
//! line at a time (docs/configuration.md, "The command installer"):
//!
//! ```text
//! percent N            N of 100 of this install (0..=100)
//! bytes DONE TOTAL     DONE of TOTAL bytes (TOTAL > 0, DONE <= TOTAL)
//! ```
//!
//! Anything else (an unknown word, a number out of range, a line longer than
//! [`PROGRESS_LINE_MAX`] bytes, bytes that are not UTF-8) is ignored, as is
//! the whole pipe after [`PROGRESS_LINES_MAX`] lines: a program cannot make
//! the daemon buffer without bound. A program that writes nothing installs as
//! before; `percent` over the whole operation never goes back whatever the
//! program says (`agent::progress`).

use super::{InstallCheck, InstallDone, InstallProgress, Installer, TargetFacts, VerifiedFile};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

/// The environment variable naming the progress pipe's file descriptor.
pub const PROGRESS_FD_ENV: &str = "SECUREEV_PROGRESS_FD";

/// Longest progress line read (without its newline); longer ones are skipped.
pub const PROGRESS_LINE_MAX: usize = 128;

/// Most progress lines read from one install; the rest is drained unread.
pub const PROGRESS_LINES_MAX: usize = 100_000;

/// The line parser of the progress protocol: bytes in, progress out, no I/O.
#[derive(Debug, Default)]
pub struct ProgressLines {
    line: Vec<u8>,
    /// The current line ran past [`PROGRESS_LINE_MAX`]: skip to its end.
    overlong: bool,
    lines: usize,
}

impl ProgressLines {
    /// Feed bytes read from the pipe; the progress of each complete, valid line.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<InstallProgress> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.lines >= PROGRESS_LINES_MAX {
                break;
            }
            if b == b'\n' {
                self.lines += 1;
                if !self.overlong {
                    out.extend(parse_progress_line(&self.line));
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < PROGRESS_LINE_MAX {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
        out
    }

    /// Whether the line budget is spent.
    pub fn exhausted(&self) -> bool {
        self.lines >= PROGRESS_LINES_MAX
    }
}

/// One line of the progress protocol, without its newline.
pub fn parse_progress_line(line: &[u8]) -> Option<InstallProgress> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = text.split(' ');
    let number = |w: Option<&str>| -> Option<u64> {
        let w = w?;
        // Digits only: no sign, no spaces, no hex.
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        w.parse().ok()
    };
    let progress = match words.next()? {
        "percent" => {
            let n = number(words.next())?;
            if n > 100 {
                return None;
            }
            InstallProgress {
                percent: n as u32,
                message: String::new(),
                depth: 1,
                bytes: None,
            }
        }
        "bytes" => {
            let done = number(words.next())?;
            let total = number(words.next())?;
            if total == 0 || done > total {
                return None;
            }
            InstallProgress {
                percent: (u128::from(done) * 100 / u128::from(total)) as u32,
                message: String::new(),
                depth: 1,
                bytes: Some((done, total)),
            }
        }
        _ => return None,
    };
    words.next().is_none().then_some(progress)
}

/// Bytes of an installer command's stderr kept for the error message.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// The exit status by which an installer command says it ran out of space
/// (28, the number of `ENOSPC` on Linux): the install fails with
/// [`Error::InstallNoSpace`], code `29 insufficient-storage`, rather than
/// `30 install-failed`, so that a UI can ask for space to be freed.
pub const COMMAND_EXIT_NO_SPACE: i32 = 28;

/// Installs by running a program: `program args... <image>`, with the facts in
/// the environment (`SECUREEV_TARGET`, `SECUREEV_ECU`, `SECUREEV_HARDWARE_ID`,
/// `SECUREEV_RELEASE_COUNTER`, `SECUREEV_SHA256`, `SECUREEV_LENGTH`). Exit status
/// 0 is success; [`COMMAND_EXIT_NO_SPACE`] is "out of space"; anything else
/// fails the install with the end of its stderr.
/// Its stdout goes to the daemon's log.
#[derive(Debug, Clone)]
pub struct CommandInstaller {
    program: PathBuf,
    args: Vec<String>,
}

impl CommandInstaller {
    /// An installer running `program` with `args` before the image path.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        CommandInstaller {
            program: program.into(),
            args,
        }
    }
}

/// The last `max` bytes of `bytes`, as text.
fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

impl CommandInstaller {
    /// Run the program with the progress pipe's write end inherited as
    /// `SECUREEV_PROGRESS_FD`; `progress` gets each valid line while it runs.
    async fn run(
        &self,
        image: &VerifiedFile,
        progress: &(dyn Fn(InstallProgress) + Send + Sync),
    ) -> Result<()> {
        let facts = &TargetFacts::for_install(image)?;
        let pipe_error = |e: std::io::Error| facts.error(format!("progress pipe: {e}"));
        let (reader, writer) = std::io::pipe().map_err(pipe_error)?;
        // Both ends are close-on-exec; the write end alone is made
        // inheritable for this spawn and closed here right after it. One
        // operation runs at a time, so no other installer is spawned meanwhile.
        rustix::io::fcntl_setfd(writer.as_fd(), rustix::io::FdFlags::empty())
            .map_err(|e| pipe_error(e.into()))?;
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .arg(image.location())
            .env("SECUREEV_TARGET", &facts.name)
            .env("SECUREEV_ECU", &facts.ecu_serial)
            .env("SECUREEV_HARDWARE_ID", &facts.hardware_id)
            .env(
                "SECUREEV_RELEASE_COUNTER",
                facts.release_counter.to_string(),
            )
            .env("SECUREEV_SHA256", &facts.sha256)
            .env("SECUREEV_LENGTH", facts.length.to_string())
            .env(PROGRESS_FD_ENV, writer.as_raw_fd().to_string())
            // The installer is not the service: it must not talk to systemd
            // in the daemon's name.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(false)
            .spawn();
        drop(writer);
        let child = child
            .map_err(|e| facts.error(format!("cannot run {}: {e}", self.program.display())))?;
        let mut pipe =
            tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(pipe_error)?;
        let output = child.wait_with_output();
        tokio::pin!(output);
        let mut lines = ProgressLines::default();
        let mut buf = [0u8; 512];
        let mut reading = true;
        // The program's exit ends the install; its progress is read while it
        // runs (a grandchild holding the pipe open cannot keep us waiting).
        let output = loop {
            tokio::select! {
                biased;
                out = &mut output => break out,
                n = pipe.read(&mut buf), if reading => match n {
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        for p in lines.feed(&buf[..n]) {
                            progress(p);
                        }
                        if lines.exhausted() {
                            reading = false;
                        }
                    }
                },
            }
        }
        .map_err(|e| facts.error(format!("cannot run {}: {e}", self.program.display())))?;
        // Lines written just before the exit, still in the pipe.
        if reading {
            while let Ok(n) = pipe.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                for p in lines.feed(&buf[..n]) {
                    progress(p);
                }
                if lines.exhausted() {
                    break;
                }
            }
        }
        let stdout = tail(&output.stdout, STDERR_TAIL_BYTES);
        if !stdout.is_empty() {
            tracing::info!(program = %self.program.display(), "installer output: {stdout}");
        }
        if output.status.success() {
            Ok(())
        } else if output.status.code() == Some(COMMAND_EXIT_NO_SPACE) {
            Err(Error::InstallNoSpace {
                target: facts.name.clone(),
                ecu: facts.ecu_serial.clone(),
                reason: format!(
                    "{} exited with {COMMAND_EXIT_NO_SPACE}: {}",
                    self.program.display(),
                    tail(&output.stderr, STDERR_TAIL_BYTES)
                ),
            })
        } else {
            Err(facts.error(format!(
                "{} failed ({}): {}",
                self.program.display(),
                output.status,
                tail(&output.stderr, STDERR_TAIL_BYTES)
            )))
        }
    }
}

impl Installer for CommandInstaller {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn install<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run(image, &|_| {}).await?;
            Ok(())
        })
    }

    fn install_with_progress<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(InstallProgress) + Send + Sync),
    ) -> BoxFuture<'a, Result<InstallDone>> {
        Box::pin(async move {
            self.run(image, progress).await?;
            Ok(InstallDone::Active)
        })
    }

    fn check_installed<'a>(
        &'a self,
        _facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(async { Ok(InstallCheck::Unknown) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seen(input: &[u8]) -> Vec<(u32, Option<(u64, u64)>)> {
        ProgressLines::default()
            .feed(input)
            .into_iter()
            .map(|p| (p.percent, p.bytes))
            .collect()
    }

    #[test]
    fn valid_lines_are_read_and_malformed_ones_ignored() {
        let input = b"percent 10\nbytes 512 1024\npercent 101\npercent -1\npercent\n\
            percent 5 extra\nbytes 2 1\nbytes 1 0\nbytes +1 2\nPERCENT 3\n\xff\xfe\n\
            bytes 1024 1024\r\npercent 0x10\n percent 7\npercent 100\nunterminated 5";
        assert_eq!(
            seen(input),
            [
                (10, None),
                (50, Some((512, 1024))),
                (100, Some((1024, 1024))),
                (100, None)
            ]
        );
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut l = ProgressLines::default();
        assert!(l.feed(b"perc").is_empty());
        assert!(l.feed(b"ent 4").is_empty());
        assert_eq!(l.feed(b"2\nbytes 1 4\n").len(), 2);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_memory_stays_bounded() {
        let mut l = ProgressLines::default();
        let mut input = vec![b'9'; 1 << 20];
        input.splice(0..0, b"percent ".iter().copied());
        assert!(l.feed(&input).is_empty());
        assert!(l.line.len() <= PROGRESS_LINE_MAX);
        // The end of the long line is skipped, the next line is read.
        assert_eq!(l.feed(b"\npercent 20\n")[0].percent, 20);
    }

    #[test]
    fn the_line_budget_ends_reading() {
        let mut l = ProgressLines::default();
        let many = b"percent 1\n".repeat(PROGRESS_LINES_MAX + 10);
        assert_eq!(l.feed(&many).len(), PROGRESS_LINES_MAX);
        assert!(l.exhausted());
        assert!(l.feed(b"percent 2\n").is_empty());
    }
}
