//! Schemathesis against the live server's OpenAPI document, over TLS on
//! loopback: the admin listener with an operator token holding every role,
//! the vehicle listener unsigned (every signed route must answer with a
//! documented JSON error). Zero failures are required.
//!
//! Needs `SECUREEV_PYTHON` pointing at a Python with schemathesis
//! (`scripts/python-venv.sh` installs the pinned version); without it the test
//! skips with a message, except under CI, where it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

fn schemathesis() -> Option<PathBuf> {
    let python = match std::env::var_os("SECUREEV_PYTHON") {
        Some(p) => PathBuf::from(p),
        None if std::env::var_os("CI").is_some() => panic!(
            "CI is set but SECUREEV_PYTHON is not: the schemathesis run must happen in CI. \
             Run scripts/python-venv.sh and export SECUREEV_PYTHON=<the python it prints>."
        ),
        None => {
            eprintln!("SKIPPED schemathesis: set SECUREEV_PYTHON (scripts/python-venv.sh)");
            return None;
        }
    };
    let bin = python.parent().unwrap().join("schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: rerun scripts/python-venv.sh",
        bin.display()
    );
    Some(bin)
}

fn run(bin: &PathBuf, h: &common::Harness, base: &str, filter: &[&str], extra: &[String]) {
    let schema = h.root.join("openapi.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(&secureev_server::openapi::document()).unwrap(),
    )
    .unwrap();
    let attempt = || {
        Command::new(bin)
            .arg("run")
            .arg(&schema)
            .args(["--url", base])
            .arg("--tls-verify")
            .arg(h.data.join("tls/ca.pem"))
            .args(["--max-examples", "25", "--seed", "12", "--max-time", "35"])
            // One worker: with two, CPython 3.11's AST validation races between
            // hypothesis' threads ("AST constructor recursion depth mismatch",
            // CPython gh-106905, seen three times in a row on one run here).
            .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
            .args(["--generation-deterministic"])
            // Semantic validation (signatures, references to uploaded blobs and
            // registered ECUs) refuses schema-valid bodies with 4xx, which the
            // schema cannot express; every other check runs, including
            // negative_data_rejection (schema-violating requests get a 4xx).
            .args(["--exclude-checks", "positive_data_acceptance"])
            // A fresh CI run once saw one "EOF occurred in violation of protocol"
            // (a connection closed under load) on POST /admin/image/online-keys;
            // a network-level failure is retried twice, so only a repeatable one
            // fails the test. Response checks are never retried. (Cause found
            // since: an idle keep-alive connection at the 10 s head timeout was
            // dropped without close_notify; now closed gracefully, see
            // tests/tls.rs.)
            .args(["--request-retries", "2"])
            .args(filter)
            .args(extra)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap()
    };
    let started = std::time::Instant::now();
    // Schemathesis (hypothesis on CPython 3.11) itself sometimes dies with a
    // "Runtime Error" inside its own code (seen: "AST constructor recursion
    // depth mismatch"). That is no finding about our API: the run is repeated,
    // at most twice. Any reported failure of a check fails at once.
    let mut out = attempt();
    for _ in 0..2 {
        let text = String::from_utf8_lossy(&out.stdout);
        let tool_crash = text.contains("Runtime Error") && !text.contains("=== FAILURES");
        if out.status.success() || !tool_crash {
            break;
        }
        eprintln!("schemathesis crashed in its own code; running it again:\n{text}");
        out = attempt();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("schemathesis against {base} took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis reported failures against {base}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_either_listener() {
    let Some(bin) = schemathesis() else { return };
    let h = common::start("schemathesis").await;
    let token = std::fs::read_to_string(h.data.join("admin-token")).unwrap();
    let car = common::TestVehicle::new(&h, "VINSCHEMA1", &[("HU-1", "hu")]);
    car.enroll(&h).await;
    let admin_base = h.admin_base.clone();
    let base = h.base.clone();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let bin2 = bin.clone();
    // Schemathesis blocks; the server runs on this runtime's other thread.
    let h = tokio::task::spawn_blocking(move || {
        run(
            &bin2,
            &h,
            &admin_base,
            &["--include-path-regex", "^/admin/"],
            &["-H".into(), auth],
        );
        run(&bin2, &h, &base, &["--exclude-path-regex", "^/admin/"], &[]);
        h
    })
    .await
    .unwrap();
    drop(h);
}
