//! `secureev-fleet-sim`: run a simulated fleet against a backend.
//!
//! Exit status: 0 when the run completed and no check-in failed, 1 when some
//! check-ins failed (the report says which kinds), 2 on a usage or set-up
//! error.

use anyhow::Context;
use clap::Parser;
use secureev_fleet_sim::{run, vehicle::Behaviour, Options};
use std::path::PathBuf;
use std::time::Duration;

/// Simulated vehicles, each with its own real keys, checking in over TLS.
#[derive(Debug, Parser)]
#[command(name = "secureev-fleet-sim", version)]
struct Args {
    /// Backend base URL.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// The admin listener's base URL (default: --url).
    #[arg(long)]
    admin_url: Option<String>,
    /// CA certificate (PEM) of the backend's TLS certificate.
    #[arg(long)]
    ca: PathBuf,
    /// File holding the admin token (to register vehicles and fetch roots).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Directory with director-root.json and image-root.json: read from it
    /// when no admin token is given, written to it otherwise.
    #[arg(long)]
    roots: Option<PathBuf>,
    /// Vehicles in the fleet.
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Vehicles that check in, spread over the fleet (default: all).
    #[arg(long)]
    active: Option<usize>,
    /// ECUs per vehicle.
    #[arg(long, default_value_t = 1)]
    ecus: usize,
    /// Hardware ID of the Primaries.
    #[arg(long, default_value = "sim-hu")]
    hardware_id: String,
    /// Connections (one worker each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured seconds after the warm-up round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many measured rounds instead.
    #[arg(long)]
    rounds: Option<u64>,
    /// Share of installs reported as failed.
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
    /// Share of assigned images reported as an attack.
    #[arg(long, default_value_t = 0.0)]
    attack_fraction: f64,
    /// Seed of keys and fates.
    #[arg(long, default_value = "secureev-fleet-sim")]
    seed: String,
    /// Register the fleet first.
    #[arg(long)]
    register: bool,
    /// Only register (no check-ins).
    #[arg(long)]
    register_only: bool,
    /// Write every metadata body served under this directory, by path.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Server process ids whose CPU and memory to report.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let code = match rt.enable_all().build() {
        Ok(rt) => match rt.block_on(real_main(args)) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("secureev-fleet-sim: {e:#}");
                2
            }
        },
        Err(e) => {
            eprintln!("secureev-fleet-sim: runtime: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn real_main(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_fraction)
            && (0.0..=1.0).contains(&args.attack_fraction)
            && args.fail_fraction + args.attack_fraction <= 1.0,
        "--fail-fraction and --attack-fraction are shares in 0..=1 that add up to at most 1"
    );
    let ca = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let mut opts = Options::new(&args.url, ca);
    opts.admin_url = args.admin_url;
    if let Some(f) = &args.admin_token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        opts.admin_token = Some(t.trim().to_owned());
    } else if let Some(dir) = &args.roots {
        let read = |n: &str| {
            std::fs::read(dir.join(n)).with_context(|| format!("reading {}", dir.join(n).display()))
        };
        opts.director_root = Some(read("director-root.json")?);
        opts.image_root = Some(read("image-root.json")?);
    }
    opts.fleet = args.vehicles;
    opts.active = args.active;
    opts.ecus = args.ecus;
    opts.hardware_id = args.hardware_id;
    opts.connections = args.connections;
    opts.duration = Duration::from_secs(args.duration);
    opts.rounds = if args.register_only {
        Some(0)
    } else {
        args.rounds
    };
    opts.behaviour = Behaviour {
        fail_fraction: args.fail_fraction,
        attack_fraction: args.attack_fraction,
        seed: args.seed,
    };
    opts.register = args.register || args.register_only;
    opts.dump = args.dump.is_some();
    opts.progress = !args.quiet;
    opts.server_pids = args.server_pid;
    if args.register_only {
        opts.active = Some(1);
    }
    let out = run(&opts).await?;
    if let (Some(dir), true) = (&args.roots, opts.admin_token.is_some()) {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("director-root.json"), &out.director_root)?;
        std::fs::write(dir.join("image-root.json"), &out.image_root)?;
    }
    if let Some(dir) = &args.dump {
        let n = out.dump.write_to(dir)?;
        eprintln!("wrote {n} files under {}", dir.display());
    }
    println!("{}", out.report);
    if let Some(f) = &args.json {
        std::fs::write(f, serde_json::to_vec_pretty(&out.report)?)?;
    }
    Ok(out.report.error_count() == 0)
}
