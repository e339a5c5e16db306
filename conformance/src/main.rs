//! `tuf-conformance-client`: the client-under-test CLI of the TUF conformance
//! suite (see `CLIENT-CLI.md` of theupdateframework/tuf-conformance).
//!
//! ```text
//! tuf-conformance-client --metadata-dir D init TRUSTED_ROOT
//! tuf-conformance-client --metadata-url U --metadata-dir D refresh
//! tuf-conformance-client --metadata-url U --metadata-dir D --target-name T \
//!     [--target-name T2 ...] --target-dir TD --target-base-url TU download
//! ```
//!
//! Exit codes: 0 on success, 1 on any failure (verification, network, I/O,
//! bad arguments and internal errors alike), as the protocol requires.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use secureev_tuf_conformance::Client;
use secureev_uptane::trusted::Limits;
use secureev_uptane::Timestamp;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Exit code for every failure; the protocol knows no other.
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "tuf-conformance-client",
    version,
    about = "TUF conformance-suite client over the SecureEV-OTA verification core"
)]
struct Cli {
    /// Directory of trusted metadata (root.json, timestamp.json, ...).
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata.
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    /// Target path to download; may be given more than once.
    #[arg(long = "target-name", global = true)]
    target_names: Vec<String>,
    /// Directory for downloaded targets.
    #[arg(long, global = true)]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true)]
    target_base_url: Option<String>,
    /// Pretend the time is this many days later (older suite versions pass it).
    #[arg(long, global = true, default_value_t = 0)]
    days_in_future: i64,
    /// Maximum number of root versions to walk in one refresh.
    #[arg(long, global = true)]
    max_root_rotations: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install TRUSTED_ROOT as the trusted root. Fetches nothing.
    Init {
        /// File holding the initial root.json.
        trusted_root: PathBuf,
    },
    /// Update the top-level metadata from the repository.
    Refresh,
    /// Refresh, then download and verify the --target-name targets.
    Download,
}

fn main() -> ExitCode {
    // A panic is a failure like any other: exit 1, never 101 or an abort.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(
            std::io::stderr(),
            "tuf-conformance-client: internal error: {info}"
        );
        std::process::exit(i32::from(EXIT_FAILURE));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 2 on usage errors; the protocol wants 1.
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_FAILURE),
            };
        }
    };
    match run(cli, wall_clock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tuf-conformance-client: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The only place that reads the clock.
fn wall_clock() -> Timestamp {
    let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    Timestamp::from_unix(secs)
}

fn run(cli: Cli, clock: Timestamp) -> anyhow::Result<()> {
    let now = clock.plus_secs(cli.days_in_future.saturating_mul(86_400));
    let metadata_dir = cli.metadata_dir.context("--metadata-dir is required")?;
    let mut limits = Limits::default();
    if let Some(n) = cli.max_root_rotations {
        limits.max_root_rotations = n;
    }
    let client = Client::new(&metadata_dir).with_limits(limits);
    let with_url = |client: Client| -> anyhow::Result<Client> {
        let url = cli
            .metadata_url
            .as_deref()
            .context("--metadata-url is required")?;
        Ok(client.with_metadata_url(url))
    };
    match cli.command {
        Command::Init { trusted_root } => client
            .init(&trusted_root)
            .with_context(|| format!("init from {}", trusted_root.display())),
        Command::Refresh => {
            with_url(client)?.refresh(now).context("refresh")?;
            Ok(())
        }
        Command::Download => {
            let client = with_url(client)?;
            let target_dir = cli
                .target_dir
                .as_deref()
                .context("--target-dir is required")?;
            let base = cli
                .target_base_url
                .as_deref()
                .context("--target-base-url is required")?;
            anyhow::ensure!(!cli.target_names.is_empty(), "--target-name is required");
            client
                .download(&cli.target_names, base, target_dir, now)
                .context("download")?;
            Ok(())
        }
    }
}
