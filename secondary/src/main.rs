//! `secureev-ecu`: parse arguments and configuration, then serve.
//!
//! Exit codes: 0 after SIGTERM/SIGINT, 1 on a runtime error, 2 on bad
//! arguments or configuration, 69 (EX_UNAVAILABLE) when the kernel has no
//! SocketCAN / ISO-TP or the interface does not exist.

use anyhow::Context as _;
use clap::Parser;
use secureev_secondary::{config, serve, Error};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a missing CAN stack or interface (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for bad arguments or configuration.
const EXIT_CONFIG: u8 = 2;

/// SecureEV-OTA secondary ECU agent: UDS over ISO-TP (CAN) and/or DoIP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// State directory (overrides `state_dir` of the configuration).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Serve UDS over kernel ISO-TP on this CAN interface.
    #[arg(long)]
    can_interface: Option<String>,
    /// Serve DoIP on this TCP address (e.g. 127.0.0.1:13400).
    #[arg(long)]
    doip: Option<std::net::SocketAddr>,
    /// CAN id the ECU sends on (overrides `[can] tx_id`).
    #[arg(long, value_parser = parse_id)]
    can_tx_id: Option<u32>,
    /// CAN id the ECU receives on (overrides `[can] rx_id`).
    #[arg(long, value_parser = parse_id)]
    can_rx_id: Option<u32>,
    /// Use CAN FD (overrides `[can] fd`).
    #[arg(long)]
    can_fd: bool,
    /// Create the ECU's keys if absent, print its identity as JSON (serial,
    /// hardware ID, did:key, X25519 public key) for registration with the
    /// backend, and exit.
    #[arg(long)]
    print_identity: bool,
}

fn parse_id(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secureev-ecu: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secureev-ecu: {e:#}");
            let code = match e.downcast_ref::<Error>() {
                Some(Error::Config(_)) => EXIT_CONFIG,
                Some(Error::Can(
                    secureev_can::Error::NoCanSupport { .. }
                    | secureev_can::Error::NoSuchInterface { .. },
                )) => EXIT_UNAVAILABLE,
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = config::load(&args.config)?;
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    if let Some(id) = args.can_tx_id {
        cfg.can.tx_id = id;
    }
    if let Some(id) = args.can_rx_id {
        cfg.can.rx_id = id;
    }
    cfg.can.fd |= args.can_fd;
    if args.print_identity {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let keys = secureev_secondary::keys::load_or_create(&cfg.state_dir)?;
        let identity = serde_json::json!({
            "serial": cfg.serial,
            "hardware_id": cfg.hardware_id,
            "did": secureev_uptane::did::to_did(&keys.signing.verifying_key()),
            "x25519_public_key": keys.decryption.public().to_hex(),
        });
        println!("{}", serde_json::to_string_pretty(&identity)?);
        return Ok(());
    }
    if args.can_interface.is_none() && args.doip.is_none() {
        return Err(Error::Config("give --can-interface IFACE and/or --doip ADDR".into()).into());
    }
    if args.can_interface.is_some() {
        // Before anything else, so that a kernel without AF_CAN says so clearly.
        secureev_can::probe_isotp().map_err(Error::Can)?;
    }
    let server = serve::build_server(&cfg)?;
    // One tester at a time across both transports.
    let arbiter = serve::SharedArbiter::default();
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(iface) = args.can_interface {
        let isotp = cfg.can.isotp(cfg.max_pdu)?;
        let (server, arbiter, shutdown) = (server.clone(), arbiter.clone(), shutdown.clone());
        tasks.spawn(async move {
            serve::serve_can_with(&iface, isotp, server, arbiter, shutdown)
                .await
                .with_context(|| format!("serving ISO-TP on {iface}"))
        });
    }
    if let Some(addr) = args.doip {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Net {
                what: format!("bind DoIP {addr}"),
                error: e,
            })?;
        tracing::info!(%addr, logical_address = cfg.doip.logical_address, "serving DoIP");
        let (server, shutdown, la) = (server.clone(), shutdown.clone(), cfg.doip.logical_address);
        let arbiter = arbiter.clone();
        tasks.spawn(async move {
            serve::serve_doip_with(listener, server, arbiter, la, shutdown)
                .await
                .context("serving DoIP")
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        Some(r) = tasks.join_next() => r.map_err(anyhow::Error::from).and_then(|r| r),
    };
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    result
}
