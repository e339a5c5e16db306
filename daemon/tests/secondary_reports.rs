//! The vehicle version manifest carries the secondaries' own signed version
//! reports (Uptane 2.1 §5.4.2): the real `secureev-otad` (the e2e harness:
//! private `dbus-daemon`, in-test TLS backend) with `secureev-ecu` agents
//! served in-process over DoIP on loopback. Every manifest the daemon sends is
//! checked as the backend checks it (`verify_manifest` with the registered
//! keys, then the replay check of the report counters).
//!
//! A secondary that is unreachable, stalls or refuses is left out of the
//! manifest, which still goes out, promptly, with the other reports.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_daemon::agent::SECONDARY_REPORT_TIMEOUT;
use secureev_daemon::config::Verification;
use secureev_daemon::ecus::SecondaryTransport;
use secureev_daemon::ecus::{DoipConnector, DoipSecondary, SecretSource, DEFAULT_TESTER_ADDRESS};
use secureev_dbus::ErrorCode;
use secureev_secondary::serve;
use secureev_uds::doip::{DoipFramer, Message, RoutingActivationCode, VERSION_2012};
use secureev_uptane::manifest::{verify_manifest, VerifiedManifest};
use secureev_uptane::PublicKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
const ECU: &str = "BMS-E2E";
const ECU_HW: &str = "secureev-bms-e2e";
const LA: u16 = 0x0E80;
const SECRET: [u8; 32] = [0x5A; 32];
const FACTORY: &[u8] = b"head unit factory image";

/// A `secureev-ecu` served over DoIP on loopback until dropped.
struct Ecu {
    addr: SocketAddr,
    key: PublicKey,
    shutdown: CancellationToken,
}

impl Drop for Ecu {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start the ECU agent with its state in `dir`, trusting `director_root`;
/// read its report key over DoIP as provisioning does.
async fn start_ecu(dir: &Path, director_root: &[u8]) -> Ecu {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("director-root.json"), director_root).unwrap();
    std::fs::write(dir.join("security-secret"), hex::encode(SECRET)).unwrap();
    let cfg = secureev_secondary::config::parse_str(&format!(
        "serial = \"{ECU}\"\nhardware_id = \"{ECU_HW}\"\nstate_dir = \"{d}\"\ndirector_root = \"{d}/director-root.json\"\n[doip]\nlogical_address = {LA}\n",
        d = dir.display(),
    ))
    .unwrap();
    let server = serve::build_server(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve::serve_doip(listener, server, LA, shutdown.clone()));
    let t = transport(addr, ECU);
    let did = t.info().await.unwrap().did.unwrap();
    // What reading a report costs the manifest over DoIP (a debug build on
    // loopback): session change, generate-report, chunk reads.
    let started = Instant::now();
    let report = t.report().await.unwrap();
    eprintln!(
        "DoIP version report: {} bytes in {:?}",
        report.len(),
        started.elapsed()
    );
    Ecu {
        addr,
        key: secureev_uptane::did::resolve(&did).unwrap(),
        shutdown,
    }
}

fn transport(addr: SocketAddr, serial: &str) -> DoipSecondary {
    DoipSecondary::new(
        serial,
        ECU_HW,
        Verification::Partial,
        DoipConnector {
            address: addr.to_string(),
            tester: DEFAULT_TESTER_ADDRESS,
            ecu: LA,
        },
        SecretSource::Bytes(Arc::new(Zeroizing::new(SECRET.to_vec()))),
    )
}

/// A `[[secondary]]` table of the daemon's configuration.
fn secondary_table(serial: &str, addr: SocketAddr) -> String {
    format!(
        "[[secondary]]\nserial = \"{serial}\"\nhardware_id = \"{ECU_HW}\"\nverification = \"partial\"\ntransport = \"doip\"\ndoip = {{ address = \"{addr}\", logical_address = {LA} }}\n"
    )
}

/// An address where nothing listens: connections are refused at once.
fn closed_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A DoIP entity that activates routing and then answers every UDS request
/// with 0x78 responsePending, once a second, forever: a stalled ECU that the
/// UDS client keeps waiting for (ISO 14229-2 restarts P2* on every 0x78).
async fn stalling_ecu(shutdown: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => r.unwrap().0,
            };
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = stall(stream) => {}
                }
            });
        }
    });
    addr
}

