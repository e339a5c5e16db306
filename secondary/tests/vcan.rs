//! `secureev-ecu` over kernel ISO-TP. Needs vcan interfaces: `SECUREEV_VCAN`
//! (classic) and `SECUREEV_VCAN_FD` (MTU 72), as `can-tests/run-vm.sh` sets
//! them (`SECUREEV_CAN_PACKAGES="secureev-secondary"`). Elsewhere the flashes
//! are skipped with a message, unless `SECUREEV_REQUIRE_VCAN=1`.

// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

use secureev_can::{IsoTpConfig, IsoTpSocket};
use secureev_secondary::{config, serve, Error};
use secureev_uds::client::{Action, ClientConfig, FlashClient, FlashPlan};
use secureev_uds::protocol::{self, MetadataRole};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uptane::builder::RepoBuilder;
use secureev_uptane::Timestamp;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: [u8; 32] = [0x33; 32];
const NOW: i64 = 1_800_000_000;

fn setup(dir: &std::path::Path, director: &mut RepoBuilder) -> config::Config {
    let root = director.publish_root().unwrap();
    std::fs::write(dir.join("root.json"), root).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/security-secret"), hex::encode(SECRET)).unwrap();
    config::parse_str(&format!(
        "serial = \"CAN-1\"\nhardware_id = \"hw\"\nstate_dir = \"{}\"\ndirector_root = \"{}\"\n",
        dir.join("state").display(),
        dir.join("root.json").display()
    ))
    .unwrap()
}

#[tokio::test]
async fn without_af_can_serving_fails_with_no_can_support() {
    if secureev_can::probe_isotp().is_ok() || std::env::var("SECUREEV_VCAN").is_ok() {
        eprintln!("this kernel has CAN_ISOTP; the no-CAN path is not exercised here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let cfg = setup(dir.path(), &mut director);
    let server = serve::build_server(&cfg).unwrap();
    let e = serve::serve_can(
        "vcan0",
        IsoTpConfig::new(0x7E8, 0x7E0),
        server,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::Can(secureev_can::Error::NoCanSupport { .. })),
        "{e}"
    );
}

async fn flash_over(iface: &str, fd: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let cfg = setup(dir.path(), &mut director);
    let image: Vec<u8> = (0..30_000u32).map(|i| (i * 31) as u8).collect();
    director.add_target(
        "fw.bin",
        &image,
        Some(json!({"ecuIdentifiers": {"CAN-1": {"hardwareId": "hw"}}})),
    );
    let targets = director.publish().unwrap().targets;
    let server = serve::build_server(&cfg).unwrap();
    let mut ecu_cfg = IsoTpConfig::new(0x7E8, 0x7E0);
    if fd {
        ecu_cfg = ecu_cfg.with_fd();
    }
    let tester_cfg = ecu_cfg.peer();
    let shutdown = CancellationToken::new();
    let (srv, stop, name) = (server.clone(), shutdown.clone(), iface.to_owned());
    let task = tokio::spawn(async move { serve::serve_can(&name, ecu_cfg, srv, stop).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sock = IsoTpSocket::open(iface, tester_cfg).unwrap();
    let plan = FlashPlan::open_programming()
        .then(FlashPlan::send_metadata(
            NOW as u64,
            vec![(MetadataRole::DirectorTargets, targets)],
            4095,
        ))
        .then(FlashPlan::send_image(
            Box::new(image.clone()),
            protocol::data_format::PLAIN,
        ))
        .then(FlashPlan::activate());
    let alg = HmacSha256Algorithm::new(&SECRET).unwrap();
    let mut client = FlashClient::new(plan, Box::new(alg), ClientConfig::default()).unwrap();
    loop {
        match client.next_action(Instant::now()) {
            Action::Send(p) => sock.send(&p).await.unwrap(),
            Action::Wait(d) => match tokio::time::timeout(d, sock.recv_vec()).await {
                Ok(r) => client.handle_response(&r.unwrap(), Instant::now()).unwrap(),
                Err(_) => client.handle_timeout(Instant::now()).unwrap(),
            },
            Action::Done => break,
        }
    }
    assert!(client.is_done());
    let s = server.lock().await;
    let ecu = s.backend();
    assert_eq!(
        std::fs::read(ecu.slot_path(ecu.state().active_slot)).unwrap(),
        image
    );
    drop(s);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// The interface named by `var`; `None` (skip, printed) unless the rig
/// requires vcan (`SECUREEV_REQUIRE_VCAN=1`), where a missing one fails.
fn vcan(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(i) => Some(i),
        Err(_) if std::env::var("SECUREEV_REQUIRE_VCAN").as_deref() == Ok("1") => {
            panic!("{var} is not set but SECUREEV_REQUIRE_VCAN=1")
        }
        Err(_) => {
            eprintln!("SKIPPED: set {var} (can-tests/run-vm.sh does) to run over vcan");
            None
        }
    }
}

#[tokio::test]
async fn flash_over_vcan_classic() {
    if let Some(iface) = vcan("SECUREEV_VCAN") {
        flash_over(&iface, false).await;
    }
}

#[tokio::test]
async fn flash_over_vcan_fd() {
    if let Some(iface) = vcan("SECUREEV_VCAN_FD") {
        flash_over(&iface, true).await;
    }
}
