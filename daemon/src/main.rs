//! `secureev-otad`: parses arguments and the configuration, sets up logging and
//! signals, and calls [`secureev_daemon::run`].
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime error, 2 on bad
//! arguments, 78 (`EX_CONFIG`) when the configuration is invalid.
#![forbid(unsafe_code)]

use clap::Parser;
use secureev_daemon::config;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for an invalid configuration (sysexits.h `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

/// The SecureEV-OTA vehicle daemon.
#[derive(Debug, Parser)]
#[command(name = "secureev-otad", version, about)]
struct Args {
    /// Configuration file; drop-ins are read from `<file>.d/*.toml`.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print a configuration file with every default and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Create the Primary's keys if absent and print its identity as JSON (VIN,
    /// ECU serial, hardware ID, P-256 public key PEM, did:key, X25519 public
    /// key), for registering the vehicle with the backend; then exit.
    #[arg(long)]
    print_identity: bool,
    /// After a reboot with an install through RAUC pending: run the health
    /// check and mark the booted slot good or bad (RAUC `Mark`), or note that
    /// the boot fell back; the daemon reports the outcome. Exits 0 when the
    /// slot was confirmed or nothing was pending, 1 when the install did not
    /// take. For secureev-boot-confirm.service.
    #[arg(long)]
    confirm_boot: bool,
}

/// journald adds its own timestamps and does not render colours.
fn init_tracing() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", config::default_config_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing();
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("secureev-otad: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.print_identity {
        return match print_identity(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("secureev-otad: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check_config {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secureev-otad: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.confirm_boot {
        use secureev_daemon::install::rauc::RaucPhase;
        return match runtime.block_on(secureev_daemon::install::rauc::confirm_boot_from_config(
            &config,
        )) {
            Ok(None) => {
                println!("no install pending a boot confirmation");
                ExitCode::SUCCESS
            }
            Ok(Some(RaucPhase::Confirmed)) => {
                println!("booted into the new slot: healthy, marked good");
                ExitCode::SUCCESS
            }
            Ok(Some(RaucPhase::Rejected { reason })) => {
                println!("the install did not take: {reason}");
                ExitCode::FAILURE
            }
            Ok(Some(phase)) => {
                println!("not rebooted into the new slot yet ({phase:?})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("secureev-otad: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result: anyhow::Result<()> = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        secureev_daemon::run::cancel_on_signals(shutdown.clone())?;
        let integrations =
            secureev_daemon::dbus_service::integrations(secureev_dbus::StateHandle::new());
        secureev_daemon::run_with(config, integrations, shutdown).await?;
        Ok(())
    });
    // Do not wait for blocking threads still hashing or copying: their state
    // is resumable (part files are re-hashed, installs journalled).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("secureev-otad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_identity(config: &config::Config) -> anyhow::Result<()> {
    let (keys, _) = secureev_daemon::keys::load_for(&config.keys, &config.state.dir)?;
    let identity = serde_json::json!({
        "vin": config.vehicle.vin,
        "primary_serial": config.vehicle.primary_serial,
        "hardware_id": config.vehicle.hardware_id,
        "public_key_pem": keys.signing.public_key().keyval.public,
        "did": keys.did(),
        "x25519_public_key": keys.encryption_public().to_hex(),
    });
    println!("{}", serde_json::to_string_pretty(&identity)?);
    Ok(())
}
