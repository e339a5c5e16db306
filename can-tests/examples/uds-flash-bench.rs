//! Flashing through UDS on vcan: the time to flash `--mib` MiB into a real
//! `secureev-ecu` process over kernel ISO-TP, classic CAN and CAN FD.
//!
//! ```text
//! uds-flash-bench --iface vcan0 --fd-iface vcan1 [--mib 1] [--markdown out.md]
//! ```
//!
//! Each row starts a fresh ECU (partial verification) with a Director
//! repository that assigns it the image, and times the whole flash: 10 02,
//! SecurityAccess, 2E F1A5 time, 2E F1C3 Director targets, verify-metadata,
//! eraseMemory, 34/36/37, verify-image, checkProgrammingDependencies,
//! activate, 11 01. The clients are our `FlashClient` (`secureev-uds`, the
//! Primary's) and, when `SECUREEV_CAN_PYTHON` is set, the independent udsoncan
//! client `can-tests/interop/udsoncan_flash.py`. Frames are counted by the
//! interface (`tx_packets`: requests, responses and flow control of both
//! sides). After each flash the ECU's active slot must hold the image; the
//! benchmark exits non-zero if a flash fails. Run by `can-tests/run-vm.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use clap::Parser;
use secureev_can::IsoTpSocket;
use secureev_can_tests::{payload, sha256_hex, EcuProcess, EcuSpec};
use secureev_uds::client::{Action, ClientConfig, FlashClient, FlashPlan};
use secureev_uds::protocol::{self, Capabilities, MetadataRole};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uptane::builder::RepoBuilder;
use secureev_uptane::Timestamp;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const NOW: i64 = 1_800_000_000;
const SECRET: [u8; 32] = [0x3C; 32];
const SERIAL: &str = "BENCH-1";
const HW: &str = "bench-hw";
/// The ECU's ids (it listens on `RX_ID`, answers on `TX_ID`).
const TX_ID: u32 = 0x5E8;
const RX_ID: u32 = 0x5E0;
/// P2client of both clients. secureev-ecu verifies metadata without first
/// sending `7F 31 78` within P2server, and under TCG that takes about as long
/// as the usual 1-2 s P2client: a client would time out and repeat the
/// request, and read the ECU's duplicate answer as the answer to the next
/// one. A generous P2 keeps the rows about throughput.
const P2: Duration = Duration::from_secs(10);

/// UDS flashing benchmark on vcan (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    /// Classic CAN interface (MTU 16).
    #[arg(long, default_value = "vcan0")]
    iface: String,
    /// CAN FD interface (MTU 72); no FD rows without it.
    #[arg(long)]
    fd_iface: Option<String>,
    /// MiB per flash.
    #[arg(long, default_value_t = 1.0)]
    mib: f64,
    /// Also write the table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// One measured flash.
struct Row {
    link: &'static str,
    client: &'static str,
    bytes: usize,
    result: Result<Measured, String>,
}

struct Measured {
    secs: f64,
    blocks: u64,
    frames: u64,
}

fn tx_frames(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/tx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A fresh ECU on `iface` and the Director targets that assign it `image`.
struct Setup {
    _dir: tempfile::TempDir,
    ecu: EcuProcess,
    targets: Vec<u8>,
    targets_path: PathBuf,
    image_path: PathBuf,
}

fn setup(iface: &str, fd: bool, image: &[u8]) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let root = director.publish_root().expect("Director root");
    let mut spec = EcuSpec::new(SERIAL, HW, iface, TX_ID, RX_ID).with_secret(SECRET);
    if fd {
        spec = spec.with_fd();
    }
    let ecu = EcuProcess::start(&dir.path().join("ecu"), spec, &root);
    director.add_target(
        "fw.bin",
        image,
        Some(json!({"ecuIdentifiers": {SERIAL: {"hardwareId": HW}}})),
    );
    let targets = director.publish().expect("Director targets").targets;
    let targets_path = dir.path().join("director-targets.json");
    let image_path = dir.path().join("image.bin");
    std::fs::write(&targets_path, &targets).expect("write targets");
    std::fs::write(&image_path, image).expect("write image");
    Setup {
        _dir: dir,
        ecu,
        targets,
        targets_path,
        image_path,
    }
}

