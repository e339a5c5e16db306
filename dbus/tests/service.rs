//! Behaviour of the interface on a private bus with the fake controller.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, TIMEOUT};
use futures_util::StreamExt;
use secureev_dbus::testing::{sample_plan, FakeController};
use secureev_dbus::{
    ErrorCode, Ota1Proxy, OtaError, Progress, State, StateHandle, BUS_NAME, INTERFACE, OBJECT_PATH,
};
use tokio::time::timeout;
use zbus::zvariant::Value;

fn no_options() -> HashMap<&'static str, Value<'static>> {
    HashMap::new()
}

async fn next_completed(stream: &mut secureev_dbus::CompletedStream) -> (u32, String) {
    let sig = timeout(TIMEOUT, stream.next())
        .await
        .expect("Completed within timeout")
        .expect("stream open");
    let args = sig.args().unwrap();
    (args.code, args.message)
}

async fn properties_stream(h: &Harness) -> zbus::fdo::PropertiesChangedStream {
    zbus::fdo::PropertiesProxy::builder(&h.client)
        .destination(BUS_NAME)
        .unwrap()
        .path(OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap()
        .receive_properties_changed()
        .await
        .unwrap()
}

#[tokio::test]
async fn property_changes_are_throttled_and_end_on_the_final_value() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let mut changes = properties_stream(&h).await;

    let started = std::time::Instant::now();
    for i in 0..=100u32 {
        h.state.set_progress(Progress {
            percent: i,
            phase: "downloading".into(),
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let elapsed = started.elapsed();

    let mut seen = Vec::new();
    loop {
        let sig = timeout(TIMEOUT, changes.next()).await.unwrap().unwrap();
        let percent = {
            let args = sig.args().unwrap();
            assert_eq!(args.interface_name.as_str(), INTERFACE);
            match args.changed_properties.get("Progress") {
                Some(v) => {
                    Progress::try_from(v.try_to_owned().unwrap())
                        .unwrap()
                        .percent
                }
                None => continue,
            }
        };
        seen.push(percent);
        if percent == 100 {
            break;
        }
    }
    // 101 updates over `elapsed`: at most one signal per 100 ms, plus the first.
    let allowed = usize::try_from(elapsed.as_millis() / 100).unwrap() + 2;
    assert!(
        seen.len() <= allowed,
        "{} signals in {elapsed:?}: {seen:?}",
        seen.len()
    );
    assert!(seen.len() < 20, "not coalesced: {seen:?}");
    assert_eq!(seen.last(), Some(&100));
}

#[tokio::test]
async fn changes_are_coalesced_into_one_signal_with_all_properties() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let mut changes = properties_stream(&h).await;
    // Trip the throttle so the next batch waits and coalesces.
    h.state.set_last_check(1);
    h.state.flush().await;
    let _ = timeout(TIMEOUT, changes.next()).await.unwrap();

    h.state.set_state(State::Checking);
    h.state.set_state(State::Downloading);
    h.state.set_last_check(2);
    h.state.flush().await;
    let sig = timeout(TIMEOUT, changes.next()).await.unwrap().unwrap();
    let args = sig.args().unwrap();
    let props = &args.changed_properties;
    assert_eq!(props.get("State"), Some(&Value::from("downloading")));
    assert_eq!(props.get("LastCheck"), Some(&Value::from(2i64)));
}

#[tokio::test]
async fn unknown_option_key_is_a_typed_error() {
    let h = Harness::start(Duration::from_millis(50)).await;
    let proxy = h.proxy().await;
    let mut opts = no_options();
    opts.insert("forec", Value::from(true));
    match proxy.check_for_updates(opts).await {
        Err(OtaError::UnknownOption(m)) => assert!(m.contains("forec"), "{m}"),
        other => panic!("expected UnknownOption, got {other:?}"),
    }
    let mut opts = no_options();
    opts.insert("force", Value::from("yes"));
    assert!(matches!(
        proxy.check_for_updates(opts).await,
        Err(OtaError::InvalidArgument(_))
    ));
    let mut opts = no_options();
    opts.insert("reboot", Value::from(true));
    assert!(matches!(
        proxy.install("x", opts).await,
        Err(OtaError::UnknownOption(_))
    ));
    assert!(h.fake.calls().is_empty(), "controller must not be called");
}

#[tokio::test]
async fn busy_while_busy() {
    let h = Harness::start(Duration::from_millis(500)).await;
    let proxy = h.proxy().await;
    proxy.check_for_updates(no_options()).await.unwrap();
    match proxy.check_for_updates(no_options()).await {
        Err(e @ OtaError::Busy(_)) => assert_eq!(e.code(), ErrorCode::Busy),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(matches!(
        proxy
            .provision("https://backend.example", no_options())
            .await,
        Err(OtaError::Busy(_))
    ));
    assert_eq!(proxy.state().await.unwrap(), "checking");
}

#[tokio::test]
async fn install_with_a_stale_update_id_is_refused() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let proxy = h.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();

    // Nothing pending yet.
    assert!(matches!(
        proxy.install("deadbeef", no_options()).await,
        Err(OtaError::NoSuchUpdate(_))
    ));

    proxy.check_for_updates(no_options()).await.unwrap();
    assert_eq!(next_completed(&mut completed).await.0, 0);
    let shown = proxy.pending_update_id().await.unwrap();
    assert_eq!(shown, sample_plan("").id().as_str());

    // The backend now offers something else; a new check replaces the plan.
    h.fake.offer(Some(sample_plan("-hotfix")));
    proxy.check_for_updates(no_options()).await.unwrap();
    assert_eq!(next_completed(&mut completed).await.0, 0);

    match proxy.install(&shown, no_options()).await {
        Err(e @ OtaError::NoSuchUpdate(_)) => assert_eq!(e.code(), ErrorCode::NoSuchUpdate),
        other => panic!("expected NoSuchUpdate, got {other:?}"),
    }
    assert!(
        !h.fake.calls().iter().any(|c| c.starts_with("install")),
        "stale id must not reach the controller"
    );
    let current = proxy.pending_update_id().await.unwrap();
    assert_eq!(current, sample_plan("-hotfix").id().as_str());
    proxy.install(&current, no_options()).await.unwrap();
    assert_eq!(next_completed(&mut completed).await.0, 0);
}

#[tokio::test]
async fn full_cycle_delivers_update_available_and_completed() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let proxy = h.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    let mut available = proxy.receive_update_available().await.unwrap();

    proxy.check_for_updates(no_options()).await.unwrap();
    let sig = timeout(TIMEOUT, available.next()).await.unwrap().unwrap();
    let args = sig.args().unwrap();
    assert_eq!(args.updates.len(), 2);
    assert_eq!(
        next_completed(&mut completed).await,
        (0, "update available".into())
    );
    // Properties are published before the signal that follows them.
    assert_eq!(proxy.state().await.unwrap(), "awaiting-consent");
    assert_eq!(proxy.pending_update_id().await.unwrap(), args.update_id);
    let pending = proxy.pending_updates().await.unwrap();
    assert!(pending.iter().all(|u| u.update_id == args.update_id));
    assert!(proxy.last_check().await.unwrap() > 0);

    proxy.install(&args.update_id, no_options()).await.unwrap();
    let (code, message) = next_completed(&mut completed).await;
    assert_eq!((code, message.as_str()), (0, "installed 2 update(s)"));
    assert_eq!(proxy.state().await.unwrap(), "idle");
    assert!(proxy.pending_updates().await.unwrap().is_empty());
    let hu = proxy
        .ecus()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.serial == "HU-0001")
        .unwrap();
    assert_eq!(hu.installed_version, "1.1.0");
    let history = proxy.get_history().await.unwrap();
    let actions: Vec<_> = history.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["check", "install"]);
}

