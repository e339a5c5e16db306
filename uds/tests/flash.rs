//! In-memory flashing, client ↔ server, with the faults a CAN bus produces.

use secureev_uds::client::{Action, ClientConfig, FlashClient, FlashPlan, Outcome, Step};
use secureev_uds::codec::{ResetType, RoutineControlType, Session};
use secureev_uds::protocol::{
    self, did, routine, Capabilities, MetadataRole, Region, ReportInfo, ResultCode,
    VerificationType,
};
use secureev_uds::security::{HmacSha256Algorithm, SecurityAlgorithm};
use secureev_uds::server::{
    Context, DownloadRequest, EcuBackend, EcuServer, ImageSink, Progress, ServerConfig,
};
use secureev_uds::{Error, Nrc};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"provisioned per-ECU secret 0001";
const MIB: usize = 1 << 20;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

impl rand_core::RngCore for XorShift {
    fn next_u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.iter_mut().for_each(|b| *b = self.next() as u8);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A secondary ECU in memory: staged metadata, one image slot, and a verify
/// routine that stays busy for a while.
#[derive(Default)]
struct TestEcu {
    staged: BTreeMap<MetadataRole, Vec<Vec<u8>>>,
    time: Option<u64>,
    metadata_verified: bool,
    expected_sha256: [u8; 32],
    download: Option<(Region, u64)>,
    buffer: Vec<u8>,
    slot: Vec<u8>,
    writes: u64,
    image_verified: bool,
    activated: bool,
    verify_busy: u32,
    resets: u32,
    report: Vec<u8>,
}

impl ImageSink for TestEcu {
    fn begin(&mut self, d: &DownloadRequest) -> Result<(), Nrc> {
        let region = Region::from_address(d.address).ok_or(Nrc::RequestOutOfRange)?;
        match region {
            Region::Image if !self.metadata_verified => return Err(Nrc::ConditionsNotCorrect),
            Region::Image => {}
            Region::Metadata(_) if d.data_format != protocol::data_format::PLAIN => {
                return Err(Nrc::RequestOutOfRange)
            }
            Region::Metadata(_) => {}
        }
        self.download = Some((region, d.size));
        self.buffer = Vec::with_capacity(d.size as usize);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Nrc> {
        assert_eq!(
            offset,
            self.buffer.len() as u64,
            "writes are in order and never repeated"
        );
        self.writes += 1;
        self.buffer.extend_from_slice(data);
        Ok(())
    }
    fn finish(&mut self) -> Result<Progress<Vec<u8>>, Nrc> {
        let (region, size) = self.download.take().ok_or(Nrc::RequestSequenceError)?;
        assert_eq!(self.buffer.len() as u64, size);
        let bytes = std::mem::take(&mut self.buffer);
        match region {
            Region::Image => self.slot = bytes,
            Region::Metadata(role) => self.staged.entry(role).or_default().push(bytes),
        }
        Ok(Progress::Ready(vec![]))
    }
    fn abort(&mut self) {
        self.download = None;
        self.buffer.clear();
    }
}

impl EcuBackend for TestEcu {
    fn read_did(&mut self, d: u16, _: &Context) -> Result<Vec<u8>, Nrc> {
        Ok(match d {
            did::ECU_SERIAL => b"BMS-0001".to_vec(),
            did::HARDWARE_ID => b"bms-v2".to_vec(),
            did::PUBLIC_KEY => b"did:key:zDnaeTest".to_vec(),
            did::CAPABILITIES => Capabilities {
                version: protocol::PROTOCOL_VERSION,
                verification: VerificationType::Partial,
                max_pdu: 4095,
                encryption: false,
            }
            .encode(),
            d if (did::REPORT_CHUNK_BASE..did::REPORT_CHUNK_BASE + 16).contains(&d) => {
                let info = ReportInfo::for_report(&self.report, protocol::CLASSIC_REPORT_CHUNK)
                    .map_err(|_| Nrc::ConditionsNotCorrect)?;
                info.chunk(&self.report, (d - did::REPORT_CHUNK_BASE) as u8)
                    .ok_or(Nrc::RequestOutOfRange)?
                    .to_vec()
            }
            _ => return Err(Nrc::RequestOutOfRange),
        })
    }

    fn write_did(&mut self, d: u16, data: &[u8], _: &Context) -> Result<(), Nrc> {
        if d == did::TIME {
            self.time = Some(
                protocol::decode_time(data).ok_or(Nrc::IncorrectMessageLengthOrInvalidFormat)?,
            );
            return Ok(());
        }
        let role = MetadataRole::from_did(d)
            .filter(|r| r.writable_by_did())
            .ok_or(Nrc::RequestOutOfRange)?;
        self.staged.entry(role).or_default().push(data.to_vec());
        Ok(())
    }

