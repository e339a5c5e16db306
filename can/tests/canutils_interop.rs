//! Interop with can-utils' `isotpsend`/`isotprecv` (an independent ISO-TP
//! user of the same kernel API) in both directions, classic and CAN FD.
//! Gated like the other vcan tests; with `SECUREEV_REQUIRE_VCAN=1` missing
//! can-utils is a failure.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{payload, vcan, vcan_fd};
use secureev_can::{Error, IsoTpConfig, IsoTpSocket};

fn have_can_utils() -> bool {
    let ok = Command::new("isotpsend")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(!common::require(), "can-utils (isotpsend) not installed");
        println!("SKIPPED: can-utils not installed");
    }
    ok
}

fn hex(pdu: &[u8]) -> String {
    pdu.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
        .collect()
}

/// can-utils link-layer option for our config.
fn ll_args(fd: bool) -> Vec<String> {
    if fd {
        vec!["-L".into(), "72:64:1".into()]
    } else {
        vec![]
    }
}

/// Our socket sends, `isotprecv` receives.
async fn ours_to_isotprecv(iface: &str, fd: bool, tx: u32, rx: u32, len: usize) {
    let mut cfg = IsoTpConfig::new(tx, rx);
    if fd {
        cfg = cfg.with_fd();
    }
    let sock = IsoTpSocket::open(iface, cfg).unwrap();
    let child = Command::new("isotprecv")
        .args(["-s", &format!("{rx:03X}"), "-d", &format!("{tx:03X}")])
        .args(ll_args(fd))
        .arg(iface)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn isotprecv");
    let pdu = payload(len, len as u8);
    // isotprecv binds asynchronously: until it does, our FF gets no FC.
    let mut sent = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match sock.send(&pdu).await {
            Ok(()) => {
                sent = true;
                break;
            }
            Err(Error::FlowControlTimeout) => continue,
            Err(e) => panic!("send: {e}"),
        }
    }
    assert!(sent, "isotprecv never answered with flow control");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let got = unhex(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(got, pdu, "isotprecv got a different PDU (fd={fd}, {len} B)");
}

/// `isotpsend` sends, our socket receives.
async fn isotpsend_to_ours(iface: &str, fd: bool, tx: u32, rx: u32, len: usize) {
    let mut cfg = IsoTpConfig::new(tx, rx);
    if fd {
        cfg = cfg.with_fd();
    }
    let sock = IsoTpSocket::open(iface, cfg).unwrap();
    let pdu = payload(len, len as u8 ^ 0xFF);
    let mut child = Command::new("isotpsend")
        .args(["-s", &format!("{rx:03X}"), "-d", &format!("{tx:03X}")])
        .args(["-p", "AA:"])
        .args(ll_args(fd))
        .arg(iface)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn isotpsend");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex(&pdu).as_bytes())
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), sock.recv_vec())
        .await
        .expect("isotpsend PDU within 30 s")
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(got, pdu, "we got a different PDU (fd={fd}, {len} B)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_ours_to_isotprecv() {
    let Some(iface) = vcan() else { return };
    if !have_can_utils() {
        return;
    }
    for (i, len) in [7usize, 100, 4095].into_iter().enumerate() {
        ours_to_isotprecv(&iface, false, 0x600 + i as u32, 0x608 + i as u32, len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_isotpsend_to_ours() {
    let Some(iface) = vcan() else { return };
    if !have_can_utils() {
        return;
    }
    for (i, len) in [7usize, 100, 4095].into_iter().enumerate() {
        isotpsend_to_ours(&iface, false, 0x610 + i as u32, 0x618 + i as u32, len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_ours_to_isotprecv() {
    let Some(iface) = vcan_fd() else { return };
    if !have_can_utils() {
        return;
    }
    for (i, len) in [62usize, 63, 4095].into_iter().enumerate() {
        ours_to_isotprecv(&iface, true, 0x620 + i as u32, 0x628 + i as u32, len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_isotpsend_to_ours() {
    let Some(iface) = vcan_fd() else { return };
    if !have_can_utils() {
        return;
    }
    for (i, len) in [62usize, 63, 4095].into_iter().enumerate() {
        isotpsend_to_ours(&iface, true, 0x630 + i as u32, 0x638 + i as u32, len).await;
    }
}