async fn stall(mut stream: tokio::net::TcpStream) {
    let mut framer = DoipFramer::default();
    let mut buf = vec![0u8; 4096];
    let mut pending: Option<(u16, u8)> = None;
    loop {
        while let Ok(Some((_, m))) = framer.next_message() {
            let reply = match m {
                Message::RoutingActivationRequest { source, .. } => {
                    Message::RoutingActivationResponse {
                        tester: source,
                        entity: LA,
                        code: RoutingActivationCode::Success,
                        oem: None,
                    }
                }
                Message::DiagnosticMessage { source, data, .. } => {
                    pending = Some((source, data.first().copied().unwrap_or(0)));
                    Message::DiagnosticAck {
                        source: LA,
                        target: source,
                        code: 0,
                        previous: Vec::new(),
                    }
                }
                _ => continue,
            };
            if stream.write_all(&reply.encode(VERSION_2012)).await.is_err() {
                return;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => framer.push(&buf[..n]),
            Err(_) => {}
        }
        if let Some((tester, sid)) = pending {
            let keep_alive = Message::DiagnosticMessage {
                source: LA,
                target: tester,
                data: vec![0x7F, sid, 0x78],
            };
            if stream
                .write_all(&keep_alive.encode(VERSION_2012))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    backend: Backend,
    vehicle: Vehicle,
}

/// A closed backend and a vehicle trusting `repos`, with a `[[secondary]]`
/// over DoIP (and its SecurityAccess secret) for each of `secondaries`.
async fn rig(dir: tempfile::TempDir, repos: &Repos, secondaries: &[(&str, SocketAddr)]) -> Rig {
    let backend = Backend::start().await;
    backend.set_open(false);
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::write(installed.join("image.bin"), FACTORY).unwrap();
    let extra: String = secondaries
        .iter()
        .map(|(serial, addr)| secondary_table(serial, *addr))
        .collect();
    let vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        repos,
        &InstallMode::File(installed.join("image.bin")),
        &extra,
    );
    let secrets = vehicle.dir.join("keys").join("secondaries");
    std::fs::create_dir_all(&secrets).unwrap();
    for (serial, _) in secondaries {
        std::fs::write(
            secrets.join(format!("{serial}.secret")),
            hex::encode(SECRET),
        )
        .unwrap();
    }
    Rig {
        _dir: dir,
        backend,
        vehicle,
    }
}

impl Rig {
    /// Start the daemon, let its start-up check-in fail on the closed backend,
    /// serve `files`, and run one triggered check.
    async fn start_and_check(&mut self, files: Files) -> (u32, String) {
        self.vehicle
            .start_then_check(&self.backend, files, CHECK_TIMEOUT)
            .await
    }

    fn primary_key(&self) -> PublicKey {
        let (keys, _) =
            secureev_daemon::keys::load_or_provision(&self.vehicle.dir.join("keys")).unwrap();
        keys.signing.verifying_key()
    }

    /// Every manifest PUT so far, verified as the backend verifies it: the
    /// Primary's signature, each report with its ECU's registered key, and the
    /// report counters strictly increasing from one manifest to the next.
    fn verified_manifests(&self, ecu_keys: &BTreeMap<String, PublicKey>) -> Vec<VerifiedManifest> {
        let primary = self.primary_key();
        let mut keys = ecu_keys.clone();
        keys.insert(HU.to_owned(), primary.clone());
        let mut last_manifest = None;
        let mut last_report: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::new();
        for m in self.backend.manifests() {
            let bytes = serde_json::to_vec(&m).unwrap();
            let v = verify_manifest(&bytes, &primary, |s| keys.get(s).cloned())
                .unwrap_or_else(|e| panic!("the backend would refuse {m:#}: {e}"));
            v.check_counters(last_manifest, |s| last_report.get(s).copied())
                .unwrap_or_else(|e| panic!("the backend would refuse {m:#} as a replay: {e}"));
            last_manifest = Some(v.manifest().report_counter);
            for (serial, r) in v.reports() {
                last_report.insert(serial.clone(), r.report_counter);
            }
            out.push(v);
        }
        out
    }
}

/// The Director assigns `name` to the secondary (and nothing to the head unit).
fn assign_to_secondary(repos: &mut Repos, name: &str, bytes: &[u8], release_counter: u64) -> Files {
    repos.add_image(name, bytes, release_counter, &[ECU_HW]);
    repos.director.targets.clear();
    repos.director.add_target(
        name,
        bytes,
        Some(json!({
            "ecuIdentifiers": { ECU: { "hardwareId": ECU_HW } },
            "releaseCounter": release_counter,
        })),
    );
    repos.publish(&[(name, bytes)])
}

fn serials(m: &VerifiedManifest) -> Vec<&str> {
    m.reports().keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_carries_the_secondarys_own_signed_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut repos = Repos::new();
    let ecu = start_ecu(&dir.path().join("ecu"), &repos.director_root).await;
    let firmware = image_bytes(48 * 1024, 7);
    let files = assign_to_secondary(&mut repos, "bms/fw-2.bin", &firmware, 4);
    let mut rig = rig(dir, &repos, &[(ECU, ecu.addr)]).await;
    let ecu_keys = BTreeMap::from([(ECU.to_owned(), ecu.key.clone())]);

    let (code, message) = rig.start_and_check(files.clone()).await;
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{message}\n{}",
        rig.vehicle.log()
    );
    assert!(message.contains(ECU), "{message}");
    let manifests = rig.verified_manifests(&ecu_keys);
    let last = manifests.last().expect("a manifest after the install");
    assert_eq!(serials(last), [ECU, HU], "{}", rig.vehicle.log());
    // What the backend completes the assignment on: the ECU's own statement,
    // signed with its key, that it runs the assigned image.
    let report = last.report(ECU).unwrap();
    let installed = report.installed_image.as_ref().expect("an installed image");
    assert_eq!(installed.filepath, "bms/fw-2.bin");
    assert_eq!(installed.fileinfo.length, firmware.len() as u64);
    assert_eq!(installed.fileinfo.hashes["sha256"], sha256_hex(&firmware));
    assert_eq!(installed.release_counter(), Some(4));
    let result = report.installation_result.as_ref().expect("its result");
    assert!(result.success, "{result:?}");
    assert_eq!(report.attacks_detected, "");
    // The UI sees the secondary reached just now.
    let ecus = rig.vehicle.proxy().await.ecus().await.unwrap();
    let e = ecus.iter().find(|e| e.serial == ECU).unwrap();
    assert_eq!((e.status.as_str(), e.transport.as_str()), ("ok", "doip"));
    assert!(e.last_contact >= now().unix() - 120, "{e:?}");
    assert_eq!(e.installed_target, "bms/fw-2.bin");
    // Fresh: it answers the nonce the Primary sent (the transport checks it).
    assert!(report.nonce.as_deref().is_some_and(|n| n.len() == 32));
    let first_counter = report.report_counter;

    // The next check-in: nothing new, and again a fresh report, whose counter
    // increased (verified_manifests checks it as the backend does); the
    // installation result was reported once.
    let (code, message) = rig.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    let manifests = rig.verified_manifests(&ecu_keys);
    let report = manifests
        .last()
        .unwrap()
        .report(ECU)
        .expect("the ECU's report");
    assert!(report.report_counter > first_counter);
    assert!(report.installation_result.is_none());
    assert_eq!(
        report.installed_image.as_ref().unwrap().filepath,
        "bms/fw-2.bin"
    );
    assert_eq!(rig.backend.auth_failures(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_stalled_secondaries_are_left_out_and_the_manifest_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let stalled = stalling_ecu(stop).await;
    let mut repos = Repos::new();
    let files = repos.publish(&[]);
    let mut rig = rig(
        dir,
        &repos,
        &[("BMS-GONE", closed_address()), ("BMS-STALLED", stalled)],
    )
    .await;

    let started = Instant::now();
    let (code, message) = rig.start_and_check(files).await;
    let first = started.elapsed();
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{message}\n{}",
        rig.vehicle.log()
    );
    let manifests = rig.verified_manifests(&BTreeMap::new());
    assert_eq!(manifests.len(), 1, "{}", rig.vehicle.log());
    assert_eq!(serials(&manifests[0]), [HU]);
    // The stalled ECU held the manifest up for the bounded wait, not longer.
    assert!(
        first < SECONDARY_REPORT_TIMEOUT + Duration::from_secs(15),
        "first check took {first:?}"
    );
    let log = rig.vehicle.log();
    for serial in ["BMS-GONE", "BMS-STALLED"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(serial) && l.contains("left out")),
            "no warning naming {serial}:\n{log}"
        );
    }
    assert!(log.contains("no version report within"), "{log}");
    // The UI sees both as unreachable, never contacted, on DoIP.
    let ecus = rig.vehicle.proxy().await.ecus().await.unwrap();
    for serial in ["BMS-GONE", "BMS-STALLED"] {
        let e = ecus.iter().find(|e| e.serial == serial).unwrap();
        assert_eq!(
            (
                e.status.as_str(),
                e.last_contact,
                e.transport.as_str(),
                e.primary
            ),
            ("unreachable", 0, "doip", false),
            "{e:?}"
        );
    }
    let hu = ecus.iter().find(|e| e.primary).unwrap();
    assert_eq!((hu.status.as_str(), hu.transport.as_str()), ("ok", ""));

    // The stalled request is still running: the ECU is not asked again (no
    // pile of requests) and the next manifest does not wait for it.
    let started = Instant::now();
    let (code, message) = rig.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "second check took {:?}",
        started.elapsed()
    );
    let manifests = rig.verified_manifests(&BTreeMap::new());
    assert_eq!(manifests.len(), 2);
    assert_eq!(serials(&manifests[1]), [HU]);
    assert!(
        rig.vehicle
            .log()
            .contains("previous version report request has not finished"),
        "{}",
        rig.vehicle.log()
    );
    eprintln!("first check with a stalled secondary: {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondarys_refusal_reaches_the_backend_in_its_own_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut repos = Repos::new();
    // The ECU trusts another Director: it refuses the metadata the Primary
    // forwards (bad signatures, an arbitrary-software attack to the ECU).
    let mut other = secureev_uptane::builder::RepoBuilder::new(now());
    let ecu = start_ecu(&dir.path().join("ecu"), &other.publish_root().unwrap()).await;
    let firmware = image_bytes(16 * 1024, 9);
    let files = assign_to_secondary(&mut repos, "bms/fw-3.bin", &firmware, 2);
    let mut rig = rig(dir, &repos, &[(ECU, ecu.addr)]).await;

    let (code, message) = rig.start_and_check(files).await;
    // The ECU answered and refused: an install failure, not an unreachable ECU.
    assert_eq!(code, ErrorCode::InstallFailed.as_u32(), "{message}");
    assert!(message.contains(ECU), "{message}");
    // It answered (its report too): reachable, and the last exchange is the
    // report, which it gave.
    let ecus = rig.vehicle.proxy().await.ecus().await.unwrap();
    let e = ecus.iter().find(|e| e.serial == ECU).unwrap();
    assert_eq!(e.status, "ok", "{e:?}");
    assert!(e.last_contact > 0, "{e:?}");
    let ecu_keys = BTreeMap::from([(ECU.to_owned(), ecu.key.clone())]);
    let manifests = rig.verified_manifests(&ecu_keys);
    let last = manifests
        .last()
        .expect("a manifest after the failed install");
    assert_eq!(serials(last), [ECU, HU]);
    // The Primary reports the failed install; the ECU reports, in its own
    // signed words, the attack it refused and that it still runs nothing.
    let primary = last.report(HU).unwrap();
    let result = primary.installation_result.as_ref().unwrap();
    assert!(!result.success, "{result:?}");
    assert!(result.message.contains(ECU), "{result:?}");
    let report = last.report(ECU).unwrap();
    assert!(
        report.installed_image.is_none(),
        "{:?}",
        report.installed_image
    );
    assert_eq!(report.attacks(), ["arbitrary-software"]);
    // ...and its own failed installation result.
    let own = report
        .installation_result
        .as_ref()
        .expect("the ECU reports its failed install");
    assert!(!own.success, "{own:?}");
    assert_eq!(own.code, "arbitrary-software", "{own:?}");
    let raw: Value = serde_json::from_slice(last.manifest().raw()).unwrap();
    assert_eq!(
        raw["signed"]["ecu_version_reports"][ECU]["signed"]["attacks_detected"],
        "arbitrary-software"
    );
}

