//! Shared pieces of the vcan rigs (`can-tests/`): gating on the test buses,
//! locating the workspace's binaries, and `secureev-ecu` run as a real process
//! on a CAN interface.
//!
//! The rigs need real (virtual) CAN buses, named by environment variables
//! that `can-tests/run-vm.sh` sets inside its VM (or on a host with vcan):
//!
//! - `SECUREEV_VCAN=vcan0`: a classic CAN interface (MTU 16);
//! - `SECUREEV_VCAN_FD=vcan1`: a CAN FD interface (MTU 72);
//! - `SECUREEV_REQUIRE_VCAN=1`: a missing bus, binary or interop tool is a
//!   failure, never a skip;
//! - `SECUREEV_BIN_DIR`: where `secureev-otad` and `secureev-ecu` are
//!   (default: the directory above the test executable, i.e. `target/debug`);
//! - `SECUREEV_CAN_PYTHON`: a Python with `udsoncan` and `can-isotp`
//!   (`run-vm.sh` points it at its venv);
//! - `SECUREEV_TEST_TIME_SCALE`: multiplies start-up deadlines (the VM is
//!   emulated; `guest.sh` sets 5).
//!
//! Elsewhere (no vcan) every rig test prints `SKIPPED: …` and returns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the rig must not skip (`SECUREEV_REQUIRE_VCAN=1`).
pub fn required() -> bool {
    std::env::var("SECUREEV_REQUIRE_VCAN").as_deref() == Ok("1")
}

fn skip(why: &str) {
    if required() {
        panic!("SECUREEV_REQUIRE_VCAN=1 but {why}");
    }
    println!("SKIPPED: {why}");
    eprintln!("SKIPPED: {why}");
}

fn iface_from(var: &str) -> Option<String> {
    let Some(iface) = std::env::var(var).ok().filter(|s| !s.is_empty()) else {
        skip(&format!(
            "no vcan ({var} is not set; can-tests/run-vm.sh sets it)"
        ));
        return None;
    };
    if let Err(e) = secureev_can::probe_isotp() {
        skip(&format!("ISO-TP sockets fail here: {e}"));
        return None;
    }
    Some(iface)
}

/// The classic CAN rig interface, or `None` (the test skips, printed).
pub fn vcan() -> Option<String> {
    iface_from("SECUREEV_VCAN")
}

/// The CAN FD rig interface, or `None` (the test skips, printed).
pub fn vcan_fd() -> Option<String> {
    iface_from("SECUREEV_VCAN_FD")
}

/// The Python interpreter with `udsoncan` and `can-isotp`, or `None`.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("SECUREEV_CAN_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            skip("SECUREEV_CAN_PYTHON is not set (a Python with udsoncan and can-isotp)");
            None
        }
    }
}

/// Returns from the test when the value is `None` (a skip already printed).
#[macro_export]
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// A workspace binary (`secureev-otad`, `secureev-ecu`): in `SECUREEV_BIN_DIR`,
/// else next to the test executable's `deps/` directory. Panics with the
/// command that builds it when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SECUREEV_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> → target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .expect("test executable has no grandparent directory")
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins, \
         which `cargo test --workspace` does) or set SECUREEV_BIN_DIR",
        path.display()
    );
    path
}

/// `d` times `SECUREEV_TEST_TIME_SCALE` (default 1; `guest.sh` sets 5: the
/// VM is emulated). For deadlines only: nothing asserts on speed.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("SECUREEV_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

/// A deterministic pseudo-random payload (xorshift).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// How one `secureev-ecu` process is set up on a CAN interface.
#[derive(Debug, Clone)]
pub struct EcuSpec {
    /// Uptane ECU serial.
    pub serial: String,
    /// Uptane hardware ID.
    pub hardware_id: String,
    /// CAN interface (`vcan0`).
    pub iface: String,
    /// CAN id the ECU sends on.
    pub tx_id: u32,
    /// CAN id the ECU listens on.
    pub rx_id: u32,
    /// CAN FD.
    pub fd: bool,
    /// SecurityAccess secret (also provisioned on the tester side).
    pub secret: [u8; 32],
    /// `full` or `partial`.
    pub verification: &'static str,
    /// Extra lines for the ECU's `[can]` table (flow control, padding).
    pub ecu_can: String,
    /// Extra keys for the Primary's inline `can = { … }` of this ECU.
    pub primary_can: String,
}

impl EcuSpec {
    /// A partial-verification ECU on `iface` with the given id pair.
    pub fn new(serial: &str, hardware_id: &str, iface: &str, tx_id: u32, rx_id: u32) -> EcuSpec {
        EcuSpec {
            serial: serial.to_owned(),
            hardware_id: hardware_id.to_owned(),
            iface: iface.to_owned(),
            tx_id,
            rx_id,
            fd: false,
            secret: [0x5C; 32],
            verification: "partial",
            ecu_can: String::new(),
            primary_can: String::new(),
        }
    }

