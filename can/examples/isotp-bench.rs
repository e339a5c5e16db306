//! ISO-TP throughput on vcan: our socket and can-utils side by side.
//!
//! ```text
//! isotp-bench --iface vcan0 --fd-iface vcan1 [--mib 1] [--markdown out.md]
//! ```
//!
//! For classic CAN (8-byte frames) on `--iface` and CAN FD (64-byte frames,
//! BRS) on `--fd-iface`, it moves about `--mib` MiB in 4095-byte PDUs (the
//! largest every peer handles) and reports MiB/s, frames per MiB as counted by
//! the interface (`tx_packets`, data and flow control frames) and the
//! theoretical count. Pairs: ours → ours, ours → `isotprecv -l`,
//! `isotpsend` → ours, `isotpsend` → `isotprecv -l` (one `isotpsend` process per
//! PDU, so that row includes process start-up). Run by `can-tests/run-vm.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secureev_can::{frames_for_pdu, kernel_max_pdu, IsoTpConfig, IsoTpSocket};

const MIB: f64 = 1024.0 * 1024.0;

struct Row {
    link: &'static str,
    pair: String,
    pdus: usize,
    sent: usize,
    size: usize,
    secs: f64,
    frames: u64,
    theory: usize,
}

fn dbg_step(what: &str) {
    if std::env::var_os("ISOTP_BENCH_DEBUG").is_some() {
        eprintln!("[bench] {what}");
    }
}

fn tx_frames(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/tx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn ll(fd: bool) -> Vec<&'static str> {
    if fd {
        vec!["-L", "72:64:1"]
    } else {
        vec![]
    }
}