#[tokio::test]
async fn cancel_during_download_completes_with_cancelled() {
    let h = Harness::start(Duration::from_millis(300)).await;
    let proxy = h.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    assert!(matches!(
        proxy.cancel().await,
        Err(OtaError::NotCancellable(_))
    ));
    proxy.check_for_updates(no_options()).await.unwrap();
    proxy.cancel().await.unwrap();
    let (code, _) = next_completed(&mut completed).await;
    assert_eq!(code, ErrorCode::Cancelled.as_u32());
    assert_eq!(proxy.last_error_code().await.unwrap(), 10);
    assert_eq!(proxy.state().await.unwrap(), "idle");
}

#[tokio::test]
async fn argument_validation() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let proxy = h.proxy().await;
    assert!(matches!(
        proxy.postpone(0).await,
        Err(OtaError::InvalidArgument(_))
    ));
    assert!(matches!(
        proxy.postpone(8 * 24 * 3600).await,
        Err(OtaError::InvalidArgument(_))
    ));
    assert!(matches!(
        proxy.postpone(60).await,
        Err(OtaError::NoSuchUpdate(_))
    ));
    assert!(matches!(
        proxy.set_precondition("Not Valid", true, "").await,
        Err(OtaError::InvalidArgument(_))
    ));
    assert!(matches!(
        proxy
            .set_precondition("parked", true, &"x".repeat(300))
            .await,
        Err(OtaError::InvalidArgument(_))
    ));
    for url in [
        "http://backend.example",
        "https://",
        "backend.example",
        "https:///x",
    ] {
        assert!(
            matches!(
                proxy.provision(url, no_options()).await,
                Err(OtaError::InvalidArgument(_))
            ),
            "{url}"
        );
    }
}

