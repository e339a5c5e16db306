//! Every row of `docs/dbus-api.md` (methods, options, properties, signals,
//! roles) driven from `busctl` and `gdbus` as independent client processes
//! running as distinct uids (`setpriv`), against the real `secureev-otad` on
//! a private `dbus-daemon` with a system-bus-style configuration that
//! includes the shipped policy (`systemd/usr/share/dbus-1/system.d/`),
//! its user and group names mapped onto accounts every Debian has:
//!
//! | role in the policy        | here                          |
//! |---------------------------|-------------------------------|
//! | `secureev` (owns the name)| root (runs the daemon)        |
//! | `secureev-ui` (HMI)       | `daemon` (uid 1, gid 1)       |
//! | `secureev-vehicle`        | `bin` (uid 2, gid 2)          |
//! | everyone else             | `nobody` (uid 65534)          |
//!
//! `every_documented_row_has_a_case` keeps the document and [`CASES`] one to
//! one; the suite itself fails if a case in [`CASES`] did not run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use secureev_dbus::testing::PrivateBus;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One id per documented row: `method:`, `option:<method>:<key>`,
/// `property:`, `signal:`, `role:`.
const CASES: &[&str] = &[
    "method:CheckForUpdates",
    "method:Install",
    "method:Cancel",
    "method:Postpone",
    "method:SetPrecondition",
    "method:GetHistory",
    "method:Provision",
    "option:CheckForUpdates:force",
    "option:CheckForUpdates, Install, Provision:transaction-id",
    "option:Install:when-ready",
    "option:Provision:vin",
    "option:Provision:token",
    "property:State",
    "property:Progress",
    "property:PendingUpdates",
    "property:PendingUpdateId",
    "property:Ecus",
    "property:LastCheck",
    "property:LastError",
    "property:LastErrorCode",
    "property:Preconditions",
    "property:PostponedUntil",
    "property:DeferredInstall",
    "signal:UpdateAvailable",
    "signal:Completed",
    "signal:OperationCompleted",
    "role:read",
    "role:consent",
    "role:preconditions",
    "role:provision",
];

/// The rows of the tables of `docs/dbus-api.md`, as [`CASES`] ids.
fn documented_rows() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dbus-api.md"))
        .unwrap();
    let mut rows = BTreeSet::new();
    let mut section = "";
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h;
            continue;
        }
        let Some(row) = line.trim_start().strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let first = cells[0];
        if first.starts_with("---") || cells.len() < 2 {
            continue;
        }
        let name = |c: &str| c.trim_matches('`').split('(').next().unwrap().to_owned();
        match section {
            "Methods" if first.starts_with('`') && first.contains('(') => {
                rows.insert(format!("method:{}", name(first)));
            }
            "Methods" if cells[1].starts_with('`') => {
                rows.insert(format!(
                    "option:{}:{}",
                    first.replace('`', ""),
                    cells[1].trim_matches('`')
                ));
            }
            "Properties"
                if first.starts_with('`')
                    && cells[1].len() > 2
                    && cells[1]
                        .trim_matches('`')
                        .chars()
                        .all(|c| "sbuxtav{}()".contains(c)) =>
            {
                rows.insert(format!("property:{}", name(first)));
            }
            "Signals" if first.starts_with('`') => {
                rows.insert(format!("signal:{}", name(first)));
            }
            "Access control" if line.starts_with("   |") && first != "Role" => {
                rows.insert(format!("role:{first}"));
            }
            _ => {}
        }
    }
    rows
}

#[test]
fn every_documented_row_has_a_case() {
    let documented = documented_rows();
    let cases: BTreeSet<String> = CASES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        documented.difference(&cases).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "rows of docs/dbus-api.md without a case in e2e_busctl.rs"
    );
    assert_eq!(
        cases.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "cases in e2e_busctl.rs without a row in docs/dbus-api.md"
    );
}

