//! The `command` installer: runs an integrator's program on the verified image.

use super::{InstallCheck, Installer, TargetFacts};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use std::path::{Path, PathBuf};

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

impl Installer for CommandInstaller {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn install<'a>(&'a self, image: &'a Path, facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let output = tokio::process::Command::new(&self.program)
                .args(&self.args)
                .arg(image)
                .env("SECUREEV_TARGET", &facts.name)
                .env("SECUREEV_ECU", &facts.ecu_serial)
                .env("SECUREEV_HARDWARE_ID", &facts.hardware_id)
                .env(
                    "SECUREEV_RELEASE_COUNTER",
                    facts.release_counter.to_string(),
                )
                .env("SECUREEV_SHA256", &facts.sha256)
                .env("SECUREEV_LENGTH", facts.length.to_string())
                // The installer is not the service: it must not talk to systemd
                // in the daemon's name.
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| facts.error(format!("cannot run {}: {e}", self.program.display())))?;
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
        })
    }

    fn check_installed<'a>(
        &'a self,
        _facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(async { Ok(InstallCheck::Unknown) })
    }
}