#[tokio::test]
async fn preconditions_gate_install_and_postpone_is_published() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let proxy = h.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    proxy.check_for_updates(no_options()).await.unwrap();
    next_completed(&mut completed).await;
    let id = proxy.pending_update_id().await.unwrap();

    proxy
        .set_precondition("parked", false, "vehicle moving")
        .await
        .unwrap();
    h.state.flush().await;
    let pre = proxy.preconditions().await.unwrap();
    assert_eq!(pre.len(), 1);
    assert!(!pre[0].satisfied);
    match proxy.install(&id, no_options()).await {
        Err(e @ OtaError::PreconditionFailed(_)) => {
            assert!(e.to_string().contains("parked"), "{e}")
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }

    proxy.postpone(3600).await.unwrap();
    assert!(proxy.postponed_until().await.unwrap() > 0);

    proxy.set_precondition("parked", true, "").await.unwrap();
    proxy.install(&id, no_options()).await.unwrap();
    assert_eq!(next_completed(&mut completed).await.0, 0);
}

#[tokio::test]
async fn provision_ends_with_completed() {
    let h = Harness::start(Duration::from_millis(20)).await;
    let proxy = h.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    let mut opts = no_options();
    opts.insert("vin", Value::from("WSE00000000000001"));
    proxy
        .provision("https://backend.example:8443", opts)
        .await
        .unwrap();
    let (code, message) = next_completed(&mut completed).await;
    assert_eq!(code, 0);
    assert!(message.contains("backend.example"), "{message}");
    assert!(h
        .fake
        .calls()
        .contains(&"provision https://backend.example:8443 vin=WSE00000000000001".to_owned()));
}

#[tokio::test]
async fn initial_state_is_visible_and_a_second_daemon_cannot_steal_the_name() {
    let bus = secureev_dbus::testing::PrivateBus::start().unwrap();
    let state = StateHandle::new();
    let fake = FakeController::new(state.clone(), Duration::from_millis(20));
    state.set_state(State::Error);
    state.set_last_error(ErrorCode::RollbackAttack, "rollback of targets 5 -> 4");
    let _server = state
        .serve(bus.builder().unwrap(), Arc::new(fake.clone()))
        .await
        .unwrap();
    let client = bus.client().await.unwrap();
    let proxy = Ota1Proxy::new(&client).await.unwrap();
    assert_eq!(proxy.state().await.unwrap(), "error");
    assert_eq!(proxy.last_error_code().await.unwrap(), 22);
    assert_eq!(proxy.ecus().await.unwrap().len(), 2);

    // A second daemon must not start while the name is owned.
    let second = StateHandle::new();
    let res = second.serve(bus.builder().unwrap(), Arc::new(fake)).await;
    assert!(
        matches!(res, Err(zbus::Error::NameTaken)),
        "second owner of {BUS_NAME}: {res:?}"
    );
    assert_eq!(
        proxy.state().await.unwrap(),
        "error",
        "first daemon still serves"
    );
}

/// Roles are decided from the caller's credentials as the bus reports them:
/// a caller whose only role is read gets its history but NotPermitted, naming
/// the consent role, for Install and CheckForUpdates; the controller never
/// sees the refused calls.
#[tokio::test]
async fn methods_need_their_role_from_the_callers_credentials() {
    use secureev_dbus::testing::{FakeController, PrivateBus};
    use secureev_dbus::{AccessPolicy, ErrorCode, Ota1Proxy, Role, StateHandle};
    let bus = PrivateBus::start().unwrap();
    let state = StateHandle::new();
    let fake = FakeController::new(state.clone(), Duration::from_millis(20));
    let my_gid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.gid()
    });
    // Nobody is trusted; our primary group holds only the read role.
    let access = AccessPolicy::new([], [(Role::Read, "readers".into(), my_gid.unwrap())]);
    let _server = state
        .serve_with_access(bus.builder().unwrap(), Arc::new(fake.clone()), access)
        .await
        .unwrap();
    let client = bus.client().await.unwrap();
    let proxy = Ota1Proxy::new(&client).await.unwrap();
    proxy.get_history().await.unwrap();
    let e = proxy.check_for_updates(HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotPermitted, "{e}");
    assert!(e.to_string().contains("consent role"), "{e}");
    let e = proxy
        .set_precondition("parked", true, "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("preconditions role"), "{e}");
    let e = proxy
        .provision("https://b.example", HashMap::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("provision role (root only)"), "{e}");
    assert!(
        fake.calls()
            .iter()
            .all(|c| !c.starts_with("check") && !c.starts_with("set_precondition")),
        "{:?}",
        fake.calls()
    );
}
