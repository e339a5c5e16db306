//! `secureev-server`: glue between the command line and the library.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error (clap), 3 bad
//! configuration.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use secureev_server::client::{image_add, rotate_image_key, AdminClient, ImageSpec};
use secureev_server::config::{Config, Transport};
use secureev_server::init::{init, InitOptions};
use secureev_server::logging::{self, LogFormat};
use secureev_server::operators::Role;
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
    /// Admin API base URL (the admin listener).
    #[arg(long, default_value = "https://127.0.0.1:8444", global = true)]
    server: String,
    /// Data directory holding the CA certificate (and the bootstrap
    /// operator's token, unless --token-file is given).
    #[arg(long, default_value = "data", global = true)]
    data_dir: PathBuf,
    /// File holding this operator's API token (default <data-dir>/admin-token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct Local {
    /// Data directory (the command opens its database directly).
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
        /// Vehicle listen address written to the configuration.
        #[arg(long, default_value = secureev_server::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Admin API listen address written to the configuration.
        #[arg(long, default_value = secureev_server::config::DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// Store in this (existing, empty) PostgreSQL database instead of
        /// the data directory's SQLite file; written to the configuration
        /// as `database_url`. Several instances may then share it.
        #[arg(long)]
        database_url: Option<String>,
        /// Generate the online keys and the KEK inside this PKCS#11 module's
        /// token (key_store = "pkcs11") instead of as files.
        #[arg(long, requires = "pkcs11_token_label")]
        pkcs11_module: Option<PathBuf>,
        /// Label of the token.
        #[arg(long, requires = "pkcs11_module")]
        pkcs11_token_label: Option<String>,
        /// File holding the token's user PIN (0600).
        #[arg(long, requires = "pkcs11_module", conflicts_with = "pkcs11_pin_env")]
        pkcs11_pin_file: Option<PathBuf>,
        /// Environment variable holding the token's user PIN.
        #[arg(long, requires = "pkcs11_module")]
        pkcs11_pin_env: Option<String>,
        /// Label prefix of the server's objects in the token.
        #[arg(long, default_value = secureev_server::config::DEFAULT_PKCS11_LABEL_PREFIX)]
        pkcs11_label_prefix: String,
    },
    /// Serve over HTTPS (or plain HTTP on loopback with --insecure-http).
    Serve {
        /// Configuration file (default: <data-dir>/server.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (when no --config is given).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override the vehicle listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the admin listen address.
        #[arg(long)]
        admin_listen: Option<secureev_server::config::ListenAddr>,
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
    /// Staged rollouts: a campaign in groups started in cascade (docs/server.md).
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Per-vehicle enrollment credentials (fleet-admin).
    Enroll {
        #[command(subcommand)]
        cmd: EnrollCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Operators of the admin API and their tokens (local: opens the database).
    Operator {
        #[command(subcommand)]
        cmd: OperatorCmd,
        #[command(flatten)]
        local: Local,
    },
    /// The PKCS#11 token of the online keys and the KEK (local; reads
    /// <data-dir>/server.toml, which must say key_store = "pkcs11").
    Hsm {
        #[command(subcommand)]
        cmd: HsmCmd,
        #[command(flatten)]
        local: Local,
    },
    /// Device certificates for mutual TLS, from the fleet CA whose key is in
    /// the offline directory (local).
    DeviceCert {
        #[command(subcommand)]
        cmd: DeviceCertCmd,
    },
    /// The signed audit trail (local: opens the database).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
        #[command(flatten)]
        local: Local,
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
        /// Human version shown to the driver, e.g. 2.4.1 (signed as
        /// `custom.version`; one line, at most 64 bytes).
        #[arg(long)]
        version: Option<String>,
        /// Release counter.
        #[arg(long)]
        release_counter: Option<u64>,
        /// Release notes shown to the driver (signed as
        /// `custom.releaseNotes`; UTF-8, at most 4096 bytes, no control
        /// characters but newline and tab).
        #[arg(long, conflicts_with = "release_notes_file")]
        release_notes: Option<String>,
        /// Read the release notes from FILE (same rules).
        #[arg(long, value_name = "FILE")]
        release_notes_file: Option<PathBuf>,
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
enum EnrollCmd {
    /// Make a single-use credential bound to one VIN; prints it once.
    Create {
        /// The VIN.
        #[arg(long)]
        vin: String,
        /// Lifetime in seconds (default 3600, at most 7 days).
        #[arg(long)]
        ttl_secs: Option<i64>,
        /// Print only the credential (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// List credentials (never their secrets).
    List,
}

#[derive(Subcommand, Debug)]
enum OperatorCmd {
    /// Add an operator; prints its token once.
    Add {
        /// Name.
        #[arg(long)]
        name: String,
        /// Role: viewer, release-manager, fleet-admin or key-admin (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Write the token to this file (0600) instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List operators.
    List,
    /// Revoke an operator's token.
    Revoke {
        /// Name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCertCmd {
    /// Make the fleet CA: key and certificate in <offline-dir>/fleet/, the
    /// certificate also in <data-dir>/tls/fleet-ca.pem when given.
    InitCa {
        /// Offline directory (the fleet CA key stays there).
        #[arg(long)]
        offline_dir: PathBuf,
        /// Data directory of the server that checks device certificates.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Issue a device certificate whose subject commonName is the VIN.
    Issue {
        /// Offline directory holding the fleet CA key.
        #[arg(long)]
        offline_dir: PathBuf,
        /// The vehicle.
        #[arg(long)]
        vin: String,
        /// The device's PKCS#10 request (PEM, P-256); its key stays on the device.
        #[arg(long, conflicts_with = "key_out", required_unless_present = "key_out")]
        csr: Option<PathBuf>,
        /// Make a new key and write it here (0600).
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// Where the certificate goes (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 7300)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
enum HsmCmd {
    /// Move the PEM online keys and the KEK of <data-dir>/keys into the
    /// token: each imported (not extractable), checked to sign and seal as
    /// the file does, then the file removed.
    Import,
    /// List the server's objects in the token (label, key id, class, and
    /// for private and secret keys whether they are sensitive/extractable).
    List,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check every record's hash, link and signature; name the first broken one.
    Verify,
    /// Print the records as JSON lines (oldest first).
    Export,
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

#[derive(Subcommand, Debug)]
enum RolloutCmd {
    /// Create a rollout (no assignment until it starts).
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// Image name.
        #[arg(long)]
        image: String,
        /// Hardware IDs (default: every one the image is built for).
        #[arg(long = "hardware-id")]
        hardware_ids: Vec<String>,
        /// A group, in start order: `count=N` or `percent=P` (or neither: the
        /// rest), and optionally `vin=PATTERN`, `hw=ID`, `name=NAME`,
        /// `success=P`, `error=P`, comma-separated.
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Percent of a group installed that starts the next one.
        #[arg(long, default_value_t = secureev_server::rollout::DEFAULT_SUCCESS_THRESHOLD)]
        success_threshold: u32,
        /// Percent of a group failed (installs, attacks) above which the rollout stops.
        #[arg(long, default_value_t = secureev_server::rollout::DEFAULT_ERROR_THRESHOLD)]
        error_threshold: u32,
        /// Start the first group at once.
        #[arg(long)]
        start: bool,
    },
    /// Start a ready rollout.
    Start {
        /// Rollout id.
        id: i64,
    },
    /// Pause a running rollout.
    Pause {
        /// Rollout id.
        id: i64,
    },
    /// Resume a paused rollout.
    Resume {
        /// Rollout id.
        id: i64,
    },
    /// Cancel a rollout.
    Cancel {
        /// Rollout id.
        id: i64,
    },
    /// Progress per group of one rollout, or of every rollout.
    Status {
        /// Rollout id (all when absent).
        id: Option<i64>,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `--release-notes-file`: at most [`MAX_RELEASE_NOTES_LEN`] bytes of UTF-8
/// (read no further), checked as `image add` checks the text.
fn read_release_notes(path: &std::path::Path) -> anyhow::Result<String> {
    use secureev_uptane::custom::{DisplayText, MAX_RELEASE_NOTES_LEN};
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_RELEASE_NOTES_LEN as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() <= MAX_RELEASE_NOTES_LEN,
        "{}: release notes longer than {MAX_RELEASE_NOTES_LEN} bytes",
        path.display()
    );
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: release notes are not UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    DisplayText::ReleaseNotes
        .check(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text)
}

async fn admin_call(
    remote: &Remote,
    f: impl AsyncFnOnce(AdminClient) -> secureev_server::Result<Value>,
) -> anyhow::Result<()> {
    let client = AdminClient::from_files(
        &remote.server,
        &remote.data_dir,
        remote.token_file.as_deref(),
    )
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

/// The key store of a local data directory: what its `server.toml` names
/// (PEM files when there is none).
fn local_store(data_dir: &std::path::Path) -> anyhow::Result<secureev_server::keystore::KeyStore> {
    let path = data_dir.join(secureev_server::config::CONFIG_FILE);
    if !path.exists() {
        return Ok(secureev_server::keystore::KeyStore::files(data_dir));
    }
    let mut config = Config::load(&path)?;
    // The CLI may run from another directory than the one in the file.
    config.data_dir = data_dir.to_owned();
    Ok(secureev_server::keystore::KeyStore::open(&config)?)
}

/// The database of a local data directory, for the local subcommands.
fn local_db(data_dir: &std::path::Path) -> anyhow::Result<secureev_server::db::Db> {
    let config = data_dir.join(secureev_server::config::CONFIG_FILE);
    if config.exists() {
        if let Some(url) = Config::load(&config)?.database_url {
            return Ok(secureev_server::db::Db::connect(&url)?);
        }
    }
    let path = data_dir.join(secureev_server::layout::DB_FILE);
    anyhow::ensure!(path.exists(), "no database at {}", path.display());
    Ok(secureev_server::db::Db::open(&path)?)
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Serve { .. } | Command::Init { .. }) {
        logging::init(LogFormat::Text);
    }
    match cli.command {
        Command::Init {
            data_dir,
            offline_dir,
            hostnames,
            listen,
            admin_listen,
            database_url,
            pkcs11_module,
            pkcs11_token_label,
            pkcs11_pin_file,
            pkcs11_pin_env,
            pkcs11_label_prefix,
        } => {
            logging::init(LogFormat::Text);
            let opts = InitOptions {
                database_url,
                data_dir,
                offline_dir: offline_dir.clone(),
                hostnames,
                listen,
                admin_listen,
            };
            let r = match (pkcs11_module, pkcs11_token_label) {
                (Some(module), Some(token_label)) => {
                    let p = secureev_server::config::Pkcs11Config {
                        module,
                        token_label,
                        pin_file: pkcs11_pin_file,
                        pin_env: pkcs11_pin_env,
                        label_prefix: pkcs11_label_prefix,
                    };
                    secureev_server::init::init_in_token(&opts, &p)?
                }
                _ => init(&opts)?,
            };
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
            admin_listen,
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
            if let Some(l) = admin_listen {
                config.admin_listen = l;
            }
            if insecure_http {
                config.transport = Transport::InsecureHttp;
            }
            config.validate()?;
            logging::init(config.log_format);
            let nofile = secureev_server::limits::raise_nofile_limit(config.max_connections)?;
            tracing::info!(
                nofile,
                max_connections = config.max_connections,
                "file-descriptor limit"
            );
            secureev_server::run(config, shutdown_signal()).await?;
        }
        Command::Enroll { cmd, remote } => match cmd {
            EnrollCmd::Create {
                vin,
                ttl_secs,
                quiet,
            } => {
                let body = json!({ "vin": vin, "ttl_secs": ttl_secs });
                let client = AdminClient::from_files(
                    &remote.server,
                    &remote.data_dir,
                    remote.token_file.as_deref(),
                )
                .context("preparing the admin client")?;
                let v = client.post("/admin/enrollments", &body).await?.ok()?.json();
                if quiet {
                    println!("{}", v["credential"].as_str().unwrap_or_default());
                } else {
                    print(&v);
                }
            }
            EnrollCmd::List => {
                admin_call(&remote, async |c| {
                    Ok(c.get("/admin/enrollments").await?.ok()?.json())
                })
                .await?
            }
        },
        Command::Operator { cmd, local } => {
            let db = local_db(&local.data_dir)?;
            let now = secureev_server::unix_now();
            match cmd {
                OperatorCmd::Add {
                    name,
                    roles,
                    token_file,
                } => {
                    let roles = roles
                        .iter()
                        .map(|r| Role::parse(r))
                        .collect::<secureev_server::Result<Vec<_>>>()?;
                    let key =
                        secureev_server::audit::load_or_create_key(&local_store(&local.data_dir)?)?;
                    let token = db.write(|tx| {
                        let token = secureev_server::operators::add(tx, &name, &roles, now)?;
                        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                        secureev_server::audit::append(
                            tx,
                            &key,
                            now,
                            "local-cli",
                            "operator-added",
                            json!({ "name": name, "roles": names }),
                        )?;
                        Ok(token)
                    })?;
                    match token_file {
                        Some(f) => {
                            secureev_server::layout::write_private(&f, token.as_bytes())?;
                            println!("token of {name} written to {}", f.display());
                        }
                        None => println!("{token}"),
                    }
                }
                OperatorCmd::List => {
                    let ops = db.read(|tx| tx.operators())?;
                    print(&json!({ "operators": ops }));
                }
                OperatorCmd::Revoke { name } => {
                    let key =
                        secureev_server::audit::load_or_create_key(&local_store(&local.data_dir)?)?;
                    db.write(|tx| {
                        if !tx.revoke_operator(&name, now)? {
                            return Err(secureev_server::Error::NotFound(format!(
                                "no active operator {name}"
                            )));
                        }
                        secureev_server::audit::append(
                            tx,
                            &key,
                            now,
                            "local-cli",
                            "operator-revoked",
                            json!({ "name": name }),
                        )?;
                        Ok(())
                    })?;
                    println!("revoked {name}");
                }
            }
        }
        Command::Hsm { cmd, local } => {
            let store = local_store(&local.data_dir)?;
            let secureev_server::keystore::KeyStore::Token(token) = store else {
                return Err(secureev_server::Error::Config(format!(
                    "{} does not say key_store = \"pkcs11\"; add it and a [pkcs11] table first",
                    local
                        .data_dir
                        .join(secureev_server::config::CONFIG_FILE)
                        .display()
                ))
                .into());
            };
            match cmd {
                HsmCmd::Import => {
                    let r = secureev_server::keystore::import_into_token(&local.data_dir, &token)?;
                    for (label, keyid) in &r.keys {
                        println!("key {keyid} in {label}");
                    }
                    println!("kek: {}", r.kek);
                    for f in &r.removed {
                        println!("removed {}", f.display());
                    }
                    if r.tls_left {
                        println!("tls key: not a P-256 PKCS#8 key, left as a file");
                    }
                }
                HsmCmd::List => {
                    for o in token.list()? {
                        println!("{o}");
                    }
                }
            }
        }
        Command::Audit { cmd, local } => {
            let db = local_db(&local.data_dir)?;
            let records = db.read(secureev_server::audit::all_records)?;
            match cmd {
                AuditCmd::Verify => {
                    let keys = secureev_server::audit::public_keys(&local_store(&local.data_dir)?)?;
                    match secureev_server::audit::verify(&records, &keys) {
                        Ok(n) => println!("audit trail intact: {n} records"),
                        Err(broken) => anyhow::bail!("audit trail broken at {broken}"),
                    }
                }
                AuditCmd::Export => {
                    for r in &records {
                        println!("{}", serde_json::to_string(r)?);
                    }
                }
            }
        }
        Command::Image { cmd, remote } => match cmd {
            ImageCmd::Add {
                file,
                name,
                hardware_ids,
                version,
                release_counter,
                release_notes,
                release_notes_file,
                encrypt,
                offline_dir,
            } => {
                let release_notes = match release_notes_file {
                    Some(path) => Some(read_release_notes(&path)?),
                    None => release_notes,
                };
                let data =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let spec = ImageSpec {
                    name,
                    hardware_ids,
                    version,
                    release_counter,
                    encrypt,
                    release_notes,
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
        Command::Rollout { cmd, remote } => {
            let (path, body) = match cmd {
                RolloutCmd::Create {
                    name,
                    image,
                    hardware_ids,
                    groups,
                    success_threshold,
                    error_threshold,
                    start,
                } => {
                    let groups = groups
                        .iter()
                        .map(|g| secureev_server::rollout::parse_group_arg(g))
                        .collect::<secureev_server::Result<Vec<_>>>()
                        .context("--group")?;
                    let mut body = json!({
                        "name": name, "image": image, "groups": groups,
                        "success_threshold": success_threshold,
                        "error_threshold": error_threshold, "start": start,
                    });
                    if !hardware_ids.is_empty() {
                        body["hardware_ids"] = json!(hardware_ids);
                    }
                    ("/admin/rollouts".to_owned(), Some(body))
                }
                RolloutCmd::Start { id } => {
                    (format!("/admin/rollouts/{id}/start"), Some(json!({})))
                }
                RolloutCmd::Pause { id } => {
                    (format!("/admin/rollouts/{id}/pause"), Some(json!({})))
                }
                RolloutCmd::Resume { id } => {
                    (format!("/admin/rollouts/{id}/resume"), Some(json!({})))
                }
                RolloutCmd::Cancel { id } => {
                    (format!("/admin/rollouts/{id}/cancel"), Some(json!({})))
                }
                RolloutCmd::Status { id: Some(id) } => (format!("/admin/rollouts/{id}"), None),
                RolloutCmd::Status { id: None } => ("/admin/rollouts".to_owned(), None),
            };
            admin_call(&remote, async |c| match body {
                Some(b) => Ok(c.post(&path, &b).await?.ok()?.json()),
                None => Ok(c.get(&path).await?.ok()?.json()),
            })
            .await?
        }
        Command::DeviceCert { cmd } => match cmd {
            DeviceCertCmd::InitCa {
                offline_dir,
                data_dir,
            } => {
                secureev_server::tls::init_fleet_ca(&offline_dir, data_dir.as_deref())?;
                println!(
                    "fleet CA in {}; set device_certificates = \"required\" in server.toml",
                    offline_dir
                        .join(secureev_server::layout::FLEET_CA_KEY)
                        .display()
                );
            }
            DeviceCertCmd::Issue {
                offline_dir,
                vin,
                csr,
                key_out,
                out,
                days,
            } => {
                use secureev_server::tls::DeviceKey;
                let key = match &csr {
                    Some(p) => DeviceKey::Csr(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    ),
                    None => DeviceKey::Generate,
                };
                secureev_server::tls::issue_device_cert_files(
                    &offline_dir,
                    &vin,
                    key,
                    &out,
                    key_out.as_deref(),
                    secureev_server::unix_now(),
                    days,
                )?;
                println!("device certificate for {vin} in {}", out.display());
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
