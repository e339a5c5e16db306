//! The server's log as the binary writes it: control characters escaped, an
//! access line per request with peer and request id, JSON on request.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_secureev-server");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serve `data` with `log_format`, make the requests, stop, return the log.
async fn serve_and_log(tag: &str, log_format: &str) -> Vec<String> {
    let root = common::temp_root(tag);
    let data = root.join("data");
    let (port, aport) = (free_port(), free_port());
    secureev_server::init::init(&secureev_server::init::InitOptions {
        database_url: None,
        data_dir: data.clone(),
        offline_dir: root.join("offline"),
        hostnames: vec!["127.0.0.1".into()],
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin_listen: format!("127.0.0.1:{aport}").parse().unwrap(),
    })
    .unwrap();
    let toml = data.join("server.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}log_format = \"{log_format}\"\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Wait (bounded) until both listeners serve.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lines
        .iter()
        .filter(|l: &&String| l.contains("serving"))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        lines.push(rx.recv_timeout(left).expect("server did not start"));
    }
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let http = secureev_server::client::http_client(Some(&ca)).unwrap();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    // A decoded %0A in a path parameter ends up in the refusal's message.
    let r = http
        .get(format!(
            "https://127.0.0.1:{aport}/admin/vehicles/X%0AINFO%20forged%20line%1B[2J"
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let r = http
        .get(format!("https://127.0.0.1:{port}/image/timestamp.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        lines.iter().any(|l| l.contains(&id)),
        "request id {id} not logged"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_cannot_forge_log_lines_and_every_request_line_has_peer_and_id() {
    let lines = serve_and_log("logs-text", "text").await;
    let text = lines.join("\n");
    // Regression (issue 12): a %0A in a path wrote a forged line.
    assert!(
        !lines.iter().any(|l| l.starts_with("INFO forged")),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("\\x0aINFO forged line\\x1b[2J"), "{text}");
    // Access lines and refusals carry the peer and the request id.
    let access: Vec<&String> = lines.iter().filter(|l| l.contains(" access:")).collect();
    assert_eq!(access.len(), 2, "{text}");
    for l in &access {
        assert!(l.contains("peer=127.0.0.1:") && l.contains("id="), "{l}");
    }
    let refused = lines
        .iter()
        .find(|l| l.contains("request refused") && l.contains("status=401"))
        .expect("the 401 is logged with its reason");
    assert!(refused.contains("peer=127.0.0.1:"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let lines = serve_and_log("logs-json", "json").await;
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&serde_json::Value> =
        objects.iter().filter(|o| o["target"] == "access").collect();
    assert_eq!(access.len(), 2);
    for a in access {
        assert!(a["span"].as_str().unwrap().contains("peer=127.0.0.1:"));
        assert!(a["status"].is_u64() && a["path"].is_string());
    }
}