/// A secondary that slept through two Director root rotations (it trusts
/// root v1; the Director is at v3 and its targets key changed in v3) gets the
/// whole chain v2, v3 from the Primary, follows it, and installs. With only the
/// newest root it could not: v3 is not signed by v1's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_two_root_versions_behind_follows_the_chain() {
    use secureev_uptane::SigningKey;
    let dir = tempfile::tempdir().unwrap();
    let mut repos = Repos::new();
    let ecu = start_ecu(&dir.path().join("ecu"), &repos.director_root).await;
    repos
        .director
        .rotate_keys("root", vec![SigningKey::generate_p256()], 1);
    repos.director.publish_root().unwrap();
    repos
        .director
        .rotate_keys("root", vec![SigningKey::generate_p256()], 1);
    repos
        .director
        .rotate_keys("targets", vec![SigningKey::generate_p256()], 1);
    let v3 = repos.director.publish_root().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&v3).unwrap()["signed"]["version"],
        3
    );
    let firmware = image_bytes(8 * 1024, 11);
    let files = assign_to_secondary(&mut repos, "bms/fw-9.bin", &firmware, 9);
    let mut rig = rig(dir, &repos, &[(ECU, ecu.addr)]).await;

    let (code, message) = rig.start_and_check(files).await;
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{message}\n{}",
        rig.vehicle.log()
    );
    let ecu_keys = BTreeMap::from([(ECU.to_owned(), ecu.key.clone())]);
    let manifests = rig.verified_manifests(&ecu_keys);
    let report = manifests.last().unwrap().report(ECU).unwrap();
    assert_eq!(
        report.installed_image.as_ref().map(|i| i.filepath.as_str()),
        Some("bms/fw-9.bin")
    );
}