const UI: u32 = 1;
const VEHICLE: u32 = 2;
const NOBODY: u32 = 65534;
const DEST: &[&str] = &["io.secureev.Ota1", "/io/secureev/Ota1", "io.secureev.Ota1"];

/// `tool` as `uid` (root: `None`), its primary group only.
fn command(uid: Option<u32>, tool: &str) -> Command {
    match uid {
        None => Command::new(tool),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(tool);
            c
        }
    }
}

struct Bus<'a> {
    address: &'a str,
}

impl Bus<'_> {
    /// `busctl call` as `uid`: `(success, stdout + stderr)`.
    fn busctl(&self, uid: Option<u32>, args: &[&str]) -> (bool, String) {
        let mut c = command(uid, "busctl");
        c.arg(format!("--address={}", self.address));
        let first = args[0];
        c.arg(first);
        if first == "call" || first == "get-property" {
            c.args(DEST);
        }
        output(c.args(&args[1..]))
    }

    /// `gdbus call` of `io.secureev.Ota1.<method>` (or a full interface
    /// member) as `uid`.
    fn gdbus(&self, uid: Option<u32>, method: &str, args: &[&str]) -> (bool, String) {
        let mut c = command(uid, "gdbus");
        c.args(["call", "--address", self.address]).args([
            "--dest",
            "io.secureev.Ota1",
            "--object-path",
            "/io/secureev/Ota1",
        ]);
        let method = if method.contains('.') {
            method.to_owned()
        } else {
            format!("io.secureev.Ota1.{method}")
        };
        output(c.arg("--method").arg(method).args(args))
    }
}

fn output(c: &mut Command) -> (bool, String) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[track_caller]
fn ok((ok, out): (bool, String)) -> String {
    assert!(ok, "refused: {out}");
    out
}

#[track_caller]
fn refused((ok, out): (bool, String), error: &str) -> String {
    assert!(
        !ok && out.contains(error),
        "wanted {error}, got ({ok}) {out}"
    );
    out
}

/// `gdbus monitor` as `uid`, its output in a file; ready once it printed
/// the name's owner (it subscribes first).
struct Monitor {
    child: Child,
    out: std::path::PathBuf,
}

