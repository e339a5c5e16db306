//! `secureevctl`: command-line client for the SecureEV-OTA daemon (`secureev-otad`)
//! over its D-Bus API `io.secureev.Ota1`. See `docs/dbus-api.md`.
//!
//! `main` only parses arguments, runs the command and maps the outcome to a
//! documented exit status ([`exit`]).
#![forbid(unsafe_code)]

/// `println!` that ends the program quietly (status 0) when stdout is a
/// closed pipe (`secureevctl --json history | head -1`), as ripgrep does,
/// instead of panicking. It shadows the standard macro in every module.
macro_rules! println {
    () => { $crate::print_or_exit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print_or_exit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same treatment of a closed pipe.
macro_rules! print {
    ($($arg:tt)*) => { $crate::print_or_exit(format_args!($($arg)*)) };
}

mod commands;
mod exit;
mod output;

use clap::{Parser, Subcommand};

/// Default of `--timeout`: an hour (a large head-unit install takes minutes).
const DEFAULT_WAIT_SECS: u64 = 3600;

/// Control and watch over-the-air updates of this vehicle.
#[derive(Debug, Parser)]
#[command(name = "secureevctl", version, after_help = exit::HELP)]
struct Cli {
    /// D-Bus address to use instead of the system bus (e.g. `unix:path=/run/x`).
    #[arg(long, global = true, value_name = "ADDRESS")]
    bus: Option<String>,

    /// Print machine-readable JSON (JSON lines for `watch` and `--wait`).
    #[arg(long, global = true)]
    json: bool,

    /// Longest wait of `--wait` and `watch` for the operation to end, in
    /// seconds; then exit 75.
    #[arg(long, global = true, value_name = "SECS", default_value_t = DEFAULT_WAIT_SECS)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show state, progress, the pending update, last check and last error.
    Status,
    /// Ask the daemon to check for updates now.
    Check {
        /// Also start the back-off over: if this check fails, the next
        /// retry comes after the first back-off step again (every check
        /// asked for runs at once).
        #[arg(long)]
        force: bool,
        /// Follow progress until the check completes; exit with its code.
        #[arg(long)]
        wait: bool,
    },
    /// Show the pending update and install it after confirmation.
    ///
    /// The consent is bound to the update shown: the daemon refuses the install
    /// (exit 6) if the pending update changed in the meantime.
    Install {
        /// Do not ask; install the pending update shown.
        #[arg(long, short)]
        yes: bool,
        /// Install only if the pending update still has this id (from `status`).
        #[arg(long, value_name = "UPDATE_ID")]
        id: Option<String>,
        /// Follow progress until the install completes; exit with its code.
        #[arg(long)]
        wait: bool,
        /// If preconditions hold the install back, start it once they all
        /// hold (shown in `status`; `cancel` drops it) instead of refusing.
        #[arg(long)]
        when_ready: bool,
        /// A caller-chosen id recorded in the history entries of the install.
        #[arg(long, value_name = "ID")]
        transaction_id: Option<String>,
    },
    /// Cancel the running operation (downloads; installs past their start refuse).
    Cancel,
    /// Postpone the pending update by SECS seconds (1 to 604800).
    Postpone {
        /// Seconds.
        secs: u32,
    },
    /// Show live progress until the next operation completes; exit with its code.
    Watch,
    /// Show past operations.
    History,
    /// Show the vehicle's ECUs and their installed versions.
    Ecus,
    /// Register this vehicle with a backend (calls `Provision`).
    ///
    /// Sends the backend URL and optional VIN and one-time registration token to
    /// the daemon, which registers the vehicle's keys with the backend and reports
    /// the outcome with `Completed`. Run once at end of line or after a backend
    /// change; needs permission to call the daemon's `Provision` method.
    Provision {
        /// Backend base URL (https only).
        url: String,
        /// Vehicle identification number (default: the daemon's configuration).
        #[arg(long)]
        vin: Option<String>,
        /// Single-use enrollment credential for this VIN from the backend's
        /// fleet admin (`secureev-server enroll create --vin ...`).
        #[arg(long)]
        token: Option<String>,
        /// Wait until provisioning completes; exit with its code.
        #[arg(long)]
        wait: bool,
    },
}

/// Write to stdout; on a closed pipe exit at once with status 0, on another
/// write error with 1 (one line on stderr).
fn print_or_exit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("secureevctl: cannot write to stdout: {e}");
        std::process::exit(i32::from(exit::FAILURE));
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("secureevctl: cannot start runtime: {e}");
            return std::process::ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            match exit::access_denied(&e) {
                Some(m) => eprintln!(
                    "secureevctl: access denied by the D-Bus policy (is this user in the daemon's \
                     groups? see docs/dbus-api.md, Access control): {}",
                    m.lines().next().unwrap_or_default()
                ),
                None => eprintln!("secureevctl: {e:#}"),
            }
            std::process::ExitCode::from(exit::code_of(&e))
        }
    }
}
