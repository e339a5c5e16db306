//! `secureev-ecu` served in-process over DoIP on loopback, driven by
//! `secureev_uds::client::FlashClient` over a DoIP TCP connection.

// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

use secureev_secondary::config::{self, Config};
use secureev_secondary::serve::{self, SharedServer};
use secureev_uds::client::{
    Action, ClientConfig, FlashClient, FlashPlan, Outcome, RoutineCheck, Step,
};
use secureev_uds::doip::{DoipFramer, Message, RoutingActivationCode, VERSION_2012};
use secureev_uds::protocol::{self, did, routine, MetadataRole, ResultCode};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uds::{Error as UdsError, Nrc};
use secureev_uptane::builder::RepoBuilder;
use secureev_uptane::encryption::{encrypt_image, ContentKey, EcuEncryptionPublicKey};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const SECRET: [u8; 32] = [0x5A; 32];
const SERIAL: &str = "BMS-1";
const HW: &str = "bms-v2";
const ECU_LA: u16 = 0x0E80;
const TESTER: u16 = 0x0E00;
const NOW: i64 = 1_800_000_000;

struct Rig {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    server: SharedServer,
    director: RepoBuilder,
    shutdown: CancellationToken,
    config: Config,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let root = director.publish_root().unwrap();
    std::fs::write(dir.path().join("director-root.json"), &root).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("security-secret"), hex::encode(SECRET)).unwrap();
    let text = format!(
        "serial = \"{SERIAL}\"\nhardware_id = \"{HW}\"\nstate_dir = \"{}\"\ndirector_root = \"{}\"\n[doip]\nlogical_address = {ECU_LA}\n",
        state.display(),
        dir.path().join("director-root.json").display()
    );
    let config = config::parse_str(&text).unwrap();
    let (addr, server, shutdown) = start(&config).await;
    Rig {
        _dir: dir,
        addr,
        server,
        director,
        shutdown,
        config,
    }
}

async fn start(config: &Config) -> (SocketAddr, SharedServer, CancellationToken) {
    let server = serve::build_server(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve::serve_doip(
        listener,
        server.clone(),
        config.doip.logical_address,
        shutdown.clone(),
    ));
    (addr, server, shutdown)
}

/// A DoIP tester: routing activation, then diagnostic messages.
struct Tester {
    stream: TcpStream,
    framer: DoipFramer,
}

impl Tester {
    async fn connect(addr: SocketAddr) -> Tester {
        Tester::connect_as(addr, TESTER).await
    }

    async fn connect_as(addr: SocketAddr, source: u16) -> Tester {
        let (t, code) = Tester::try_connect_as(addr, source).await;
        assert_eq!(code, RoutingActivationCode::Success);
        t
    }

    /// Connect and ask for routing activation of `source`; the entity's code.
    async fn try_connect_as(addr: SocketAddr, source: u16) -> (Tester, RoutingActivationCode) {
        let mut t = Tester {
            stream: TcpStream::connect(addr).await.unwrap(),
            framer: DoipFramer::default(),
        };
        let code = t.activate(source).await;
        (t, code)
    }

    async fn activate(&mut self, source: u16) -> RoutingActivationCode {
        self.write(Message::RoutingActivationRequest {
            source,
            activation_type: 0,
            oem: None,
        })
        .await;
        match self.read(Duration::from_secs(5)).await.unwrap() {
            Message::RoutingActivationResponse { code, entity, .. } => {
                assert_eq!(entity, ECU_LA);
                code
            }
            other => panic!("{other:?}"),
        }
    }