/// Runs `plan` over `sock` to the end.
async fn run_plan(
    sock: &IsoTpSocket,
    plan: FlashPlan,
) -> Result<secureev_uds::client::Outcome, String> {
    let alg = HmacSha256Algorithm::new(&SECRET).map_err(|e| e.to_string())?;
    let config = ClientConfig {
        p2: P2,
        ..ClientConfig::default()
    };
    let mut client = FlashClient::new(plan, Box::new(alg), config).map_err(|e| e.to_string())?;
    loop {
        match client.next_action(Instant::now()) {
            Action::Send(pdu) => sock.send(&pdu).await.map_err(|e| format!("send: {e}"))?,
            Action::Wait(d) => match tokio::time::timeout(d, sock.recv_vec()).await {
                Ok(Ok(rsp)) => client
                    .handle_response(&rsp, Instant::now())
                    .map_err(|e| e.to_string())?,
                Ok(Err(e)) => return Err(format!("receive: {e}")),
                Err(_) => client
                    .handle_timeout(Instant::now())
                    .map_err(|e| e.to_string())?,
            },
            Action::Done => break,
        }
    }
    if !client.is_done() {
        return Err("the plan did not complete".into());
    }
    Ok(client.into_outcome())
}

/// Our `FlashClient` flashes `image`.
async fn flash_ours(iface: &str, fd: bool, image: &[u8]) -> Result<Measured, String> {
    let s = setup(iface, fd, image);
    let sock = IsoTpSocket::open(iface, s.ecu.spec.tester_isotp()).map_err(|e| e.to_string())?;
    // Untimed: what the Primary reads before it decides how to send metadata.
    let identity = run_plan(&sock, FlashPlan::identify()).await?;
    let caps = Capabilities::decode(
        identity
            .read(protocol::did::CAPABILITIES)
            .ok_or("no capabilities")?,
    )
    .map_err(|e| e.to_string())?;
    let plan = FlashPlan::open_programming()
        .then(FlashPlan::send_metadata(
            NOW as u64,
            vec![(MetadataRole::DirectorTargets, s.targets.clone())],
            caps.max_pdu as usize,
        ))
        .then(FlashPlan::send_image(
            Box::new(image.to_vec()),
            protocol::data_format::PLAIN,
        ))
        .then(FlashPlan::activate());
    let f0 = tx_frames(iface);
    let t0 = Instant::now();
    let outcome = run_plan(&sock, plan).await;
    let secs = t0.elapsed().as_secs_f64();
    let frames = tx_frames(iface) - f0;
    let outcome = outcome.map_err(|e| format!("{e}; ECU log:\n{}", tail(&s.ecu.log())))?;
    check_active(&s.ecu, image)?;
    Ok(Measured {
        secs,
        blocks: outcome.stats.blocks,
        frames,
    })
}