    /// With these lines in the ECU's `[can]` table (e.g. `block_size = 8`).
    pub fn with_ecu_can(mut self, toml_lines: &str) -> EcuSpec {
        self.ecu_can = toml_lines.to_owned();
        self
    }

    /// With these keys in the Primary's `can = { … }` for this ECU (e.g.
    /// `padding = "strict"`).
    pub fn with_primary_can(mut self, toml_keys: &str) -> EcuSpec {
        self.primary_can = toml_keys.to_owned();
        self
    }

    /// Use CAN FD.
    pub fn with_fd(mut self) -> EcuSpec {
        self.fd = true;
        self
    }

    /// Use this SecurityAccess secret.
    pub fn with_secret(mut self, secret: [u8; 32]) -> EcuSpec {
        self.secret = secret;
        self
    }

    /// The tester-side ISO-TP configuration that talks to this ECU.
    pub fn tester_isotp(&self) -> secureev_can::IsoTpConfig {
        let mut c = secureev_can::IsoTpConfig::new(self.rx_id, self.tx_id);
        if self.tx_id > 0x7FF || self.rx_id > 0x7FF {
            c = c.with_extended_ids();
        }
        if self.fd {
            c = c.with_fd();
        }
        c
    }
}

/// A real `secureev-ecu` process serving UDS over kernel ISO-TP.
#[derive(Debug)]
pub struct EcuProcess {
    /// Its setup.
    pub spec: EcuSpec,
    /// Its state directory (keys, state.json, slots, security secret).
    pub state_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// How long an ECU may take to start serving (the VM runs under TCG).
const START_DEADLINE: Duration = Duration::from_secs(30);

impl EcuProcess {
    /// Writes the configuration, the security secret and the Director root
    /// into `dir` (created), creates the ECU's keys, and starts it.
    pub fn start(dir: &Path, spec: EcuSpec, director_root: &[u8]) -> EcuProcess {
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("create ECU state dir");
        std::fs::write(dir.join("director-root.json"), director_root).expect("write root");
        std::fs::write(
            state_dir.join("security-secret"),
            format!("{}\n", hex::encode(spec.secret)),
        )
        .expect("write secret");
        let config = format!(
            "serial = \"{}\"\nhardware_id = \"{}\"\nverification = \"{}\"\nstate_dir = \"{}\"\n\
             director_root = \"{}\"\n[can]\ntx_id = {}\nrx_id = {}\nfd = {}\n{}\n",
            spec.serial,
            spec.hardware_id,
            spec.verification,
            state_dir.display(),
            dir.join("director-root.json").display(),
            spec.tx_id,
            spec.rx_id,
            spec.fd,
            spec.ecu_can
        );
        let config_path = dir.join("ecu.toml");
        std::fs::write(&config_path, config).expect("write ECU config");
        let mut p = EcuProcess {
            spec,
            state_dir,
            config: config_path,
            log: dir.join("ecu.log"),
            child: None,
        };
        p.restart();
        p
    }

    /// The ECU's identity (`--print-identity`): serial, hardware_id, did,
    /// x25519_public_key.
    pub fn identity(&self) -> serde_json::Value {
        let out = Command::new(bin("secureev-ecu"))
            .arg("--config")
            .arg(&self.config)
            .arg("--print-identity")
            .stdin(Stdio::null())
            .output()
            .expect("run secureev-ecu --print-identity");
        assert!(
            out.status.success(),
            "secureev-ecu --print-identity: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("identity JSON")
    }

    /// Starts the process (again) and waits until it serves on the bus.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "ECU {} already running",
            self.spec.serial
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open ECU log");
        let before = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = Command::new(bin("secureev-ecu"))
            .arg("--config")
            .arg(&self.config)
            .arg("--can-interface")
            .arg(&self.spec.iface)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn secureev-ecu");
        self.child = Some(child);
        let deadline = Instant::now() + scaled(START_DEADLINE);
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(before as usize..).unwrap_or_default());
            if new.contains("serving UDS on ISO-TP") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "secureev-ecu {} exited with {status}:\n{new}\nstate dir: {:?}\nstate.json: {}",
                    self.spec.serial,
                    list_dir(&self.state_dir),
                    std::fs::read_to_string(self.state_dir.join("state.json")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "secureev-ecu {} did not start serving:\n{new}",
                self.spec.serial
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the process (a power cut or a pulled connector) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The ECU's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `state.json`.
    pub fn state(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.state_dir.join("state.json")).unwrap_or_default();
        if bytes.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&bytes).expect("state.json is JSON")
    }

    /// The bytes of the active slot (empty when none was ever written).
    pub fn active_image(&self) -> Vec<u8> {
        let slot = match self.state()["active_slot"].as_str() {
            Some("b") => "slot-b.bin",
            _ => "slot-a.bin",
        };
        std::fs::read(self.state_dir.join(slot)).unwrap_or_default()
    }
}

/// `(name, length)` of each entry of `dir`, for failure messages.
fn list_dir(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for EcuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