/// `isotprecv -l` that has been given time to bind; a thread counts its lines.
fn isotprecv(iface: &str, fd: bool, src: u32, dst: u32, n: usize) -> (Child, Arc<AtomicUsize>) {
    let mut child = Command::new("isotprecv")
        .args([
            "-l",
            "-s",
            &format!("{src:03X}"),
            "-d",
            &format!("{dst:03X}"),
        ])
        .args(ll(fd))
        .arg(iface)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("isotprecv (can-utils)");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(AtomicUsize::new(0));
    let lines2 = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            // isotprecv prints an empty line for a failed read(): not a PDU.
            match line {
                Err(_) => break,
                Ok(l) if l.trim().is_empty() => continue,
                Ok(_) => {}
            }
            if lines2.fetch_add(1, Ordering::SeqCst) + 1 == n {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    dbg_step("isotprecv started");
    (child, lines)
}

fn isotpsend(iface: &str, fd: bool, src: u32, dst: u32, size: usize) {
    let st = Command::new("isotpsend")
        .args(["-s", &format!("{src:03X}"), "-d", &format!("{dst:03X}")])
        .args(["-D", &size.to_string()])
        .args(ll(fd))
        .arg(iface)
        .stdin(Stdio::null())
        .status()
        .expect("isotpsend (can-utils)");
    assert!(st.success(), "isotpsend failed");
}

/// Waits until `count` reaches `n`, or 30 s pass without progress; returns the
/// count and when it last grew (so a stall does not count as transfer time).
async fn wait_count(count: &AtomicUsize, n: usize) -> (usize, Instant) {
    let mut last = (0, Instant::now());
    loop {
        let c = count.load(Ordering::SeqCst);
        if c >= n {
            return (c, Instant::now());
        }
        if c != last.0 {
            last = (c, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            eprintln!("isotprecv: only {c} of {n} PDUs arrived");
            return (c, last.1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn cfg(tx: u32, rx: u32, fd: bool) -> IsoTpConfig {
    let mut c = IsoTpConfig::new(tx, rx);
    c.padding = secureev_can::Padding::None; // as can-utils without -p
    c.max_pdu = kernel_max_pdu();
    if fd {
        c = c.with_fd();
    }
    c
}

async fn bench_link(iface: &str, fd: bool, mib: f64, rows: &mut Vec<Row>) {
    let link = if fd { "CAN FD 64 B" } else { "classic 8 B" };
    let dl = if fd { 64 } else { 8 };
    let size = 4095;
    let n = ((mib * MIB) / size as f64).ceil() as usize;
    let theory = n * (frames_for_pdu(size, dl) + 1);
    let mut push = |pair: &str,
                    secs: f64,
                    frames: u64,
                    (pdus, sent): (usize, usize),
                    size: usize,
                    theory| {
        let mib_s = (pdus * size) as f64 / MIB / secs;
        eprintln!("{link}: {pair}: {pdus} × {size} B in {secs:.2} s = {mib_s:.3} MiB/s, {frames} frames (theory {theory})");
        rows.push(Row {
            link,
            pair: pair.into(),
            pdus,
            sent,
            size,
            secs,
            frames,
            theory,
        });
    };

    // ours -> ours
    let a = IsoTpSocket::open(iface, cfg(0x7A0, 0x7A8, fd)).unwrap();
    let b = IsoTpSocket::open(iface, cfg(0x7A8, 0x7A0, fd)).unwrap();
    let pdu = vec![0x5Au8; size];
    let f0 = tx_frames(iface);
    let t0 = Instant::now();
    let recv = async {
        let mut buf = vec![0u8; size];
        for _ in 0..n {
            assert_eq!(b.recv(&mut buf).await.unwrap(), size);
        }
    };
    let send = async {
        for _ in 0..n {
            a.send(&pdu).await.unwrap();
        }
    };
    tokio::join!(recv, send);
    push(
        "ours → ours",
        t0.elapsed().as_secs_f64(),
        tx_frames(iface) - f0,
        (n, n),
        size,
        theory,
    );

    // ours -> ours, 64 KiB PDUs (32-bit FF_DL)
    let big = 65_536;
    if kernel_max_pdu() >= big {
        let nb = ((mib * MIB) / big as f64).ceil() as usize;
        let pdu = vec![0xA5u8; big];
        let f0 = tx_frames(iface);
        let t0 = Instant::now();
        let recv = async {
            let mut buf = vec![0u8; big];
            for _ in 0..nb {
                assert_eq!(b.recv(&mut buf).await.unwrap(), big);
            }
        };
        let send = async {
            for _ in 0..nb {
                a.send(&pdu).await.unwrap();
            }
        };
        tokio::join!(recv, send);
        push(
            "ours → ours (64 KiB PDUs)",
            t0.elapsed().as_secs_f64(),
            tx_frames(iface) - f0,
            (nb, nb),
            big,
            nb * (frames_for_pdu(big, dl) + 1),
        );
    }
    drop((a, b));

    // ours -> isotprecv
    let (mut child, counter) = isotprecv(iface, fd, 0x7B8, 0x7B0, n);
    let a = IsoTpSocket::open(iface, cfg(0x7B0, 0x7B8, fd)).unwrap();
    let f0 = tx_frames(iface);
    let t0 = Instant::now();
    for i in 0..n {
        dbg_step(&format!("ours → isotprecv: send {i}"));
        tokio::time::timeout(Duration::from_secs(20), a.send(&pdu))
            .await
            .expect("send to isotprecv within 20 s")
            .unwrap();
    }
    dbg_step("ours → isotprecv: sent all");
    let (got, t1) = wait_count(&counter, n).await;
    let secs = t1.duration_since(t0).as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    push(
        "ours → isotprecv",
        secs,
        tx_frames(iface) - f0,
        (got, n),
        size,
        theory,
    );

    // isotpsend -> ours
    let b = IsoTpSocket::open(iface, cfg(0x7C8, 0x7C0, fd)).unwrap();
    let iface2 = iface.to_owned();
    let f0 = tx_frames(iface);
    let t0 = Instant::now();
    let sender = tokio::task::spawn_blocking(move || {
        for _ in 0..n {
            isotpsend(&iface2, fd, 0x7C0, 0x7C8, size);
        }
    });
    let mut buf = vec![0u8; size];
    let mut got = 0;
    while got < n {
        match b.recv_timeout(&mut buf, Duration::from_secs(30)).await {
            Ok(len) => {
                assert_eq!(len, size);
                got += 1;
            }
            Err(e) => {
                eprintln!("isotpsend → ours: {e} after {got} of {n} PDUs");
                break;
            }
        }
    }
    sender.await.unwrap();
    push(
        "isotpsend → ours",
        t0.elapsed().as_secs_f64(),
        tx_frames(iface) - f0,
        (n, n),
        size,
        theory,
    );

    // isotpsend -> isotprecv
    let (mut child, counter) = isotprecv(iface, fd, 0x7D8, 0x7D0, n);
    let iface2 = iface.to_owned();
    let f0 = tx_frames(iface);
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        for _ in 0..n {
            isotpsend(&iface2, fd, 0x7D0, 0x7D8, size);
        }
    })
    .await
    .unwrap();
    let (got, t1) = wait_count(&counter, n).await;
    let secs = t1.duration_since(t0).as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    push(
        "isotpsend → isotprecv",
        secs,
        tx_frames(iface) - f0,
        (got, n),
        size,
        theory,
    );
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iface = arg(&args, "--iface").unwrap_or_else(|| "vcan0".into());
    let fd_iface = arg(&args, "--fd-iface");
    let mib: f64 = arg(&args, "--mib").map_or(1.0, |s| s.parse().expect("--mib"));
    let mut rows = Vec::new();
    bench_link(&iface, false, mib, &mut rows).await;
    if let Some(fd_iface) = &fd_iface {
        bench_link(fd_iface, true, mib, &mut rows).await;
    }

    let mut md = String::new();
    md.push_str(&format!(
        "ISO-TP throughput on vcan, kernel {}, {} PDUs of ~{mib} MiB per row\n\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        "4095-byte",
    ));
    md.push_str("| link | sender → receiver | PDUs received/sent × bytes | seconds | MiB/s | frames/MiB measured | frames/MiB theory |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let bytes = (r.pdus * r.size) as f64;
        // Frames are counted on the bus for every PDU sent.
        let sent_mib = (r.sent * r.size) as f64 / MIB;
        md.push_str(&format!(
            "| {} | {} | {}/{} × {} | {:.2} | {:.3} | {:.0} | {:.0} |\n",
            r.link,
            r.pair,
            r.pdus,
            r.sent,
            r.size,
            r.secs,
            bytes / MIB / r.secs,
            r.frames as f64 / sent_mib,
            r.theory as f64 / sent_mib,
        ));
    }
    print!("{md}");
    if let Some(path) = arg(&args, "--markdown") {
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(md.as_bytes()))
            .expect("write --markdown file");
    }
}
