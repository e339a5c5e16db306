//! The download engine against a real HTTP server on 127.0.0.1.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

mod common;
mod verified;

use common::{bytes, sha256_hex, Behaviour, Logged, Server};
use secureev_daemon::error::{Error, StorageLimit};
use secureev_daemon::fetch::download::{DownloadOptions, Downloader, ImageRequest, Progress};
use secureev_daemon::install::decrypt::decrypt_image;
use secureev_daemon::install::TargetFacts;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn options(cache: &Path) -> DownloadOptions {
    DownloadOptions {
        cache_dir: cache.to_owned(),
        storage_budget_bytes: 1 << 30,
        min_rate_bytes_per_sec: 0,
        min_rate_window: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        attempts: 1,
    }
}

fn request(server: &Server, path: &str, body: &[u8]) -> ImageRequest {
    ImageRequest {
        target: "fw.bin".into(),
        url: server.url(path),
        length: body.len() as u64,
        hashes: BTreeMap::from([("sha256".to_owned(), sha256_hex(body))]),
    }
}

fn downloader(opts: DownloadOptions) -> Downloader {
    Downloader::new(reqwest::Client::new(), opts).unwrap()
}

fn no_progress(_: Progress) {}

fn part_file(cache: &Path, body: &[u8]) -> std::path::PathBuf {
    cache.join(format!("{}.part", sha256_hex(body)))
}

#[tokio::test]
async fn downloads_verifies_reports_progress_and_reuses_the_cache() {
    let body = Arc::new(bytes(300_000, 1));
    let b = body.clone();
    let server = Server::start(move |_, _, _| Behaviour::Serve {
        body: b.clone(),
        ranges: true,
        cut_after: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(options(dir.path()));
    let req = request(&server, "/fw.bin", &body);
    let seen = Mutex::new(Vec::new());
    let record = |p: Progress| seen.lock().unwrap().push(p);
    let path = d
        .fetch(&req, &record, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), *body);
    assert_eq!(path, dir.path().join(sha256_hex(&body)));
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: 300_000,
            total: 300_000
        })
    );
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(!part_file(dir.path(), &body).exists());
    // A second fetch re-hashes the cached file and sends no request.
    d.fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn resumes_after_a_cut_connection_across_restarts() {
    let body = Arc::new(bytes(500_000, 2));
    let b = body.clone();
    // The first answer stops after 200 000 bytes; later ones honour ranges.
    let server = Server::start(move |_, _, i| Behaviour::Serve {
        body: b.clone(),
        ranges: true,
        cut_after: (i == 0).then_some(200_000),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let req = request(&server, "/fw.bin", &body);
    let err = downloader(options(dir.path()))
        .fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                received: 200_000,
                ..
            } | Error::Http { .. }
        ),
        "{err}"
    );
    let kept = std::fs::metadata(part_file(dir.path(), &body))
        .unwrap()
        .len();
    assert_eq!(kept, 200_000);

    // "Restart": a new downloader over the same cache resumes with a range.
    let path = downloader(options(dir.path()))
        .fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), *body);
    assert_eq!(
        server.requests(),
        vec![
            Logged {
                path: "/fw.bin".into(),
                range_from: None
            },
            Logged {
                path: "/fw.bin".into(),
                range_from: Some(200_000)
            },
        ]
    );
}

