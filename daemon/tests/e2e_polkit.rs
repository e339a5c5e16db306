//! `[dbus] authorization = "polkit"` against a real `polkitd`: the real
//! `secureev-otad` on a private `dbus-daemon` with a system-bus-style
//! configuration (the shipped policy, as in `e2e_busctl.rs`, plus polkit's own
//! bus policy), `polkitd` on that bus, the shipped action file
//! (`systemd/usr/share/polkit-1/actions/io.secureev.Ota1.policy`) and a test
//! rule granting actions to groups; clients are `gdbus` as distinct uids
//! (`setpriv`):
//!
//! | here                    | uid   | the rule grants                  |
//! |-------------------------|-------|----------------------------------|
//! | `daemon` (the HMI)      | 1     | consent, preconditions           |
//! | `bin` (vehicle service) | 2     | preconditions                    |
//!
//! polkitd 122 reads actions only from `/usr/share/polkit-1/actions` and
//! rules from `/etc/polkit-1/rules.d`, so the test (root) installs both
//! under names unique to the run and removes them at the end ([`Installed`]).
//! Then polkitd stopped (`SIGSTOP`) and killed: the daemon fails closed, within
//! `polkit_timeout_ms`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use e2e_common::*;
use secureev_dbus::testing::PrivateBus;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
const UI: u32 = 1;
const VEHICLE: u32 = 2;
const TIMEOUT_MS: u64 = 1000;

/// polkit's own bus policy, inside the test's system-style bus.
const POLKIT_BUS_POLICY: &str = r#"  <include ignore_missing="no">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
"#;

/// Files installed for the run, removed on drop.
struct Installed(Vec<PathBuf>);

