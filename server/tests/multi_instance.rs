//! Issue 15: two server instances on one PostgreSQL database serve one
//! fleet. Two servers (each its own state: pools, nonce cache, keys loaded)
//! on one data directory and one database, a round-robin TCP proxy in front;
//! a vehicle checks in through both, a nonce one instance saw is refused by
//! the other, and of one manifest sent to both at once exactly one is
//! accepted. Runs under scripts/with-postgres.sh (SECUREEV_TEST_DATABASE_URL);
//! without it there is nothing to share and it says so.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{http_client, image_add, ImageSpec, VehicleClient};
use secureev_server::config::Config;
use secureev_server::layout;
use secureev_uptane::request_auth::sign_request_with_nonce;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A TCP proxy handing each new connection to the next backend in turn;
/// returns its address and the number of connections each backend got.
async fn round_robin(backends: Vec<std::net::SocketAddr>) -> (String, Arc<Vec<AtomicUsize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
    let c = counts.clone();
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let i = next % backends.len();
            next += 1;
            c[i].fetch_add(1, Ordering::SeqCst);
            let to = backends[i];
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("https://{addr}"), counts)
}

fn port_of(base: &str) -> std::net::SocketAddr {
    base.trim_start_matches("https://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_counters_nonces_and_assignments() {
    if !on_postgres() {
        println!("SKIPPED: {TEST_DATABASE_ENV} is not set (run under scripts/with-postgres.sh)");
        return;
    }
    let a = start("multi-a").await;
    // The second instance: same data directory (keys, TLS, blobs), same
    // database, its own listeners and state.
    let mut config = Config::load(&a.data.join("server.toml")).unwrap();
    assert!(config.database_url.is_some());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let b = start_with(
        temp_root("multi-b"),
        a.data.clone(),
        a.offline.clone(),
        config,
    )
    .await;

    let mut car = TestVehicle::new(
        &a,
        "VINMULTI000000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    // Registered through instance B, seen by A.
    car.register(&b).await;
    let r = a
        .admin
        .get(&format!("/admin/vehicles/{}", car.vin))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let (proxy, counts) = round_robin(vec![port_of(&a.base), port_of(&b.base)]).await;
    let ca = std::fs::read(a.data.join(layout::CA_CERT)).unwrap();
    let key = car.ecus[0].key.clone();
    // Check in alternately: a fresh client per manifest is a fresh
    // connection, so the proxy alternates the instances.
    for _ in 0..6 {
        let body = car.manifest(&[]);
        let via = VehicleClient::new(
            http_client(Some(&ca)).unwrap(),
            &proxy,
            &car.vin,
            key.clone(),
        );
        let r = via
            .put_json(&format!("/director/{}/manifest", car.vin), &body)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let stored = a
            .db()
            .read(|tx| tx.vehicle(&car.vin))
            .unwrap()
            .unwrap()
            .manifest_counter;
        assert_eq!(
            stored,
            Some(car.counter),
            "counter monotonic across instances"
        );
    }
    let (na, nb) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert!(na >= 3 && nb >= 3, "both instances served: {na} and {nb}");

    // A nonce seen by A is refused by B.
    let path = format!("/director/{}/timestamp.json", car.vin);
    let headers = sign_request_with_nonce(
        &key,
        "GET",
        &path,
        &car.vin,
        secureev_uptane::Timestamp::from_unix(secureev_server::unix_now()),
        "00112233445566778899aabbccddeeff",
        b"",
    )
    .unwrap();
    let send = |base: &str| {
        let mut rb = a.http.get(format!("{base}{path}"));
        for (k, v) in headers.pairs() {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    assert_eq!(send(&a.base).await.unwrap().status(), 200);
    let replayed = send(&b.base).await.unwrap();
    // B's own cache never saw it: the shared nonce table refused it (every
    // 401 has one body, so the status is what there is to check).
    assert_eq!(replayed.status(), 401);

    // One manifest, sent to both instances at once, four times each (fresh
    // request signatures): exactly one is accepted, the others are replays.
    let body = car.manifest(&[]);
    let mut sends = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let client = VehicleClient::new(a.http.clone(), &base, &car.vin, key.clone());
        let body = body.clone();
        let vin = car.vin.clone();
        sends.push(tokio::spawn(async move {
            client
                .put_json(&format!("/director/{vin}/manifest"), &body)
                .await
                .unwrap()
        }));
    }
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(s.await.unwrap().status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![200, 409, 409, 409, 409, 409, 409, 409],
        "{statuses:?}"
    );
    let v = b.db().read(|tx| tx.vehicle(&car.vin)).unwrap().unwrap();
    assert_eq!(v.manifest_counter, Some(car.counter));
    let manifests = b.db().read(|tx| tx.counts()).unwrap()["manifests"]
        .as_i64()
        .unwrap();
    assert_eq!(manifests, 7, "six check-ins and the one accepted twin");

    // Assignments made on both instances at once, two per ECU: every one is
    // committed (the later replaces the earlier), one pending per ECU stays,
    // and each re-signs the vehicle's Director targets with its own version.
    for hw in ["hu", "brake"] {
        let spec = ImageSpec {
            name: format!("{hw}.bin"),
            hardware_ids: vec![hw.into()],
            version: None,
            release_counter: Some(1),
            encrypt: false,
            release_notes: None,
        };
        image_add(
            &a.admin,
            &a.offline,
            &spec,
            hw.as_bytes(),
            secureev_uptane::Timestamp::from_unix(secureev_server::unix_now()),
        )
        .await
        .unwrap();
    }
    let targets_version = |h: &Harness| {
        h.db()
            .read(|tx| tx.latest_meta(&format!("director:{}", "VINMULTI000000001"), "targets"))
            .unwrap()
            .map_or(0, |m| m.version)
    };
    let before = targets_version(&a);
    let mut posts = Vec::new();
    for (i, (serial, image)) in [
        ("HU-1", "hu.bin"),
        ("BRK-1", "brake.bin"),
        ("HU-1", "hu.bin"),
        ("BRK-1", "brake.bin"),
    ]
    .into_iter()
    .enumerate()
    {
        let admin = if i % 2 == 0 {
            a.admin.clone()
        } else {
            b.admin.clone()
        };
        let assign = serde_json::json!({"vin": car.vin, "ecu_serial": serial, "image": image});
        posts.push(tokio::spawn(async move {
            admin.post("/admin/assignments", &assign).await.unwrap()
        }));
    }
    for p in posts {
        let r = p.await.unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let pending = a.db().read(|tx| tx.pending_assignments(&car.vin)).unwrap();
    let mut serials: Vec<_> = pending.iter().map(|p| p.ecu_serial.clone()).collect();
    serials.sort();
    assert_eq!(
        serials,
        vec!["BRK-1", "HU-1"],
        "one pending assignment per ECU"
    );
    assert_eq!(
        targets_version(&b),
        before + 4,
        "four re-signings, four versions"
    );
}