    fn routine(
        &mut self,
        _: RoutineControlType,
        r: u16,
        data: &[u8],
        _: &Context,
    ) -> Result<Progress<Vec<u8>>, Nrc> {
        let status = |c: ResultCode, d: &str| Ok(Progress::Ready(protocol::routine_status(c, d)));
        match r {
            routine::VERIFY_METADATA => {
                if self.time.is_none() {
                    return status(ResultCode::NoTime, "no time");
                }
                let Some(targets) = self.staged.get(&MetadataRole::DirectorTargets) else {
                    return status(ResultCode::MissingMetadata, "no director targets");
                };
                // Stands in for partial verification: the "targets" carry the
                // image hash.
                let t = targets.last().cloned().unwrap_or_default();
                if t.starts_with(b"wrong-hw") {
                    return status(ResultCode::WrongHardwareId, "image is for bms-v1");
                }
                self.expected_sha256.copy_from_slice(&t[..32]);
                self.metadata_verified = true;
                status(ResultCode::Ok, "")
            }
            routine::ERASE_MEMORY => {
                self.slot.clear();
                Ok(Progress::Ready(vec![]))
            }
            routine::VERIFY_IMAGE => {
                if self.verify_busy > 0 {
                    self.verify_busy -= 1;
                    return Ok(Progress::Busy);
                }
                let got: [u8; 32] = Sha256::digest(&self.slot).into();
                if got != self.expected_sha256 {
                    return status(ResultCode::ArbitrarySoftware, "image hash mismatch");
                }
                self.image_verified = true;
                status(ResultCode::Ok, "")
            }
            routine::CHECK_PROGRAMMING_DEPENDENCIES => status(ResultCode::Ok, ""),
            routine::ACTIVATE if self.image_verified => {
                self.activated = true;
                status(ResultCode::Ok, "")
            }
            routine::ACTIVATE => Err(Nrc::ConditionsNotCorrect),
            routine::GENERATE_REPORT => {
                let mut report = format!("{{\"nonce\":\"{}\",\"pad\":\"", hex(data)).into_bytes();
                report.extend_from_slice(&[b'x'; 9000]);
                report.extend_from_slice(b"\"}");
                let info = ReportInfo::for_report(&report, protocol::CLASSIC_REPORT_CHUNK)
                    .map_err(|_| Nrc::GeneralProgrammingFailure)?;
                self.report = report;
                let mut s = vec![ResultCode::Ok.as_byte()];
                s.extend(info.encode());
                Ok(Progress::Ready(s))
            }
            _ => Err(Nrc::RequestOutOfRange),
        }
    }

    fn reset(&mut self, t: ResetType) -> Result<(), Nrc> {
        self.resets += 1;
        match t {
            ResetType::Hard => Ok(()),
            _ => Err(Nrc::SubFunctionNotSupported),
        }
    }

