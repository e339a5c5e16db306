//! `secureev-server init`: a data directory with a development PKI, all
//! repository keys, the audit key, the KEK, the initial metadata and a
//! bootstrap operator; and an offline key directory with the Image
//! repository's root and targets keys and the development CA's key.

use crate::config::{Config, CONFIG_FILE};
use crate::db::Db;
use crate::director::DirectorKeys;
use crate::error::{Error, Result};
use crate::keystore::KeyStore;
use crate::layout::{self, write_private, write_public};
use crate::repo::{self, IMAGE};
use secureev_uptane::builder::{sign_metadata, ROOT_LIFETIME_SECS, TARGETS_LIFETIME_SECS};
use secureev_uptane::metadata::{Common, Targets};
use secureev_uptane::{SigningKey, Timestamp};
use serde_json::Map;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Data directory to create (must not exist or be empty).
    pub data_dir: PathBuf,
    /// Offline key directory to create.
    pub offline_dir: PathBuf,
    /// Names the server certificate is valid for.
    pub hostnames: Vec<String>,
    /// Vehicle listen address written to the config.
    pub listen: SocketAddr,
    /// Admin listen address written to the config.
    pub admin_listen: SocketAddr,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The configuration file.
    pub config_file: PathBuf,
    /// The token of the bootstrap operator `admin` (all roles).
    pub admin_token: String,
}

fn ensure_empty(dir: &Path) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} exists and is not empty",
                dir.display()
            )));
        }
    }
    crate::secrets::create_private_dir(dir)
}

/// Create the data and offline directories.
pub fn init(opts: &InitOptions) -> Result<InitReport> {
    ensure_empty(&opts.data_dir)?;
    ensure_empty(&opts.offline_dir)?;
    let data = &opts.data_dir;
    let now = crate::unix_now();

    let pki = crate::tls::generate_dev_pki(&opts.hostnames)?;
    write_public(&data.join(layout::CA_CERT), pki.ca_cert.as_bytes())?;
    // The CA key signs server (and, later, device) certificates: it belongs
    // with the other offline keys, never in the serving directory.
    write_private(
        &opts.offline_dir.join(layout::CA_KEY),
        pki.ca_key.as_bytes(),
    )?;
    write_public(&data.join(layout::SERVER_CERT), pki.server_cert.as_bytes())?;
    write_private(&data.join(layout::SERVER_KEY), pki.server_key.as_bytes())?;

    std::fs::create_dir_all(data.join(layout::BLOBS))
        .map_err(|e| Error::io("creating blob directory", e))?;

    // Image repository: root and targets offline, snapshot and timestamp online.
    let image_root = SigningKey::generate_p256();
    let image_targets = SigningKey::generate_p256();
    layout::store_key(&opts.offline_dir, IMAGE, "root", &image_root)?;
    layout::store_key(&opts.offline_dir, IMAGE, "targets", &image_targets)?;
    // Online keys and the KEK: PEM files under keys/ (`hsm import` moves
    // them into a PKCS#11 token).
    let store = KeyStore::files(data);
    let image_snapshot = store.generate(IMAGE, "snapshot")?;
    let image_timestamp = store.generate(IMAGE, "timestamp")?;
    let director = DirectorKeys::create(&store)?;

    let roles = repo::RoleSet {
        roles: vec![
            ("root", vec![image_root.public_key().clone()], 1),
            ("targets", vec![image_targets.public_key().clone()], 1),
            ("snapshot", vec![image_snapshot.public_key().clone()], 1),
            ("timestamp", vec![image_timestamp.public_key().clone()], 1),
        ],
    };
    let root_expires = now + ROOT_LIFETIME_SECS;
    let root = repo::root_metadata(1, Timestamp::from_unix(root_expires), &roles);
    let root_bytes = sign_metadata(&root, &[&image_root])?;
    let targets_expires = now + TARGETS_LIFETIME_SECS;
    let targets = Targets {
        common: Common::new("targets", 1, Timestamp::from_unix(targets_expires)),
        targets: BTreeMap::new(),
        delegations: None,
        unrecognized: Map::new(),
    };
    let targets_bytes = sign_metadata(&targets, &[&image_targets])?;
    let director_root = director.root_bytes(1, now)?;

    let db = Db::open(&data.join(layout::DB_FILE))?;
    db.write(|tx| {
        tx.insert_meta(IMAGE, "root", 1, root_expires, &root_bytes)?;
        tx.insert_meta(IMAGE, "targets", 1, targets_expires, &targets_bytes)?;
        repo::publish_snapshot(tx, IMAGE, std::slice::from_ref(&image_snapshot), now)?;
        repo::publish_timestamp(tx, IMAGE, std::slice::from_ref(&image_timestamp), now)?;
        tx.insert_meta(repo::DIRECTOR, "root", 1, root_expires, &director_root)?;
        tx.event(None, None, "init", "data directory created", now)?;
        Ok(())
    })?;
    // The bootstrap operator holds every role; its token is written for the
    // CLI on this host (the server keeps only its hash). Create named
    // operators with `operator add` and revoke `admin`.
    let audit_key = crate::audit::load_or_create_key(&store)?;
    let token = db.write(|tx| {
        let token = crate::operators::add(tx, "admin", &crate::operators::Role::ALL, now)?;
        crate::audit::append(
            tx,
            &audit_key,
            now,
            "server",
            "init",
            serde_json::json!({ "bootstrap_operator": "admin" }),
        )?;
        Ok(token)
    })?;
    write_private(&data.join(layout::ADMIN_TOKEN), token.as_bytes())?;

    let config_file = data.join(CONFIG_FILE);
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.clone());
    let text = format!(
        "# secureev-server configuration (written by `secureev-server init`)\n\
         data_dir = {:?}\nlisten = \"{}\"\nadmin_listen = \"{}\"\n",
        abs.display().to_string(),
        opts.listen,
        opts.admin_listen
    );
    write_public(&config_file, text.as_bytes())?;
    // Validate what we wrote.
    Config::parse_str(&text)?;
    Ok(InitReport {
        config_file,
        admin_token: token,
    })
}