impl Installed {
    fn put(&mut self, path: PathBuf, text: &str) {
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        self.0.push(path);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Polkitd(Child);

impl Drop for Polkitd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gdbus call` of `io.secureev.Ota1.<method>` as `uid` (root: `None`),
/// primary group only: `(success, stdout + stderr, time taken)`.
fn gdbus(address: &str, uid: Option<u32>, method: &str, args: &[&str]) -> (bool, String, Duration) {
    let mut c = match uid {
        None => Command::new("gdbus"),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("gdbus");
            c
        }
    };
    c.args(["call", "--timeout", "30", "--address", address])
        .args([
            "--dest",
            "io.secureev.Ota1",
            "--object-path",
            "/io/secureev/Ota1",
        ])
        .arg("--method")
        .arg(format!("io.secureev.Ota1.{method}"))
        .args(args)
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        start.elapsed(),
    )
}

#[track_caller]
fn refused((ok, out, _): (bool, String, Duration), error: &str, mention: &str) -> String {
    assert!(
        !ok && out.contains(error) && out.contains(mention),
        "wanted {error} mentioning {mention:?}, got ({ok}) {out}"
    );
    out
}

/// Whether `name` has an owner on the bus at `address`.
async fn has_owner(address: &str, name: &str) -> bool {
    let conn = zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap();
    zbus::fdo::DBusProxy::new(&conn)
        .await
        .unwrap()
        .name_has_owner(name.try_into().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_decides_roles_and_the_daemon_fails_closed_without_it() {
    if !rustix::process::getuid().is_root() || !Path::new(POLKITD).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "e2e_polkit needs root and {POLKITD} (daemon/tests/polkit-prereqs.sh)"
        );
        eprintln!("skipping: needs root and {POLKITD}");
        return;
    }
    let run = format!("secureev-e2e-{}", std::process::id());
    let mut installed = Installed(Vec::new());
    installed.put(
        PathBuf::from(format!(
            "/usr/share/polkit-1/actions/io.secureev.Ota1.{run}.policy"
        )),
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../systemd/usr/share/polkit-1/actions/io.secureev.Ota1.policy"
        ))
        .unwrap(),
    );
    installed.put(
        PathBuf::from(format!("/etc/polkit-1/rules.d/10-{run}.rules")),
        r#"polkit.addRule(function(action, subject) {
    if (action.id == "io.secureev.Ota1.consent" && subject.isInGroup("daemon"))
        return polkit.Result.YES;
    if (action.id == "io.secureev.Ota1.preconditions" &&
        (subject.isInGroup("daemon") || subject.isInGroup("bin")))
        return polkit.Result.YES;
});
"#,
    );

    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"factory").unwrap();
    let mut vehicle = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        // Inside [dbus]. The groups would grant `read` to uid 1: polkit,
        // which does not, decides instead.
        &format!(
            "authorization = \"polkit\"\npolkit_timeout_ms = {TIMEOUT_MS}\nreader_groups = [\"daemon\"]\nconsent_groups = [\"daemon\"]"
        ),
        "consent",
        3600,
    );
    let system =
        PrivateBus::start_with_config(|s| system_bus_config(s, POLKIT_BUS_POLICY)).unwrap();
    let config = std::fs::read_to_string(&vehicle.config).unwrap();
    std::fs::write(
        &vehicle.config,
        config.replace(vehicle.bus.address(), system.address()),
    )
    .unwrap();
    vehicle.bus = system;
    let address = vehicle.bus.address().to_owned();
    let socket = address
        .strip_prefix("unix:path=")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        Path::new(&socket).parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // polkitd on the private bus (it drops to user polkitd itself).
    let polkitd = Polkitd(
        Command::new(POLKITD)
            .arg("--no-debug")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !has_owner(&address, "org.freedesktop.PolicyKit1").await {
        assert!(Instant::now() < deadline, "polkitd did not take its name");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    vehicle.start().await;
    vehicle.settle_closed().await;

    // Authorized by the rule: the call gets past authorization to the
    // method's own answer.
    refused(
        gdbus(&address, Some(UI), "Install", &["wrong", "{}"]),
        "io.secureev.Ota1.Error.NoSuchUpdate",
        "",
    );
    // Not authorized: NotPermitted naming the action.
    refused(
        gdbus(&address, Some(VEHICLE), "Install", &["wrong", "{}"]),
        "io.secureev.Ota1.Error.NotPermitted",
        "io.secureev.Ota1.consent",
    );
    refused(
        gdbus(&address, Some(VEHICLE), "CheckForUpdates", &["{}"]),
        "io.secureev.Ota1.Error.NotPermitted",
        "io.secureev.Ota1.consent",
    );
    // reader_groups would let uid 1 in; polkit decides and does not.
    refused(
        gdbus(&address, Some(UI), "GetHistory", &[]),
        "io.secureev.Ota1.Error.NotPermitted",
        "io.secureev.Ota1.read",
    );
    refused(
        gdbus(
            &address,
            Some(UI),
            "Provision",
            &["https://x.invalid", "{}"],
        ),
        "io.secureev.Ota1.Error.NotPermitted",
        "io.secureev.Ota1.provision",
    );
    // Root holds every role without polkit.
    let (ok, out, _) = gdbus(&address, None, "GetHistory", &[]);
    assert!(ok, "root GetHistory: {out}");
    // Preconditions: both may, by polkit; ownership stays per uid.
    let (ok, out, _) = gdbus(
        &address,
        Some(VEHICLE),
        "SetPrecondition",
        &["parked", "false", "vehicle moving"],
    );
    assert!(ok, "vehicle SetPrecondition: {out}");
    refused(
        gdbus(
            &address,
            Some(UI),
            "SetPrecondition",
            &["parked", "true", "media app"],
        ),
        "io.secureev.Ota1.Error.NotPermitted",
        "parked",
    );

    // polkitd stopped: no answer; refused once the bound passes.
    let pid = rustix::process::Pid::from_child(&polkitd.0);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let (ok, out, took) = gdbus(&address, Some(UI), "Install", &["wrong", "{}"]);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    refused(
        (ok, out.clone(), took),
        "io.secureev.Ota1.Error.Internal",
        "authorization unavailable",
    );
    assert!(out.contains("no answer within"), "{out}");
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS) && took < scaled(Duration::from_secs(10)),
        "refused after {took:?}, bound {TIMEOUT_MS} ms"
    );
    eprintln!("polkitd stopped: refused after {took:?} (bound {TIMEOUT_MS} ms)");
    // Answering again.
    refused(
        gdbus(&address, Some(UI), "Install", &["wrong", "{}"]),
        "io.secureev.Ota1.Error.NoSuchUpdate",
        "",
    );

    // polkitd gone: refused at once, never allowed.
    drop(polkitd);
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while has_owner(&address, "org.freedesktop.PolicyKit1").await {
        assert!(Instant::now() < deadline, "polkitd's name stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out, took) = gdbus(&address, Some(UI), "Install", &["wrong", "{}"]);
    refused(
        (ok, out, took),
        "io.secureev.Ota1.Error.Internal",
        "authorization unavailable",
    );
    assert!(took < scaled(Duration::from_secs(10)), "took {took:?}");
    eprintln!("polkitd gone: refused after {took:?}");
    let (ok, out, _) = gdbus(&address, None, "GetHistory", &[]);
    assert!(ok, "root without polkitd: {out}");
    drop(installed);
}
