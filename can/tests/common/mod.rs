//! Gating and helpers for the tests that need a real (virtual) CAN bus.
//!
//! - `SECUREEV_VCAN=vcan0`: a classic CAN interface (MTU 16);
//! - `SECUREEV_VCAN_FD=vcan1`: a CAN FD interface (MTU 72);
//! - `SECUREEV_REQUIRE_VCAN=1` (set by `can-tests/run-vm.sh` inside the VM):
//!   a missing interface or kernel support is a failure, never a skip.
#![allow(dead_code)]

use std::time::Duration;

use secureev_can::{IsoTpConfig, IsoTpSocket};

/// Generous per-transfer deadline: the VM runs under software emulation.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn required() -> bool {
    std::env::var("SECUREEV_REQUIRE_VCAN").as_deref() == Ok("1")
}

fn iface_from(var: &str) -> Option<String> {
    let iface = std::env::var(var).ok().filter(|s| !s.is_empty());
    let Some(iface) = iface else {
        if required() {
            panic!("SECUREEV_REQUIRE_VCAN=1 but {var} is not set");
        }
        println!("SKIPPED: no vcan ({var} not set)");
        eprintln!("SKIPPED: no vcan ({var} not set)");
        return None;
    };
    if let Err(e) = secureev_can::probe_isotp() {
        if required() {
            panic!("SECUREEV_REQUIRE_VCAN=1 but ISO-TP sockets fail: {e}");
        }
        println!("SKIPPED: no vcan ({e})");
        eprintln!("SKIPPED: no vcan ({e})");
        return None;
    }
    Some(iface)
}

/// The classic CAN test interface, or `None` (test skipped).
pub fn vcan() -> Option<String> {
    iface_from("SECUREEV_VCAN")
}

/// The CAN FD test interface, or `None` (test skipped).
pub fn vcan_fd() -> Option<String> {
    iface_from("SECUREEV_VCAN_FD")
}

/// Whether tests must not skip.
pub fn require() -> bool {
    required()
}

/// Returns from the test when the interface is missing (and allowed to be).
#[macro_export]
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(i) => i,
            None => return,
        }
    };
}

/// A deterministic, non-repeating-looking payload.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(u32::from(seed) * 7) as u8
                ^ 0x5A
        })
        .collect()
}

/// Opens both ends of `cfg` on `iface`.
pub fn pair(iface: &str, cfg: &IsoTpConfig) -> (IsoTpSocket, IsoTpSocket) {
    let a = IsoTpSocket::open(iface, cfg.clone()).expect("open a");
    let b = IsoTpSocket::open(iface, cfg.peer()).expect("open b");
    (a, b)
}

/// Sends `pdu` from `a` and receives it on `b`, concurrently.
pub async fn transfer(a: &IsoTpSocket, b: &IsoTpSocket, pdu: &[u8]) -> Vec<u8> {
    let recv = async {
        tokio::time::timeout(DEADLINE, b.recv_vec())
            .await
            .expect("receive deadline")
            .expect("recv")
    };
    let send = async {
        tokio::time::timeout(DEADLINE, a.send(pdu))
            .await
            .expect("send deadline")
            .expect("send")
    };
    let (got, ()) = tokio::join!(recv, send);
    got
}

/// Frames transmitted on `iface` so far (vcan counts every frame).
pub fn tx_frames(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/tx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A bus monitor that records every frame from its start until `finish`.
pub struct Monitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<secureev_can::CanFrame>>,
}

impl Monitor {
    /// Starts recording on `iface` (the socket is open when this returns).
    pub fn start(iface: &str) -> Monitor {
        let raw = secureev_can::RawCanSocket::open(iface).expect("raw socket");
        raw.set_recv_buffer(64 << 20).expect("SO_RCVBUF");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut frames = Vec::new();
            loop {
                match raw.recv_timeout(Duration::from_millis(100)).await {
                    Ok(f) => frames.push(f),
                    Err(secureev_can::Error::RecvTimeout(_)) => {
                        if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                            return frames;
                        }
                    }
                    Err(e) => panic!("monitor: {e}"),
                }
            }
        });
        Monitor { stop, task }
    }

    /// Stops after the bus has been quiet for 100 ms and returns the frames.
    pub async fn finish(self) -> Vec<secureev_can::CanFrame> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("monitor task")
    }
}