    /// Whether the entity closed the connection (within `timeout`).
    async fn closed(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(timeout, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// One UDS request from `source`, its final response (0x78 skipped).
    async fn request_from(&mut self, source: u16, pdu: &[u8]) -> Vec<u8> {
        self.write(Message::DiagnosticMessage {
            source,
            target: ECU_LA,
            data: pdu.to_vec(),
        })
        .await;
        loop {
            let r = self
                .recv(Duration::from_secs(10))
                .await
                .expect("a response");
            if r.len() == 3 && r[0] == 0x7F && r[2] == 0x78 {
                continue;
            }
            return r;
        }
    }

    /// Programming session and SecurityAccess level 0x11 as `source`.
    async fn unlock(&mut self, source: u16) {
        use secureev_uds::security::SecurityAlgorithm;
        assert_eq!(
            self.request_from(source, &[0x10, 0x02]).await[..2],
            [0x50, 0x02]
        );
        let seed = self.request_from(source, &[0x27, 0x11]).await;
        assert_eq!(seed[..2], [0x67, 0x11], "{seed:02X?}");
        let key = HmacSha256Algorithm::new(&SECRET)
            .unwrap()
            .compute_key(0x11, &seed[2..]);
        let mut send = vec![0x27, 0x12];
        send.extend_from_slice(&key);
        assert_eq!(self.request_from(source, &send).await, [0x67, 0x12]);
    }

    async fn write(&mut self, m: Message) {
        self.stream
            .write_all(&m.encode(VERSION_2012))
            .await
            .unwrap();
    }

    async fn read(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            if let Some((_, m)) = self.framer.next_message().unwrap() {
                return Some(m);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .ok()?
                .unwrap();
            assert!(n > 0, "connection closed");
            self.framer.push(&buf[..n]);
        }
    }

    /// The next UDS response within `timeout` (acks skipped).
    async fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await? {
                Message::DiagnosticAck { .. } => continue,
                Message::DiagnosticMessage { data, source, .. } => {
                    assert_eq!(source, ECU_LA);
                    return Some(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn run(&mut self, plan: FlashPlan) -> Result<Outcome, UdsError> {
        let alg = HmacSha256Algorithm::new(&SECRET).unwrap();
        let mut client = FlashClient::new(plan, Box::new(alg), ClientConfig::default())?;
        loop {
            match client.next_action(Instant::now()) {
                Action::Send(pdu) => {
                    self.write(Message::DiagnosticMessage {
                        source: TESTER,
                        target: ECU_LA,
                        data: pdu,
                    })
                    .await
                }
                Action::Wait(d) => match self.recv(d).await {
                    Some(r) => client.handle_response(&r, Instant::now())?,
                    None => client.handle_timeout(Instant::now())?,
                },
                Action::Done => break,
            }
        }
        assert!(client.is_done());
        Ok(client.into_outcome())
    }
}

fn ecu_custom(serial: &str, hw: &str, counter: u64) -> Value {
    json!({"ecuIdentifiers": {serial: {"hardwareId": hw}}, "releaseCounter": counter})
}

fn metadata_plan(targets: Vec<u8>, time: i64) -> FlashPlan {
    FlashPlan::open_programming().then(FlashPlan::send_metadata(
        time as u64,
        vec![(MetadataRole::DirectorTargets, targets)],
        4095,
    ))
}

fn full_plan(targets: Vec<u8>, image: Vec<u8>, format: u8) -> FlashPlan {
    metadata_plan(targets, NOW)
        .then(FlashPlan::send_image(Box::new(image), format))
        .then(FlashPlan::activate())
}

fn routine_failed(e: &UdsError) -> Option<u8> {
    match e {
        UdsError::RoutineFailed { code, .. } => Some(*code),
        _ => None,
    }
}

async fn identify(t: &mut Tester) -> Outcome {
    t.run(FlashPlan::identify()).await.unwrap()
}

async fn report(t: &mut Tester, public_did: &str) -> secureev_uptane::manifest::EcuVersionReport {
    let nonce = [7u8; 16];
    let out = t.run(FlashPlan::report(nonce)).await.unwrap();
    let bytes = out.report.expect("report read");
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    let key = secureev_uptane::did::resolve(public_did).unwrap();
    let verified =
        secureev_uptane::manifest::verify_ecu_report_value(&value, &key, SERIAL).unwrap();
    assert_eq!(verified.nonce.as_deref(), Some(hex::encode(nonce).as_str()));
    verified.value().clone()
}

#[tokio::test]
async fn full_flash_over_doip_then_signed_report() {
    let mut rig = rig().await;
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
    rig.director
        .add_target("bms-2.0.bin", &image, Some(ecu_custom(SERIAL, HW, 2)));
    let published = rig.director.publish().unwrap();

    let mut t = Tester::connect(rig.addr).await;
    let id = identify(&mut t).await;
    assert_eq!(id.read(did::ECU_SERIAL).unwrap(), SERIAL.as_bytes());
    assert_eq!(id.read(did::HARDWARE_ID).unwrap(), HW.as_bytes());
    let public_did = String::from_utf8(id.read(did::PUBLIC_KEY).unwrap().to_vec()).unwrap();
    let caps = protocol::Capabilities::decode(id.read(did::CAPABILITIES).unwrap()).unwrap();
    assert_eq!(caps.verification, protocol::VerificationType::Partial);

    let out = t
        .run(full_plan(
            published.targets.clone(),
            image.clone(),
            protocol::data_format::PLAIN,
        ))
        .await
        .unwrap();
    assert!(out.stats.blocks >= 5, "{:?}", out.stats);
    assert!(
        out.stats.pending >= 1,
        "verify-image answers 0x78 first: {:?}",
        out.stats
    );

    {
        let s = rig.server.lock().await;
        let ecu = s.backend();
        let installed = ecu.state().installed.clone().unwrap();
        assert_eq!(installed.name(), "bms-2.0.bin");
        assert_eq!(installed.release_counter(), 2);
        assert_eq!(ecu.state().active_slot, secureev_secondary::state::Slot::B);
        assert_eq!(
            std::fs::read(ecu.slot_path(ecu.state().active_slot)).unwrap(),
            image
        );
        assert_eq!(ecu.resets(), 1);
    }
    let r = report(&mut t, &public_did).await;
    assert_eq!(r.installed_image.unwrap().filepath, "bms-2.0.bin");
    assert!(r.installation_result.unwrap().success);
    assert_eq!(r.attacks_detected, "");
    assert_eq!(
        r.latest_verified_time,
        Timestamp::from_unix(NOW).to_string()
    );
    let r2 = report(&mut t, &public_did).await;
    assert!(r2.report_counter > r.report_counter, "counter increases");

    // The same assignment again: verified, nothing new; the image is refused.
    let e = t
        .run(full_plan(
            published.targets,
            image.clone(),
            protocol::data_format::PLAIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(routine_failed(&e), Some(ResultCode::NoUpdate.as_byte()));

    // State survives a restart: trusted targets version, installed image.
    rig.shutdown.cancel();
    let (addr, server, _s) = start(&rig.config).await;
    let s = server.lock().await;
    assert_eq!(
        s.backend().state().installed.as_ref().unwrap().name(),
        "bms-2.0.bin"
    );
    assert_eq!(s.backend().state().director_targets_version, Some(1));
    drop(s);
    let mut t = Tester::connect(addr).await;
    let again = identify(&mut t).await;
    assert_eq!(
        again.read(did::PUBLIC_KEY).unwrap(),
        public_did.as_bytes(),
        "keys kept"
    );
}

async fn expect_refused(rig: &mut Rig, custom: Value, expected: ResultCode) {
    let image = b"image for someone else".to_vec();
    rig.director.add_target("x.bin", &image, Some(custom));
    let published = rig.director.publish().unwrap();
    let mut t = Tester::connect(rig.addr).await;
    let e = t
        .run(metadata_plan(published.targets, NOW))
        .await
        .unwrap_err();
    assert_eq!(routine_failed(&e), Some(expected.as_byte()), "{e}");
    // docs/secondary-protocol.md §7: the image that follows is refused 0x22.
    let e = t
        .run(FlashPlan::open_programming().then(FlashPlan::send_image(
            Box::new(image),
            protocol::data_format::PLAIN,
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UdsError::NegativeResponse {
                nrc: Nrc::ConditionsNotCorrect,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_hardware_id_is_result_0x15_and_reported_as_an_attack() {
    let mut rig = rig().await;
    expect_refused(
        &mut rig,
        ecu_custom(SERIAL, "other-hw", 1),
        ResultCode::WrongHardwareId,
    )
    .await;
    let mut t = Tester::connect(rig.addr).await;
    let id = identify(&mut t).await;
    let public_did = String::from_utf8(id.read(did::PUBLIC_KEY).unwrap().to_vec()).unwrap();
    let r = report(&mut t, &public_did).await;
    assert_eq!(r.attacks(), vec!["wrong-hardware-id"]);
}

fn nrc_of(e: &UdsError) -> Option<Nrc> {
    match e {
        UdsError::NegativeResponse { nrc, .. } => Some(*nrc),
        _ => None,
    }
}

/// Issue 11: a report the Primary loses (a kill, a manifest the Director
/// never got) must not lose the ECU's attacks or installation result. They
/// are in every report until REPORT_DELIVERED names one that carried them;
/// what came after that report stays.
#[tokio::test]
async fn attacks_and_results_stay_until_a_report_carrying_them_is_delivered() {
    let mut rig = rig().await;
    expect_refused(
        &mut rig,
        ecu_custom(SERIAL, "other-hw", 1),
        ResultCode::WrongHardwareId,
    )
    .await;
    let mut t = Tester::connect(rig.addr).await;
    let id = identify(&mut t).await;
    let public_did = String::from_utf8(id.read(did::PUBLIC_KEY).unwrap().to_vec()).unwrap();
    let r1 = report(&mut t, &public_did).await;
    assert_eq!(r1.attacks(), vec!["wrong-hardware-id"]);
    let failed = r1.installation_result.clone().expect("the refusal");
    assert!(!failed.success);
    // Not delivered yet: the next report carries them again.
    let r2 = report(&mut t, &public_did).await;
    assert!(r2.report_counter > r1.report_counter);
    assert_eq!(r2.attacks(), vec!["wrong-hardware-id"]);
    assert_eq!(r2.installation_result, Some(failed.clone()));

    // Only a tester with security access may say so.
    let unlocked = FlashPlan::report_delivered(r1.report_counter);
    let locked = FlashPlan::new()
        .step(Step::Session(secureev_uds::codec::Session::Extended))
        .step(Step::Routine {
            routine: routine::REPORT_DELIVERED,
            data: r1.report_counter.to_be_bytes().to_vec(),
            check: RoutineCheck::Ok,
        });
    let e = t.run(locked).await.unwrap_err();
    assert_eq!(nrc_of(&e), Some(Nrc::SecurityAccessDenied), "{e}");
    // A report this ECU never signed cannot have been delivered.
    let e = t
        .run(FlashPlan::report_delivered(r2.report_counter + 1))
        .await
        .unwrap_err();
    assert_eq!(nrc_of(&e), Some(Nrc::RequestOutOfRange), "{e}");
    let e = t
        .run(
            FlashPlan::new()
                .step(Step::Session(secureev_uds::codec::Session::Extended))
                .step(Step::Unlock {
                    level: protocol::SECURITY_LEVEL,
                })
                .step(Step::Routine {
                    routine: routine::REPORT_DELIVERED,
                    data: vec![0; 4],
                    check: RoutineCheck::Ok,
                }),
        )
        .await
        .unwrap_err();
    assert_eq!(
        nrc_of(&e),
        Some(Nrc::IncorrectMessageLengthOrInvalidFormat),
        "{e}"
    );
    {
        let s = rig.server.lock().await;
        assert!(s.backend().state().last_install.is_some());
    }

    // A new refusal after r2: in no report yet.
    drop(t);
    expect_refused(
        &mut rig,
        ecu_custom(SERIAL, "third-hw", 2),
        ResultCode::WrongHardwareId,
    )
    .await;
    let mut t = Tester::connect(rig.addr).await;
    // The manifest with r1 was accepted: what r1 carried is delivered, the
    // newer result is not.
    t.run(unlocked).await.unwrap();
    let r3 = report(&mut t, &public_did).await;
    let newer = r3.installation_result.clone().expect("the newer refusal");
    assert!(!newer.success, "{newer:?}");
    t.run(FlashPlan::report_delivered(r3.report_counter))
        .await
        .unwrap();
    let r4 = report(&mut t, &public_did).await;
    assert_eq!(r4.installation_result, None);
    assert_eq!(r4.attacks_detected, "");
    let s = rig.server.lock().await;
    assert!(s.backend().state().attacks.is_empty());
    assert!(s.backend().state().attacks_reported.is_empty());
}

#[tokio::test]
async fn targets_for_another_ecu_are_no_update_and_the_image_is_refused() {
    let mut rig = rig().await;
    expect_refused(
        &mut rig,
        ecu_custom("OTHER-ECU", HW, 1),
        ResultCode::NoUpdate,
    )
    .await;
}

#[tokio::test]
async fn release_counter_rollback_is_result_0x17() {
    let mut rig = rig().await;
    let image = b"v5".to_vec();
    rig.director
        .add_target("v5.bin", &image, Some(ecu_custom(SERIAL, HW, 5)));
    let p = rig.director.publish().unwrap();
    let mut t = Tester::connect(rig.addr).await;
    t.run(full_plan(p.targets, image, protocol::data_format::PLAIN))
        .await
        .unwrap();
    // One connection per tester address (ISO 13400-2): close this one first.
    drop(t);
    rig.director.targets.clear();
    expect_refused(
        &mut rig,
        ecu_custom(SERIAL, HW, 4),
        ResultCode::ReleaseCounterRollback,
    )
    .await;
}

#[tokio::test]
async fn director_targets_version_rollback_and_bad_signature_and_no_time() {
    let mut rig = rig().await;
    rig.director
        .add_target("a.bin", b"a", Some(ecu_custom(SERIAL, HW, 1)));
    let old = rig.director.publish().unwrap();
    let new = rig.director.publish().unwrap();
    let mut t = Tester::connect(rig.addr).await;
    t.run(metadata_plan(new.targets.clone(), NOW))
        .await
        .unwrap();
    let e = t.run(metadata_plan(old.targets, NOW)).await.unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::Rollback.as_byte()),
        "{e}"
    );
    // Signed by a key the Director root does not list.
    let rogue = secureev_uptane::SigningKey::generate_p256();
    let forged = secureev_uptane::builder::resign(&new.targets, &[&rogue], |v| {
        v["version"] = json!(99);
    })
    .unwrap();
    let e = t.run(metadata_plan(forged, NOW)).await.unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::ArbitrarySoftware.as_byte()),
        "{e}"
    );
    // Expired at the written time: freeze.
    let e = t
        .run(metadata_plan(new.targets.clone(), NOW + 10 * 365 * 86_400))
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::Freeze.as_byte()),
        "{e}"
    );
    // An older time than the attested one is ignored (the clock never goes back),
    // so this verifies at the attested time.
    t.run(metadata_plan(new.targets, NOW - 86_400 * 365 * 20))
        .await
        .unwrap();
    // No time written since power-up (an ECUReset is a power cycle here).
    use secureev_uds::client::{RoutineCheck, Step};
    let e = t
        .run(
            FlashPlan::new()
                .step(Step::Reset(secureev_uds::codec::ResetType::Hard))
                .step(Step::Session(secureev_uds::codec::Session::Extended))
                .step(Step::Routine {
                    routine: routine::VERIFY_METADATA,
                    data: vec![],
                    check: RoutineCheck::Ok,
                }),
        )
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::NoTime.as_byte()),
        "{e}"
    );
}

#[tokio::test]
async fn tampered_image_is_result_0x10_and_not_activated() {
    let mut rig = rig().await;
    let image = vec![0xAB; 5000];
    rig.director
        .add_target("fw.bin", &image, Some(ecu_custom(SERIAL, HW, 1)));
    let p = rig.director.publish().unwrap();
    let mut tampered = image.clone();
    tampered[4321] ^= 1;
    let mut t = Tester::connect(rig.addr).await;
    let e = t
        .run(full_plan(
            p.targets.clone(),
            tampered,
            protocol::data_format::PLAIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::ArbitrarySoftware.as_byte()),
        "{e}"
    );
    // Activation without a verified image: 0x22.
    let e = t
        .run(FlashPlan::open_programming().then(FlashPlan::activate()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UdsError::NegativeResponse {
                nrc: Nrc::ConditionsNotCorrect,
                ..
            }
        ),
        "{e}"
    );
    // A wrong length is refused at RequestDownload with 0x31.
    let e = t
        .run(metadata_plan(p.targets, NOW).then(FlashPlan::send_image(
            Box::new(vec![0xAB; 4999]),
            protocol::data_format::PLAIN,
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UdsError::NegativeResponse {
                nrc: Nrc::RequestOutOfRange,
                ..
            }
        ),
        "{e}"
    );
    assert!(rig
        .server
        .lock()
        .await
        .backend()
        .state()
        .installed
        .is_none());
}

#[tokio::test]
async fn encrypted_image_is_decrypted_by_the_ecu() {
    let mut rig = rig().await;
    let mut t = Tester::connect(rig.addr).await;
    let id = t
        .run(FlashPlan::new().step(secureev_uds::client::Step::ReadDid {
            did: did::ENCRYPTION_KEY,
        }))
        .await
        .unwrap();
    let ecu_key = EcuEncryptionPublicKey::from_bytes(
        id.read(did::ENCRYPTION_KEY).unwrap().try_into().unwrap(),
    );
    let plain: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let key = ContentKey::generate();
    let (cipher, mut info) = encrypt_image(&key, &plain, 16 * 1024).unwrap();
    info.wrap_key_for("enc.bin", SERIAL, &key, &ecu_key)
        .unwrap();
    let mut custom = ecu_custom(SERIAL, HW, 3);
    custom["encryption"] = serde_json::to_value(&info).unwrap();
    rig.director
        .add_target("enc.bin", &cipher, Some(custom.clone()));
    let p = rig.director.publish().unwrap();

    // Plain DFI for an encrypted target: 0x31.
    let e = t
        .run(full_plan(
            p.targets.clone(),
            cipher.clone(),
            protocol::data_format::PLAIN,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UdsError::NegativeResponse {
                nrc: Nrc::RequestOutOfRange,
                ..
            }
        ),
        "{e}"
    );
    // A flipped ciphertext byte fails authentication.
    let mut bad = cipher.clone();
    bad[100] ^= 0x80;
    let e = t
        .run(full_plan(
            p.targets.clone(),
            bad,
            protocol::data_format::ENCRYPTED,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::ArbitrarySoftware.as_byte()),
        "{e}"
    );

    t.run(full_plan(
        p.targets,
        cipher,
        protocol::data_format::ENCRYPTED,
    ))
    .await
    .unwrap();
    let s = rig.server.lock().await;
    let ecu = s.backend();
    assert_eq!(
        std::fs::read(ecu.slot_path(ecu.state().active_slot)).unwrap(),
        plain
    );
    assert_eq!(ecu.state().installed.as_ref().unwrap().name(), "enc.bin");
    drop(s);

    // Wrapped for another ECU only: unsupported.
    let mut info2 = info.clone();
    info2.keys.clear();
    info2
        .wrap_key_for("enc2.bin", "OTHER", &key, &ecu_key)
        .unwrap();
    custom["encryption"] = serde_json::to_value(&info2).unwrap();
    custom["releaseCounter"] = json!(4);
    rig.director.targets.clear();
    drop(t);
    expect_refused(&mut rig, custom, ResultCode::Unsupported).await;
}

#[tokio::test]
async fn full_verification_checks_both_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let mut images = RepoBuilder::new(Timestamp::from_unix(NOW));
    std::fs::write(dir.path().join("d.json"), director.publish_root().unwrap()).unwrap();
    std::fs::write(dir.path().join("i.json"), images.publish_root().unwrap()).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("security-secret"), hex::encode(SECRET)).unwrap();
    let config = config::parse_str(&format!(
        "serial = \"{SERIAL}\"\nhardware_id = \"{HW}\"\nverification = \"full\"\nstate_dir = \"{}\"\ndirector_root = \"{}\"\nimage_root = \"{}\"\n[doip]\nlogical_address = {ECU_LA}\n",
        state.display(),
        dir.path().join("d.json").display(),
        dir.path().join("i.json").display()
    ))
    .unwrap();
    let (addr, server, shutdown) = start(&config).await;
    let _stop = shutdown.drop_guard();

    let image = vec![0x5C; 9000];
    images.add_target(
        "fw-3.bin",
        &image,
        Some(json!({"hardwareIds": [HW], "releaseCounter": 3})),
    );
    director.add_target("fw-3.bin", &image, Some(ecu_custom(SERIAL, HW, 3)));
    let (d, i) = (director.publish().unwrap(), images.publish().unwrap());
    let roles = |d: &secureev_uptane::builder::Published,
                 i: &secureev_uptane::builder::Published| {
        vec![
            (MetadataRole::DirectorTimestamp, d.timestamp.clone()),
            (MetadataRole::DirectorSnapshot, d.snapshot.clone()),
            (MetadataRole::DirectorTargets, d.targets.clone()),
            (MetadataRole::ImageTimestamp, i.timestamp.clone()),
            (MetadataRole::ImageSnapshot, i.snapshot.clone()),
            (MetadataRole::ImageTargets, i.targets.clone()),
        ]
    };
    let mut t = Tester::connect(addr).await;
    let caps = identify(&mut t).await;
    assert_eq!(
        protocol::Capabilities::decode(caps.read(did::CAPABILITIES).unwrap())
            .unwrap()
            .verification,
        protocol::VerificationType::Full
    );
    // Director targets alone are not enough for a full-verification ECU.
    let e = t
        .run(metadata_plan(d.targets.clone(), NOW))
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::MissingMetadata.as_byte()),
        "{e}"
    );

    let plan = FlashPlan::open_programming()
        .then(FlashPlan::send_metadata(NOW as u64, roles(&d, &i), 4095))
        .then(FlashPlan::send_image(
            Box::new(image.clone()),
            protocol::data_format::PLAIN,
        ))
        .then(FlashPlan::activate());
    t.run(plan).await.unwrap();
    assert_eq!(
        server
            .lock()
            .await
            .backend()
            .state()
            .installed
            .as_ref()
            .unwrap()
            .release_counter(),
        3
    );

    // Mix and match: the Image repository lists other bytes under the name.
    let image2 = vec![0x5D; 9000];
    images.add_target(
        "fw-4.bin",
        b"not the director's image",
        Some(json!({"hardwareIds": [HW], "releaseCounter": 4})),
    );
    director.targets.clear();
    director.add_target("fw-4.bin", &image2, Some(ecu_custom(SERIAL, HW, 4)));
    let (d, i) = (director.publish().unwrap(), images.publish().unwrap());
    let e = t
        .run(FlashPlan::open_programming().then(FlashPlan::send_metadata(
            NOW as u64,
            roles(&d, &i),
            4095,
        )))
        .await
        .unwrap_err();
    assert_eq!(
        routine_failed(&e),
        Some(ResultCode::MixAndMatch.as_byte()),
        "{e}"
    );
}

/// Issue 11: SecurityAccess was one state for every tester, so tester B was
/// treated as unlocked while tester A was. The session, unlock and download
/// belong to A's connection and source address; B cannot write, download,
/// reset, change the session or unlock meanwhile, a second routing activation
/// of A's address is refused (ISO 13400-2 code 0x03), and once A's connection
/// closes its session ends and B may program.
#[tokio::test]
async fn a_second_tester_cannot_use_or_break_the_first_ones_session() {
    let rig = rig().await;
    const B: u16 = 0x0E01;
    let mut a = Tester::connect(rig.addr).await;
    let mut b = Tester::connect_as(rig.addr, B).await;
    a.unlock(TESTER).await;
    assert!(rig.server.lock().await.is_unlocked());

    let mut time = vec![0x2E];
    time.extend_from_slice(&did::TIME.to_be_bytes());
    time.extend_from_slice(&protocol::encode_time(NOW as u64));
    let download = [
        0x34, 0x00, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,
    ];
    for (what, pdu) in [
        ("write the time", &time[..]),
        ("request a download", &download[..]),
        ("transfer data", &[0x36, 0x01, 0xAA][..]),
        ("reset the ECU", &[0x11, 0x01][..]),
        ("change the session", &[0x10, 0x01][..]),
        ("ask for a seed", &[0x27, 0x11][..]),
        ("erase", &[0x31, 0x01, 0xFF, 0x00][..]),
        ("keep the session alive", &[0x3E, 0x00][..]),
    ] {
        let r = b.request_from(B, pdu).await;
        assert_eq!(r, [0x7F, pdu[0], 0x22], "tester B could {what}: {r:02X?}");
    }
    // A's session survived all of it: still programming, still unlocked.
    {
        let s = rig.server.lock().await;
        assert!(s.is_unlocked());
        assert_eq!(s.session(), secureev_uds::codec::Session::Programming);
    }
    assert_eq!(a.request_from(TESTER, &time).await[..3], [0x6E, 0xF1, 0xA5]);

    // A's address on another connection: refused, and that socket closed.
    let (mut c, code) = Tester::try_connect_as(rig.addr, TESTER).await;
    assert_eq!(code, RoutingActivationCode::SourceAddressAlreadyActive);
    assert!(c.closed(Duration::from_secs(5)).await);
    // Another address on A's activated socket: refused with 0x02, closed.
    let (mut d, _) = Tester::try_connect_as(rig.addr, 0x0E02).await;
    assert_eq!(
        d.activate(0x0E03).await,
        RoutingActivationCode::DifferentSourceAddress
    );
    assert!(d.closed(Duration::from_secs(5)).await);

    // A goes away: its session ends at once (not after S3), and B may program.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.server.lock().await.is_unlocked() {
        assert!(
            Instant::now() < deadline,
            "A's unlock outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.unlock(B).await;
    assert_eq!(b.request_from(B, &time).await[..3], [0x6E, 0xF1, 0xA5]);
    // And A's address is free again.
    let _a2 = Tester::connect(rig.addr).await;
}

/// Issue 11: an image whose wrapped content key does not open (wrapped for
/// this serial, but to another X25519 key) used to be written over the
/// inactive slot and refused only at verify-image. RequestDownload refuses it
/// (0x22) before a byte is written; the inactive slot keeps what it held.
#[tokio::test]
async fn an_image_whose_key_does_not_open_never_reaches_the_slot() {
    let mut rig = rig().await;
    let plain = vec![0x42u8; 5000];
    let key = ContentKey::generate();
    let (cipher, mut info) = encrypt_image(&key, &plain, 1024).unwrap();
    let stranger = secureev_uptane::encryption::EcuDecryptionKey::generate();
    info.wrap_key_for("enc.bin", SERIAL, &key, &stranger.public())
        .unwrap();
    let mut custom = ecu_custom(SERIAL, HW, 3);
    custom["encryption"] = serde_json::to_value(&info).unwrap();
    rig.director.add_target("enc.bin", &cipher, Some(custom));
    let p = rig.director.publish().unwrap();
    let inactive = {
        let s = rig.server.lock().await;
        let ecu = s.backend();
        ecu.slot_path(ecu.state().active_slot.other()).to_owned()
    };
    std::fs::write(&inactive, b"previous image").unwrap();
    let mut t = Tester::connect(rig.addr).await;
    let e = t
        .run(full_plan(
            p.targets,
            cipher,
            protocol::data_format::ENCRYPTED,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UdsError::NegativeResponse {
                nrc: Nrc::ConditionsNotCorrect,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&inactive).unwrap(), b"previous image");
    let s = rig.server.lock().await;
    let last = s.backend().state().last_install.clone().unwrap();
    assert!(!last.success, "{last:?}");
}