    fn session_changed(&mut self, _: Session, to: Session) {
        if to == Session::Default {
            self.staged.clear();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn server_with(ecu: TestEcu, config: ServerConfig) -> EcuServer<TestEcu> {
    EcuServer::new(
        ecu,
        config,
        Box::new(HmacSha256Algorithm::new(SECRET).expect("secret")),
        Box::new(XorShift(0x9E37_79B9_7F4A_7C15)),
    )
}

fn client(plan: FlashPlan, config: ClientConfig) -> FlashClient {
    FlashClient::new(
        plan,
        Box::new(HmacSha256Algorithm::new(SECRET).expect("secret")),
        config,
    )
    .expect("plan")
}

/// What the simulated bus does with one response.
#[derive(PartialEq)]
enum Fate {
    Deliver,
    Drop,
    /// Deliver after the client's next request.
    Delay,
}

/// Drive client and server until the plan ends. Time advances only in the
/// simulation: 100 µs per request, in steps of at most 100 ms while waiting.
fn run(
    client: &mut FlashClient,
    server: &mut EcuServer<impl EcuBackend>,
    now: &mut Instant,
    mut fate: impl FnMut(&[u8], &[u8]) -> Fate,
) -> Result<(), Error> {
    let mut inbox: VecDeque<Vec<u8>> = VecDeque::new();
    let mut delayed: Vec<Vec<u8>> = Vec::new();
    let mut last = Vec::new();
    let mut deliver =
        |req: &[u8], rsp: Vec<u8>, inbox: &mut VecDeque<Vec<u8>>, delayed: &mut Vec<Vec<u8>>| {
            match fate(req, &rsp) {
                Fate::Deliver => inbox.push_back(rsp),
                Fate::Drop => {}
                Fate::Delay => delayed.push(rsp),
            }
        };
    for _ in 0..10_000_000 {
        match client.next_action(*now) {
            Action::Send(req) => {
                *now += Duration::from_micros(100);
                inbox.extend(delayed.drain(..));
                if let Some(rsp) = server.handle(&req, *now) {
                    deliver(&req, rsp, &mut inbox, &mut delayed);
                }
                last = req;
            }
            Action::Wait(d) => {
                if let Some(rsp) = inbox.pop_front() {
                    client.handle_response(&rsp, *now)?;
                    continue;
                }
                let step = d.min(Duration::from_millis(100));
                *now += step;
                if let Some(rsp) = server.poll(*now) {
                    deliver(&last, rsp, &mut inbox, &mut delayed);
                    continue;
                }
                if step >= d {
                    client.handle_timeout(*now)?;
                }
            }
            Action::Done => return Ok(()),
        }
    }
    panic!("the simulation made no progress");
}

fn flash_plan(image: &[u8], max_pdu: usize) -> FlashPlan {
    let targets = Sha256::digest(image).to_vec();
    FlashPlan::open_programming()
        .then(FlashPlan::send_metadata(
            1_767_225_600,
            vec![(MetadataRole::DirectorTargets, targets)],
            max_pdu,
        ))
        .then(FlashPlan::send_image(
            Box::new(image.to_vec()),
            protocol::data_format::PLAIN,
        ))
        .then(FlashPlan::activate())
}

#[test]
fn flash_1mib_random_block_sizes_lost_and_late_responses_wrap_and_pending() {
    let mut rng = XorShift(0xDEAD_BEEF_0BAD_F00D);
    let image = rng.bytes(MIB);
    for round in 0..4 {
        let server_block = rng.range(64, 4095) as u32;
        let client_pdu = rng.range(64, 4095) as usize;
        let data_per_block = (server_block as usize).min(client_pdu) - 2;
        let blocks = MIB.div_ceil(data_per_block) as u64;
        assert!(blocks > 256, "the counter wraps past 0xFF");

        let ecu = TestEcu {
            verify_busy: 60,
            ..TestEcu::default()
        };
        let mut server = server_with(
            ecu,
            ServerConfig {
                max_block_length: server_block,
                ..ServerConfig::default()
            },
        );
        let mut c = client(
            flash_plan(&image, client_pdu),
            ClientConfig {
                max_pdu: client_pdu,
                ..ClientConfig::default()
            },
        );
        let mut now = Instant::now();
        let (mut dropped, mut held) = (0, 0);
        run(&mut c, &mut server, &mut now, |req, _| {
            // Lose the acknowledgement of block 5 once, and of the first block
            // after the wrap (counter 0x00) once; deliver the acknowledgement
            // of block 7 late, after the client has already sent it again.
            if req.len() > 2 && req[0] == 0x36 {
                if (req[1] == 5 && dropped == 0) || (req[1] == 0 && dropped == 1) {
                    dropped += 1;
                    return Fate::Drop;
                }
                if req[1] == 7 && held == 0 {
                    held += 1;
                    return Fate::Delay;
                }
            }
            Fate::Deliver
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));

        let outcome = c.into_outcome();
        let ecu = server.backend();
        assert_eq!(ecu.slot, image, "round {round}: image intact");
        assert!(ecu.activated && ecu.resets == 1);
        assert_eq!(ecu.writes, blocks, "every block written exactly once");
        let s = server.stats();
        assert_eq!(s.blocks_written, blocks);
        assert_eq!(
            s.blocks_repeated, 3,
            "two lost and one late acknowledgement: resent, acked again"
        );
        assert!(
            s.pending_sent >= 3,
            "0x78 repeated during the long verify: {}",
            s.pending_sent
        );
        assert!(outcome.stats.pending >= 3);
        assert_eq!(outcome.stats.blocks, blocks);
        assert_eq!(outcome.stats.retries, 3);
        assert_eq!(outcome.stats.bytes, MIB as u64);
        assert!(
            outcome.stats.ignored >= 1,
            "the late acknowledgement was ignored"
        );
        assert_eq!(
            server.session(),
            Session::Default,
            "reset returns to the default session"
        );
    }
}

#[test]
fn metadata_larger_than_a_pdu_is_downloaded() {
    let image = XorShift(5).bytes(10_000);
    let mut targets = Sha256::digest(&image).to_vec();
    targets.extend(vec![b' '; 6000]); // a 6 KB "targets.json": beyond one classic PDU
    let root = vec![b'r'; 900];
    let plan = FlashPlan::open_programming()
        .then(FlashPlan::send_metadata(
            1,
            vec![
                (MetadataRole::DirectorRoot, root.clone()),
                (MetadataRole::DirectorTargets, targets.clone()),
            ],
            4095,
        ))
        .then(FlashPlan::send_image(Box::new(image.clone()), 0));
    let kinds: Vec<String> = plan.steps().map(|s| format!("{s:?}")).collect();
    assert!(
        kinds.iter().any(|k| k.starts_with("WriteDid(0xF1C0")),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.starts_with("Download(0xFE00F1C3")),
        "{kinds:?}"
    );
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut c = client(plan, ClientConfig::default());
    run(&mut c, &mut server, &mut Instant::now(), |_, _| {
        Fate::Deliver
    })
    .unwrap();
    let ecu = server.backend();
    assert_eq!(ecu.staged[&MetadataRole::DirectorRoot], vec![root]);
    assert_eq!(ecu.staged[&MetadataRole::DirectorTargets], vec![targets]);
    assert!(ecu.image_verified);
}

#[test]
fn identify_and_chunked_version_report() {
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let nonce = [0xA5; 16];
    let mut c = client(
        FlashPlan::identify().then(FlashPlan::report(nonce)),
        ClientConfig::default(),
    );
    run(&mut c, &mut server, &mut Instant::now(), |_, _| {
        Fate::Deliver
    })
    .unwrap();
    let o: Outcome = c.into_outcome();
    assert_eq!(o.read(did::ECU_SERIAL).unwrap(), b"BMS-0001");
    assert_eq!(o.read(did::HARDWARE_ID).unwrap(), b"bms-v2");
    let caps = Capabilities::decode(o.read(did::CAPABILITIES).unwrap()).unwrap();
    assert_eq!(caps.verification, VerificationType::Partial);
    let report = o.report.unwrap();
    assert!(report.len() > 9000, "three chunks");
    assert!(String::from_utf8(report)
        .unwrap()
        .contains(&"a5".repeat(16)));
    assert_eq!(o.reads.len(), 4, "chunk reads are not listed as DID reads");
}

#[test]
fn wrong_hardware_id_is_a_routine_result_and_blocks_the_download() {
    let image = vec![1u8; 1000];
    let plan = FlashPlan::open_programming().then(FlashPlan::send_metadata(
        1,
        vec![(MetadataRole::DirectorTargets, b"wrong-hw".to_vec())],
        4095,
    ));
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut c = client(plan, ClientConfig::default());
    let mut now = Instant::now();
    let e = run(&mut c, &mut server, &mut now, |_, _| Fate::Deliver).unwrap_err();
    assert_eq!(
        e,
        Error::RoutineFailed {
            routine: routine::VERIFY_METADATA,
            code: 0x15,
            name: "wrong-hardware-id",
            detail: "image is for bms-v1".into()
        }
    );
    // The Primary carries on regardless: the ECU refuses the image download.
    let mut c = client(
        FlashPlan::new().step(Step::Download {
            address: 0,
            data_format: 0,
            source: Box::new(image),
        }),
        ClientConfig::default(),
    );
    let e = run(&mut c, &mut server, &mut now, |_, _| Fate::Deliver).unwrap_err();
    assert_eq!(
        e,
        Error::NegativeResponse {
            step: "request download",
            sid: 0x34,
            nrc: Nrc::ConditionsNotCorrect
        }
    );
}

#[test]
fn s3_timeout_drops_the_session_and_the_staged_metadata() {
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut now = Instant::now();
    let mut c = client(
        FlashPlan::open_programming().step(Step::WriteDid {
            did: did::DIRECTOR_TARGETS,
            data: vec![0; 40],
        }),
        ClientConfig::default(),
    );
    run(&mut c, &mut server, &mut now, |_, _| Fate::Deliver).unwrap();
    assert!(server.is_unlocked());
    assert_eq!(server.backend().staged.len(), 1);
    // The Primary stalls for longer than S3 without TesterPresent.
    now += Duration::from_secs(6);
    assert_eq!(server.poll(now), None);
    assert_eq!(server.session(), Session::Default);
    assert!(!server.is_unlocked());
    assert!(
        server.backend().staged.is_empty(),
        "unverified staged metadata dropped"
    );
    let mut c = client(
        FlashPlan::new().step(Step::WriteDid {
            did: did::TIME,
            data: protocol::encode_time(5),
        }),
        ClientConfig::default(),
    );
    let e = run(&mut c, &mut server, &mut now, |_, _| Fate::Deliver).unwrap_err();
    assert_eq!(
        e,
        Error::NegativeResponse {
            step: "write data by identifier",
            sid: 0x2E,
            nrc: Nrc::RequestOutOfRange
        }
    );
}

#[test]
fn wrong_keys_lock_out_then_the_delay_expires() {
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut now = Instant::now();
    let wrong = HmacSha256Algorithm::new(b"not the provisioned secret!!").unwrap();
    let attempt =
        |alg: &HmacSha256Algorithm, server: &mut EcuServer<TestEcu>, now: &mut Instant| {
            let mut c = FlashClient::new(
                FlashPlan::open_programming(),
                Box::new(alg.clone()),
                ClientConfig::default(),
            )
            .unwrap();
            run(&mut c, server, now, |_, _| Fate::Deliver)
        };
    let nrc_of = |r: Result<(), Error>| match r {
        Err(Error::NegativeResponse { nrc, .. }) => nrc,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        nrc_of(attempt(&wrong, &mut server, &mut now)),
        Nrc::InvalidKey
    );
    assert_eq!(
        nrc_of(attempt(&wrong, &mut server, &mut now)),
        Nrc::InvalidKey
    );
    assert_eq!(
        nrc_of(attempt(&wrong, &mut server, &mut now)),
        Nrc::ExceededNumberOfAttempts
    );
    let right = HmacSha256Algorithm::new(SECRET).unwrap();
    assert_eq!(
        nrc_of(attempt(&right, &mut server, &mut now)),
        Nrc::RequiredTimeDelayNotExpired,
        "even the right key must wait"
    );
    now += Duration::from_secs(11);
    attempt(&right, &mut server, &mut now).unwrap();
    assert!(server.is_unlocked());
    assert_eq!(server.stats().invalid_keys, 3);
}

#[test]
fn a_lost_key_response_restarts_at_request_seed() {
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut dropped = false;
    let mut c = client(FlashPlan::open_programming(), ClientConfig::default());
    run(&mut c, &mut server, &mut Instant::now(), |req, _| {
        if req.len() > 2 && req[..2] == [0x27, 0x12] && !dropped {
            dropped = true;
            return Fate::Drop;
        }
        Fate::Deliver
    })
    .unwrap();
    assert!(server.is_unlocked());
    assert_eq!(c.stats().retries, 1);
}

#[test]
fn an_ecu_that_never_answers_times_out_after_retries() {
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut c = client(
        FlashPlan::identify(),
        ClientConfig {
            max_retries: 2,
            ..ClientConfig::default()
        },
    );
    let e = run(&mut c, &mut server, &mut Instant::now(), |_, _| Fate::Drop).unwrap_err();
    assert_eq!(
        e,
        Error::Timeout {
            step: "read data by identifier",
            timeout: Duration::from_secs(1),
            attempts: 3
        }
    );
}

#[test]
fn hmac_default_algorithm_is_what_client_and_server_share() {
    let alg = HmacSha256Algorithm::new(SECRET).unwrap();
    let key = alg.compute_key(protocol::SECURITY_LEVEL, &[1; 16]);
    assert!(alg.verify_key(protocol::SECURITY_LEVEL, &[1; 16], &key));
}

/// Regression: a verify-image answer that arrives late (after the client
/// repeated the request on P2 expiry, so the ECU answers twice) used to fail
/// the next step with "routine 0xD001, asked 0xFF01". Late answers to an
/// earlier request are ignored.
#[test]
fn a_late_duplicate_routine_answer_is_ignored() {
    let image = vec![0x5A; 10_000];
    let mut server = server_with(TestEcu::default(), ServerConfig::default());
    let mut delayed = false;
    let mut c = client(flash_plan(&image, 4095), ClientConfig::default());
    run(&mut c, &mut server, &mut Instant::now(), |req, rsp| {
        let verify = [0x31, 0x01, 0xD0, 0x01];
        if req.len() >= 4 && req[..4] == verify && rsp.first() == Some(&0x71) && !delayed {
            delayed = true;
            return Fate::Delay;
        }
        Fate::Deliver
    })
    .unwrap();
    assert!(delayed, "the verify-image answer was delayed");
    assert!(c.is_done());
    assert!(c.stats().retries >= 1, "{:?}", c.stats());
    assert!(c.stats().ignored >= 1, "{:?}", c.stats());
}
