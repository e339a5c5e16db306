//! `secureev-server`: glue between the command line and the library.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error (clap), 3 bad
//! configuration.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use secureev_server::client::{image_add, rotate_image_key, AdminClient, ImageSpec};
use secureev_server::config::{Config, Transport};
use secureev_server::init::{init, InitOptions};
use secureev_server::repo::RotationMode;
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "secureev-server",
    version,
    about = "SecureEV-OTA Uptane backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Remote {
    /// Server base URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
    server: String,
    /// Data directory holding the admin token and CA certificate.
    #[arg(long, default_value = "data", global = true)]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data directory (dev CA, server certificate, keys, database)
    /// and an offline key directory.
    Init {
        /// Data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Offline key directory to create (Image root and targets keys).
        #[arg(long)]
        offline_dir: PathBuf,
        /// Host names / IP addresses for the server certificate.
        #[arg(long = "hostname", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        hostnames: Vec<String>,
        /// Listen address written to the configuration.
        #[arg(long, default_value = secureev_server::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Serve over HTTPS (or plain HTTP on loopback with --insecure-http).
    Serve {
        /// Configuration file (default: <data-dir>/server.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (when no --config is given).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override the listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Serve plain HTTP. Loopback only; for tests.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Image repository.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Director keys.
    Director {
        #[command(subcommand)]
        cmd: DirectorCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Vehicle registry.
    Vehicle {
        #[command(subcommand)]
        cmd: VehicleCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Assign an image to one ECU.
    Assign {
        /// VIN.
        #[arg(long)]
        vin: String,
        /// ECU serial.
        #[arg(long)]
        ecu: String,
        /// Image name.
        #[arg(long)]
        image: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Campaigns: an image on every ECU of a hardware ID.
    Campaign {
        #[command(subcommand)]
        cmd: CampaignCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the OpenAPI document (committed as docs/openapi.json).
    Openapi,
    /// Server status.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Sign new Image targets with the offline key, upload and publish.
    Add {
        /// The image file.
        file: PathBuf,
        /// Target name.
        #[arg(long)]
        name: String,
        /// Hardware IDs the image is for.
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
        /// Version string.
        #[arg(long)]
        version: Option<String>,
        /// Release counter.
        #[arg(long)]
        release_counter: Option<u64>,
        /// Encrypt with a fresh content key (wrapped per ECU by the Director).
        #[arg(long)]
        encrypt: bool,
        /// Offline key directory.
        #[arg(long)]
        offline_dir: PathBuf,
    },
    /// List published images.
    List,
    /// Rotate the Image repository's root or targets key (offline keys):
    /// signs root N+1 with the old and new root keys and publishes it.
    Rotate {
        /// `root` or `targets`.
        #[arg(long)]
        role: String,
        /// Add a key to the role instead of replacing its keys.
        #[arg(long)]
        add: bool,
        /// New threshold of the role.
        #[arg(long)]
        threshold: Option<u32>,
        /// Offline key directory.
        #[arg(long)]
        offline_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DirectorCmd {
    /// Rotate a Director role's key (online keys, on the server).
    Rotate {
        /// `root`, `targets`, `snapshot` or `timestamp`.
        #[arg(long)]
        role: String,
        /// Add a key to the role instead of replacing its keys.
        #[arg(long)]
        add: bool,
        /// New threshold of the role.
        #[arg(long)]
        threshold: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum VehicleCmd {
    /// Register a vehicle from a JSON file (see docs/server.md).
    Register {
        /// Registration JSON.
        file: PathBuf,
    },
    /// List vehicles.
    List,
    /// Show a vehicle.
    Show {
        /// VIN.
        vin: String,
    },
    /// A vehicle's history.
    History {
        /// VIN.
        vin: String,
    },
}

#[derive(Subcommand, Debug)]
enum CampaignCmd {
    /// Create a campaign.
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// Image name.
        #[arg(long)]
        image: String,
        /// Hardware ID.
        #[arg(long)]
        hardware_id: String,
    },
    /// List campaigns.
    List,
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn admin_call(
    remote: &Remote,
    f: impl AsyncFnOnce(AdminClient) -> secureev_server::Result<Value>,
) -> anyhow::Result<()> {
    let client = AdminClient::from_data_dir(&remote.server, &remote.data_dir)
        .context("preparing the admin client")?;
    print(&f(client).await?);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            offline_dir,
            hostnames,
            listen,
        } => {
            let r = init(&InitOptions {
                data_dir,
                offline_dir: offline_dir.clone(),
                hostnames,
                listen,
            })?;
            println!("wrote {}", r.config_file.display());
            println!(
                "offline keys in {}: move them to the signing station",
                offline_dir.display()
            );
        }
        Command::Serve {
            config,
            data_dir,
            listen,
            insecure_http,
        } => {
            let path = match (config, data_dir) {
                (Some(c), _) => c,
                (None, Some(d)) => d.join(secureev_server::config::CONFIG_FILE),
                (None, None) => anyhow::bail!("give --config or --data-dir"),
            };
            let mut config = Config::load(&path)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if insecure_http {
                config.transport = Transport::InsecureHttp;
            }
            config.validate()?;
            secureev_server::run(config, shutdown_signal()).await?;
        }
        Command::Image { cmd, remote } => match cmd {
            ImageCmd::Add {
                file,
                name,
                hardware_ids,
                version,
                release_counter,
                encrypt,
                offline_dir,
            } => {
                let data =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let spec = ImageSpec {
                    name,
                    hardware_ids,
                    version,
                    release_counter,
                    encrypt,
                };
                admin_call(&remote, async |c| {
                    let now = Timestamp::from_unix(secureev_server::unix_now());
                    let v = image_add(&c, &offline_dir, &spec, &data, now).await?;
                    Ok(json!({ "targets_version": v }))
                })
                .await?;
            }
            ImageCmd::Rotate {
                role,
                add,
                threshold,
                offline_dir,
            } => {
                let mode = if add {
                    RotationMode::Add
                } else {
                    RotationMode::Replace
                };
                admin_call(&remote, async |c| {
                    let now = Timestamp::from_unix(secureev_server::unix_now());
                    let v = rotate_image_key(&c, &offline_dir, &role, mode, threshold, now).await?;
                    Ok(json!({ "root_version": v }))
                })
                .await?;
            }
            ImageCmd::List => {
                admin_call(&remote, async |c| {
                    Ok(c.get("/admin/images").await?.ok()?.json())
                })
                .await?
            }
        },
        Command::Director { cmd, remote } => match cmd {
            DirectorCmd::Rotate {
                role,
                add,
                threshold,
            } => {
                let mode = if add { "add" } else { "replace" };
                let body = json!({ "role": role, "mode": mode, "threshold": threshold });
                admin_call(&remote, async |c| {
                    Ok(c.post("/admin/director/rotate", &body).await?.ok()?.json())
                })
                .await?;
            }
        },
        Command::Vehicle { cmd, remote } => match cmd {
            VehicleCmd::Register { file } => {
                let text =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let body: Value =
                    serde_json::from_slice(&text).context("registration is not JSON")?;
                admin_call(&remote, async |c| {
                    Ok(c.post("/admin/vehicles", &body).await?.ok()?.json())
                })
                .await?;
            }
            VehicleCmd::List => {
                admin_call(&remote, async |c| {
                    Ok(c.get("/admin/vehicles").await?.ok()?.json())
                })
                .await?
            }
            VehicleCmd::Show { vin } => {
                admin_call(&remote, async |c| {
                    Ok(c.get(&format!("/admin/vehicles/{vin}")).await?.ok()?.json())
                })
                .await?
            }
            VehicleCmd::History { vin } => {
                admin_call(&remote, async |c| {
                    Ok(c.get(&format!("/admin/vehicles/{vin}/history"))
                        .await?
                        .ok()?
                        .json())
                })
                .await?
            }
        },
        Command::Assign {
            vin,
            ecu,
            image,
            remote,
        } => {
            let body = json!({ "vin": vin, "ecu_serial": ecu, "image": image });
            admin_call(&remote, async |c| {
                Ok(c.post("/admin/assignments", &body).await?.ok()?.json())
            })
            .await?;
        }
        Command::Campaign { cmd, remote } => match cmd {
            CampaignCmd::Create {
                name,
                image,
                hardware_id,
            } => {
                let body = json!({ "name": name, "image": image, "hardware_id": hardware_id });
                admin_call(&remote, async |c| {
                    Ok(c.post("/admin/campaigns", &body).await?.ok()?.json())
                })
                .await?;
            }
            CampaignCmd::List => {
                admin_call(&remote, async |c| {
                    Ok(c.get("/admin/campaigns").await?.ok()?.json())
                })
                .await?
            }
        },
        Command::Openapi => print(&secureev_server::openapi::document()),
        Command::Status { remote } => {
            admin_call(&remote, async |c| {
                Ok(c.get("/admin/status").await?.ok()?.json())
            })
            .await?
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let config_error = e
                .downcast_ref::<secureev_server::Error>()
                .is_some_and(|e| matches!(e, secureev_server::Error::Config(_)));
            std::process::ExitCode::from(if config_error { 3 } else { 1 })
        }
    }
}