impl Monitor {
    fn start(bus: &str, uid: u32, out: std::path::PathBuf) -> Monitor {
        let child = command(Some(uid), "gdbus")
            .args(["monitor", "--address", bus, "--dest", "io.secureev.Ota1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Monitor { child, out };
        m.wait_for("is owned by", Duration::from_secs(10));
        m
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + scaled(timeout);
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "gdbus monitor: no {what:?} in\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `OperationCompleted` of operation `id`: `(kind, code, message)`.
async fn completed(
    ops: &mut secureev_dbus::OperationCompletedStream,
    id: u64,
) -> (String, u32, String) {
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let s = tokio::time::timeout_at(deadline, ops.next())
            .await
            .unwrap_or_else(|_| panic!("no OperationCompleted for operation {id}"))
            .unwrap();
        let a = s.args().unwrap();
        if a.id == id {
            return (a.kind, a.code, a.message);
        }
    }
}

/// `busctl`'s `t 42` reply: the operation id.
fn op_id(out: &str) -> u64 {
    out.trim()
        .strip_prefix("t ")
        .or_else(|| {
            out.trim()
                .strip_prefix("(uint64 ")
                .and_then(|s| s.strip_suffix(",)"))
        })
        .unwrap_or_else(|| panic!("no operation id in {out:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_row_from_busctl_and_gdbus_as_distinct_uids() {
    if !rustix::process::getuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "e2e_busctl needs root (distinct uids) and CI runs as root"
        );
        eprintln!("skipping: needs root to run clients as other users");
        return;
    }
    let mut ran: BTreeSet<String> = BTreeSet::new();
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"factory").unwrap();
    let mut vehicle = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        // Inside [dbus]: the roles' groups as the policy maps them.
        "reader_groups = [\"daemon\", \"bin\"]\nconsent_groups = [\"daemon\"]\nprecondition_groups = [\"bin\"]",
        "consent",
        3600,
    );
    let system = PrivateBus::start_with_config(|s| system_bus_config(s, "")).unwrap();
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
        std::path::Path::new(&socket).parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    vehicle.start().await;
    vehicle.settle_closed().await;
    let bus = Bus { address: &address };
    let proxy = vehicle.proxy().await;
    let mut ops = proxy.receive_operation_completed().await.unwrap();
    let dir_out = dir.path();
    let ui_monitor = Monitor::start(&address, UI, dir_out.join("ui.monitor"));
    let outsider_monitor = Monitor::start(&address, NOBODY, dir_out.join("nobody.monitor"));

    // ---- on an idle daemon, nothing pending --------------------------------
    refused(
        bus.busctl(Some(UI), &["call", "Cancel"]),
        "nothing to cancel",
    );
    refused(
        bus.busctl(Some(UI), &["call", "Postpone", "u", "3600"]),
        "no update is pending",
    );
    refused(
        bus.gdbus(Some(UI), "Postpone", &["0"]),
        "io.secureev.Ota1.Error.InvalidArgument",
    );
    refused(
        bus.gdbus(Some(UI), "Install", &["wrong", "{}"]),
        "io.secureev.Ota1.Error.NoSuchUpdate",
    );
    refused(
        bus.gdbus(Some(VEHICLE), "Install", &["wrong", "{}"]),
        "io.secureev.Ota1.Error.NotPermitted",
    );
    refused(
        bus.busctl(
            Some(UI),
            &[
                "call", "Install", "sa{sv}", "wrong", "1", "bogus", "b", "true",
            ],
        ),
        "bogus",
    );
    refused(
        bus.busctl(
            Some(UI),
            &[
                "call",
                "CheckForUpdates",
                "a{sv}",
                "1",
                "bogus",
                "b",
                "true",
            ],
        ),
        "unknown option",
    );
    refused(
        bus.gdbus(Some(UI), "CheckForUpdates", &["{\"bogus\": <true>}"]),
        "io.secureev.Ota1.Error.UnknownOption",
    );
    refused(
        bus.gdbus(Some(UI), "CheckForUpdates", &["{\"force\": <\"yes\">}"]),
        "io.secureev.Ota1.Error.InvalidArgument",
    );
    refused(
        bus.gdbus(Some(VEHICLE), "CheckForUpdates", &["{}"]),
        "io.secureev.Ota1.Error.NotPermitted",
    );
    refused(
        bus.gdbus(Some(NOBODY), "CheckForUpdates", &["{}"]),
        "org.freedesktop.DBus.Error.AccessDenied",
    );
    ran.insert("role:consent".to_owned());

    // SetPrecondition: the vehicle service sets, the HMI may not.
    ok(bus.busctl(
        Some(VEHICLE),
        &[
            "call",
            "SetPrecondition",
            "sbs",
            "parked",
            "false",
            "vehicle moving",
        ],
    ));
    refused(
        bus.gdbus(Some(VEHICLE), "SetPrecondition", &["Bad Name", "true", "x"]),
        "io.secureev.Ota1.Error.InvalidArgument",
    );
    refused(
        bus.gdbus(Some(UI), "SetPrecondition", &["parked", "true", "x"]),
        "io.secureev.Ota1.Error.NotPermitted",
    );
    ran.insert("method:SetPrecondition".to_owned());
    ran.insert("role:preconditions".to_owned());

    // GetHistory: both reader groups; outsiders denied by the bus.
    assert!(ok(bus.gdbus(Some(UI), "GetHistory", &[])).contains("'action'"));
    assert!(ok(bus.busctl(Some(VEHICLE), &["call", "GetHistory"])).starts_with("aa{sv}"));
    refused(
        bus.gdbus(Some(NOBODY), "GetHistory", &[]),
        "org.freedesktop.DBus.Error.AccessDenied",
    );
    ran.insert("method:GetHistory".to_owned());
    ran.insert("role:read".to_owned());

    // Provision: root only by default.
    refused(
        bus.gdbus(Some(UI), "Provision", &[&backend.base, "{}"]),
        "io.secureev.Ota1.Error.NotPermitted",
    );
    refused(
        bus.busctl(
            None,
            &["call", "Provision", "sa{sv}", "http://insecure", "0"],
        ),
        "https://",
    );
    refused(
        bus.busctl(
            None,
            &[
                "call",
                "Provision",
                "sa{sv}",
                &backend.base,
                "1",
                "bogus",
                "s",
                "x",
            ],
        ),
        "bogus",
    );
    let id = op_id(&ok(bus.busctl(
        None,
        &[
            "call",
            "Provision",
            "sa{sv}",
            &backend.base,
            "2",
            "vin",
            "s",
            VIN,
            "token",
            "s",
            "one-time",
        ],
    )));
    let (kind, _, _) = completed(&mut ops, id).await;
    assert_eq!(kind, "provision");
    ran.insert("method:Provision".to_owned());
    ran.insert("option:Provision:vin".to_owned());
    ran.insert("option:Provision:token".to_owned());
    ran.insert("role:provision".to_owned());

    // Options accepted: force (gdbus), transaction-id (busctl); the backend
    // is still closed, so each check fails with a network error.
    let id = op_id(&ok(bus.gdbus(
        Some(UI),
        "CheckForUpdates",
        &["{\"force\": <true>}"],
    )));
    let (kind, code, _) = completed(&mut ops, id).await;
    assert_eq!((kind.as_str(), code), ("check", 20));
    let id = op_id(&ok(bus.busctl(
        Some(UI),
        &[
            "call",
            "CheckForUpdates",
            "a{sv}",
            "1",
            "transaction-id",
            "s",
            "tx-42",
        ],
    )));
    let (_, code, message) = completed(&mut ops, id).await;
    assert_eq!(code, 20, "{message}");
    ran.insert("option:CheckForUpdates:force".to_owned());
    ran.insert("option:CheckForUpdates, Install, Provision:transaction-id".to_owned());
    // Signals reach the HMI's monitor, never the outsider's.
    ui_monitor.wait_for(
        "io.secureev.Ota1.OperationCompleted",
        Duration::from_secs(10),
    );
    ui_monitor.wait_for("io.secureev.Ota1.Completed", Duration::from_secs(10));
    ui_monitor.wait_for("PropertiesChanged", Duration::from_secs(10));

    // ---- an update: a paced download to be Busy and cancelled ------------
    let image = image_bytes(256 * 1024, 51);
    let name = "hu/rootfs-busctl.img";
    repos.release(name, &image, 2);
    backend.set_files(repos.publish(&[(name, &image)]));
    backend.set_pace(
        &repos.path_of(name),
        Some(Pace {
            chunk: 1024,
            every: Duration::from_millis(40),
        }),
    );
    backend.set_open(true);
    let id = op_id(&ok(
        bus.busctl(Some(UI), &["call", "CheckForUpdates", "a{sv}", "0"])
    ));
    vehicle
        .wait_for("downloading", scaled(Duration::from_secs(20)), |s, _| {
            s == "downloading"
        })
        .await;
    refused(
        bus.gdbus(Some(UI), "CheckForUpdates", &["{}"]),
        "io.secureev.Ota1.Error.Busy",
    );
    ok(bus.gdbus(Some(UI), "Cancel", &[]));
    let (_, code, _) = completed(&mut ops, id).await;
    assert_eq!(code, 10, "cancelled");
    ran.insert("method:Cancel".to_owned());

    backend.set_pace(&repos.path_of(name), None);
    let id = op_id(&ok(
        bus.busctl(Some(UI), &["call", "CheckForUpdates", "a{sv}", "0"])
    ));
    let (_, code, message) = completed(&mut ops, id).await;
    assert_eq!(code, 0, "{message}");
    ran.insert("method:CheckForUpdates".to_owned());
    ui_monitor.wait_for("io.secureev.Ota1.UpdateAvailable", Duration::from_secs(10));
    ran.insert("signal:UpdateAvailable".to_owned());
    ran.insert("signal:Completed".to_owned());
    ran.insert("signal:OperationCompleted".to_owned());

    // ---- every property, as the HMI reads them ----------------------------
    let get = |p: &str| ok(bus.busctl(Some(UI), &["get-property", p]));
    let expect = [
        ("State", "s \"awaiting-consent\""),
        ("Progress", "a{sv} "),
        ("PendingUpdates", "aa{sv} 1 "),
        ("PendingUpdateId", "s \""),
        ("Ecus", "aa{sv} 1 "),
        ("LastCheck", "x "),
        ("LastError", "s \"\""),
        ("LastErrorCode", "u 0"),
        ("Preconditions", "aa{sv} 1 "),
        ("PostponedUntil", "x 0"),
        ("DeferredInstall", "t 0"),
    ];
    for (p, prefix) in expect {
        let v = get(p);
        assert!(v.starts_with(prefix), "{p}: {v}");
        ran.insert(format!("property:{p}"));
    }
    let pending = get("PendingUpdates");
    for key in [
        "\"release-counter\" t 2",
        "\"version\" s \"\"",
        "\"target\" s \"hu/rootfs-busctl.img\"",
    ] {
        assert!(pending.contains(key), "{key} in {pending}");
    }
    assert!(get("Preconditions").contains("\"vehicle moving\""));
    assert!(get("Ecus").contains("\"installed-release-counter\" t 0"));
    assert!(!get("LastCheck").ends_with(" 0\n"));
    let all = ok(bus.gdbus(
        Some(UI),
        "org.freedesktop.DBus.Properties.GetAll",
        &["io.secureev.Ota1"],
    ));
    for (p, _) in expect {
        assert!(all.contains(&format!("'{p}'")), "{p} in GetAll: {all}");
    }
    refused(
        bus.gdbus(
            Some(NOBODY),
            "org.freedesktop.DBus.Properties.Get",
            &["io.secureev.Ota1", "State"],
        ),
        "org.freedesktop.DBus.Error.AccessDenied",
    );

    // ---- consent --------------------------------------------------------
    let id_text = get("PendingUpdateId");
    let update = id_text
        .trim()
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_owned();
    assert_eq!(update.len(), 64, "{id_text}");
    ok(bus.busctl(Some(UI), &["call", "Postpone", "u", "60"]));
    assert!(!get("PostponedUntil").starts_with("x 0"));
    ran.insert("method:Postpone".to_owned());
    refused(
        bus.busctl(Some(UI), &["call", "Install", "sa{sv}", &update, "0"]),
        "parked",
    );
    refused(
        bus.gdbus(Some(UI), "Install", &[&update, "{}"]),
        "io.secureev.Ota1.Error.PreconditionFailed",
    );
    // Deferred until the vehicle service says parked: DeferredInstall
    // holds its id, the install starts under it.
    let id = op_id(&ok(bus.gdbus(
        Some(UI),
        "Install",
        &[&update, "{\"when-ready\": <true>}"],
    )));
    assert_eq!(get("DeferredInstall").trim(), format!("t {id}"));
    ran.insert("option:Install:when-ready".to_owned());
    ok(bus.busctl(
        Some(VEHICLE),
        &["call", "SetPrecondition", "sbs", "parked", "true", "parked"],
    ));
    let (kind, code, message) = completed(&mut ops, id).await;
    assert_eq!((kind.as_str(), code), ("install", 0), "{message}");
    assert_eq!(std::fs::read(&target).unwrap(), image);
    ran.insert("method:Install".to_owned());

    // The outsider's match rule never delivered one of the daemon's signals.
    let seen = outsider_monitor.text();
    for s in ["Completed", "UpdateAvailable", "PropertiesChanged"] {
        assert!(!seen.contains(s), "outsider received {s}:\n{seen}");
    }

    let want: BTreeSet<String> = CASES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        want.difference(&ran).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "cases that did not run"
    );
}