/// The udsoncan script flashes `image` (it times itself and counts frames
/// over the same steps).
fn flash_udsoncan(py: &Path, iface: &str, fd: bool, image: &[u8]) -> Result<Measured, String> {
    let s = setup(iface, fd, image);
    let stats_path = s.image_path.with_file_name("stats.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/udsoncan_flash.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .args(["--iface", iface])
        .args([
            "--tx-id",
            &format!("0x{RX_ID:X}"),
            "--rx-id",
            &format!("0x{TX_ID:X}"),
        ])
        .args(["--secret", &hex::encode(SECRET)])
        .arg("--metadata")
        .arg(&s.targets_path)
        .arg("--image")
        .arg(&s.image_path)
        .args(["--time", &NOW.to_string(), "--scenario", "flash"])
        .args(["--p2", &P2.as_secs().to_string()])
        .arg("--stats-out")
        .arg(&stats_path)
        .stdin(Stdio::null());
    if fd {
        cmd.arg("--fd");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("run {}: {e}", py.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    if !out.status.success() {
        return Err(format!(
            "udsoncan_flash.py: {}; ECU log:\n{}",
            out.status,
            tail(&s.ecu.log())
        ));
    }
    let stats: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&stats_path).map_err(|e| format!("read stats: {e}"))?,
    )
    .map_err(|e| format!("stats: {e}"))?;
    check_active(&s.ecu, image)?;
    Ok(Measured {
        secs: stats["seconds"].as_f64().ok_or("stats: no seconds")?,
        blocks: stats["blocks"].as_u64().ok_or("stats: no blocks")?,
        frames: stats["frames"].as_u64().ok_or("stats: no frames")?,
    })
}

fn check_active(ecu: &EcuProcess, image: &[u8]) -> Result<(), String> {
    let active = ecu.active_image();
    if sha256_hex(&active) != sha256_hex(image) {
        return Err(format!(
            "the ECU's active slot holds {} bytes, not the {}-byte image",
            active.len(),
            image.len()
        ));
    }
    Ok(())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let bytes = (args.mib * MIB).round() as usize;
    let image = payload(bytes, 0xB0);
    let python = std::env::var_os("SECUREEV_CAN_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if python.is_none() {
        eprintln!("SECUREEV_CAN_PYTHON is not set: no udsoncan rows");
    }
    let mut links = vec![("classic CAN 8 B", args.iface.clone(), false)];
    if let Some(fd) = &args.fd_iface {
        links.push(("CAN FD 64 B", fd.clone(), true));
    }
    let mut rows = Vec::new();
    for (link, iface, fd) in links {
        let ours = flash_ours(&iface, fd, &image).await;
        rows.push(Row {
            link,
            client: "secureev-uds FlashClient",
            bytes,
            result: ours,
        });
        report(rows.last().expect("row"));
        if let Some(py) = &python {
            let theirs = flash_udsoncan(py, &iface, fd, &image);
            rows.push(Row {
                link,
                client: "udsoncan 1.26.1",
                bytes,
                result: theirs,
            });
            report(rows.last().expect("row"));
        }
        // Let the previous ECU's socket go before the next binds the same ids.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut md = format!(
        "UDS flashing into secureev-ecu over kernel ISO-TP on vcan, kernel {}, {:.2} MiB image, \
         4095-byte PDUs (4093 data bytes per TransferData block)\n\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        bytes as f64 / MIB
    );
    md.push_str("| link | client | MiB | seconds | MiB/s | TransferData blocks | CAN frames | frames/MiB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut failed = false;
    for r in &rows {
        let mib = r.bytes as f64 / MIB;
        match &r.result {
            Ok(m) => md.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:.3} | {} | {} | {:.0} |\n",
                r.link,
                r.client,
                mib,
                m.secs,
                mib / m.secs,
                m.blocks,
                m.frames,
                m.frames as f64 / mib
            )),
            Err(e) => {
                failed = true;
                let first = e.lines().next().unwrap_or_default();
                md.push_str(&format!(
                    "| {} | {} | {mib:.2} | FAILED: {first} | | | | |\n",
                    r.link, r.client
                ));
            }
        }
    }
    print!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).expect("write --markdown file");
    }
    if failed {
        eprintln!("uds-flash-bench: a flash failed");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn report(r: &Row) {
    match &r.result {
        Ok(m) => eprintln!(
            "{}: {}: {} bytes in {:.2} s, {} blocks, {} frames",
            r.link, r.client, r.bytes, m.secs, m.blocks, m.frames
        ),
        Err(e) => eprintln!("{}: {}: FAILED: {e}", r.link, r.client),
    }
}
