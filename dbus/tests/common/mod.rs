//! Shared setup: a private bus, the interface served with a fake controller, and a
//! client proxy.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use secureev_dbus::testing::{FakeController, PrivateBus};
use secureev_dbus::{Ota1Proxy, StateHandle};

pub struct Harness {
    pub bus: PrivateBus,
    pub state: StateHandle,
    pub fake: FakeController,
    pub server: zbus::Connection,
    pub client: zbus::Connection,
}

impl Harness {
    /// `step`: how long each simulated phase takes.
    pub async fn start(step: Duration) -> Harness {
        let bus = PrivateBus::start().expect("start private dbus-daemon");
        let state = StateHandle::new();
        let fake = FakeController::new(state.clone(), step);
        let server = state
            .serve(bus.builder().unwrap(), Arc::new(fake.clone()))
            .await
            .expect("serve interface");
        let client = bus.client().await.unwrap();
        Harness {
            bus,
            state,
            fake,
            server,
            client,
        }
    }

    pub async fn proxy(&self) -> Ota1Proxy<'static> {
        // Uncached: tests read properties right after the server flushed them, before
        // the client's cache may have seen the PropertiesChanged signal.
        Ota1Proxy::builder(&self.client)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(10);
