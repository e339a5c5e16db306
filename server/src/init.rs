//! `secureev-server init`: a data directory with a development PKI, all
//! repository keys, the audit key, the KEK, the initial metadata and a
//! bootstrap operator; and an offline key directory with the Image
//! repository's root and targets keys and the development CA's key.

use crate::config::{Config, Pkcs11Config, CONFIG_FILE};
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
    /// PostgreSQL instead of the directory's SQLite file (written to the
    /// config as `database_url`; the database must exist and be empty).
    pub database_url: Option<String>,
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

/// Create the data and offline directories; online keys and the KEK as PEM
/// files under `<data_dir>/keys/`.
pub fn init(opts: &InitOptions) -> Result<InitReport> {
    init_with(opts, None)
}

/// As [`init`], with every online key and the KEK generated inside the
/// PKCS#11 token `pkcs11` (never a file), and `server.toml` naming it. A
/// token that already holds objects under the label prefix is refused: two
/// data directories must not share keys by accident.
pub fn init_in_token(opts: &InitOptions, pkcs11: &Pkcs11Config) -> Result<InitReport> {
    init_with(opts, Some(pkcs11))
}

fn init_with(opts: &InitOptions, pkcs11: Option<&Pkcs11Config>) -> Result<InitReport> {
    ensure_empty(&opts.data_dir)?;
    ensure_empty(&opts.offline_dir)?;
    let data = &opts.data_dir;
    let now = crate::unix_now();
    // Online keys and the KEK: PEM files under keys/ (`hsm import` can move
    // them into a token later), or made in the token from the start. The
    // token is opened before anything is written.
    let store = match pkcs11 {
        None => KeyStore::files(data),
        Some(p) => {
            let token = crate::hsm::Token::open(p)?;
            if let Some(o) = token.list()?.first() {
                return Err(Error::Config(format!(
                    "the token already holds {} ({}); use a fresh token or another label_prefix",
                    o.label, o.class
                )));
            }
            KeyStore::Token(token)
        }
    };

    let pki = crate::tls::generate_dev_pki(&opts.hostnames)?;
    write_public(&data.join(layout::CA_CERT), pki.ca_cert.as_bytes())?;
    // The CA key signs server (and, later, device) certificates: it belongs
    // with the other offline keys, never in the serving directory.
    write_private(
        &opts.offline_dir.join(layout::CA_KEY),
        pki.ca_key.as_bytes(),
    )?;
    write_public(&data.join(layout::SERVER_CERT), pki.server_cert.as_bytes())?;
    match &store {
        // With a token, the TLS key goes into it from memory, never to disk.
        KeyStore::Token(t) => {
            let key = secureev_uptane::SigningKey::from_pkcs8_pem(&pki.server_key)?;
            t.import_p256(crate::keystore::TLS_REPO, crate::keystore::TLS_ROLE, &key)?;
        }
        KeyStore::Files(_) => {
            write_private(&data.join(layout::SERVER_KEY), pki.server_key.as_bytes())?
        }
    }

    std::fs::create_dir_all(data.join(layout::BLOBS))
        .map_err(|e| Error::io("creating blob directory", e))?;

    // Image repository: root and targets offline, snapshot and timestamp online.
    let image_root = SigningKey::generate_p256();
    let image_targets = SigningKey::generate_p256();
    layout::store_key(&opts.offline_dir, IMAGE, "root", &image_root)?;
    layout::store_key(&opts.offline_dir, IMAGE, "targets", &image_targets)?;
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

    let db = Db::open_store(data, opts.database_url.as_deref())?;
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
    let mut text = format!(
        "# secureev-server configuration (written by `secureev-server init`)\n\
         data_dir = {:?}\nlisten = \"{}\"\nadmin_listen = \"{}\"\n",
        abs.display().to_string(),
        opts.listen,
        opts.admin_listen
    );
    if let Some(p) = pkcs11 {
        text.push_str(&format!(
            "key_store = \"pkcs11\"\n\n[pkcs11]\nmodule = {:?}\ntoken_label = {:?}\nlabel_prefix = {:?}\n",
            p.module.display().to_string(),
            p.token_label,
            p.label_prefix
        ));
        match (&p.pin_file, &p.pin_env) {
            (Some(f), _) => text.push_str(&format!("pin_file = {:?}\n", f.display().to_string())),
            (None, Some(v)) => text.push_str(&format!("pin_env = {v:?}\n")),
            (None, None) => {}
        }
    }
    match &opts.database_url {
        // The URL may hold a password: the file is then the server's alone.
        Some(url) => {
            text.push_str(&format!("database_url = {url:?}\n"));
            write_private(&config_file, text.as_bytes())?;
        }
        None => write_public(&config_file, text.as_bytes())?,
    }
    // Validate what we wrote.
    Config::parse_str(&text)?;
    Ok(InitReport {
        config_file,
        admin_token: token,
    })
}