#[tokio::test]
async fn retries_within_one_fetch() {
    let body = Arc::new(bytes(400_000, 3));
    let b = body.clone();
    let server = Server::start(move |_, _, i| Behaviour::Serve {
        body: b.clone(),
        ranges: true,
        cut_after: (i < 2).then_some(100_000),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        attempts: 3,
        ..options(dir.path())
    };
    let path = downloader(opts)
        .fetch(
            &request(&server, "/fw.bin", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), *body);
    let ranges: Vec<_> = server
        .requests()
        .into_iter()
        .map(|l| l.range_from)
        .collect();
    assert_eq!(ranges, vec![None, Some(100_000), Some(200_000)]);
}

#[tokio::test]
async fn a_200_answer_to_a_range_request_restarts_from_zero() {
    let body = Arc::new(bytes(100_000, 4));
    let b = body.clone();
    let server = Server::start(move |_, _, _| Behaviour::Serve {
        body: b.clone(),
        ranges: false,
        cut_after: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(part_file(dir.path(), &body), &body[..40_000]).unwrap();
    let path = downloader(options(dir.path()))
        .fetch(
            &request(&server, "/fw.bin", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), *body);
    assert_eq!(server.requests()[0].range_from, Some(40_000));
}

#[tokio::test]
async fn endless_data_is_cut_off_at_the_signed_length() {
    let server = Server::start(|_, _, _| Behaviour::Endless).await;
    let dir = tempfile::tempdir().unwrap();
    let body = bytes(10_000, 5);
    let err = downloader(options(dir.path()))
        .fetch(
            &request(&server, "/endless", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.attack_name(), Some("endless-data"), "{err}");
    assert!(!part_file(dir.path(), &body).exists());
    assert!(!dir.path().join(sha256_hex(&body)).exists());
}

#[tokio::test]
async fn slow_retrieval_is_refused() {
    let body = Arc::new(bytes(100_000, 6));
    let b = body.clone();
    // 100 bytes every 50 ms = 2 000 B/s, against a minimum of 20 000 B/s.
    let server = Server::start(move |_, _, _| Behaviour::Trickle {
        body: b.clone(),
        chunk: 100,
        every: Duration::from_millis(50),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        min_rate_bytes_per_sec: 20_000,
        min_rate_window: Duration::from_millis(300),
        ..options(dir.path())
    };
    let start = Instant::now();
    let err = downloader(opts)
        .fetch(
            &request(&server, "/slow", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            Error::SlowRetrieval {
                min_rate: 20_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.attack_name(), Some("slow-retrieval"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // What arrived was fine: it is kept for a resume.
    assert!(part_file(dir.path(), &body).exists());
}

#[tokio::test]
async fn a_silent_server_is_slow_retrieval_too() {
    let body = Arc::new(bytes(1000, 7));
    let b = body.clone();
    let server = Server::start(move |_, _, _| Behaviour::Trickle {
        body: b.clone(),
        chunk: 1,
        every: Duration::from_secs(30),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        min_rate_bytes_per_sec: 100,
        min_rate_window: Duration::from_millis(300),
        ..options(dir.path())
    };
    let err = downloader(opts)
        .fetch(
            &request(&server, "/silent", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SlowRetrieval { received: 1, .. } | Error::SlowRetrieval { received: 0, .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_hash_is_refused_and_the_part_file_deleted() {
    let served = Arc::new(bytes(50_000, 8));
    let signed = bytes(50_000, 9);
    let s = served.clone();
    let server = Server::start(move |_, _, _| Behaviour::Serve {
        body: s.clone(),
        ranges: true,
        cut_after: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = downloader(options(dir.path()))
        .fetch(
            &request(&server, "/fw.bin", &signed),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.attack_name(), Some("arbitrary-software"), "{err}");
    assert!(!part_file(dir.path(), &signed).exists());
    assert!(!dir.path().join(sha256_hex(&signed)).exists());
}

#[tokio::test]
async fn storage_limits_refuse_before_any_request() {
    let server = Server::start(|_, _, _| Behaviour::Status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other-image"), vec![0u8; 600]).unwrap();
    let opts = DownloadOptions {
        storage_budget_bytes: 1000,
        ..options(dir.path())
    };
    let body = bytes(500, 10);
    let err = downloader(opts)
        .fetch(
            &request(&server, "/fw.bin", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    match err {
        Error::InsufficientStorage {
            needed: 500,
            available: 400,
            limit: StorageLimit::Budget,
            ..
        } => {}
        other => panic!("{other}"),
    }
    // More than the file system has, within the budget.
    let mut huge = request(&server, "/fw.bin", &body);
    huge.length = 1 << 60;
    let err = downloader(DownloadOptions {
        storage_budget_bytes: u64::MAX,
        ..options(dir.path())
    })
    .fetch(&huge, &no_progress, &CancellationToken::new())
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsufficientStorage {
                limit: StorageLimit::FreeSpace,
                ..
            }
        ),
        "{err}"
    );
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn cancel_keeps_the_part_file_for_later() {
    let body = Arc::new(bytes(100_000, 11));
    let b = body.clone();
    let server = Server::start(move |_, _, _| Behaviour::Trickle {
        body: b.clone(),
        chunk: 1000,
        every: Duration::from_millis(20),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let err = downloader(options(dir.path()))
        .fetch(&request(&server, "/fw.bin", &body), &no_progress, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err}");
    let kept = std::fs::read(part_file(dir.path(), &body)).unwrap();
    assert!(!kept.is_empty() && kept.len() < body.len());
    assert_eq!(kept[..], body[..kept.len()]);
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let body = Arc::new(bytes(10_000, 13));
    let b = body.clone();
    let server = Server::start(move |_, _, i| {
        if i == 0 {
            Behaviour::Status(503)
        } else {
            Behaviour::Serve {
                body: b.clone(),
                ranges: true,
                cut_after: None,
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        attempts: 2,
        ..options(dir.path())
    };
    downloader(opts)
        .fetch(
            &request(&server, "/fw.bin", &body),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn http_errors_are_named() {
    let server = Server::start(|_, _, _| Behaviour::Status(404)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = downloader(options(dir.path()))
        .fetch(
            &request(&server, "/missing", b"x"),
            &no_progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 404, .. }),
        "{err}"
    );
}

#[test]
fn decrypts_in_constant_memory_and_refuses_tampering() {
    use secureev_uptane::encryption::{encrypt_image, ContentKey, EcuDecryptionKey};
    let dir = tempfile::tempdir().unwrap();
    let firmware = bytes(1_000_000, 12);
    let ecu = EcuDecryptionKey::generate();
    let key = ContentKey::generate();
    let (encrypted, mut info) = encrypt_image(&key, &firmware, 64 * 1024).unwrap();
    info.wrap_key_for("fw.bin", "HU-1", &key, &ecu.public())
        .unwrap();
    let enc_path = dir.path().join("enc");
    let served = verified::verified_image(
        &enc_path,
        "fw.bin",
        &encrypted,
        "HU-1",
        "hu",
        serde_json::json!({ "encryption": info }),
    );
    // The ciphertext as served is no image to install.
    assert!(TargetFacts::for_install(&served).is_err());

    let unwrapped =
        secureev_daemon::install::decrypt::unwrap_content_key(&info, "fw.bin", "HU-1", &ecu)
            .unwrap();
    let out = dir.path().join("plain");
    let plain = decrypt_image(&served, &out, &unwrapped).unwrap();
    assert_eq!(*plain.location(), out);
    assert_eq!(std::fs::read(&out).unwrap(), firmware);
    let facts = TargetFacts::for_install(&plain).unwrap();
    assert_eq!(facts.length, firmware.len() as u64);
    assert_eq!(facts.sha256, sha256_hex(&firmware));
    std::fs::remove_file(&out).unwrap();

    // Another ECU's key does not unwrap it.
    assert!(
        secureev_daemon::install::decrypt::unwrap_content_key(&info, "fw.bin", "HU-2", &ecu)
            .is_err()
    );

    // A flipped bit: nothing is left behind.
    let mut tampered = encrypted.clone();
    tampered[500_000] ^= 1;
    std::fs::write(&enc_path, &tampered).unwrap();
    let out2 = dir.path().join("plain2");
    assert!(decrypt_image(&served, &out2, &unwrapped).is_err());
    assert!(!out2.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary file left behind"
    );
}

/// Peak resident memory of this process, from /proc.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Throughput and memory of download + SHA-256 + write over loopback, beside
/// `sha256sum` on the same file. Run with
/// `cargo test --release -p secureev-daemon --test download -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_download_pipeline() {
    use sha2::Digest;
    let mib: usize = std::env::var("SECUREEV_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let block = Arc::new(bytes(1 << 20, 42));
    let mut h = sha2::Sha256::new();
    for _ in 0..mib {
        h.update(&*block);
    }
    let hash = hex::encode(h.finalize());
    let b = block.clone();
    let server = Server::start(move |_, _, _| Behaviour::Repeat {
        block: b.clone(),
        count: mib,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let req = ImageRequest {
        target: "big.bin".into(),
        url: server.url("/big.bin"),
        length: (mib as u64) << 20,
        hashes: BTreeMap::from([("sha256".to_owned(), hash)]),
    };
    let opts = DownloadOptions {
        storage_budget_bytes: u64::MAX,
        ..options(dir.path())
    };
    let before = vm_hwm_kib();
    let start = Instant::now();
    let path = downloader(opts)
        .fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap();
    let took = start.elapsed();
    let after = vm_hwm_kib();
    let start = Instant::now();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let sum_took = start.elapsed();
    assert!(out.status.success());
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    eprintln!(
        "pipeline: {mib} MiB in {:.2} s = {:.0} MiB/s; sha256sum on the same file: {:.2} s = {:.0} MiB/s; \
         peak RSS before {before} KiB, after {after} KiB",
        took.as_secs_f64(),
        rate(took),
        sum_took.as_secs_f64(),
        rate(sum_took)
    );
}

#[test]
fn prune_keeps_only_the_current_update() {
    let dir = tempfile::tempdir().unwrap();
    let keep = ImageRequest {
        target: "keep".into(),
        url: "http://127.0.0.1:1/keep".into(),
        length: 3,
        hashes: BTreeMap::from([("sha256".to_owned(), sha256_hex(b"abc"))]),
    };
    let d = downloader(options(dir.path()));
    std::fs::write(dir.path().join(sha256_hex(b"abc")), b"abc").unwrap();
    std::fs::write(
        dir.path().join(format!("{}.part", sha256_hex(b"old"))),
        b"ol",
    )
    .unwrap();
    std::fs::write(dir.path().join(sha256_hex(b"older")), b"older").unwrap();
    std::fs::write(dir.path().join("README"), b"not ours").unwrap();
    assert_eq!(d.prune(std::slice::from_ref(&keep)).unwrap(), 7);
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            std::ffi::OsString::from("README"),
            sha256_hex(b"abc").into()
        ]
    );
    assert_eq!(d.cache_usage().unwrap(), 3 + 8);
}

/// Issue 11: a part file poisoned by a dishonest server (the first bytes are
/// not the signed image's) made the first honest re-run fail with
/// target-mismatch and report arbitrary software against the honest backend.
/// The resumed download that fails its hashes is discarded and fetched once
/// from zero; only a server whose full answer is wrong is refused.
#[tokio::test]
async fn a_poisoned_part_file_is_fetched_again_from_zero_once() {
    let body = Arc::new(bytes(120_000, 21));
    let b = body.clone();
    let server = Server::start(move |_, _, _| Behaviour::Serve {
        body: b.clone(),
        ranges: true,
        cut_after: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut poison = body[..40_000].to_vec();
    poison[1234] ^= 0xFF;
    std::fs::write(part_file(dir.path(), &body), &poison).unwrap();
    let req = request(&server, "/fw.bin", &body);
    let path = downloader(options(dir.path()))
        .fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        std::fs::read(path).unwrap() == *body,
        "not the signed image"
    );
    assert_eq!(
        server.requests(),
        vec![
            Logged {
                path: "/fw.bin".into(),
                range_from: Some(40_000)
            },
            Logged {
                path: "/fw.bin".into(),
                range_from: None
            },
        ]
    );

    // A server that serves the wrong image from zero is still refused, once.
    let served = Arc::new(bytes(120_000, 22));
    let s = served.clone();
    let bad = Server::start(move |_, _, _| Behaviour::Serve {
        body: s.clone(),
        ranges: true,
        cut_after: None,
    })
    .await;
    let req = request(&bad, "/fw.bin", &body);
    let _ = std::fs::remove_file(dir.path().join(sha256_hex(&body)));
    std::fs::write(part_file(dir.path(), &body), &served[..10_000]).unwrap();
    let err = downloader(options(dir.path()))
        .fetch(&req, &no_progress, &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.attack_name(), Some("arbitrary-software"), "{err}");
    assert_eq!(bad.requests().len(), 2, "{:?}", bad.requests());
    assert!(!part_file(dir.path(), &body).exists());
}
