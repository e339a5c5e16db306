//! docs/configuration.md cannot drift from the config structs: every key the
//! structs accept is documented, every documented key exists, and the examples
//! parse.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

use secureev_daemon::config::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

/// `section.key` names from the first column of the doc's key tables.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| k.contains('.') && !k.contains(' '))
        .map(str::to_owned)
        .collect()
}

/// Configurations that, together, set every key (every optional key, both
/// installers, both transports), so that serialising them lists all keys.
fn everything() -> Vec<Config> {
    let mut c = parse_str(&default_config_toml()).unwrap();
    c.backend.client_cert = Some("/c.pem".into());
    c.backend.client_key = Some("/c.key".into());
    c.push.mqtt_url = Some("mqtts://mqtt.example.com".into());
    c.push.ca_file = Some("/mqtt-ca.pem".into());
    c.push.username = Some("u".into());
    c.push.password_file = Some("/mqtt-password".into());
    c.push.client_cert = Some("/m.pem".into());
    c.push.client_key = Some("/m.key".into());
    c.install.file.slots = Some(vec!["/a".into(), "/b".into()]);
    c.install.file.current = Some("/cur".into());
    c.install.inhibit_dir = Some("/run/inhibit".into());
    c.install.required_preconditions = vec!["parked".into()];
    c.install.precondition_max_age_secs = Some(60);
    c.install.command = Some(CommandInstallConfig {
        program: "/bin/i".into(),
        args: vec!["-v".into()],
    });
    c.install.rauc = Some(RaucInstallConfig {
        health_check: vec!["/usr/libexec/health".into()],
        ..RaucInstallConfig::default()
    });
    c.secondaries = vec![SecondaryConfig {
        serial: "S".into(),
        hardware_id: "h".into(),
        verification: Verification::Full,
        transport: TransportKind::Can,
        can: Some(CanConfig {
            interface: "can0".into(),
            tx_id: 1,
            rx_id: 2,
            fd: true,
            fd_tx_dl: 64,
            fd_brs: true,
            padding: CanPadding::Strict,
            padding_byte: 0xAA,
            block_size: 8,
            st_min_us: 500,
            tx_gap_us: Some(1000),
            extended_addresses: Some([0xF1, 0x10]),
        }),
        doip: Some(DoipConfig {
            address: "a:1".into(),
            logical_address: 3,
        }),
        security_secret_file: Some("/etc/secureev/s.secret".into()),
    }];
    vec![c]
}

fn keys_of(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => keys_of(&path, v, out),
                    toml::Value::Array(a)
                        if a.iter().all(toml::Value::is_table) && !a.is_empty() =>
                    {
                        for item in a {
                            keys_of(&path, item, out);
                        }
                    }
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        _ => unreachable!(),
    }
}

fn struct_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for c in everything() {
        keys_of("", &toml::Value::try_from(&c).unwrap(), &mut keys);
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let documented = documented_keys(&doc());
    let real = struct_keys();
    assert!(real.len() >= 40, "only {} keys found: {real:?}", real.len());
    let undocumented: Vec<_> = real.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/configuration.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&real).collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys that do not exist: {stale:?}"
    );
}

#[test]
fn documented_defaults_match_the_constants() {
    let doc = doc();
    let row = |key: &str| -> String {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("no row for {key}"))
            .to_owned()
    };
    for (key, default) in [
        (
            "backend.director_path",
            format!("\"{DEFAULT_DIRECTOR_PATH}\""),
        ),
        ("backend.image_path", format!("\"{DEFAULT_IMAGE_PATH}\"")),
        ("keys.dir", format!("\"{DEFAULT_KEYS_DIR}\"")),
        (
            "trust.director_root",
            format!("\"{DEFAULT_DIRECTOR_ROOT}\""),
        ),
        ("trust.image_root", format!("\"{DEFAULT_IMAGE_ROOT}\"")),
        ("state.dir", format!("\"{DEFAULT_STATE_DIR}\"")),
        ("state.cache_dir", format!("\"{DEFAULT_CACHE_DIR}\"")),
        (
            "state.storage_budget_bytes",
            DEFAULT_STORAGE_BUDGET_BYTES.to_string(),
        ),
        (
            "checkin.interval_secs",
            DEFAULT_CHECKIN_INTERVAL_SECS.to_string(),
        ),
        (
            "checkin.jitter_secs",
            DEFAULT_CHECKIN_JITTER_SECS.to_string(),
        ),
        (
            "checkin.backoff_max_secs",
            DEFAULT_CHECKIN_BACKOFF_MAX_SECS.to_string(),
        ),
        (
            "download.min_rate_bytes_per_sec",
            DEFAULT_MIN_RATE_BYTES_PER_SEC.to_string(),
        ),
        (
            "download.min_rate_window_secs",
            DEFAULT_MIN_RATE_WINDOW_SECS.to_string(),
        ),
        (
            "download.timeout_secs",
            DEFAULT_DOWNLOAD_TIMEOUT_SECS.to_string(),
        ),
        (
            "install.file.path",
            format!("\"{DEFAULT_INSTALL_FILE_PATH}\""),
        ),
        ("install.policy", "\"consent\"".into()),
        ("trust.director_layout", "\"tuf\"".into()),
        ("dbus.bus", "\"system\"".into()),
        ("watchdog.mode", "\"systemd\"".into()),
    ] {
        let r = row(key);
        let second = r.split(" | ").nth(1).unwrap_or_default();
        assert!(
            second.contains(&format!("`{default}`")),
            "{key}: documented {second:?}, code says {default}"
        );
    }
}

#[test]
fn documented_examples_parse() {
    let doc = doc();
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 2);
    let main = parse_str(blocks[0]).unwrap();
    assert_eq!(main.secondaries.len(), 2);
    assert_eq!(main.secondaries[0].can.as_ref().unwrap().tx_id, 0x7E0);
    let merged = parse_sources(&[
        Source {
            file: PathBuf::from("otad.toml"),
            text: blocks[0].into(),
        },
        Source {
            file: PathBuf::from("50-dev.toml"),
            text: blocks[1].into(),
        },
    ])
    .unwrap();
    assert_eq!(merged.install.policy, InstallPolicy::Auto);
    assert_eq!(merged.install.installer, InstallerKind::Command);
    assert_eq!(merged.install.file.slots.as_ref().map(Vec::len), Some(2));
}
